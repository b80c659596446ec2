"""Sharding constraints on activations, from the same rules table as the parameters.

The model code names the logical axes of its activations (`constrain(x, ('batch', 'length',
'activation_embed'))`); a step that runs on a mesh traces the model inside
`activation_layout(mesh, rules)`, and each `constrain` becomes a `with_sharding_constraint` to
the PartitionSpec those rules give for that shape (size-1 and non-dividing mesh axes replicated,
exactly as for parameters). Outside that context (unit tests, single-device runs, any code
called without a mesh) `constrain` returns its input unchanged.

Without these constraints GSPMD propagates the parameters' fsdp/tensor sharding into the
activations and replicates their batch dimension (docs/scaling.md).

The layout is read while tracing, like `jax.set_mesh`: enter it inside the function that is
jitted, so it is active when that function traces (see `train/rlp_step.py`).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Iterator, Sequence

import jax
from jax.sharding import Mesh, NamedSharding

from rlp_jax.parallel.logical_rules import Rules, partition_spec, rules_table


@dataclasses.dataclass(frozen=True)
class ActivationLayout:
  mesh: Mesh
  table: dict[str, tuple[str, ...]]


_LAYOUT: contextvars.ContextVar[ActivationLayout | None] = contextvars.ContextVar(
    'rlp_jax_activation_layout', default=None)


@contextlib.contextmanager
def activation_layout(mesh: Mesh | None, rules: Rules | None) -> Iterator[None]:
  """Makes `constrain` pin activations on `mesh` by `rules` while the block runs (traces).

  `mesh` or `rules` None: constraints stay off (the block runs as without this context)."""
  layout = None if mesh is None or rules is None else ActivationLayout(mesh, rules_table(rules))
  token = _LAYOUT.set(layout)
  try:
    yield
  finally:
    _LAYOUT.reset(token)


def current_layout() -> ActivationLayout | None:
  return _LAYOUT.get()


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """`x` constrained to the sharding its logical axes map to; unchanged without a layout."""
  layout = _LAYOUT.get()
  if layout is None:
    return x
  spec = partition_spec(logical_axes, x.shape, layout.mesh, layout.table)
  return jax.lax.with_sharding_constraint(x, NamedSharding(layout.mesh, spec))


def shard_count(logical_axis: str, size: int) -> int:
  """Into how many shards `constrain` splits a dimension of `size` named `logical_axis` (e.g.
  'batch': the rows each device holds are size / this); 1 without a layout."""
  layout = _LAYOUT.get()
  if layout is None:
    return 1
  spec = partition_spec((logical_axis,), (size,), layout.mesh, layout.table)
  axes = spec[0] if len(spec) else None
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return math.prod(layout.mesh.shape[axis] for axis in axes)


def mesh_of(shardings) -> Mesh | None:
  """The mesh of a pytree of NamedShardings (e.g. a step's state shardings); None for None."""
  if shardings is None:
    return None
  leaves = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  return leaves[0].mesh if leaves else None
