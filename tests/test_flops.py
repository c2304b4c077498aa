import jax
import jax.numpy as jnp
from flax import nnx

from configs.base import get_config
from jamflow_jax import flops, model as model_lib, sharding
from jamflow_jax.config import motion_frames


def test_counted_flops_agree_with_xla_cost_analysis():
  config = get_config("demo")
  ta = config.data.max_mel_frames
  tm = motion_frames(config, ta)
  f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  x = model_lib.FlowInputs(
    f32(1, ta, 100),
    f32(1, ta, 100),
    jax.ShapeDtypeStruct((1, ta), jnp.int32),
    jax.ShapeDtypeStruct((1,), jnp.bool_),
    jax.ShapeDtypeStruct((1, ta), jnp.bool_),
    f32(1, tm, 61),
    f32(1, tm, 61),
    jax.ShapeDtypeStruct((1, tm), jnp.bool_),
    f32(1),
  )
  with sharding.use_mesh(sharding.single_device_mesh(config), config):
    graphdef, state = nnx.split(model_lib.create(config))
    cost = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  counted = flops.forward_flops(config, ta, tm)
  # XLA also counts elementwise work; the matmuls we count are nearly all of it at this size.
  assert 1.0 <= cost["flops"] / counted < 1.1, (cost["flops"], counted)
  assert flops.train_flops(config, ta, tm) == 3 * counted


def test_peak_flops_lookup():
  config = get_config("tiny")

  class Device:
    device_kind = "TPU v5p"

  assert flops.peak_flops_per_device(config, Device()) == 459e12
  Device.device_kind = "NVIDIA H100 80GB HBM3"
  assert flops.peak_flops_per_device(config, Device()) == 989e12
  Device.device_kind = "cpu"
  assert flops.peak_flops_per_device(config, Device()) == 0.0
  config.train.peak_flops_per_device = 1e12
  assert flops.peak_flops_per_device(config, Device()) == 1e12
