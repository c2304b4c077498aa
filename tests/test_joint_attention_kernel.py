"""The Pallas joint-attention kernel against the dense XLA reference (interpret mode on CPU)."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.base import get_config
from jamflow_jax.config import ConfigError
from jamflow_jax.kernels import block_mask, joint_attention as kernel
from jamflow_jax.model.attention import AUDIO, MOTION, for_platform, joint_attention, joint_mask

STEP = 3.75  # mel frames per motion frame


def _tokens(rng, b, length, pad_fraction=0.1):
  """Per example: audio and motion runs in a random order (1-3 runs each), random lengths, padding
  at random places and a padded tail; times on the shared clock."""
  mod = np.zeros((b, length), np.int32)
  time = np.zeros((b, length), np.float32)
  valid = np.zeros((b, length), bool)
  for e in range(b):
    used = int(rng.integers(length // 2, length + 1))
    cuts = np.sort(rng.choice(np.arange(1, used), size=int(rng.integers(1, 5)), replace=False))
    start, first = 0, int(rng.integers(0, 2))
    for r, end in enumerate(list(cuts) + [used]):
      m = (first + r) % 2
      n = end - start
      offset = float(rng.integers(0, 40))
      mod[e, start:end] = m
      time[e, start:end] = offset + (np.arange(n) if m == AUDIO else np.arange(n) * STEP)
      valid[e, start:end] = rng.random(n) > pad_fraction
      start = end
  return mod, time, valid


def _inputs(seed, b, lq, lk, h, d, dtype, *, cross=False):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=(b, n, h, d)), dtype) for n in (lq, lk, lk))
  qt = _tokens(rng, b, lq)
  kt = _tokens(rng, b, lk) if cross else qt
  kt[2][0] = False  # example 0: no valid key at all -> every query row of it is keyless
  names = ("q_mod", "q_time", "q_valid"), ("kv_mod", "kv_time", "kv_valid")
  tokens = {n: jnp.asarray(a) for group, arrays in zip(names, (qt, kt)) for n, a in zip(group, arrays)}
  cotangent = jnp.asarray(rng.normal(size=(b, lq, h, d)), jnp.float32)
  return q, k, v, tokens, cotangent


def _value_and_grads(impl, q, k, v, tokens, cotangent, window, **options):
  def loss(q, k, v):
    out = joint_attention(q, k, v, window=window, impl=impl, **tokens, **options)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return out, grads


CASES = [  # (window, Lq, Lk, head_dim, block_q, block_k, cross); 4 heads (head_dim 64 / 32: 2 / 4 per TPU program)
  (0.0, 100, 100, 64, 32, 16, False),
  (9.375, 96, 96, 32, 32, 32, False),
  (3.0, 77, 77, 48, 16, 32, False),
  (40.0, 130, 130, 128, 32, 32, False),
  (math.inf, 61, 61, 64, 16, 16, False),
  (6.0, 45, 90, 64, 16, 32, True),
]


# "interpret": the TPU kernels (key grid, packed heads); "interpret_triton": the GPU ones (key loop).
@pytest.mark.parametrize("backend", ["interpret", "interpret_triton"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("window,lq,lk,d,bq,bk,cross", CASES)
def test_kernel_matches_reference_forward_and_gradients(window, lq, lk, d, bq, bk, cross, dtype, backend):
  dtype = jnp.dtype(dtype)
  q, k, v, tokens, cotangent = _inputs(lq + lk + d, 2, lq, lk, 4, d, dtype, cross=cross)
  ref_out, ref_grads = _value_and_grads("xla", q, k, v, tokens, cotangent, window)
  out, grads = _value_and_grads("pallas", q, k, v, tokens, cotangent, window, block_q=bq, block_k=bk, backend=backend)
  assert out.shape == q.shape and out.dtype == v.dtype
  tol = dict(atol=2e-5, rtol=2e-5) if dtype == jnp.float32 else dict(atol=3e-2, rtol=3e-2)
  f32 = lambda x: np.asarray(x, np.float32)
  np.testing.assert_allclose(f32(out), f32(ref_out), **tol)
  for name, g, r in zip("qkv", grads, ref_grads):
    assert g.dtype == dtype, name
    np.testing.assert_allclose(f32(g), f32(r), **tol, err_msg=f"d{name}")
  # Keyless rows (example 0 has no valid key; padded queries) are 0 and pass no gradient.
  allowed = np.asarray(joint_mask(window=window, **tokens))
  keyless = ~allowed.any(axis=-1)
  assert keyless[0].all() and keyless.sum() > lq
  assert not np.asarray(out)[keyless].any()
  assert not np.asarray(grads[0])[keyless].any()
  assert not np.asarray(grads[1])[0].any() and not np.asarray(grads[2])[0].any()


def _model_layout(b, la, lm, window_pad=0):
  """Joint tokens as the model makes them: audio frames then motion frames, padded tails."""
  mod = np.concatenate([np.full((b, la), AUDIO), np.full((b, lm), MOTION)], 1).astype(np.int32)
  time = np.concatenate([np.tile(np.arange(la), (b, 1)), np.tile(np.arange(lm) * STEP, (b, 1))], 1)
  valid = np.ones((b, la + lm), bool)
  valid[1, la - 40 : la] = valid[1, la + lm - 11 :] = False  # example 1 is shorter
  return jnp.asarray(mod), jnp.asarray(time, jnp.float32), jnp.asarray(valid)


@pytest.mark.parametrize("backend", ["interpret", "interpret_triton"])
@pytest.mark.parametrize("window", [0.0, 9.375, 46.875, math.inf])
def test_kernel_visits_exactly_the_blocks_the_summary_allows(window, backend):
  b, la, lm, h, d, bq, bk = 2, 256, 69, 4, 64, 32, 32
  mod, time, valid = _model_layout(b, la, lm)
  tokens = dict(q_mod=mod, kv_mod=mod, q_time=time, kv_time=time, q_valid=valid, kv_valid=valid)
  q = jnp.ones((b, la + lm, h, d), jnp.float32)
  visits, allowed = kernel.block_visits(q, q, q, window=window, block_q=bq, block_k=bk, backend=backend, **tokens)
  visits, allowed = np.asarray(visits), np.asarray(allowed)
  nq = nk = -(-(la + lm) // bq)
  assert visits.shape == (b, h, nq, nk)
  np.testing.assert_array_equal(visits, np.broadcast_to(allowed[:, None].astype(np.int32), visits.shape))
  # The summary never drops a block holding an allowed pair ...
  dense = np.asarray(joint_mask(window=window, **tokens))
  pad = nq * bq - (la + lm)
  dense = np.pad(dense, ((0, 0), (0, pad), (0, pad)))
  dense_any = dense.reshape(b, nq, bq, nk, bk).any(axis=(2, 4))
  assert (allowed >= dense_any).all()
  # ... visits at most one extra block per query block row here (interval overlap at the edges) ...
  assert (allowed.sum(-1) - dense_any.sum(-1)).max() <= 1
  # ... and skips: the padded tail of example 1 and, with a local window, far audio/motion pairs.
  assert not allowed[1, -1].any()
  if window < 50:
    assert allowed.mean() < 0.8


def test_block_summaries_by_modality():
  codes = jnp.asarray([[0, 0, 1, -1, 1, 1, -1, -1]], jnp.int32)
  time = jnp.asarray([[0.0, 1.0, 3.75, 9.0, 7.5, 11.25, 0.0, 0.0]], jnp.float32)
  present, t_min, t_max = block_mask.block_summaries(codes, time, 4)
  np.testing.assert_array_equal(present, [[[True, True], [False, True]]])
  np.testing.assert_array_equal(t_min[0, 0], [0.0, 3.75])
  np.testing.assert_array_equal(t_max[0, 1], [-np.inf, 11.25])
  summary = (present, t_min, t_max)
  # Block 1 holds motion at 7.5..11.25; block 0's audio ends at 1.0: gap 6.5 (same-modality always).
  np.testing.assert_array_equal(block_mask.allowed_blocks(summary, summary, 6.0), [[[True, True], [True, True]]])
  audio_only = (present & jnp.asarray([True, False]), t_min, t_max)
  np.testing.assert_array_equal(block_mask.allowed_blocks(audio_only, summary, 6.0), [[[True, False], [False, False]]])
  np.testing.assert_array_equal(block_mask.allowed_blocks(audio_only, summary, 6.5), [[[True, True], [False, False]]])
  lists = block_mask.visit_lists(jnp.asarray([[[False, True, False, True]]]))
  np.testing.assert_array_equal(lists, [[[2, 1, 3, 0, 2]]])


def test_backend_follows_the_platform_and_the_config():
  assert kernel.resolve_backend("auto", "tpu") == "mosaic_tpu"
  assert kernel.resolve_backend("auto", "gpu") == "triton"
  assert kernel.resolve_backend("auto", "cpu") == "interpret"
  assert kernel.resolve_backend("interpret", "gpu") == "interpret"
  with pytest.raises(ValueError, match="attention backend 'cuda'"):
    kernel.resolve_backend("cuda")
  config = get_config("tiny")
  config.model.attention_impl = "pallas"
  assert for_platform(config, "tpu").model.attention_backend == "mosaic_tpu"
  assert config.model.attention_backend == "auto"  # the caller's config is left alone
  config.model.attention_backend = "triton"
  with pytest.raises(ConfigError, match="model.attention_backend='triton' lowers for gpu, but the devices are cpu"):
    for_platform(config, "cpu")
  config.model.attention_impl = "cudnn"
  with pytest.raises(ConfigError, match="model.attention_impl='cudnn' needs GPUs"):
    for_platform(config, "cpu")


@pytest.mark.parametrize("dtype,d", [("bfloat16", 64), ("float32", 128), ("bfloat16", 48)])
def test_gpu_lowering_emits_triton_kernels(dtype, d):
  """The Triton lowering (to Triton IR) runs on this host; compiling it to PTX needs a GPU."""
  b, lq, h = 2, 300, 2
  mod, time, valid = (jax.ShapeDtypeStruct((b, lq), t) for t in (jnp.int32, jnp.float32, jnp.bool_))
  x = jax.ShapeDtypeStruct((b, lq, h, d), jnp.dtype(dtype))

  def fwd_bwd(q, k, v, mod, time, valid):
    attend = lambda q, k, v: kernel.flash_joint_attention(
      q,
      k,
      v,
      q_mod=mod,
      kv_mod=mod,
      q_time=time,
      kv_time=time,
      q_valid=valid,
      kv_valid=valid,
      window=46.875,
      backend="triton",
    )
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(out)

  exported = jax.export.export(
    jax.jit(fwd_bwd),
    platforms=["cuda"],
    disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
  )(x, x, x, mod, time, valid)
  module = exported.mlir_module()
  for name in ("joint_attention_fwd", "joint_attention_dq", "joint_attention_dkv"):
    assert f'name = "{name}"' in module, name
  assert module.count("__gpu$xla.gpu.triton") == 3


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs the tpu extra (jax[tpu])")
def test_tpu_ahead_of_time_compile():
  """Mosaic lowering and compile for a v5p slice (no TPU needed): the kernel, forward and backward,
  at the base preset's joint length (the train step: tests/test_scaling.py, launch/tpu_compile.py)."""
  from jamflow_jax import aot

  report = aot.compile_attention(
    "v5p-16", batch_per_chip=1, length=1298, heads=4, head_dim=64, window=46.875, impl="pallas"
  )
  assert report["devices"] == 8 and report["kind"].startswith("TPU v5")
  assert 0 < report["temp_GiB"] < 1


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs the tpu extra (jax[tpu])")
def test_tpu_compiles_a_64k_token_sequence():
  """The key grid holds one block of each operand in VMEM, and the visit lists (1.3 MiB at 64k
  tokens, over the 1 MiB SMEM) go in row chunks: 64k tokens compile with HBM for the operands only."""
  from jamflow_jax import aot

  report = aot.compile_attention(
    "v5p-8", batch_per_chip=1, length=65536, heads=2, head_dim=64, window=46.875, impl="pallas"
  )
  assert 0 < report["temp_GiB"] < 0.25


