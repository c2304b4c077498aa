"""The JAM-Flow model, and its parameter tree without allocating it."""

import jax
import ml_collections
from flax import nnx

from jamflow_jax import sharding
from jamflow_jax.model.jamflow import FlowInputs, JamFlow


def create(config: ml_collections.ConfigDict, seed: int = 0) -> JamFlow:
  """Builds the model eagerly (call under `sharding.use_mesh`)."""
  return JamFlow(config, rngs=nnx.Rngs(seed))


def abstract_model(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(graph definition, parameter dict of ShapeDtypeStructs sharded for `mesh`); nothing allocated."""
  with sharding.use_mesh(mesh, config):
    graphdef, params = nnx.split(nnx.eval_shape(lambda: create(config)), nnx.Param)
    specs = nnx.get_partition_spec(params)
  return graphdef, jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=jax.sharding.NamedSharding(mesh, s)),
    nnx.to_pure_dict(params),
    nnx.to_pure_dict(specs),
  )


def abstract_params(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None):
  """The parameter tree as ShapeDtypeStructs (nothing allocated), sharded for `mesh`.

  Without a mesh a single-device mesh is used, which is enough for counting and planning.
  """
  return abstract_model(config, sharding.single_device_mesh(config) if mesh is None else mesh)[1]


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


__all__ = ["FlowInputs", "JamFlow", "create", "abstract_model", "abstract_params", "count_params"]
