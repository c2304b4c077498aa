"""The sharding vocabulary: logical axis names (what a dimension is) and mesh axis names (where it
goes), one constant each (as MaxText's common_types). `config.sharding.logical_axis_rules` maps the
first onto the second; parameters and activations name their dimensions with these.

A leaf module: config checks, the model and the data placement all import it.
"""

from typing import Any, Sequence

# Mesh axes (DESIGN.md "Parallelism"): data parallelism, FSDP (parameters and batch), tensor parallelism.
DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Logical axes of activations.
BATCH = "batch"  # examples
LENGTH = "length"  # frames of a stream (mel or motion)
ACT_EMBED = "act_embed"  # hidden features of an activation (unsharded by default: batch and FSDP
ACT_HEADS = "act_heads"  # would claim the same mesh axis), its attention heads,
ACT_MLP = "act_mlp"  # and its MLP features
# Logical axes of parameters.
EMBED = "embed"  # a stream's hidden features (FSDP)
HEADS = "heads"  # attention heads (tensor)
HEAD_DIM = "head_dim"
MLP = "mlp"  # MLP features (tensor)
VOCAB = "vocab"  # text embedding rows
LAYERS = "layers"  # the scanned stack's leading axis (unsharded, as MaxText)


def mesh_axes_of(rules: Sequence[tuple[str, Any]], name: str) -> tuple[str, ...]:
  """The mesh axes `rules` map the logical axis `name` to (() when unsharded or unnamed)."""
  for logical, axes in rules:
    if logical == name:
      return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return ()
