"""Parity with the real PyTorch packages, f5-tts (1.1.22) and vocos (0.1.0): random seeded weights,
f32, checkpoint files written the way F5-TTS's trainer writes them. Runs where torch, f5_tts and
vocos import (a side environment; none of them is a dependency of this project), skipped elsewhere.
Each test prints its largest differences (pytest -s)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
f5_model = pytest.importorskip("f5_tts.model")
f5_infer = pytest.importorskip("f5_tts.infer.utils_infer")
f5_modules = pytest.importorskip("f5_tts.model.modules")
ema_pytorch = pytest.importorskip("ema_pytorch")
vocos_pkg = pytest.importorskip("vocos")

import jax  # noqa: E402
from flax import nnx  # noqa: E402
from vocos.feature_extractors import MelSpectrogramFeatures  # noqa: E402
from vocos.heads import ISTFTHead  # noqa: E402
from vocos.models import VocosBackbone  # noqa: E402

from configs.base import get_config  # noqa: E402
from jamflow_jax import model as model_lib, sharding, torch_checkpoint  # noqa: E402
from jamflow_jax.audio import mel as mel_lib, vocoder as vocoder_lib  # noqa: E402
from jamflow_jax.config import motion_frames  # noqa: E402
from jamflow_jax.model import f5tts  # noqa: E402

DIM, DEPTH, HEADS, HEAD_DIM, TEXT_DIM = 64, 2, 2, 32, 32


def _f5_cfm(seed=0):
  """F5TTS_v1_Base's architecture (text_mask_padding, no qk-norm, RoPE on all heads) at a small size,
  every weight random (F5 zero-initialises the adaLN and output layers)."""
  torch.manual_seed(seed)
  dit = f5_model.DiT(
    dim=DIM,
    depth=DEPTH,
    heads=HEADS,
    dim_head=HEAD_DIM,
    ff_mult=2,
    mel_dim=100,
    text_num_embeds=255,
    text_dim=TEXT_DIM,
    conv_layers=2,
    text_mask_padding=True,
    attn_mask_enabled=False,
  )
  cfm = f5_model.CFM(transformer=dit, mel_spec_kwargs=dict(mel_spec_type="vocos"))
  with torch.no_grad():
    for name, p in cfm.named_parameters():
      p.copy_(torch.randn_like(p) * (1.0 if "text_embed.weight" in name else 0.2))
  return cfm.eval()


def _our_config(**model):
  config = get_config("tiny")
  m = config.model
  m.audio_width, m.depth, m.heads, m.head_dim, m.ff_mult = DIM, DEPTH, HEADS, HEAD_DIM, 2
  m.text_dim, m.text_conv_layers, m.time_freq_dim, m.text_vocab_size = TEXT_DIM, 2, 256, 256
  m.qk_norm, m.rope_heads, m.text_mask_padding, m.text_null = False, 0, True, "f5"
  m.joint_layers = ()
  for key, value in model.items():
    m[key] = value
  return config


def _ours(config, state_dict):
  """velocity(x, cond, ids, t, text_given, valid) of our audio stream converted from `state_dict`."""
  with sharding.use_mesh(sharding.single_device_mesh(config), config):
    model = model_lib.create(config)
    params = nnx.state(model, nnx.Param)
    converted = f5tts.convert(state_dict, nnx.to_pure_dict(params), config)
    nnx.replace_by_pure_dict(params, f5tts.merge_params(nnx.to_pure_dict(params), converted))
    nnx.update(model, params)
    call = nnx.jit(lambda model, inputs: model(inputs)[0])

  def velocity(x, cond, ids, t, text_given=True, valid=None):
    b, ta = ids.shape
    tm = motion_frames(config, ta)
    inputs = model_lib.FlowInputs(
      audio_xt=x,
      audio_cond=cond,
      text=ids,
      text_given=np.full(b, text_given),
      audio_valid=np.ones((b, ta), bool) if valid is None else valid,
      motion_xt=np.zeros((b, tm, 61), np.float32),
      motion_cond=np.zeros((b, tm, 61), np.float32),
      motion_valid=np.zeros((b, tm), bool),
      t=t,
    )
    with sharding.use_mesh(sharding.single_device_mesh(config), config):
      return np.asarray(call(model, jax.tree.map(jax.numpy.asarray, inputs)))

  return velocity


def _batch(seed=0, b=2, n=48, lengths=(30, 11)):
  rng = np.random.default_rng(seed)
  x, cond = rng.normal(size=(2, b, n, 100)).astype(np.float32)
  ids = np.zeros((b, n), np.int32)
  for row, length in enumerate(lengths):
    ids[row, :length] = rng.integers(1, 256, size=length)
  return x, cond, ids, np.array([0.3, 0.85], np.float32)[:b]


def _theirs(cfm, x, cond, ids, t, **kw):
  """F5's DiT forward; its text ids are ours - 1 (-1 pads, F5 adds 1 to make the filler 0)."""
  with torch.no_grad():
    out = cfm.transformer(
      torch.from_numpy(x), torch.from_numpy(cond), torch.from_numpy(ids.astype(np.int64) - 1), torch.from_numpy(t), **kw
    )
  return out.numpy()


def _report(name, got, want):
  diff = float(np.abs(got - want).max())
  print(f"{name}: max |diff| {diff:.2e} (max |F5| {float(np.abs(want).max()):.2f})")
  return diff


def _trainer_checkpoint(cfm, path):
  """What F5-TTS's Trainer.save_checkpoint writes: model, EMA (ema_pytorch) and bookkeeping."""
  ema = ema_pytorch.EMA(cfm, include_online_model=False)
  torch.save({"model_state_dict": cfm.state_dict(), "ema_model_state_dict": ema.state_dict(), "update": 3}, path)


