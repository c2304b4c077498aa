"""--mode=export and jamflow_jax.export: an export samples exactly as its run does, across meshes and
dtypes, the F5-TTS layout round-trips, and bad or damaged exports end as one line."""

import json
import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

from jamflow_jax import export as export_lib, generate, model as model_lib, sharding, torch_checkpoint
from jamflow_jax.errors import CheckpointError, ConfigError, InputError
from jamflow_jax.model import f5tts

from checkpoint_files import data_files, flip_bytes
from conftest import train_tiny_workdir

FAST = {"nfe": 4}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return train_tiny_workdir(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def exported(workdir):
  """The f32 export of the run's last step, gathered on all 8 devices."""
  config = generate.saved_config(workdir)
  assert sharding.make_mesh(config).size == 8
  return export_lib.export(workdir, config)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def test_export_samples_as_the_workdir(workdir, exported):
  names = sorted(os.listdir(exported))
  assert names == ["config.json", "fingerprints.json", "manifest.json", "motion_stats.json", "params"]
  manifest = json.loads((exported / "manifest.json").read_text())
  assert exported.name == str(manifest["step"]) == "2" and exported.parent == workdir / "export"
  assert (manifest["weights"], manifest["dtype"], manifest["kind"]) == ("ema", "float32", "orbax")
  assert f"--export_dir={exported}" in manifest["sample_command"]
  assert "opt_state" not in json.dumps(os.listdir(exported / "params"))

  run = generate.Pipeline.from_workdir(workdir)
  out = generate.Pipeline.from_export(exported)
  assert manifest["parameters"] == model_lib.count_params(out.sampler.params)
  for got, want in zip(jax.tree.leaves(_host(out.sampler.params)), jax.tree.leaves(_host(run.sampler.params))):
    np.testing.assert_array_equal(got, want)
  a, b = (p.text_to_speech("a b c.", seed=3, **FAST) for p in (run, out))
  np.testing.assert_array_equal(a.mel, b.mel)
  np.testing.assert_array_equal(a.motion, b.motion)


def test_cross_mesh_and_bf16(workdir, exported, tmp_path):
  config = generate.saved_config(workdir)
  one = export_lib.load(exported)  # written from 8 devices, read onto one
  eight = export_lib.load(exported, mesh=sharding.make_mesh(config))
  assert {len(a.sharding.device_set) for a in jax.tree.leaves(eight.params)} == {8}
  for a, b in zip(jax.tree.leaves(_host(one.params)), jax.tree.leaves(_host(eight.params))):
    np.testing.assert_array_equal(a, b)

  # The reverse, in bf16: written from one device, read onto 8; the run's Vocos file goes with it.
  from test_vocoder import MEL_24KHZ, _state_dict

  vocoder = tmp_path / "vocos.safetensors"
  torch_checkpoint.save_safetensors(vocoder, _state_dict(**MEL_24KHZ))
  config.sample.vocoder = str(vocoder)
  config.render.face_model = str(tmp_path / "flame.pkl")  # the user's licence: not carried
  config.export.dtype = "bfloat16"
  work = tmp_path / "copy"
  work.mkdir()
  os.symlink(workdir / "checkpoints", work / "checkpoints", target_is_directory=True)
  (work / "config.json").write_text((workdir / "config.json").read_text())
  half = export_lib.export(work, config, mesh=sharding.single_device_mesh(config))
  assert json.loads((half / "manifest.json").read_text())["dtype"] == "bfloat16"
  assert "motion_stats.json" not in os.listdir(half)  # the copy has none: none is made up
  assert (half / "vocoder.safetensors").read_bytes() == vocoder.read_bytes()
  carried = export_lib.exported_config(half)
  assert carried.sample.vocoder == str(half / "vocoder.safetensors") and carried.render.face_model == ""
  loaded = export_lib.load(half, mesh=sharding.make_mesh(config))
  for a, b in zip(jax.tree.leaves(_host(loaded.params)), jax.tree.leaves(_host(one.params))):
    assert a.dtype == np.float32  # the model's parameter dtype again
    np.testing.assert_array_equal(a, b.astype(ml_dtypes.bfloat16).astype(np.float32))
  with pytest.raises(InputError, match="already holds an export"):
    export_lib.export(work, config)


def test_bad_and_damaged_exports(workdir, exported, tmp_path):
  with pytest.raises(InputError, match="no such export directory"):
    export_lib.load(tmp_path / "missing")
  with pytest.raises(InputError, match="no manifest.json"):
    export_lib.load(workdir)
  with pytest.raises(InputError, match="no checkpoints/ directory"):
    export_lib.export(tmp_path, generate.saved_config(workdir))
  config = generate.saved_config(workdir)
  config.export.dtype = "float16"
  with pytest.raises(ConfigError, match="export.dtype='float16'; choose one of float32, bfloat16"):
    export_lib.export(workdir, config)
  config = generate.saved_config(workdir)
  config.model.depth = 3
  with pytest.raises(ConfigError, match="other model.. settings .depth: 2 -> 3"):
    export_lib.load(exported, config)

  # Flipped bytes in the array files: refused as one error.
  damaged = tmp_path / "damaged"
  subprocess.run(["cp", "-r", str(exported), str(damaged)], check=True)
  for path in data_files(damaged / "params"):
    flip_bytes(path)
  with pytest.raises(CheckpointError, match="damaged|cannot restore"):
    export_lib.load(damaged)


def test_main_export_and_sample_from_it(workdir, tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  main = [sys.executable, "-m", "jamflow_jax.main"]
  run = lambda *args: subprocess.run(main + list(args), capture_output=True, text=True, timeout=600, env=env)
  last_line = lambda done: done.stderr.strip().splitlines()[-1] if "Traceback" not in done.stderr else done.stderr
  done = run(
    "--config=configs/base.py:tiny",
    f"--workdir={workdir}",
    "--mode=export",
    "--config.export.format=f5_safetensors",
    "--config.model.qk_norm=False",
  )
  assert done.returncode == 1 and "other model.* settings (qk_norm: True -> False)" in last_line(done), done.stderr

  out = tmp_path / "samples"
  done = run(f"--export_dir={workdir / 'export' / '2'}", "--mode=sample", "--task=tts", "--text=hi.", f"--out={out}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert sorted(os.listdir(out)) == ["tts-seed0.json", "tts-seed0.mp4", "tts-seed0.npz", "tts-seed0.wav"]
  bad = run(f"--export_dir={tmp_path / 'nowhere'}", "--mode=sample", "--task=tts", "--text=hi.")
  assert (
    bad.returncode == 1 and last_line(bad).startswith("input error:") and "no such export directory" in last_line(bad)
  )
  bad = run(f"--export_dir={tmp_path}", "--mode=export", f"--workdir={workdir}", "--config=configs/base.py:tiny")
  assert bad.returncode == 1 and "--export_dir is for --mode=sample" in last_line(bad)


def test_f5_round_trip_is_bit_identical():
  """F5 tensors -> ours (convert) -> F5 (to_f5): the same bytes, RoPE buffer included."""
  from test_f5tts import _random_state_dict, _small_config, _small_shapes

  config = _small_config("v1")
  state_dict = _random_state_dict(_small_shapes(config), seed=5)
  state_dict["rotary_embed.inv_freq"] = f5tts.rope_inv_freq(config)
  abstract = model_lib.abstract_params(config)
  back = f5tts.to_f5(f5tts.convert(state_dict, abstract, config), config)
  assert back.keys() == state_dict.keys()
  for name, array in state_dict.items():
    assert back[name].dtype == array.dtype and back[name].tobytes() == array.tobytes(), name


def test_f5_safetensors_export(tmp_path):
  """A run initialised from an F5 checkpoint exports its Audio-DiT back as F5 wrote it."""
  from test_f5tts import _random_state_dict, _small_config, _small_shapes

  from data_pipelines import sources
  from jamflow_jax import train

  from conftest import write_random_corpus

  config = _small_config("v1")
  config.model.text_vocab_size = 256
  config.model.mel_dim = 100
  state_dict = _random_state_dict(_small_shapes(config), seed=6)
  init = tmp_path / "f5.safetensors"
  torch_checkpoint.save_safetensors(init, {f"ema_model.transformer.{k}": v for k, v in state_dict.items()})
  write_random_corpus(tmp_path / "corpus", 16, min_frames=20, max_frames=45)
  config.data.path = str(tmp_path / "corpus")
  config.train.init_from = str(init)
  config.train.num_steps = config.checkpoint.every_steps = 2  # step 0 of the warm-up has lr 0
  config.optim.ema_decay = 0.0  # the EMA weights are the trained ones
  train.train(config, str(tmp_path / "work"), *sources.for_training(config))
  config.export.format = "f5_safetensors"
  out = export_lib.export(tmp_path / "work", config)
  assert out.name == "2-f5" and sorted(os.listdir(out)) == ["audio_dit.safetensors", "manifest.json"]
  assert all(name.startswith("ema_model.transformer.") for name in torch_checkpoint.load(out / "audio_dit.safetensors"))
  reread = f5tts.load_f5_checkpoint(str(out / "audio_dit.safetensors"))
  assert reread.keys() == set(state_dict) | {"rotary_embed.inv_freq"}
  # What F5-TTS reads is the run's audio stream, bit for bit.
  trained = _host(generate.Pipeline.from_workdir(tmp_path / "work", config).sampler.params)
  audio = dict(f5tts._leaves(f5tts.convert(reread, trained, config)))
  assert audio and all(np.array_equal(audio[p], leaf) for p, leaf in f5tts._leaves(trained) if p in audio)
  assert any(not np.array_equal(reread[n], state_dict[n]) for n in state_dict)  # it did train
