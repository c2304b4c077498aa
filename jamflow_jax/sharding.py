"""The device mesh, logical axis rules, and the placement of batches onto the mesh.

One named mesh ('data', 'fsdp', 'tensor'). Parameters and key activations carry logical axis
names (`jamflow_jax.axes`); `config.sharding.logical_axis_rules` maps them to mesh axes (DESIGN.md
"Parallelism"). The batch goes over the mesh axes of the rule for `axes.BATCH`.
"""

import contextlib
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jamflow_jax import axes, config as config_lib
from jamflow_jax.errors import ConfigError


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = config_lib.mesh_shape(config, len(devices))
  return jax.make_mesh(
    shape, tuple(config.mesh.axes), devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * len(shape)
  )


def single_device_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """All mesh axes of size 1 on this process' first device: for planning, counting and unsharded
  use (sampling, evaluation), which every process can then run on its own."""
  return jax.make_mesh(
    (1,) * len(config.mesh.axes),
    tuple(config.mesh.axes),
    devices=jax.local_devices()[:1],
    axis_types=(jax.sharding.AxisType.Auto,) * len(config.mesh.axes),
  )


# Logical names newer than some saved configs' rules, and where they go when a config does not say.
_DEFAULT_RULES = ((axes.LAYERS, None),)


def logical_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  rules = tuple(
    (name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
    for name, axes in config.sharding.logical_axis_rules
  )
  named = {name for name, _ in rules}
  return rules + tuple(rule for rule in _DEFAULT_RULES if rule[0] not in named)


def batch_axes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The mesh axes the batch is split over: those of the config's rule for `axes.BATCH`."""
  return axes.mesh_axes_of(logical_rules(config), axes.BATCH)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict) -> Iterator[None]:
  """The context in which the model is built and traced: mesh + logical axis rules."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(logical_rules(config)):
    yield


def logical_to_spec(names: Sequence[str | None]) -> P:
  """Logical axis names -> PartitionSpec under the rules of the current context (`use_mesh`)."""
  return nn.logical_to_mesh_axes(tuple(names))


def entry_axes(entry) -> tuple[str, ...]:
  """One PartitionSpec entry (None, a mesh axis, or a tuple of them) as a tuple of mesh axes."""
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def divisible_spec(names: Sequence[str | None], shape: Sequence[int], mesh) -> P:
  """`logical_to_spec(names)` for an array of `shape`, minus the mesh axes that do not divide its
  dimension (those dimensions stay whole)."""
  spec = []
  for dim, entry in zip(shape, logical_to_spec(names)):
    mesh_axes = entry_axes(entry)
    size = int(np.prod([mesh.shape[a] for a in mesh_axes]))
    spec.append(mesh_axes if mesh_axes and dim % size == 0 else None)
  return P(*spec)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside a mesh."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int, batch_mesh_axes: tuple[str, ...]) -> NamedSharding:
  """Leading axis over `batch_mesh_axes` (`batch_axes(config)`), the rest replicated."""
  return NamedSharding(mesh, P(batch_mesh_axes, *([None] * (ndim - 1))))


def process_rows(mesh: jax.sharding.Mesh, global_batch: int, batch_mesh_axes: tuple[str, ...]) -> np.ndarray:
  """The global batch rows this process must load: those its addressable devices hold under
  `batch_sharding(mesh, _, batch_mesh_axes)`, sorted. Any mesh: where a model axis spans processes, several processes
  hold (and load) the same rows; a process holding part of a row's replicas loads that row."""
  if global_batch % batch_shards(mesh, batch_mesh_axes):
    raise ValueError(
      f"global batch {global_batch} does not split into the {batch_shards(mesh, batch_mesh_axes)} batch "
      f"shards of mesh {dict(mesh.shape)}"
    )
  index_map = batch_sharding(mesh, 1, batch_mesh_axes).addressable_devices_indices_map((global_batch,))
  rows = {r for (rows_slice,) in index_map.values() for r in range(*rows_slice.indices(global_batch))}
  return np.asarray(sorted(rows), np.int64)


def batch_shards(mesh: jax.sharding.Mesh, batch_mesh_axes: tuple[str, ...]) -> int:
  """How many distinct slices `batch_mesh_axes` cut a global batch into."""
  return int(np.prod([mesh.shape[a] for a in batch_mesh_axes]))


def host_batch_to_global(
  batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh, global_batch: int, batch_mesh_axes: tuple[str, ...]
) -> dict[str, jax.Array]:
  """This process's rows of the global batch -> global arrays [global_batch, ...] sharded over the
  batch mesh axes `batch_mesh_axes`. `batch` values are [len(rows), ...] with row k = global row
  `process_rows(...)[k]`."""
  rows = process_rows(mesh, global_batch, batch_mesh_axes)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.shape[0] != rows.size:
      raise ValueError(
        f"batch[{k!r}] has {v.shape[0]} rows; under mesh {dict(mesh.shape)} this process holds "
        f"{rows.size} of the {global_batch} rows (sharding.process_rows)"
      )

    def shard(index, v=v):  # the rows of one addressable device's shard, found among ours
      return v[np.searchsorted(rows, np.arange(*index[0].indices(global_batch)))][(slice(None), *index[1:])]

    out[k] = jax.make_array_from_callback(
      (global_batch, *v.shape[1:]), batch_sharding(mesh, v.ndim, batch_mesh_axes), shard
    )
  return out


def to_host(tree: Any) -> Any:
  """The global value of every array in `tree` as numpy, on every process.

  Arrays this process holds whole (or a full replica of) are copied; arrays split over other processes'
  devices are first replicated over their own mesh, all in one program (a collective: every process
  must call this with the same tree).
  """
  leaves, treedef = jax.tree.flatten(tree)
  spread = [
    i
    for i, x in enumerate(leaves)
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated)
  ]
  if spread:
    replicated = [leaves[i].sharding.update(spec=jax.sharding.PartitionSpec()) for i in spread]
    gathered = jax.jit(lambda xs: xs, out_shardings=replicated)([leaves[i] for i in spread])
    for i, x in zip(spread, gathered):
      leaves[i] = x
  return jax.tree.unflatten(treedef, [np.asarray(jax.device_get(x)) for x in leaves])


def check_divisible(tree: Any, what: str) -> None:
  """ConfigError naming the first arrays of `tree` (ShapeDtypeStructs / arrays with NamedShardings)
  whose dimensions the mesh axes they are sharded over do not divide."""
  bad = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    spec, mesh = leaf.sharding.spec, leaf.sharding.mesh
    for dim, entry in zip(leaf.shape, spec):
      mesh_axes = entry_axes(entry)
      parts = int(np.prod([mesh.shape[a] for a in mesh_axes]))
      if dim % parts:
        bad.append(f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)}: {dim} over {'x'.join(mesh_axes)}={parts}")
  if bad:
    raise ConfigError(
      f"mesh.shape {tuple(mesh.shape.values())} ({', '.join(mesh.axis_names)}) cannot shard the {what}: "
      + "; ".join(bad[:3])
      + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
      + " (sharding.logical_axis_rules maps model axes to mesh axes); choose mesh sizes that divide them"
    )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
