"""Every failure a user can cause (a flag, a config value, a file, a job) ends as one line on stderr
that names what to fix, with a non-zero exit and no traceback."""

import concurrent.futures
import json
import os
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile

from configs.base import get_config
from data_pipelines import pipeline, shards
from jamflow_jax import generate, model as model_lib, sharding
from jamflow_jax.config import ConfigError, validate
from jamflow_jax.motion import face

from checkpoint_files import write_zip_with_pickle
from conftest import write_random_corpus

TINY = "--config=configs/base.py:tiny"
MAIN, RENDER, PREPROCESS = "jamflow_jax.main", "jamflow_jax.motion.render", "data_pipelines.preprocess"
SAMPLE = [TINY, "--workdir={tmp}/run", "--mode=sample", "--out={tmp}/out"]

# Command lines that fail: id -> (module, arguments, the start of the last stderr line). {tmp} is
# the folder the `cli` fixture prepares; each fails before a model would load or compile.
CLI_CASES = {
  "unknown config key": (
    MAIN,
    [TINY, "--workdir={tmp}/run", "--config.train.nope=1"],
    "flag error: --config.train.nope: the config has no field train.nope",
  ),
  "not an int": (
    MAIN,
    [TINY, "--workdir={tmp}/run", "--config.train.batch_size=abc"],
    "flag error: --config.train.batch_size=abc: invalid literal for int()",
  ),
  "float for an int": (
    MAIN,
    [TINY, "--workdir={tmp}/run", "--config.train.batch_size=8.5"],
    "flag error: --config.train.batch_size=8.5: invalid literal for int()",
  ),
  "malformed tuple": (
    MAIN,
    [TINY, "--workdir={tmp}/run", "--config.mesh.shape=(2,1"],
    "flag error: --config.mesh.shape=(2,1: Error while parsing string",
  ),
  "unknown flag": (MAIN, [TINY, "--workdir={tmp}/run", "--nope=1"], "flag error: Unknown command line flag 'nope'"),
  "no workdir": (MAIN, [TINY], "flag error: --workdir is required"),
  "no config file": (
    MAIN,
    ["--config={tmp}/none.py", "--workdir={tmp}/run"],
    "flag error: --config: [Errno 2] No such file or directory: '{tmp}/none.py'",
  ),
  # The config checks run for every mode, not only for training.
  "sample checks the config": (MAIN, [*SAMPLE, "--config.sample.nfe=0"], "config error: sample.nfe=0 must be >= 1"),
  "eval checks the config": (
    MAIN,
    [TINY, "--workdir={tmp}/run", "--mode=eval", "--config.train.batch_size=0"],
    "config error: train.batch_size=0 must be >= 1",
  ),
  "span not numbers": (
    MAIN,
    [*SAMPLE, "--task=edit", "--text=hi", "--audio={tmp}/in.wav", "--span=a,b"],
    "flag error: --span=a,b: give START,END in seconds",
  ),
  # Output names stay inside --out, from a flag or from a job file.
  "name flag with directories": (
    MAIN,
    [*SAMPLE, "--task=tts", "--text=hi", "--name=../../x"],
    "input error: --task=tts: name='../../x' must be a plain file name",
  ),
  "job name with directories": (
    MAIN,
    [*SAMPLE, "--jobs={tmp}/jobs.json"],
    "input error: {tmp}/jobs.json job 1: name='/abs/path' must be a plain file name",
  ),
  "hostile face model": (
    RENDER,
    ["--motion={tmp}/talk.npz", "--face_model={tmp}/generic_model.pkl"],
    "input error: {tmp}/generic_model.pkl: the pickle references posix.system",
  ),
  "preprocess into a file": (
    PREPROCESS,
    ["--out={tmp}/file", "--audio_dir={tmp}", "--motion_dir={tmp}"],
    "preprocess: --out={tmp}/file is a file",
  ),
}


