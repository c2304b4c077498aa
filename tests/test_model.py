import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.base import get_config
from jamflow_jax import model as model_lib, sharding
from jamflow_jax.config import motion_frames


def _inputs(config, batch=2, abstract=False):
  ta = config.data.max_mel_frames
  tm = motion_frames(config, ta)
  m = config.model
  shapes = dict(
    audio_xt=((batch, ta, m.mel_dim), jnp.float32),
    audio_cond=((batch, ta, m.mel_dim), jnp.float32),
    text=((batch, ta), jnp.int32),
    text_given=((batch,), jnp.bool_),
    audio_valid=((batch, ta), jnp.bool_),
    motion_xt=((batch, tm, m.motion_dim), jnp.float32),
    motion_cond=((batch, tm, m.motion_dim), jnp.float32),
    motion_valid=((batch, tm), jnp.bool_),
    t=((batch,), jnp.float32),
  )
  if abstract:
    return model_lib.FlowInputs(**{k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()})
  rng = np.random.default_rng(0)
  arrays = {
    k: (rng.normal(size=s) if d == jnp.float32 else rng.integers(0, 2, size=s)).astype(d)
    for k, (s, d) in shapes.items()
  }
  arrays["t"] = np.array([0.3, 0.8], np.float32)
  return model_lib.FlowInputs(**{k: jnp.asarray(v) for k, v in arrays.items()})


def _single_device_context(config):
  return sharding.use_mesh(sharding.single_device_mesh(config), config)


@pytest.mark.parametrize("preset, dtype", [("tiny", "float32"), ("tiny", "bfloat16"), ("demo", "float32")])
def test_forward_shapes_and_dtypes(preset, dtype):
  config = get_config(preset)
  config.model.dtype = dtype
  x = _inputs(config)
  with _single_device_context(config):
    model = model_lib.create(config)
    va, vm = nnx.jit(lambda m, x: m(x))(model, x)
  assert va.shape == x.audio_xt.shape and vm.shape == x.motion_xt.shape
  assert va.dtype == vm.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(va))) and bool(jnp.all(jnp.isfinite(vm)))
  params = nnx.state(model, nnx.Param)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


def test_base_preset_by_eval_shape():
  config = get_config("base")
  params = model_lib.abstract_params(config)
  n = model_lib.count_params(params)
  assert 450e6 < n < 550e6, n
  x = _inputs(config, abstract=True)
  with _single_device_context(config):
    va, vm = nnx.eval_shape(lambda x: model_lib.create(config)(x), x)
  assert va.shape == (2, 1024, 100) and vm.shape == (2, 274, 61)
  assert va.dtype == vm.dtype == jnp.float32


def test_parameters_carry_logical_axes_and_shard_on_the_mesh():
  config = get_config("tiny")
  config.mesh.shape = (2, 2, 2)
  mesh = sharding.make_mesh(config)
  params = model_lib.abstract_params(config, mesh)
  q = params["layers"][0]["audio"]["q"]["kernel"]  # [embed, heads, head_dim]
  ff = params["layers"][0]["audio"]["ff"]["up"]["kernel"]  # [embed, mlp]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  assert ff.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


@pytest.mark.parametrize("kernel, groups, channels", [(31, 16, 64), (7, 32, 32), (4, 1, 8), (1, 2, 8)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_grouped_conv_gradients_equal_xlas(kernel, groups, channels, dtype):
  """grouped_conv's own kernel gradient (K contractions; XLA:CPU's is ~20x slower) and its input
  gradient equal those of XLA's convolution, for odd and even kernels, depthwise to ungrouped."""
  from jamflow_jax.model.layers import grouped_conv

  x = jax.random.normal(jax.random.key(0), (3, 40, channels)).astype(dtype)
  w = jax.random.normal(jax.random.key(1), (kernel, channels // groups, channels))

  def xla(x, w):
    return jax.lax.conv_general_dilated(
      x, w.astype(x.dtype), (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups
    )

  loss = lambda conv: lambda w, x: jnp.sum(jnp.sin(conv(x, w).astype(jnp.float32)))
  np.testing.assert_array_equal(grouped_conv(x, w, groups), xla(x, w))
  got = jax.jit(jax.grad(loss(lambda x, w: grouped_conv(x, w, groups)), argnums=(0, 1)))(w, x)
  want = jax.jit(jax.grad(loss(xla), argnums=(0, 1)))(w, x)
  tol = 1e-4 if dtype == jnp.float32 else 5e-2
  for g, e in zip(got, want):
    assert g.dtype == e.dtype and g.shape == e.shape
    g, e = np.asarray(g, np.float32), np.asarray(e, np.float32)
    np.testing.assert_allclose(g, e, rtol=tol, atol=tol * np.abs(e).max())


@pytest.mark.parametrize("shape, groups", [((2, 2, 2), 16), ((8, 1, 1), 32), ((4, 1, 2), 2)])
def test_grouped_conv_gradient_is_exact_under_batch_sharding(shape, groups):
  from jamflow_jax.model.layers import grouped_conv

  config = get_config("tiny")
  config.mesh.shape = shape
  x = jax.random.normal(jax.random.key(0), (8, 48, 32))
  w = jax.random.normal(jax.random.key(1), (7, 32 // groups, 32))
  loss = lambda w, x: jnp.sum(jnp.sin(grouped_conv(x, w, groups)))
  expected = jax.grad(loss, argnums=(0, 1))(w, x)
  mesh = sharding.make_mesh(config)
  with sharding.use_mesh(mesh, config):
    xs = jax.device_put(x, sharding.batch_sharding(mesh, 3, ("data", "fsdp")))
    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, xs)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_remat_and_bf16_keep_the_gradient():
  from data_pipelines.synthetic import SyntheticBatches
  from jamflow_jax import flow

  config = get_config("tiny")
  config.train.batch_size = 2
  batch = {k: jnp.asarray(v) for k, v in SyntheticBatches(config).make_batch(0).items()}

  def grads(policy, dtype):
    c = config.copy_and_resolve_references()
    c.model.remat_policy, c.model.dtype = policy, dtype
    with _single_device_context(c):
      graphdef, params = nnx.split(model_lib.create(c), nnx.Param)
      loss = lambda p: flow.objective(nnx.merge(graphdef, p), batch, jax.random.key(0), c.flow)[0]
      return jax.jit(jax.grad(loss))(params)

  plain = jax.tree.leaves(grads("none", "float32"))
  for policy in ("full", "save_dots", "save_qkv_proj"):
    for a, b in zip(plain, jax.tree.leaves(grads(policy, "float32"))):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=policy)
  bf16 = jax.tree.leaves(grads("full", "bfloat16"))
  norm = lambda leaves: float(jnp.sqrt(sum(jnp.sum(jnp.square(l)) for l in leaves)))
  diff = [b.astype(jnp.float32) - a for a, b in zip(plain, bf16)]
  assert norm(diff) < 0.05 * norm(plain)
  assert all(b.dtype == jnp.float32 for b in bf16)
