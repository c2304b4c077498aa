"""The stack of DualLayers in the paper's order: unrolled, or scanned over a repeating group.

Scanned (`model.scan_layers`, MaxText's `scan_layers`): the joint pattern of `model.joint_layers`
repeats with a period p (base: self, joint, self, joint, ... -> p = 2). The p layers of one period
form a `LayerGroup`; its parameters are stacked over a leading `layers` axis of depth / p groups and
`jax.lax.scan` runs the group that many times. One compiled body instead of `depth` copies
(compile time), and under FSDP one group's weights are all-gathered per iteration instead of every
layer's at once (memory). Layer i of the unrolled stack is layer i % p of group i // p.

Rematerialisation is a named policy on the layer (or scanned group) body (`model.remat_policy`),
as MaxText's `remat_policy`: what the backward pass keeps from the forward.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jamflow_jax import config as config_lib
from jamflow_jax.axes import LAYERS
from jamflow_jax.model.attention import AttentionOptions
from jamflow_jax.model.dit import ATTENTION_OUT, QKV_NAMES, DualLayer

# model.remat_policy (choices.REMAT_POLICIES) -> the jax.checkpoint policy (None: no rematerialisation).
POLICIES: dict[str, Callable | None] = {
  "none": None,  # keep every activation
  "full": jax.checkpoint_policies.nothing_saveable,  # keep the layer inputs only
  "save_dots": jax.checkpoint_policies.checkpoint_dots,  # keep every matmul output
  "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # projections, not logits
  "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(*QKV_NAMES),
  "save_attention": jax.checkpoint_policies.save_only_these_names(*QKV_NAMES, ATTENTION_OUT),
}

STACKED = "layer_groups"  # the scanned stack's key in the parameter tree
UNROLLED = "layers"  # the unrolled stack's key: {layer index: DualLayer parameters}


def period(depth: int, joint_layers) -> int:
  """The shortest p dividing `depth` such that layer i is joint iff layer i % p is."""
  joint = [i in set(joint_layers) for i in range(depth)]
  return next(p for p in range(1, depth + 1) if depth % p == 0 and all(joint[i] == joint[i % p] for i in range(depth)))


def dual_layer(config: ml_collections.ConfigDict, i: int, *, rngs: nnx.Rngs, dtype) -> DualLayer:
  """Layer i of the paper's stack (joint iff i is in model.joint_layers)."""
  m = config.model
  return DualLayer(
    m.audio_width,
    m.motion_width,
    m.heads,
    m.head_dim,
    m.ff_mult,
    m.qk_norm,
    i in set(m.joint_layers),
    window=config_lib.joint_window_frames(config),
    attention=AttentionOptions.from_config(m),
    rngs=rngs,
    dtype=dtype,
    audio_rope_heads=m.rope_heads,
  )


class LayerGroup(nnx.Module):
  """p consecutive DualLayers, run in order: the unit the scanned stack repeats."""

  def __init__(self, layers: list[DualLayer]):
    self.layers = nnx.List(layers)

  def __call__(self, ha, hm, *context):
    """DualLayer's arguments; the layers run in order."""
    for layer in self.layers:
      ha, hm = layer(ha, hm, *context)
    return ha, hm


def stacked_groups(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs, dtype) -> LayerGroup:
  """One LayerGroup whose parameters are stacked [depth / p, ...] over the logical axis `layers`."""
  m = config.model
  p = period(m.depth, m.joint_layers)

  @nnx.split_rngs(splits=m.depth // p)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS})
  def make(rngs):
    return LayerGroup([dual_layer(config, j, rngs=rngs, dtype=dtype) for j in range(p)])

  return make(rngs)


def _checkpointed(fn: Callable, policy: str, prevent_cse: bool) -> Callable:
  if POLICIES[policy] is None:
    return fn
  return jax.checkpoint(fn, policy=POLICIES[policy], prevent_cse=prevent_cse)


def run(layers, scanned: bool, policy: str, ha: jax.Array, hm: jax.Array, *context) -> tuple[jax.Array, jax.Array]:
  """ha [B, La, Wa], hm [B, Lm, Wm] through the stack: `layers` is the unrolled nnx.List of
  DualLayers, or (scanned) the stacked LayerGroup. `context` is DualLayer's remaining arguments.

  The modules run as pure functions of their parameters (split / merge), so the same code runs
  under jax.grad, inside the sampler's ODE loop and under any mesh.
  """
  if not scanned:
    for layer in layers:
      graphdef, state = nnx.split(layer)
      call = lambda state, ha, hm, graphdef=graphdef: nnx.merge(graphdef, state)(ha, hm, *context)
      ha, hm = _checkpointed(call, policy, prevent_cse=True)(state, ha, hm)
    return ha, hm
  graphdef, state = nnx.split(layers)

  def body(carry, group_state):
    ha, hm = nnx.merge(graphdef, group_state)(*carry, *context)
    return (ha.astype(carry[0].dtype), hm.astype(carry[1].dtype)), None

  # In a scan, common-subexpression elimination cannot merge the forward into the backward.
  (ha, hm), _ = jax.lax.scan(_checkpointed(body, policy, prevent_cse=False), (ha, hm), state)
  return ha, hm


def _is_params(node: Any) -> bool:
  return isinstance(node, dict) and (UNROLLED in node or STACKED in node)


def _stack(leaves: list) -> Any:
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding and NamedSharding(first.sharding.mesh, P(None, *first.sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype, sharding=sharding)
  return (jnp if isinstance(first, jax.Array) else np).stack(leaves)


def _take(leaf: Any, g: int) -> Any:
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding and NamedSharding(leaf.sharding.mesh, P(*tuple(leaf.sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)
  return leaf[g]


def convert(tree: Any, scanned: bool, p: int) -> Any:
  """`tree` with every parameter dict in it (params, EMA, optimizer moments) in the scanned
  (`scanned=True`) or unrolled layer layout; p = `period(...)` of the model. Leaves may be
  arrays (also traced: jit it with the target shardings), numpy arrays or ShapeDtypeStructs
  (shardings follow: the `layers` axis unsharded). Dicts already in that layout pass unchanged;
  a partial tree (e.g. only the audio stream's leaves) converts as well."""

  def one(params):
    if scanned and UNROLLED in params:
      layers = params[UNROLLED]
      groups = len(layers) // p
      stacked = {
        j: jax.tree.map(lambda *xs: _stack(list(xs)), *[layers[g * p + j] for g in range(groups)]) for j in range(p)
      }
      return {**{k: v for k, v in params.items() if k != UNROLLED}, STACKED: {"layers": stacked}}
    if not scanned and STACKED in params:
      stacked = params[STACKED]["layers"]
      groups = jax.tree.leaves(stacked, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))[0].shape[0]
      layers = {
        g * p + j: jax.tree.map(
          functools.partial(_take, g=g), stacked[j], is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
        )
        for g in range(groups)
        for j in range(p)
      }
      return {**{k: v for k, v in params.items() if k != STACKED}, UNROLLED: dict(sorted(layers.items()))}
    return params

  return jax.tree.map(lambda x: one(x) if _is_params(x) else x, tree, is_leaf=_is_params)


def convert_for(tree: Any, config: ml_collections.ConfigDict, scanned: bool | None = None) -> Any:
  """`convert` to `config`'s layout (or to `scanned` if given), with the config's period."""
  m = config.model
  return convert(tree, m.scan_layers if scanned is None else scanned, period(m.depth, m.joint_layers))