def test_tpu_slice_names():
  from jamflow_jax import aot

  assert [
    aot.topology_name(n)
    for n in ("v5p-8", "v5p-32", "v5p-64", "v5p-128", "v4-16", "v5litepod-16", "v6e-8", "v5e-1", "v5p:4x4x4")
  ] == ["v5p:2x2x1", "v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4", "v4:2x2x2", "v5e:4x4", "v6e:2x4", "v5e:1x1", "v5p:4x4x4"]
  for bad in ("v5p-12", "v7x-8", "tpu"):
    with pytest.raises(ConfigError, match="TPU topology"):
      aot.topology_name(bad)


def test_key_grid_in_row_chunks(monkeypatch):
  """Visit lists over the SMEM budget: the TPU kernels run as several calls over row chunks (here one
  row each), writing the same outputs in place; forward and gradients still match the reference."""
  monkeypatch.setattr(kernel, "_SMEM_LIST_BYTES", 1)
  q, k, v, tokens, cotangent = _inputs(7, 2, 90, 70, 2, 64, jnp.float32, cross=True)
  ref_out, ref_grads = _value_and_grads("xla", q, k, v, tokens, cotangent, 6.0)
  out, grads = _value_and_grads("pallas", q, k, v, tokens, cotangent, 6.0, block_q=16, block_k=16, backend="interpret")
  for name, x, r in zip(["out", "dq", "dk", "dv"], [out, *grads], [ref_out, *ref_grads], strict=True):
    np.testing.assert_allclose(x, r, atol=2e-5, rtol=2e-5, err_msg=name)
