"""F5-TTS checkpoints <-> the audio-stream parameters of JamFlow (JAM-Flow starts its Audio-DiT from
F5-TTS; `to_f5` writes a fine-tuned one back for F5-TTS's own inference).

F5-TTS's DiT (SWivid/F5-TTS, model/backbones/dit.py) and our audio stream are one network under
other names and layouts: torch Linear weights are [out, in] (ours [in, out]), Conv1d weights
[out, in / groups, k] (ours [k, in / groups, out]), q/k/v and the attention output are per-head
Einsums here, and the final adaLN's chunks are (scale, shift) there, (shift, scale) here.

    F5-TTS DiT (under `transformer.`)                  ours
    time_embed.time_mlp.{0,2}                          audio_time.{fc1,fc2}
    text_embed.text_embed                              text.embed
    text_embed.text_blocks.{i}.{dwconv,norm,pwconv1,grn,pwconv2}
                                                       text.blocks.{i}.{dwconv,norm,pw1,grn,pw2}
    input_embed.proj                                   audio_in
    input_embed.conv_pos_embed.conv1d.{0,2}            audio_pos.{conv1,conv2}
    transformer_blocks.{i}.attn_norm.linear            layers.{i}.audio.modulation.proj
    transformer_blocks.{i}.attn.to_{q,k,v}             layers.{i}.audio.{q,k,v}
    transformer_blocks.{i}.attn.to_out.0               layers.{i}.audio.out
    transformer_blocks.{i}.ff.ff.0.0 / .ff.ff.2        layers.{i}.audio.ff.up / .ff.down
    norm_out.linear / proj_out                         audio_head.modulation.proj / audio_head.proj

No size is assumed: each F5 shape expected is derived from our parameter's shape, so a checkpoint
converts into any config of the same architecture and anything else is reported by name. What
shapes cannot show is checked elsewhere: RoPE heads, text padding mask and qk-norm by
`config.validate` against train.init_layout; head_dim and rope_theta here, from F5's
`rotary_embed.inv_freq` buffer when the checkpoint has it.
"""

import re
from typing import Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from jamflow_jax import torch_checkpoint
from jamflow_jax.errors import ConfigError
from jamflow_jax.model import layer_stack

_INV_FREQ = "rotary_embed.inv_freq"  # x_transformers' RoPE buffer: checked, not loaded


class F5ConversionError(ConfigError):
  """A checkpoint that does not fit the audio stream; lists every missing, unexpected and mis-shaped tensor."""


class _Leaf(NamedTuple):
  name: str  # the F5 tensor's last name part
  f5_shape: Callable[[tuple], tuple]  # our shape -> the F5 shape it needs
  to_ours: Callable[[np.ndarray, tuple], np.ndarray]  # (F5 array, our shape) -> our layout
  to_f5: Callable[[np.ndarray], np.ndarray]  # our array -> F5's layout (the inverse)


def _swap_halves(w: np.ndarray) -> np.ndarray:
  half = w.shape[0] // 2
  return np.concatenate([w[half:], w[:half]])


def _same(name: str) -> _Leaf:
  return _Leaf(name, lambda s: s, lambda w, s: w, lambda a: a)


_TRANSPOSED = lambda s: (s[1], s[0])
_KINDS = {
  "linear": {"kernel": _Leaf("weight", _TRANSPOSED, lambda w, s: w.T, lambda a: a.T), "bias": _same("bias")},
  "heads_in": {  # ours [in, heads, head_dim], F5 [heads * head_dim, in]
    "kernel": _Leaf(
      "weight", lambda s: (s[1] * s[2], s[0]), lambda w, s: w.T.reshape(s), lambda a: a.reshape(a.shape[0], -1).T
    ),
    "bias": _Leaf("bias", lambda s: (s[0] * s[1],), lambda w, s: w.reshape(s), lambda a: a.reshape(-1)),
  },
  "heads_out": {  # ours [heads, head_dim, out], F5 [out, heads * head_dim]
    "kernel": _Leaf(
      "weight", lambda s: (s[2], s[0] * s[1]), lambda w, s: w.T.reshape(s), lambda a: a.reshape(-1, a.shape[-1]).T
    ),
    "bias": _same("bias"),
  },
  "conv": {
    "kernel": _Leaf("weight", lambda s: s[::-1], lambda w, s: w.transpose(2, 1, 0), lambda a: a.transpose(2, 1, 0)),
    "bias": _same("bias"),
  },
  "norm": {"scale": _same("weight"), "bias": _same("bias")},
  "embed": {"embedding": _same("weight")},
  "grn": {
    p: _Leaf(p, lambda s: (1, 1, *s), lambda w, s: w.reshape(s), lambda a: a.reshape(1, 1, -1))
    for p in ("gamma", "beta")
  },
  # F5's AdaLayerNorm_Final chunks its output (scale, shift); our StreamHead reads (shift, scale).
  "scale_shift": {
    "kernel": _Leaf("weight", _TRANSPOSED, lambda w, s: _swap_halves(w).T, lambda a: _swap_halves(a.T)),
    "bias": _Leaf("bias", lambda s: s, lambda w, s: _swap_halves(w), _swap_halves),
  },
}

