"""Building blocks shared by both streams (F5-TTS shapes), with logical axis names on parameters."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jamflow_jax.sharding import constrain


def _init(names, init=nnx.initializers.xavier_uniform()):
  return nnx.with_partitioning(init, names)


def linear(din: int, dout: int, names: tuple, *, rngs: nnx.Rngs, dtype, zero: bool = False) -> nnx.Linear:
  """nnx.Linear whose kernel [din, dout] carries logical names; bias follows the output name."""
  kernel_init = nnx.initializers.zeros_init() if zero else nnx.initializers.xavier_uniform()
  return nnx.Linear(din, dout, dtype=dtype, rngs=rngs, kernel_init=_init(names, kernel_init),
                    bias_init=_init(names[1:], nnx.initializers.zeros_init()))


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype, affine: bool) -> nnx.LayerNorm:
  return nnx.LayerNorm(dim, epsilon=1e-6, use_scale=affine, use_bias=affine, dtype=dtype, rngs=rngs,
                       scale_init=_init(("embed",), nnx.initializers.ones_init()),
                       bias_init=_init(("embed",), nnx.initializers.zeros_init()))


def sinusoidal(x: jax.Array, dim: int, scale: float = 1000.0) -> jax.Array:
  """x [...] -> [..., dim] sin/cos features (F5-TTS SinusPositionEmbedding)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  arg = scale * x.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class TimestepEmbedding(nnx.Module):
  """t [B] in [0, 1] -> [B, width]: sinusoidal features -> Linear -> SiLU -> Linear."""

  def __init__(self, freq_dim: int, width: int, *, rngs: nnx.Rngs, dtype):
    self.freq_dim = freq_dim
    self.fc1 = linear(freq_dim, width, (None, "embed"), rngs=rngs, dtype=dtype)
    self.fc2 = linear(width, width, ("embed", None), rngs=rngs, dtype=dtype)

  def __call__(self, t: jax.Array) -> jax.Array:
    return self.fc2(nnx.silu(self.fc1(sinusoidal(t, self.freq_dim))))


class ConvPositionEmbedding(nnx.Module):
  """x + Mish(Conv(Mish(Conv(x)))), grouped depthwise-style convs over time; padding zeroed."""

  def __init__(self, width: int, kernel: int, groups: int, *, rngs: nnx.Rngs, dtype):
    conv = lambda: nnx.Conv(width, width, kernel_size=(kernel,), feature_group_count=groups,
                            padding="SAME", dtype=dtype, rngs=rngs,
                            kernel_init=_init((None, None, "embed"), nnx.initializers.lecun_normal()),
                            bias_init=_init(("embed",), nnx.initializers.zeros_init()))
    self.conv1, self.conv2 = conv(), conv()

  def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
    keep = valid[..., None].astype(x.dtype)
    h = jax.nn.mish(self.conv1(x * keep))
    h = jax.nn.mish(self.conv2(h * keep))
    return x + h * keep


class FeedForward(nnx.Module):
  """Linear -> GELU(tanh) -> Linear, inner width = ff_mult * width."""

  def __init__(self, width: int, ff_mult: int, *, rngs: nnx.Rngs, dtype):
    self.up = linear(width, width * ff_mult, ("embed", "mlp"), rngs=rngs, dtype=dtype)
    self.down = linear(width * ff_mult, width, ("mlp", "embed"), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = constrain(nnx.gelu(self.up(x), approximate=True), ("batch", "length", "act_mlp"))
    return self.down(h)


class AdaLNModulation(nnx.Module):
  """SiLU(time embedding) -> n (shift/scale/gate) vectors of `width`; zero-initialised (adaLN-zero)."""

  def __init__(self, width: int, n: int, *, rngs: nnx.Rngs, dtype):
    self.n = n
    self.proj = linear(width, width * n, ("embed", None), rngs=rngs, dtype=dtype, zero=True)

  def __call__(self, temb: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(m[:, None, :] for m in jnp.split(self.proj(nnx.silu(temb)), self.n, axis=-1))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale) + shift
