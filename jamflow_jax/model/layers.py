"""Building blocks shared by both streams (F5-TTS shapes), with logical axis names on parameters."""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from jamflow_jax.axes import ACT_MLP, BATCH, EMBED, LENGTH, MLP
from jamflow_jax.sharding import constrain, entry_axes, logical_to_spec


def partitioned(names, init=nnx.initializers.xavier_uniform()):
  """`init` whose parameter carries the logical axis names `names` (one per dimension)."""
  return nnx.with_partitioning(init, names)


def linear(din: int, dout: int, names: tuple, *, rngs: nnx.Rngs, dtype, zero: bool = False) -> nnx.Linear:
  """nnx.Linear whose kernel [din, dout] carries logical names; bias follows the output name."""
  kernel_init = nnx.initializers.zeros_init() if zero else nnx.initializers.xavier_uniform()
  return nnx.Linear(
    din,
    dout,
    dtype=dtype,
    rngs=rngs,
    kernel_init=partitioned(names, kernel_init),
    bias_init=partitioned(names[1:], nnx.initializers.zeros_init()),
  )


def layer_norm(dim: int, *, rngs: nnx.Rngs, dtype, affine: bool) -> nnx.LayerNorm:
  return nnx.LayerNorm(
    dim,
    epsilon=1e-6,
    use_scale=affine,
    use_bias=affine,
    dtype=dtype,
    rngs=rngs,
    scale_init=partitioned((EMBED,), nnx.initializers.ones_init()),
    bias_init=partitioned((EMBED,), nnx.initializers.zeros_init()),
  )


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
    self.fc1 = linear(freq_dim, width, (None, EMBED), rngs=rngs, dtype=dtype)
    self.fc2 = linear(width, width, (EMBED, None), rngs=rngs, dtype=dtype)

  def __call__(self, t: jax.Array) -> jax.Array:
    return self.fc2(nnx.silu(self.fc1(sinusoidal(t, self.freq_dim))))


def _xla_conv(x: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
  """'SAME' grouped convolution, x [B, L, Cin], kernel [K, Cin / groups, Cout] -> [B, L, Cout]."""
  return jax.lax.conv_general_dilated(
    x, kernel.astype(x.dtype), (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
  """_xla_conv with the kernel gradient of `_conv_bwd`."""
  return _xla_conv(x, kernel, groups)


def _conv_fwd(x, kernel, groups):
  return _xla_conv(x, kernel, groups), (x, kernel)


def _conv_bwd(groups, residuals, dy):
  """dx as XLA transposes the convolution; the kernel gradient as K small contractions of the shifted
  input with dy: XLA:CPU's own kernel gradient of a grouped convolution takes ~20x longer (532 vs
  24 ms at 2 x 1024 x 256, kernel 31, 16 groups), more than the rest of a small model's step."""
  x, kernel = residuals
  _, transpose = jax.vjp(lambda x: _xla_conv(x, kernel, groups), x)
  (dx,) = transpose(dy)
  k, cin, cout = kernel.shape
  b, length, _ = x.shape
  left = (k - 1) // 2  # 'SAME': (k - 1) // 2 frames of zeros before, the rest after
  xp = jnp.pad(x, ((0, 0), (left, k - 1 - left), (0, 0))).reshape(b, length + k - 1, groups, cin)
  dy = dy.reshape(b, length, groups, cout // groups)
  dkernel = jnp.stack(
    [jnp.einsum("blgi,blgo->igo", xp[:, j : j + length], dy, preferred_element_type=jnp.float32) for j in range(k)]
  )  # [K, Cin / groups, groups, Cout / groups]
  return dx, dkernel.reshape(kernel.shape).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def grouped_conv(x: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
  """'SAME' grouped 1-D convolution over time: x [B, L, Cin], kernel [K, Cin / groups, Cout].

  Under a mesh it runs per batch shard in shard_map: XLA's SPMD partitioner returns the kernel
  gradient of a grouped convolution multiplied by the replication factor when the batch is sharded
  over only some mesh axes (seen with jax 0.10.2); shard_map's transpose sums it exactly once.
  """
  conv = lambda x, kernel: _conv(x, kernel, groups)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return conv(x, kernel)
  batch = logical_to_spec((BATCH,))  # the batch mesh axes under the current rules
  shards = math.prod(mesh.shape[a] for a in entry_axes(batch[0]))
  if shards == 1 or x.shape[0] % shards:
    return conv(x, kernel)
  axes = entry_axes(batch[0])
  # The kernel enters varying over the batch axes, so the transpose of that cast sums its gradient.
  per_shard = lambda x, kernel: conv(x, jax.lax.pcast(kernel, axes, to="varying"))
  return jax.shard_map(per_shard, in_specs=(batch, P()), out_specs=batch)(x, kernel)


class GroupedConv(nnx.Module):
  """Grouped 1-D convolution over time with bias; x [B, L, C] -> [B, L, C]."""

  def __init__(self, width: int, kernel: int, groups: int, *, rngs: nnx.Rngs, dtype):
    self.groups, self.dtype = groups, dtype
    # Output channels FSDP-sharded like every `embed` axis (gathered for the convolution): at 7b the
    # two kernels of a stream's position embedding hold 37M parameters.
    self.kernel = nnx.Param(
      nnx.initializers.lecun_normal()(rngs.params(), (kernel, width // groups, width)), out_sharding=(None, None, EMBED)
    )
    self.bias = nnx.Param(jnp.zeros((width,)), out_sharding=(EMBED,))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    return grouped_conv(x, self.kernel[...], self.groups) + self.bias[...].astype(self.dtype)


class ConvPositionEmbedding(nnx.Module):
  """x + Mish(Conv(Mish(Conv(x)))), grouped depthwise-style convs over time; padding zeroed."""

  def __init__(self, width: int, kernel: int, groups: int, *, rngs: nnx.Rngs, dtype):
    self.conv1 = GroupedConv(width, kernel, groups, rngs=rngs, dtype=dtype)
    self.conv2 = GroupedConv(width, kernel, groups, rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
    keep = valid[..., None].astype(x.dtype)
    h = jax.nn.mish(self.conv1(x * keep))
    h = jax.nn.mish(self.conv2(h * keep))
    return x + h * keep


class FeedForward(nnx.Module):
  """Linear -> GELU(tanh) -> Linear, inner width = ff_mult * width."""

  def __init__(self, width: int, ff_mult: int, *, rngs: nnx.Rngs, dtype):
    self.up = linear(width, width * ff_mult, (EMBED, MLP), rngs=rngs, dtype=dtype)
    self.down = linear(width * ff_mult, width, (MLP, EMBED), rngs=rngs, dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = constrain(nnx.gelu(self.up(x), approximate=True), (BATCH, LENGTH, ACT_MLP))
    return self.down(h)


class AdaLNModulation(nnx.Module):
  """SiLU(time embedding) -> n (shift/scale/gate) vectors of `width`; zero-initialised (adaLN-zero)."""

  def __init__(self, width: int, n: int, *, rngs: nnx.Rngs, dtype):
    self.n = n
    self.proj = linear(width, width * n, (EMBED, None), rngs=rngs, dtype=dtype, zero=True)

  def __call__(self, temb: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(m[:, None, :] for m in jnp.split(self.proj(nnx.silu(temb)), self.n, axis=-1))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale) + shift
