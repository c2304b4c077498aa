"""F5-TTS initialisation: names and shapes of F5TTS_v1_Base / F5TTS_Base, numerics against an
independent numpy transcription of F5-TTS's DiT forward, error reports, the vocab tokenizer, and
train.init_from end to end."""

import math

import jax
import numpy as np
import pytest
from flax import nnx
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf

from configs.base import get_config
from data_pipelines import pipeline
from data_pipelines.shards import BadRecordError
from data_pipelines.synthetic import SyntheticBatches
from jamflow_jax import checkpoint as checkpoint_lib, model as model_lib, sharding, text as text_lib, train
from jamflow_jax.config import ConfigError, motion_frames, validate
from jamflow_jax.model import f5tts, layer_stack

from checkpoint_files import write_safetensors
from conftest import write_random_corpus

# --- F5-TTS's DiT as written in SWivid/F5-TTS (model/backbones/dit.py, model/modules.py) -------------


def _f5_shapes(
  *,
  dim,
  depth,
  heads,
  dim_head,
  ff_mult,
  mel_dim,
  text_dim,
  text_num_embeds,
  conv_layers,
  freq_dim=256,
  kernel=31,
  groups=16,
):
  """{DiT.state_dict() name: shape} of F5-TTS's DiT (torch Linear [out, in], Conv1d [out, in/groups, k])."""
  inner, ff = heads * dim_head, dim * ff_mult
  s = {
    "time_embed.time_mlp.0.weight": (dim, freq_dim),
    "time_embed.time_mlp.0.bias": (dim,),
    "time_embed.time_mlp.2.weight": (dim, dim),
    "time_embed.time_mlp.2.bias": (dim,),
    "text_embed.text_embed.weight": (text_num_embeds + 1, text_dim),
    "input_embed.proj.weight": (dim, 2 * mel_dim + text_dim),
    "input_embed.proj.bias": (dim,),
    "norm_out.linear.weight": (2 * dim, dim),
    "norm_out.linear.bias": (2 * dim,),
    "proj_out.weight": (mel_dim, dim),
    "proj_out.bias": (mel_dim,),
  }
  for i in (0, 2):
    s[f"input_embed.conv_pos_embed.conv1d.{i}.weight"] = (dim, dim // groups, kernel)
    s[f"input_embed.conv_pos_embed.conv1d.{i}.bias"] = (dim,)
  for i in range(conv_layers):
    p = f"text_embed.text_blocks.{i}."
    s.update(
      {
        p + "dwconv.weight": (text_dim, 1, 7),
        p + "dwconv.bias": (text_dim,),
        p + "norm.weight": (text_dim,),
        p + "norm.bias": (text_dim,),
        p + "pwconv1.weight": (2 * text_dim, text_dim),
        p + "pwconv1.bias": (2 * text_dim,),
        p + "grn.gamma": (1, 1, 2 * text_dim),
        p + "grn.beta": (1, 1, 2 * text_dim),
        p + "pwconv2.weight": (text_dim, 2 * text_dim),
        p + "pwconv2.bias": (text_dim,),
      }
    )
  for i in range(depth):
    p = f"transformer_blocks.{i}."
    s.update(
      {
        p + "attn_norm.linear.weight": (6 * dim, dim),
        p + "attn_norm.linear.bias": (6 * dim,),
        p + "attn.to_out.0.weight": (dim, inner),
        p + "attn.to_out.0.bias": (dim,),
        p + "ff.ff.0.0.weight": (ff, dim),
        p + "ff.ff.0.0.bias": (ff,),
        p + "ff.ff.2.weight": (dim, ff),
        p + "ff.ff.2.bias": (dim,),
      }
    )
    for c in "qkv":
      s.update({p + f"attn.to_{c}.weight": (inner, dim), p + f"attn.to_{c}.bias": (inner,)})
  return s


def _inv_freq(dim_head, theta=10000.0):
  return (1.0 / theta ** (np.arange(0, dim_head, 2) / dim_head)).astype(np.float32)


def _linear(sd, name, x):
  return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _layer_norm(x, weight=None, bias=None, eps=1e-6):
  x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
  return x if weight is None else x * weight + bias


def _conv1d(x, weight, bias, groups):
  """torch Conv1d(padding=k//2) over x [B, N, C] (channels last here), weight [out, in/groups, k]."""
  k = weight.shape[-1]
  windows = sliding_window_view(np.pad(x, ((0, 0), (k // 2, k // 2), (0, 0))), k, axis=1)  # [B, N, C, k]
  b, n = windows.shape[:2]
  windows = windows.reshape(b, n, groups, weight.shape[1], k)
  w = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], k)
  return np.einsum("bngik,goik->bngo", windows, w).reshape(b, n, -1) + bias


def _rotate(t, freqs):
  """x_transformers (>= 1.30) apply_rotary_pos_emb: freqs repeated per pair, rotate_half interleaved."""
  pairs = t.reshape(*t.shape[:-1], -1, 2)
  rotated = np.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(t.shape)
  return t * np.cos(freqs) + rotated * np.sin(freqs)


def _f5_text_embed(sd, ids, mask_padding, drop_text=False):
  """TextEmbedding.forward on ids that are already F5's `text + 1`, filler-padded to the mel length.

  drop_text: the CFG null, as dit.py computes it (the padding mask first, then the ids zeroed)."""
  filler = (ids == 0)[..., None]
  if drop_text:
    ids = np.zeros_like(ids)
  x = sd["text_embed.text_embed.weight"][ids]
  d, n = x.shape[-1], ids.shape[1]
  freqs = 1.0 / 10000.0 ** (np.arange(0, d, 2)[: d // 2] / d)
  arg = np.outer(np.arange(n), freqs)
  x = x + np.concatenate([np.cos(arg), np.sin(arg)], axis=-1)
  if mask_padding:
    x = np.where(filler, 0.0, x)
  i = 0
  while f"text_embed.text_blocks.{i}.dwconv.weight" in sd:
    p = f"text_embed.text_blocks.{i}."
    h = _conv1d(x, sd[p + "dwconv.weight"], sd[p + "dwconv.bias"], groups=d)
    h = _layer_norm(h, sd[p + "norm.weight"], sd[p + "norm.bias"])
    h = _linear(sd, p + "pwconv1", h)
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))  # nn.GELU()
    gx = np.sqrt(np.sum(h**2, axis=1, keepdims=True))
    h = sd[p + "grn.gamma"] * (h * gx / (gx.mean(-1, keepdims=True) + 1e-6)) + sd[p + "grn.beta"] + h
    x = x + _linear(sd, p + "pwconv2", h)
    if mask_padding:
      x = np.where(filler, 0.0, x)
    i += 1
  return x


def _f5_dit(
  sd,
  x,
  cond,
  ids,
  t,
  *,
  heads,
  pe_attn_head,
  mask_padding,
  drop_text=False,
  drop_audio_cond=False,
  valid=None,
  mask=None,
):
  """DiT.forward(x, cond, text, time, drop_audio_cond, drop_text): the velocity [B, N, mel_dim].

  mask bool [B, N]: F5's `mask` argument to F5TTS_v1_Base (attn_mask_enabled False): keys are not
  masked, ConvPositionEmbedding is, and the padded queries' attention outputs are zeroed. valid
  bool [B, N]: padding masked everywhere F5's modules can mask it (attention keys too)."""
  if drop_audio_cond:
    cond = np.zeros_like(cond)
  silu = lambda a: a / (1 + np.exp(-a))
  half = sd["time_embed.time_mlp.0.weight"].shape[1] // 2
  arg = 1000 * t[:, None] * np.exp(np.arange(half) * -(math.log(10000) / (half - 1)))[None]
  temb = np.concatenate([np.sin(arg), np.cos(arg)], axis=-1)
  temb = _linear(sd, "time_embed.time_mlp.2", silu(_linear(sd, "time_embed.time_mlp.0", temb)))

  text = _f5_text_embed(sd, ids, mask_padding, drop_text)
  h = _linear(sd, "input_embed.proj", np.concatenate([x, cond, text], axis=-1))
  mish = lambda a: a * np.tanh(np.log1p(np.exp(a)))
  conv = "input_embed.conv_pos_embed.conv1d."
  conv_mask = valid if valid is not None else mask  # F5 masks its position convolution given either
  keep = np.ones(h.shape[:2] + (1,)) if conv_mask is None else conv_mask[..., None]
  pos = mish(_conv1d(h * keep, sd[conv + "0.weight"], sd[conv + "0.bias"], groups=16))
  h = h + keep * mish(_conv1d(pos * keep, sd[conv + "2.weight"], sd[conv + "2.bias"], groups=16))

  b, n, _ = h.shape
  dh = sd["transformer_blocks.0.attn.to_q.weight"].shape[0] // heads
  freqs = np.outer(np.arange(n), _inv_freq(dh).astype(np.float64))
  freqs = np.stack([freqs, freqs], axis=-1).reshape(n, dh)
  pn = heads if pe_attn_head is None else pe_attn_head
  i = 0
  while f"transformer_blocks.{i}.attn_norm.linear.weight" in sd:
    p = f"transformer_blocks.{i}."
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = np.split(
      _linear(sd, p + "attn_norm.linear", silu(temb))[:, None], 6, axis=-1
    )
    a = _layer_norm(h) * (1 + scale_msa) + shift_msa
    q, k, v = (_linear(sd, p + f"attn.to_{c}", a).reshape(b, n, heads, dh).transpose(0, 2, 1, 3) for c in "qkv")
    q[:, :pn], k[:, :pn] = _rotate(q[:, :pn], freqs), _rotate(k[:, :pn], freqs)
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    if valid is not None:
      logits = np.where(valid[:, None, None, :], logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    o = (weights / weights.sum(-1, keepdims=True)) @ v
    o = _linear(sd, p + "attn.to_out.0", o.transpose(0, 2, 1, 3).reshape(b, n, heads * dh))
    h = h + gate_msa * (o if mask is None else np.where(mask[..., None], o, 0.0))
    f = _layer_norm(h) * (1 + scale_mlp) + shift_mlp
    f = _linear(sd, p + "ff.ff.0.0", f)
    f = 0.5 * f * (1 + np.tanh(math.sqrt(2 / math.pi) * (f + 0.044715 * f**3)))  # GELU(approximate="tanh")
    h = h + gate_mlp * _linear(sd, p + "ff.ff.2", f)
    i += 1
  scale, shift = np.split(_linear(sd, "norm_out.linear", silu(temb))[:, None], 2, axis=-1)
  return _linear(sd, "proj_out", _layer_norm(h) * (1 + scale) + shift)


# --- helpers ---------------------------------------------------------------------------------------


def _small_config(layout="v1"):
  """tiny with the F5 settings of `layout`, at shapes no F5 checkpoint has (the conversion is generic)."""
  config = get_config("tiny")
  m = config.model
  m.qk_norm = False
  m.mel_dim, m.text_vocab_size, m.text_conv_layers = 12, 30, 2
  m.rope_heads, m.text_mask_padding = (0, True) if layout == "v1" else (1, False)
  m.text_null = "f5" if layout == "v1" else "filler"
  config.train.init_layout = layout
  return config


def _small_shapes(config):
  m = config.model
  return _f5_shapes(
    dim=m.audio_width,
    depth=m.depth,
    heads=m.heads,
    dim_head=m.head_dim,
    ff_mult=m.ff_mult,
    mel_dim=m.mel_dim,
    text_dim=m.text_dim,
    text_num_embeds=m.text_vocab_size - 1,
    conv_layers=m.text_conv_layers,
    freq_dim=m.time_freq_dim,
  )


def _random_state_dict(shapes, seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for name, shape in shapes.items():
    fan_in = math.prod(shape[1:]) if len(shape) > 1 and "grn" not in name else 1
    scale = 1.0 if "text_embed.weight" in name else 0.3 if len(shape) == 1 or "grn" in name else 1 / math.sqrt(fan_in)
    sd[name] = (rng.normal(size=shape) * scale).astype(np.float32)
  return sd


def _write_vocab(path, tokens):
  path.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
  return str(path)


# --- tests -----------------------------------------------------------------------------------------


def test_every_f5tts_v1_base_tensor_maps_onto_the_f5_preset():
  config = get_config("f5")
  abstract = model_lib.abstract_params(config)
  shapes = _f5_shapes(
    dim=1024, depth=22, heads=16, dim_head=64, ff_mult=2, mel_dim=100, text_dim=512, text_num_embeds=2545, conv_layers=4
  )
  # Shapes only: zero-stride views, nothing of F5's size is allocated but the (scale, shift) swap.
  state_dict = {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}
  state_dict["rotary_embed.inv_freq"] = _inv_freq(64)
  tree = f5tts.convert(state_dict, abstract, config)
  converted = dict(f5tts._leaves(tree))
  audio = {path: leaf for path, leaf in f5tts._leaves(abstract) if f5tts.is_audio_stream(path)}
  assert converted.keys() == audio.keys()
  # Every F5 tensor used once (one per layer: counted unrolled), every audio-stream leaf filled.
  assert config.model.scan_layers and len(jax.tree.leaves(layer_stack.convert_for(tree, config, scanned=False))) == len(
    shapes
  )
  assert all(converted[p].shape == audio[p].shape and converted[p].dtype == audio[p].dtype for p in audio)
  rest = [p for p, _ in f5tts._leaves(abstract) if p not in audio]
  assert rest and all(p[0].startswith("motion") or "motion" in p[:4] for p in rest)
  n = sum(math.prod(s) for s in shapes.values())
  assert model_lib.count_params(converted) == n and 330e6 < n < 340e6, n  # F5-TTS Base: ~336M


def _f5_case(config, seed=2):
  """A random batch of 2 (transcripts of 30 and 11 ids) as (x, cond, ids, t) for both models."""
  m = config.model
  b, ta = 2, config.data.max_mel_frames
  rng = np.random.default_rng(seed)
  x, cond = rng.normal(size=(2, b, ta, m.mel_dim)).astype(np.float32)
  text = np.zeros((b, ta), np.int32)
  for row, length in enumerate((30, 11)):
    text[row, :length] = rng.integers(1, m.text_vocab_size, size=length)
  return x, cond, text, np.array([0.3, 0.85], np.float32)


def _our_velocity(config, state_dict, x, cond, text, t, *, text_given=True, valid=None):
  """Our audio velocity [B, Ta, mel_dim] with the audio stream converted from `state_dict`."""
  m = config.model
  b, ta = text.shape
  tm = motion_frames(config, ta)
  inputs = model_lib.FlowInputs(
    audio_xt=x,
    audio_cond=cond,
    text=text,
    text_given=np.full(b, text_given),
    audio_valid=np.ones((b, ta), bool) if valid is None else valid,
    motion_xt=np.zeros((b, tm, m.motion_dim), np.float32),
    motion_cond=np.zeros((b, tm, m.motion_dim), np.float32),
    motion_valid=np.zeros((b, tm), bool),
    t=t,
  )
  with sharding.use_mesh(sharding.single_device_mesh(config), config):
    model = model_lib.create(config)
    params = nnx.state(model, nnx.Param)
    converted = f5tts.convert(state_dict, nnx.to_pure_dict(params), config)
    nnx.replace_by_pure_dict(params, f5tts.merge_params(nnx.to_pure_dict(params), converted))
    nnx.update(model, params)
    va, _ = nnx.jit(lambda model, inputs: model(inputs))(model, jax.tree.map(jax.numpy.asarray, inputs))
  return np.asarray(va)


@pytest.mark.parametrize("layout", ["v1", "base"])
def test_audio_velocity_matches_f5tts_dit(layout):
  config = _small_config(layout)
  state_dict = _random_state_dict(_small_shapes(config), seed=1)
  x, cond, text, t = _f5_case(config)
  va = _our_velocity(config, state_dict, x, cond, text, t)

  f64 = {k: v.astype(np.float64) for k, v in state_dict.items()}
  kwargs = dict(heads=config.model.heads, pe_attn_head=None if layout == "v1" else 1, mask_padding=layout == "v1")
  want = _f5_dit(f64, x.astype(np.float64), cond.astype(np.float64), text, t.astype(np.float64), **kwargs)
  np.testing.assert_allclose(va, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  # The two layouts really differ, so matching one is not matching both.
  other = dict(kwargs, pe_attn_head=1 if layout == "v1" else None, mask_padding=layout != "v1")
  assert np.abs(_f5_dit(f64, x, cond, text, t, **other) - want).max() > 1e-2 * np.abs(want).max()


@pytest.mark.parametrize("null", ["f5", "filler"])
def test_null_condition_of_the_f5_layout(null):
  """Text and audio prompt withheld (F5-TTS's CFG null): model.text_null=f5 is F5's dit.py exactly;
  filler (ours) zeroes every text position instead, which F5 computes for an empty transcript."""
  config = _small_config("v1")
  config.model.text_null = null
  state_dict = _random_state_dict(_small_shapes(config), seed=3)
  x, cond, text, t = _f5_case(config)
  va = _our_velocity(config, state_dict, x, np.zeros_like(cond), text, t, text_given=False)

  f64 = {k: v.astype(np.float64) for k, v in state_dict.items()}
  f5 = lambda ids: _f5_dit(
    f64,
    x,
    cond,
    ids,
    t,
    heads=config.model.heads,
    pe_attn_head=None,
    mask_padding=True,
    drop_text=True,
    drop_audio_cond=True,
  )
  want, empty = f5(text), f5(np.zeros_like(text))
  scale = np.abs(want).max()
  assert np.abs(want - empty).max() > 1e-2 * scale  # the two nulls really differ
  np.testing.assert_allclose(va, want if null == "f5" else empty, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("attend_padding", [False, True])
def test_padded_batches(attend_padding):
  """Ours masks padded frames in attention and the convolutional positions; F5TTS_v1_Base given its
  mask (attn_mask_enabled False) masks only the latter: its valid frames attend to the padded ones,
  whose attention outputs it zeroes. model.attend_padding reproduces that.
  In both the text encoder's GRN sums over the padded length, as in F5-TTS."""
  config = _small_config("v1")
  config.model.attend_padding = attend_padding
  state_dict = _random_state_dict(_small_shapes(config), seed=4)
  x, cond, text, t = _f5_case(config)
  n = 20  # the second example: 20 valid frames (its transcript has 11 ids)
  valid = np.ones(text.shape, bool)
  valid[1, n:] = False
  va = _our_velocity(config, state_dict, x, cond, text, t, valid=valid)

  f64 = {k: v.astype(np.float64) for k, v in state_dict.items()}
  f5 = lambda *a, **k: _f5_dit(f64, *a, heads=config.model.heads, pe_attn_head=None, mask_padding=True, **k)
  unmasked, masked = f5(x, cond, text, t, mask=valid)[1, :n], f5(x, cond, text, t, valid=valid)[1, :n]
  scale = np.abs(masked).max()
  assert np.abs(unmasked - masked).max() > 1e-2 * scale
  np.testing.assert_allclose(va[1, :n], unmasked if attend_padding else masked, rtol=1e-4, atol=1e-4 * scale)


def test_mismatches_are_reported_by_name_all_at_once():
  config = _small_config()
  state_dict = _random_state_dict(_small_shapes(config))
  del state_dict["transformer_blocks.1.attn.to_k.bias"]
  state_dict["transformer_blocks.2.ff.ff.2.weight"] = np.zeros((32, 64), np.float32)  # depth is 2
  state_dict["long_skip_connection.weight"] = np.zeros((32, 64), np.float32)
  state_dict["proj_out.weight"] = np.zeros((100, 32), np.float32)  # mel_dim is 12
  state_dict["rotary_embed.inv_freq"] = _inv_freq(32)  # head_dim is 16
  config.model.qk_norm = True
  abstract = model_lib.abstract_params(config)
  with pytest.raises(f5tts.F5ConversionError) as e:
    f5tts.convert(state_dict, abstract, config)
  message = str(e.value)
  for part in (
    "missing (5)",
    "transformer_blocks.1.attn.to_k.bias (for layers/1/audio/k/bias [2, 16])",
    "layers/0/audio/q_norm/scale [16]: no F5-TTS counterpart (F5-TTS has no qk-norm",
    "unexpected (2)",
    "long_skip_connection.weight",
    "transformer_blocks.2.ff.ff.2.weight",
    "shape mismatch (2)",
    "proj_out.weight [100, 32]: audio_head/proj/kernel [32, 12] needs [12, 32]",
    "rotary_embed.inv_freq [16]: RoPE frequencies other than those of model.head_dim=16",
  ):
    assert part in message, message
  assert isinstance(e.value, ConfigError)  # main reports it as a config error


def test_load_f5_checkpoint_takes_the_ema_dit_and_drops_bookkeeping(tmp_path):
  sd = {"transformer.proj_out.bias": np.arange(3, dtype=np.float32)}
  write_safetensors(
    tmp_path / "model.safetensors",
    {
      **{f"ema_model.{k}": v for k, v in sd.items()},
      "initted": np.ones(()),
      "step": np.ones(()),
      "ema_model.mel_spec.mel_stft.mel_scale.fb": np.zeros((4, 2)),
      "ema_model.transformer.rotary_embed.inv_freq": _inv_freq(4),
    },
  )
  loaded = f5tts.load_f5_checkpoint(str(tmp_path / "model.safetensors"))
  assert sorted(loaded) == ["proj_out.bias", "rotary_embed.inv_freq"]
  np.testing.assert_array_equal(loaded["proj_out.bias"], sd["transformer.proj_out.bias"])


def test_vocab_tokenizer(tmp_path):
  path = _write_vocab(tmp_path / "vocab.txt", [" ", "a", "b", ",", "ni3", "é", "'"])
  config = get_config("tiny")
  config.model.text_vocab = path
  tok = text_lib.tokenizer(config)
  assert tok.vocab_size == 8  # 7 tokens + the filler
  # ids are line index + 1; NFC composes e + U+0301; typographic quotes become ASCII.
  np.testing.assert_array_equal(tok.encode("ab,  a\u2019 e\u0301"), [2, 3, 4, 1, 2, 7, 1, 6])
  with pytest.raises(
    text_lib.TextError,
    match=r"utt-7: character 'n' \(U\+006E\) at position 2 of 'a ni3' "
    r"is outside the vocabulary \(.*vocab.txt\)",
  ):
    tok.encode("a ni3", where="utt-7")  # characters, not pinyin syllables
  with pytest.raises(text_lib.TextError, match="utt-8: empty transcript"):
    tok.encode(" \n", where="utt-8")
  assert isinstance(text_lib.tokenizer(get_config("tiny")), text_lib.Latin1Tokenizer)


def test_vocab_config_checks(tmp_path):
  config = get_config("f5")
  with pytest.raises(ConfigError, match="preset 'f5' needs model.text_vocab: pass --config.model.text_vocab="):
    validate(config, 8)
  config.model.text_vocab = str(tmp_path / "none.txt")
  with pytest.raises(ConfigError, match="model.text_vocab=.*none.txt': no such file"):
    validate(config, 8)
  config.model.text_vocab = _write_vocab(tmp_path / "vocab.txt", [f"t{i}" for i in range(2545)])
  validate(config, 8)
  config.model.text_vocab_size = 2545
  with pytest.raises(ConfigError, match=r"model.text_vocab_size=2545 is smaller than the 2546 ids"):
    validate(config, 8)
  config = get_config("tiny")
  config.model.rope_heads = 3
  with pytest.raises(ConfigError, match=r"model.rope_heads=3 must be in \[0, model.heads=2\]"):
    validate(config, 8)


def test_init_layout_checks(tmp_path):
  config = _small_config("base")
  config.model.text_vocab_size = 256
  config.data.source = "synthetic"  # 12 mel bins: no speech corpus has them
  config.train.init_from = str(tmp_path / "missing.safetensors")
  with pytest.raises(ConfigError, match="train.init_from=.*missing.safetensors': no such file"):
    validate(config, 8)
  config.train.init_from = str(tmp_path / "model.safetensors")
  write_safetensors(tmp_path / "model.safetensors", {})
  validate(config, 8)
  config.model.rope_heads, config.model.text_mask_padding, config.model.qk_norm = 0, True, True
  with pytest.raises(
    ConfigError,
    match=r"train.init_layout='base' \(F5TTS_Base\) needs other model settings: "
    r"model.rope_heads=0 \(need 1: head 0 only\); model.text_mask_padding=True "
    r"\(need False\); model.qk_norm=True",
  ):
    validate(config, 8)
  config.train.init_layout = "v2"
  with pytest.raises(ConfigError, match="train.init_layout='v2'; choose v1 or base"):
    validate(config, 8)


def test_pipeline_encodes_with_the_configured_vocab(tmp_path):
  corpus = write_random_corpus(tmp_path / "corpus", num_records=16)  # transcripts "utt {i}."
  config = get_config("tiny")
  config.data.path, config.data.max_mel_frames, config.data.num_buckets = corpus.directory, 64, 1
  config.model.text_vocab = _write_vocab(tmp_path / "vocab.txt", [" ", "u", "t", ".", *"0123456789"])
  source, motion = pipeline.open_source(config)
  loader = pipeline.make_iterator(source, motion, config).loader
  tokenizer = text_lib.tokenizer(config)
  for row, record in zip(loader(0)["text"], loader.records(0)):
    ids = tokenizer.encode(record["text"])
    assert ids[0] == 2 and not row[len(ids) :].any()  # "u" is line 1
    np.testing.assert_array_equal(row[: len(ids)], ids)
  config.model.text_vocab = _write_vocab(tmp_path / "vocab.txt", [" ", "u", "t", "."])  # no digits
  loader = pipeline.make_iterator(source, motion, config).loader
  with pytest.raises(BadRecordError, match=r"character '\d' .* outside the vocabulary .*\(model.text_vocab\)"):
    loader(0)


def test_train_starts_the_audio_stream_from_an_f5_checkpoint(tmp_path):
  config = _small_config()
  config.model.text_vocab_size = 256  # the built-in tokenizer's
  config.data.source = "synthetic"
  config.train.num_steps = 1  # the first step's learning rate is 0 (warmup): the weights stay
  state_dict = _random_state_dict(_small_shapes(config), seed=3)
  write_safetensors(
    tmp_path / "f5.safetensors",
    {
      **{f"ema_model.transformer.{k}": v for k, v in state_dict.items()},
      "initted": np.ones(()),
      "step": np.ones(()),
      "ema_model.transformer.rotary_embed.inv_freq": _inv_freq(config.model.head_dim),
    },
  )
  config.train.init_from = str(tmp_path / "f5.safetensors")
  train.train(config, str(tmp_path / "work"), SyntheticBatches(config))

  trainer = train.Trainer(config, sharding.make_mesh(config))
  state, _ = checkpoint_lib.Checkpointer(str(tmp_path / "work"), config).restore(trainer.abstract_state)
  converted = dict(f5tts._leaves(f5tts.convert(state_dict, trainer.abstract_state.params, config)))
  params, ema = dict(f5tts._leaves(jax.device_get(state.params))), dict(f5tts._leaves(jax.device_get(state.ema_params)))
  for path, value in converted.items():
    np.testing.assert_allclose(params[path], value, rtol=1e-6, atol=1e-7, err_msg=str(path))
    np.testing.assert_allclose(ema[path], value, rtol=1e-6, atol=1e-7, err_msg=str(path))
  fresh = dict(f5tts._leaves(jax.device_get(trainer.init(config.train.seed).params)))
  motion = [p for p in params if not f5tts.is_audio_stream(p)]
  assert motion and all(np.array_equal(params[p], fresh[p]) for p in motion)


@pytest.mark.parametrize("null", ["filler", "f5"])
def test_f5_layout_trains_from_a_fresh_init_with_text_withheld(null):
  """text_mask_padding from a fresh init with every transcript withheld (CFG drop_text 1): under
  model.text_null=filler the text embeds to exact zeros and the zero-initialised biases keep the
  ConvNeXt path at 0, where GRN's norm over time is 0. Its gradient there is 0 (as PyTorch's), not
  sqrt's infinite derivative (0 x inf = NaN in every gradient): the updates stay finite."""
  config = _small_config()
  config.model.text_vocab_size = 256  # the built-in tokenizer's
  config.model.depth, config.model.joint_layers, config.model.text_null = 1, (0,), null
  config.data.source = "synthetic"
  config.flow.drop_text = 1.0
  trainer = train.Trainer(config, sharding.single_device_mesh(config))
  state = trainer.init(config.train.seed)
  batch = trainer.global_batch(SyntheticBatches(config).make_batch(0))
  for _ in range(2):
    state, metrics = trainer.step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and 0 < float(metrics["grad_norm"]) < np.inf
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(state.params)))