# Our module path ("/"-joined) -> the F5 module ({} filled with the groups), and its kind.
_MODULES = tuple(
  (re.compile(ours), f5, kind)
  for ours, f5, kind in (
    (r"audio_time/fc1", "time_embed.time_mlp.0", "linear"),
    (r"audio_time/fc2", "time_embed.time_mlp.2", "linear"),
    (r"text/embed", "text_embed.text_embed", "embed"),
    (r"text/blocks/(\d+)/dwconv", "text_embed.text_blocks.{}.dwconv", "conv"),
    (r"text/blocks/(\d+)/norm", "text_embed.text_blocks.{}.norm", "norm"),
    (r"text/blocks/(\d+)/pw1", "text_embed.text_blocks.{}.pwconv1", "linear"),
    (r"text/blocks/(\d+)/grn", "text_embed.text_blocks.{}.grn", "grn"),
    (r"text/blocks/(\d+)/pw2", "text_embed.text_blocks.{}.pwconv2", "linear"),
    (r"audio_in", "input_embed.proj", "linear"),
    (r"audio_pos/conv1", "input_embed.conv_pos_embed.conv1d.0", "conv"),
    (r"audio_pos/conv2", "input_embed.conv_pos_embed.conv1d.2", "conv"),
    (r"layers/(\d+)/audio/modulation/proj", "transformer_blocks.{}.attn_norm.linear", "linear"),
    (r"layers/(\d+)/audio/([qkv])", "transformer_blocks.{}.attn.to_{}", "heads_in"),
    (r"layers/(\d+)/audio/out", "transformer_blocks.{}.attn.to_out.0", "heads_out"),
    (r"layers/(\d+)/audio/ff/up", "transformer_blocks.{}.ff.ff.0.0", "linear"),
    (r"layers/(\d+)/audio/ff/down", "transformer_blocks.{}.ff.ff.2", "linear"),
    (r"audio_head/modulation/proj", "norm_out.linear", "scale_shift"),
    (r"audio_head/proj", "proj_out", "linear"),
  )
)


def is_audio_stream(path: tuple) -> bool:
  """Whether a parameter path (either layer layout) belongs to the audio stream (the part F5-TTS initialises)."""
  return (
    path[0] in ("text", "audio_in", "audio_pos", "audio_time", "audio_head")
    or (path[0] == layer_stack.UNROLLED and path[2] == "audio")
    or (path[0] == layer_stack.STACKED and path[3] == "audio")
  )


def _leaves(tree, path=()):
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _leaves(value, (*path, key))
  else:
    yield path, tree


def _f5_counterpart(path: tuple) -> tuple[str, _Leaf] | None:
  module = "/".join(str(p) for p in path[:-1])
  for pattern, f5_module, kind in _MODULES:
    match = pattern.fullmatch(module)
    if match and path[-1] in _KINDS[kind]:
      leaf = _KINDS[kind][path[-1]]
      return f"{f5_module.format(*match.groups())}.{leaf.name}", leaf
  return None


