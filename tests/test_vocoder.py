"""Vocoders: Griffin-Lim quality on a synthetic signal, Vocos against a numpy port of the torch
forward, checkpoint mapping and its errors, and the load_vocoder entry."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from jamflow_jax.audio import griffin_lim, mel, vocoder, vocos

from checkpoint_files import write_safetensors, write_torch_zip

SR = 24000


def _signal(seconds=1.5, seed=0):
  """Harmonic tone (140 Hz, 19 partials, 5 Hz vibrato, amplitude swell) + a rising chirp + faint noise."""
  t = np.arange(int(seconds * SR)) / SR
  f0 = 140 * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
  phase = 2 * np.pi * np.cumsum(f0) / SR
  tone = sum(0.3 / k * np.sin(k * phase) for k in range(1, 20)) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t) ** 2)
  chirp = 0.2 * np.sin(2 * np.pi * (300 * t + 1200 * t**2))
  noise = 0.003 * np.random.default_rng(seed).standard_normal(t.size)
  return (tone + chirp + noise).astype(np.float32)


def _magnitude(wav):
  return np.abs(np.asarray(griffin_lim.stft(jnp.asarray(wav))))


def _spectral_convergence(wav, reference):
  s, s_hat = _magnitude(reference), _magnitude(wav[: reference.size])
  return float(np.linalg.norm(s - s_hat) / np.linalg.norm(s))


# ---------------------------------------------------------------------------------------------
# Griffin-Lim


def test_stft_pair_matches_mel_and_inverts():
  x = _signal(0.5)
  spec = griffin_lim.stft(jnp.asarray(x))
  ours = np.log(np.maximum(np.abs(np.asarray(spec)) @ mel.mel_filterbank(), mel.LOG_FLOOR))
  np.testing.assert_allclose(ours, mel.log_mel(x), atol=1e-4)
  back = griffin_lim.istft(spec, start=mel.N_FFT // 2, length=x.size)
  np.testing.assert_allclose(np.asarray(back), x, atol=1e-5)


def test_mel_to_linear_fits_the_mel():
  log_mel = mel.log_mel(_signal())
  linear = np.asarray(griffin_lim.mel_to_linear(jnp.asarray(log_mel)))
  assert linear.shape == (log_mel.shape[0], 513) and linear.min() >= 0
  refit = np.log(np.maximum(linear @ mel.mel_filterbank(), mel.LOG_FLOOR))
  assert np.abs(refit - log_mel).mean() < 1e-3  # measured 9e-5 nats


def test_griffin_lim_reconstructs_the_spectrogram():
  x = _signal()
  log_mel = mel.log_mel(x)
  frames = log_mel.shape[0]
  run = jax.jit(griffin_lim.griffin_lim, static_argnames=("num_iters",))
  y = np.asarray(run(log_mel, num_iters=64, seed=0))
  assert y.shape == (frames * 256,) and y.dtype == np.float32
  # Measured (1.5 s, 141 frames): 0.208 (seed 0) / 0.208 (seed 1). The floor is the mel's own
  # information loss: the NNLS linear magnitude itself is 0.195 from the true one. Random phase
  # without iterations: 0.66.
  converged = _spectral_convergence(y, x)
  random_phase = _spectral_convergence(np.asarray(run(log_mel, num_iters=0, seed=0)), x)
  assert converged < 0.25 and random_phase > 0.55
  # Log-mel MAE of the resynthesis, measured 0.094 nats (random phase: 0.77).
  assert np.abs(mel.log_mel(y[: x.size]) - log_mel).mean() < 0.15

  again = np.asarray(run(log_mel, num_iters=64, seed=0))
  np.testing.assert_array_equal(again, y)
  other_seed = np.asarray(run(log_mel, num_iters=64, seed=1))
  assert not np.array_equal(other_seed, y) and _spectral_convergence(other_seed, x) < 0.25


def test_griffin_lim_batch_shapes_and_bad_input():
  log_mel = np.stack([mel.log_mel(_signal(0.3, seed)) for seed in (0, 1)])
  y = np.asarray(griffin_lim.griffin_lim(log_mel, num_iters=2))
  assert y.shape == (2, log_mel.shape[1] * 256) and y.dtype == np.float32 and np.isfinite(y).all()
  with pytest.raises(ValueError, match="expects log mel"):
    griffin_lim.griffin_lim(np.zeros((10, 80), np.float32))


# ---------------------------------------------------------------------------------------------
# Vocos

MEL_24KHZ = dict(n_mels=100, dim=512, intermediate_dim=1536, num_layers=8)
SMALL = dict(n_mels=100, dim=16, intermediate_dim=24, num_layers=2)


def _state_dict(n_mels, dim, intermediate_dim, num_layers, seed=0, buffers=True):
  """Random weights under the vocos package's state-dict names and shapes."""
  rng = np.random.default_rng(seed)

  def normal(*shape, scale=0.02, mean=0.0):
    return (mean + scale * rng.standard_normal(shape)).astype(np.float32)

  sd = {
    "backbone.embed.weight": normal(dim, n_mels, 7, scale=0.05),
    "backbone.embed.bias": normal(dim),
    "backbone.norm.weight": normal(dim, scale=0.1, mean=1.0),
    "backbone.norm.bias": normal(dim, scale=0.1),
  }
  for i in range(num_layers):
    p = f"backbone.convnext.{i}."
    sd.update(
      {
        p + "dwconv.weight": normal(dim, 1, 7, scale=0.3),
        p + "dwconv.bias": normal(dim),
        p + "norm.weight": normal(dim, scale=0.1, mean=1.0),
        p + "norm.bias": normal(dim, scale=0.1),
        p + "pwconv1.weight": normal(intermediate_dim, dim, scale=0.05),
        p + "pwconv1.bias": normal(intermediate_dim),
        p + "pwconv2.weight": normal(dim, intermediate_dim, scale=0.05),
        p + "pwconv2.bias": normal(dim),
        p + "gamma": normal(dim, scale=0.1, mean=0.5),
      }
    )
  sd.update(
    {
      "backbone.final_layer_norm.weight": normal(dim, scale=0.1, mean=1.0),
      "backbone.final_layer_norm.bias": normal(dim, scale=0.1),
      "head.out.weight": normal(1026, dim, scale=0.03),
      "head.out.bias": normal(1026, scale=0.3),
    }
  )
  if buffers:
    window = mel.hann_window(1024)
    sd.update(
      {
        "head.istft.window": window,
        "feature_extractor.mel_spec.spectrogram.window": window,
        "feature_extractor.mel_spec.mel_scale.fb": mel.mel_filterbank(),
      }
    )
  return sd