def test_dit_forward_null_condition_padding_and_guidance(tmp_path):
  cfm = _f5_cfm()
  _trainer_checkpoint(cfm, tmp_path / "model_3.pt")
  state_dict = f5tts.load_f5_checkpoint(str(tmp_path / "model_3.pt"))
  x, cond, ids, t = _batch()
  ours = _ours(_our_config(), state_dict)
  scale = lambda a: 1e-4 * np.abs(a).max()

  want = _theirs(cfm, x, cond, ids, t)
  assert _report("unpadded", ours(x, cond, ids, t), want) < scale(want)
  null = _theirs(cfm, x, cond, ids, t, drop_text=True, drop_audio_cond=True)
  got_null = ours(x, np.zeros_like(cond), ids, t, text_given=False)
  assert _report("null (text and audio prompt dropped)", got_null, null) < scale(null)
  # F5-TTS's guided velocity: v + w (v - v_null), both from one cfg_infer call.
  with torch.no_grad():
    packed = cfm.transformer(
      torch.from_numpy(x),
      torch.from_numpy(cond),
      torch.from_numpy(ids.astype(np.int64) - 1),
      torch.from_numpy(t),
      cfg_infer=True,
    ).numpy()
  guided_f5 = packed[:2] + 2.0 * (packed[:2] - packed[2:])
  guided = want + 2.0 * (want - null)
  np.testing.assert_allclose(guided_f5, guided, rtol=0, atol=scale(guided_f5))
  got_guided = ours(x, cond, ids, t) + 2.0 * (ours(x, cond, ids, t) - got_null)
  assert _report("guided (cfg 2)", got_guided, guided_f5) < 1e-3 * np.abs(guided_f5).max()

  # Padded batch (the second example has 20 valid frames), with its mask as F5-TTS's CFM passes it in
  # training and batched sampling: F5TTS_v1_Base attends to the padding and zeroes the padded
  # queries' attention outputs.
  valid = np.ones(ids.shape, bool)
  valid[1, 20:] = False
  ids[1, 20:] = 0
  padded_f5 = _theirs(cfm, x, cond, ids, t, mask=torch.from_numpy(valid))
  attend = _ours(_our_config(attend_padding=True), state_dict)
  got = attend(x, cond, ids, t, valid=valid)
  assert _report("padded, model.attend_padding", got[valid], padded_f5[valid]) < scale(padded_f5)
  masked = ours(x, cond, ids, t, valid=valid)
  print(f"padded, ours masked vs F5 unmasked: max |diff| {np.abs(masked[valid] - padded_f5[valid]).max():.2e}")
  assert np.abs(masked[valid] - padded_f5[valid]).max() > 1e-3


def test_f5_load_checkpoint_reads_our_export(tmp_path):
  cfm = _f5_cfm()
  state_dict = {k.removeprefix("transformer."): v.numpy() for k, v in cfm.state_dict().items() if "mel_spec" not in k}
  config = _our_config()
  abstract = model_lib.abstract_params(config)
  back = f5tts.to_f5(f5tts.convert(state_dict, abstract, config), config)
  assert all(back[k].tobytes() == v.tobytes() for k, v in state_dict.items())  # F5 -> ours -> F5
  path = tmp_path / "audio_dit.safetensors"
  torch_checkpoint.save_safetensors(path, {f"ema_model.transformer.{k}": v for k, v in back.items()}, {"format": "pt"})
  other = _f5_cfm(seed=9)  # other weights, replaced by the file's
  loaded = f5_infer.load_checkpoint(other, str(path), "cpu", dtype=torch.float32, use_ema=True).eval()
  x, cond, ids, t = _batch(seed=1)
  want, got = _theirs(cfm, x, cond, ids, t), _theirs(loaded, x, cond, ids, t)
  assert _report("F5's load_checkpoint of our file", got, want) == 0.0


def test_log_mel_and_vocos_match_the_packages(tmp_path):
  rng = np.random.default_rng(0)
  wav = (0.3 * rng.normal(size=24000)).astype(np.float32)
  f5_mel = f5_modules.MelSpec(mel_spec_type="vocos")(torch.from_numpy(wav)[None]).numpy()[0].T  # [T, 100]
  ours = mel_lib.log_mel(wav)
  assert ours.shape == f5_mel.shape
  assert _report("log mel vs F5's MelSpec", ours, f5_mel) < 3e-3

  torch.manual_seed(1)
  vocos = vocos_pkg.Vocos(
    feature_extractor=MelSpectrogramFeatures(sample_rate=24000, n_fft=1024, hop_length=256, n_mels=100),
    backbone=VocosBackbone(input_channels=100, dim=64, intermediate_dim=128, num_layers=2),
    head=ISTFTHead(dim=64, n_fft=1024, hop_length=256),
  ).eval()
  torch.save(vocos.state_dict(), tmp_path / "pytorch_model.bin")
  ours_vocoder = vocoder_lib.load_vocoder(
    str(tmp_path / "pytorch_model.bin"), dim=64, intermediate_dim=128, num_layers=2
  )
  mel = ours[:40]
  with torch.no_grad():
    want = vocos.decode(torch.from_numpy(mel.T.copy())[None]).numpy()[0]
  got = np.asarray(ours_vocoder(mel))
  assert got.shape == want.shape
  assert _report("Vocos decode", got, want) < 1e-4 * max(1.0, np.abs(want).max())