class _RunsCode:
  """Pickles as a call of os.system: what a hostile model or checkpoint file holds."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  """Starts every CLI_CASES command line, as many at a time as there are CPUs (they are start-up
  bound); yields (folder, {id: future CompletedProcess})."""
  tmp = tmp_path_factory.mktemp("cli")
  (tmp / "in.wav").write_bytes(b"")
  (tmp / "file").write_text("")
  (tmp / "jobs.json").write_text(
    json.dumps([{"task": "tts", "text": "hi"}, {"task": "tts", "text": "hi", "name": "/abs/path"}])
  )
  (tmp / "generic_model.pkl").write_bytes(pickle.dumps({"v_template": _RunsCode(tmp / "pwned")}, protocol=2))
  np.savez(tmp / "talk.npz", motion=np.zeros((5, 61), np.float32), fps=25.0)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    yield (
      tmp,
      {
        case: pool.submit(
          subprocess.run,
          [sys.executable, "-m", module, *(a.format(tmp=tmp) for a in args)],
          capture_output=True,
          text=True,
          timeout=300,
          env=env,
        )
        for case, (module, args, _) in CLI_CASES.items()
      },
    )


@pytest.mark.parametrize("case", CLI_CASES)
def test_command_line_fails_in_one_line(cli, case):
  tmp, runs = cli
  proc = runs[case].result()
  assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(CLI_CASES[case][2].format(tmp=tmp)), proc.stderr[-3000:]
  assert not (tmp / "pwned").exists() and not (tmp.parent / "x.wav").exists() and not (tmp / "out").exists()


# ---- config values: one table of ranges -----------------------------------------------------------


@pytest.mark.parametrize(
  "key, value, message",
  [
    ("train.batch_size", 0, "train.batch_size=0 must be >= 1"),
    ("train.num_steps", -1, "train.num_steps=-1 must be >= 0"),
    ("checkpoint.every_steps", 0, "checkpoint.every_steps=0 must be >= 1"),  # was a ZeroDivisionError
    ("optim.learning_rate", -1e-3, "optim.learning_rate=-0.001 must be > 0"),  # trained with it
    ("optim.learning_rate", float("nan"), "optim.learning_rate=nan must be > 0"),
    ("flow.drop_text", 1.5, "flow.drop_text=1.5 must be in [0, 1]"),
    ("model.conv_pos_groups", 0, "model.conv_pos_groups=0 must be >= 1"),  # was a ZeroDivisionError
  ],
)
def test_values_out_of_range(key, value, message):
  config = get_config("tiny")
  section, name = key.split(".")
  config[section][name] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate(config)


def test_tiny_on_the_builtin_corpus_names_the_flag_it_needs(tmp_path):
  # A small built-in corpus in a cache of its own: like the full one, longer than tiny's 48 frames.
  config = get_config("tiny")
  config.data.corpus.cache_dir, config.data.corpus.num_utterances = str(tmp_path), 12
  with pytest.raises(ConfigError, match=r"0 of \d+ records .* set --config\.data\.max_mel_frames=\d+ or more"):
    pipeline.make_iterator(*pipeline.open_source(config), config)


# ---- corpus.json --------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "content, message",
  [
    ("{not json", "not readable JSON"),
    ("[1, 2]", "holds a JSON list, not the corpus description"),
    (None, "needs a 'motion' object"),  # a real corpus.json without it
  ],
)
def test_bad_corpus_json(tmp_path, content, message):
  metadata = write_random_corpus(tmp_path / "good", 8).metadata
  content = json.dumps({k: v for k, v in metadata.items() if k != "motion"}) if content is None else content
  path = tmp_path / shards.METADATA_FILE
  path.write_text(content)
  with pytest.raises(shards.BadRecordError, match=re.escape(f"{path}: {message}")):  # main: "data error: ..."
    shards.Corpus(tmp_path)


# ---- sampling inputs ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def params():
  """Weights of the tiny model (zeros): every input here is refused before the model runs."""
  config = get_config("tiny")
  abstract = model_lib.abstract_params(config, sharding.single_device_mesh(config))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)


@pytest.mark.parametrize(
  "write, message",
  [
    (lambda p: p.write_bytes(b""), "cannot read audio"),
    (lambda p: p.write_text("not audio"), "cannot read audio"),
    (lambda p: soundfile.write(p, np.full(4800, np.nan, np.float32), 24000, subtype="FLOAT"), "NaN or infinite"),
    (lambda p: soundfile.write(p, np.full(4800, np.inf, np.float32), 24000, subtype="FLOAT"), "NaN or infinite"),
  ],
)
def test_bad_wavs(params, tmp_path, write, message):
  pipe = generate.Pipeline(get_config("tiny"), params)
  write(tmp_path / "in.wav")
  with pytest.raises(generate.InputError, match=rf"^job 0: audio .*in\.wav.*{message}"):
    generate.run_job(pipe, {"task": "a2m", "audio": str(tmp_path / "in.wav")}, where="job 0")


@pytest.mark.parametrize(
  "job, message",
  [
    ({"task": "tts", "text": "hi", "seed": "abc"}, "seed='abc' must be an integer >= 0"),
    ({"task": "tts", "text": "hi", "duration": "long"}, "duration='long' must be a positive number"),
    ({"task": "tts", "text": 12345}, "text=12345 must be a string"),
    ({"task": "tts", "text": "hi", "duration": -1}, "duration=-1 must be a positive number"),
    ({"task": "edit", "audio": "a.wav", "text": "hi", "span": [0, "a"]}, "span=[0, 'a'] must be [START, END]"),
    *[
      ({"task": "tts", "text": "hi", "name": name}, f"name={name!r} must be a plain file name")
      for name in ("/abs/path", "../../x", "..", "")
    ],
  ],
)
def test_bad_job_values(job, message):
  with pytest.raises(generate.InputError, match=re.escape(f"jobs.json job 2: {message}")):
    generate.check_job(job, where="jobs.json job 2")


def test_hostile_vocoder_and_face_files_are_config_errors(params, tmp_path):
  marker = tmp_path / "pwned"
  config = get_config("tiny")
  config.sample.vocoder = str(tmp_path / "vocos.bin")
  write_zip_with_pickle(config.sample.vocoder, pickle.dumps({"w": _RunsCode(marker)}, protocol=2))
  with pytest.raises(ConfigError, match=re.escape(f"sample.vocoder='{config.sample.vocoder}': ") + ".*system"):
    generate.Pipeline(config, params)
  config.render.face_model = str(tmp_path / "generic_model.pkl")
  with open(config.render.face_model, "wb") as f:
    pickle.dump({"v_template": _RunsCode(marker)}, f, protocol=2)
  with pytest.raises(
    ConfigError,
    match=re.escape(
      f"render.face_model='{config.render.face_model}': {config.render.face_model}: the pickle references"
    ),
  ):
    face.load_configured_face(config)
  assert not marker.exists()