def _reference_vocos(sd, log_mel):
  """Vocos's torch forward in float64 numpy, channels-first as torch runs it: [B, T, 100] -> [B, T*256]."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}

  def conv1d(x, weight, bias, depthwise=False):  # x [B, C, T], weight [out, in / groups, 7], padding 3
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (0, 0), (3, 3))), 7, axis=2)
    if depthwise:
      return np.einsum("bctk,ck->bct", windows, weight[:, 0]) + bias[:, None]
    return np.einsum("bctk,ock->bot", windows, weight) + bias[:, None]

  def layer_norm(x, name):  # over the last axis
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * sd[name + ".weight"] + sd[name + ".bias"]

  def linear(x, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]

  x = conv1d(np.transpose(log_mel, (0, 2, 1)), sd["backbone.embed.weight"], sd["backbone.embed.bias"])
  x = np.transpose(layer_norm(np.transpose(x, (0, 2, 1)), "backbone.norm"), (0, 2, 1))
  i = 0
  while f"backbone.convnext.{i}.gamma" in sd:
    p = f"backbone.convnext.{i}"
    h = conv1d(x, sd[p + ".dwconv.weight"], sd[p + ".dwconv.bias"], depthwise=True)
    h = linear(layer_norm(np.transpose(h, (0, 2, 1)), p + ".norm"), p + ".pwconv1")
    h = 0.5 * h * (1 + scipy.special.erf(h / np.sqrt(2)))
    h = sd[p + ".gamma"] * linear(h, p + ".pwconv2")
    x = x + np.transpose(h, (0, 2, 1))
    i += 1
  x = layer_norm(np.transpose(x, (0, 2, 1)), "backbone.final_layer_norm")
  out = np.transpose(linear(x, "head.out"), (0, 2, 1))  # [B, 1026, T]
  magnitude, phase = np.clip(np.exp(out[:, :513]), None, 100.0), out[:, 513:]
  frames = np.fft.irfft(magnitude * (np.cos(phase) + 1j * np.sin(phase)), 1024, axis=1)
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(1024) / 1024)
  count = log_mel.shape[1]
  y, envelope = np.zeros((log_mel.shape[0], (count - 1) * 256 + 1024)), np.zeros((count - 1) * 256 + 1024)
  for t in range(count):  # torch.nn.functional.fold
    y[:, t * 256 : t * 256 + 1024] += frames[:, :, t] * window
    envelope[t * 256 : t * 256 + 1024] += window**2
  return y[:, 384:-384] / envelope[384:-384]


@pytest.fixture(scope="module")
def vocos_files(tmp_path_factory):
  """mel-24khz-sized random weights written as safetensors and as a torch zip (pytorch_model.bin)."""
  directory = tmp_path_factory.mktemp("vocos")
  sd = _state_dict(**MEL_24KHZ)
  write_safetensors(directory / "model.safetensors", sd)
  write_torch_zip(directory / "pytorch_model.bin", sd)
  return sd, directory / "model.safetensors", directory / "pytorch_model.bin"


@functools.lru_cache(maxsize=1)
def _test_mels():
  return np.stack([mel.log_mel(_signal(0.25, seed)) for seed in (0, 1)])  # [2, 24, 100]


def test_vocos_matches_numpy_reference(vocos_files):
  sd, safetensors_path, torch_path = vocos_files
  model = vocos.Vocos.from_checkpoint(safetensors_path)
  params = nnx.state(model, nnx.Param)
  assert len(jax.tree.leaves(params)) == len(sd) - len(vocos.IGNORED_BUFFERS) == 80
  assert sum(x.size for x in jax.tree.leaves(params)) == sum(
    v.size for k, v in sd.items() if k not in vocos.IGNORED_BUFFERS
  )

  log_mel = _test_mels()
  wav = np.asarray(model(jnp.asarray(log_mel)))
  assert wav.shape == (2, log_mel.shape[1] * 256) and wav.dtype == np.float32
  reference = _reference_vocos(sd, log_mel.astype(np.float64))
  assert np.abs(reference).max() > 0.05  # a non-trivial signal to compare
  np.testing.assert_allclose(wav, reference, atol=1e-5, rtol=0)  # measured 1.8e-7 (peak 0.13)

  from_torch = vocos.Vocos.from_checkpoint(torch_path)
  np.testing.assert_array_equal(np.asarray(from_torch(jnp.asarray(log_mel))), wav)


def test_vocos_checkpoint_errors(tmp_path):
  sd = _state_dict(**SMALL, buffers=False)
  sd["backbone.convnext.1.pwconv1.weight"] = sd["backbone.convnext.1.pwconv1.weight"][:, :8]
  del sd["head.out.bias"]
  sd["backbone.convnext.2.gamma"] = np.zeros(16, np.float32)
  path = tmp_path / "bad.safetensors"
  write_safetensors(path, sd)
  with pytest.raises(vocos.VocoderCheckpointError) as info:
    vocos.Vocos.from_checkpoint(path, **{k: v for k, v in SMALL.items() if k != "n_mels"})
  message = str(info.value)
  assert str(path) in message and "num_layers=2" in message
  assert "backbone.convnext.1.pwconv1.weight: expected [24, 16], got [24, 8]" in message
  assert "missing head.out.bias [1026]" in message
  assert "unexpected backbone.convnext.2.gamma [16]" in message
  assert message.count("\n") == 3  # those three, nothing else

  with pytest.raises(vocos.VocoderCheckpointError, match="missing backbone.convnext.7.gamma"):
    vocos.Vocos.from_checkpoint(path)  # the small file against the mel-24khz sizes
  with pytest.raises(ValueError, match="no such checkpoint file"):
    vocos.Vocos.from_checkpoint(tmp_path / "absent.bin")


def test_torch_names_cover_the_model():
  model = nnx.eval_shape(lambda: vocos.Vocos(rngs=nnx.Rngs(0)))
  names = {vocos.torch_name(path) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert names == set(_state_dict(**MEL_24KHZ, buffers=False))


# ---------------------------------------------------------------------------------------------
# load_vocoder


def test_load_vocoder_griffin_lim():
  vocoder_gl = vocoder.load_vocoder("griffin_lim", num_iters=4)
  assert vocoder_gl.name == "griffin_lim"
  log_mel = _test_mels()
  one = vocoder_gl(log_mel[0])
  assert one.shape == (log_mel.shape[1] * 256,) and one.dtype == np.float32
  np.testing.assert_array_equal(vocoder_gl(log_mel[0]), one)
  assert vocoder_gl(log_mel).shape == (2, log_mel.shape[1] * 256)
  with pytest.raises(ValueError, match=r"expects log mel \[T, 100\]"):
    vocoder_gl(np.zeros((5, 80)))


def test_window_plan_tiles_the_mel():
  for frames, window, context in [(333, 100, 29), (101, 100, 14), (4097, 4096, 194), (1000, 61, 30)]:
    plan = vocoder.window_plan(frames, window, context)
    assert [p[1] for p in plan] == [0] + [p[2] for p in plan[:-1]] and plan[-1][2] == frames
    for start, keep_start, keep_end in plan:
      assert 0 <= start and start + window <= frames and keep_start < keep_end
      assert keep_start - start >= context or start == 0
      assert start + window - keep_end >= context or start + window == frames
  with pytest.raises(ValueError, match="a window of 58 frames keeps nothing inside 29 context"):
    vocoder.Vocoder("v", lambda log_mel, first_frame: log_mel, context=29, window=58)


@pytest.mark.parametrize("kind", ["griffin_lim", "vocos"])
def test_windowed_vocoding_equals_the_whole_signal(kind, vocos_files):
  """An odd-length mel of five or more windows: windowed (one program) against one whole-signal call."""
  spec, kw = (vocoder.GRIFFIN_LIM, {"num_iters": 8}) if kind == "griffin_lim" else (str(vocos_files[1]), {})
  log_mel = mel.log_mel(_signal(4.0))[:333]
  whole = vocoder.load_vocoder(spec, **kw)  # 333 frames <= WINDOW_FRAMES: one call
  windowed = vocoder.load_vocoder(spec, window=100, **kw)
  assert windowed.context == (26 if kind == "griffin_lim" else 29)
  assert len(vocoder.window_plan(333, 100, windowed.context)) >= 5
  reference, out = whole(log_mel), windowed(log_mel)
  assert out.shape == reference.shape == (333 * 256,) and np.abs(reference).max() > 0.05
  # Measured max |windowed - whole|: 0.0 (Griffin-Lim, peak 0.89, bit for bit) and 1.4e-7 (Vocos, peak 0.13).
  np.testing.assert_allclose(out, reference, atol=1e-6, rtol=0)
  assert windowed.programs == 1  # every window, the last one included, is the same shape
  # The context is what makes it exact: with 6 frames the windows' edges show (measured 0.054 / 0.027).
  short = vocoder.Vocoder(windowed.name, windowed._fn, context=6, window=100)
  assert np.abs(short(log_mel) - reference).max() > 1e-2


def test_load_vocoder_vocos_and_unknown(vocos_files, tmp_path):
  _, safetensors_path, torch_path = vocos_files
  vocoder_vocos = vocoder.load_vocoder(str(torch_path))
  assert vocoder_vocos.name == f"vocos:{torch_path}"
  log_mel = _test_mels()
  wav = vocoder_vocos(log_mel)
  direct = vocos.Vocos.from_checkpoint(safetensors_path)(jnp.asarray(log_mel))
  np.testing.assert_allclose(wav, np.asarray(direct), atol=1e-6)
  np.testing.assert_allclose(vocoder_vocos(log_mel[1]), wav[1], atol=1e-6)  # another shape, another program
  with pytest.raises(ValueError, match="expected 'griffin_lim' or the path of an existing Vocos"):
    vocoder.load_vocoder("hifigan")
  with pytest.raises(ValueError, match="expected 'griffin_lim'"):
    vocoder.load_vocoder(str(tmp_path / "missing.bin"))
