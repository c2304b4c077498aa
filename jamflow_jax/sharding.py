"""The device mesh, logical axis rules, and the placement of batches onto the mesh.

One named mesh ('data', 'fsdp', 'tensor'). Parameters and key activations carry logical axis
names; `config.sharding.logical_axis_rules` maps them to mesh axes (DESIGN.md "Parallelism").
"""

import contextlib
from typing import Any, Iterator, Sequence

import jax
import numpy as np
import ml_collections
from flax import nnx
from flax.core import spmd as core_spmd
from jax.sharding import NamedSharding, PartitionSpec as P

from jamflow_jax import config as config_lib

BATCH_AXES = ("data", "fsdp")


def make_mesh(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = config_lib.mesh_shape(config, len(devices))
  return jax.make_mesh(shape, tuple(config.mesh.axes), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def single_device_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """All mesh axes of size 1 on the first device: for planning, counting and unsharded use."""
  return jax.make_mesh((1,) * len(config.mesh.axes), tuple(config.mesh.axes), devices=jax.devices()[:1],
                       axis_types=(jax.sharding.AxisType.Auto,) * len(config.mesh.axes))


def logical_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, Any], ...]:
  return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
               for name, axes in config.sharding.logical_axis_rules)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh, config: ml_collections.ConfigDict) -> Iterator[None]:
  """The context in which the model is built and traced: mesh + logical axis rules."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(logical_rules(config)):
    yield


def logical_to_spec(names: Sequence[str | None]) -> P:
  """Logical axis names -> PartitionSpec under the rules of the current context."""
  return P(*core_spmd.from_sharding_rules(tuple(names), core_spmd.get_logical_axis_rules()))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside a mesh."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
  """Leading axis over the batch mesh axes, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def host_batch_to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's slice of the global batch -> global arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in batch.items()}


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