def convert(state_dict: dict[str, np.ndarray], abstract_params, config: ml_collections.ConfigDict) -> dict:
  """F5-TTS DiT tensors -> the audio-stream subtree of our parameter tree.

  state_dict: {name: array} with the DiT's names (`DiT.state_dict()`, no `transformer.` prefix; see
  `load_f5_checkpoint`). abstract_params: our parameter tree (arrays or ShapeDtypeStructs: only
  .shape and .dtype are read), unrolled or scanned. Returns the audio-stream leaves as numpy arrays
  of those dtypes, in a nested dict of the same keys (F5's blocks map onto unrolled layers; stacked
  afterwards for a scanned model). Raises F5ConversionError listing every problem at once.
  """
  scanned = layer_stack.STACKED in abstract_params
  abstract_params = layer_stack.convert_for(abstract_params, config, scanned=False)
  missing, mismatched, converted, used = [], [], {}, set()
  for path, leaf in _leaves(abstract_params):
    if not is_audio_stream(path):
      continue
    ours, shape = "/".join(str(p) for p in path), tuple(leaf.shape)
    counterpart = _f5_counterpart(path)
    if counterpart is None:
      hint = " (F5-TTS has no qk-norm: model.qk_norm=False)" if path[-2] in ("q_norm", "k_norm") else ""
      missing.append(f"{ours} {list(shape)}: no F5-TTS counterpart{hint}")
      continue
    name, rule = counterpart
    if name not in state_dict:
      missing.append(f"{name} (for {ours} {list(shape)})")
      continue
    used.add(name)
    w = state_dict[name]
    if tuple(w.shape) != rule.f5_shape(shape):
      mismatched.append(f"{name} {list(w.shape)}: {ours} {list(shape)} needs {list(rule.f5_shape(shape))}")
      continue
    node = converted
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = np.asarray(rule.to_ours(np.asarray(w), shape)).astype(leaf.dtype, copy=False)
  if _INV_FREQ in state_dict:
    used.add(_INV_FREQ)
    m = config.model
    inv_freq = np.asarray(state_dict[_INV_FREQ], np.float32)
    want = rope_inv_freq(config)
    if inv_freq.shape != want.shape or not np.allclose(inv_freq, want, rtol=1e-3):
      mismatched.append(
        f"{_INV_FREQ} {list(inv_freq.shape)}: RoPE frequencies other than those of "
        f"model.head_dim={m.head_dim}, model.rope_theta={m.rope_theta}"
      )
  unexpected = sorted(set(state_dict) - used)
  if missing or unexpected or mismatched:
    parts = [
      f"{title} ({len(items)}):\n    " + "\n    ".join(items)
      for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
      if items
    ]
    raise F5ConversionError(
      "the F5-TTS checkpoint does not fit the audio stream of this config (model.*):\n  " + "\n  ".join(parts)
    )
  return layer_stack.convert_for(converted, config, scanned=scanned)


def rope_inv_freq(config: ml_collections.ConfigDict) -> np.ndarray:
  """float32 [head_dim / 2]: the RoPE frequencies of model.head_dim / model.rope_theta (F5's buffer)."""
  m = config.model
  return (1.0 / m.rope_theta ** (np.arange(0, m.head_dim, 2, dtype=np.float32) / m.head_dim)).astype(np.float32)


def to_f5(params, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The inverse of `convert`: our audio stream (a parameter tree of host arrays, either layer
  layout) -> F5-TTS DiT tensors {name without `transformer.`: array}, RoPE buffer included, so that
  `convert(to_f5(p))` gives p back bit for bit. The motion stream has no F5 counterpart and is left out."""
  params = layer_stack.convert_for(params, config, scanned=False)
  state_dict = {_INV_FREQ: rope_inv_freq(config)}
  for path, leaf in _leaves(params):
    if not is_audio_stream(path):
      continue
    counterpart = _f5_counterpart(path)
    if counterpart is None:
      raise F5ConversionError(
        f"{'/'.join(map(str, path))} has no F5-TTS counterpart (F5-TTS has no qk-norm: model.qk_norm=False)"
      )
    name, rule = counterpart
    state_dict[name] = np.ascontiguousarray(rule.to_f5(np.asarray(leaf)))
  return state_dict


def load_f5_checkpoint(path: str) -> dict[str, np.ndarray]:
  """An F5-TTS checkpoint file -> its DiT's tensors {name without `transformer.`: numpy array}.

  Safetensors releases hold the EMA state dict itself; trainer `.pt` files hold
  {"ema_model_state_dict", "model_state_dict", ...}, of which the EMA weights are taken (F5-TTS's
  own inference default), else the raw model's with a warning. The EMA's bookkeeping (`initted`,
  `step`) and the mel extractor's buffers (`mel_spec.*`) are dropped; any other name outside
  `transformer.` is kept whole, for `convert` to report.
  """

  tree = torch_checkpoint.load(path)
  if "ema_model_state_dict" in tree:
    tree = tree["ema_model_state_dict"]
  elif "model_state_dict" in tree:
    logging.warning("%s holds no EMA weights (ema_model_state_dict): using model_state_dict", path)
    tree = tree["model_state_dict"]
  state_dict = {}
  for name, array in torch_checkpoint.flatten(tree).items():
    name = name.removeprefix("ema_model.")
    if name not in ("initted", "step") and not name.startswith("mel_spec."):
      state_dict[name.removeprefix("transformer.")] = array
  return state_dict


def merge_params(params: dict, converted: dict) -> dict:
  """`params` (jax.Arrays) with the leaves of `converted` in their place, on each replaced leaf's
  sharding and dtype; the other leaves (the motion stream) are kept as they are."""
  if not isinstance(converted, dict):
    value = np.asarray(converted, params.dtype)
    return jax.make_array_from_callback(params.shape, params.sharding, lambda index: value[index])
  return {key: merge_params(value, converted[key]) if key in converted else value for key, value in params.items()}
