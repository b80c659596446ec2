"""One rules table maps logical axis names (on parameters and activations) to mesh axes.

A rule is `(logical_name, mesh_axes)` with mesh_axes None (replicated), one mesh axis name, or a
tuple of them. A mesh axis is used at most once per array: a later dimension asking for an axis an
earlier one took stays replicated, and so does a dimension its mesh axes don't divide (for
example 2 kv heads on a tensor axis of 4).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlp_jax.errors import ConfigError

Rules = Sequence[tuple[str, Any]]


def rules_table(rules: Rules) -> dict[str, tuple[str, ...]]:
  """{logical name: tuple of mesh axes} from the config's rules (duplicates are an error)."""
  table: dict[str, tuple[str, ...]] = {}
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ConfigError(f'config key `mesh.rules`: each rule is (logical_name, mesh_axes), got '
                        f'{rule!r}')
    name, axes = rule
    if name in table:
      raise ConfigError(f'config key `mesh.rules` maps `{name}` twice')
    table[name] = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
  return table


def partition_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                   table: dict[str, tuple[str, ...]]) -> PartitionSpec:
  """The PartitionSpec of one array from its logical axis names and shape."""
  if len(logical_axes) != len(shape):
    raise ValueError(f'logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}')
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape):
    if name is not None and name not in table:
      raise ConfigError(f'config key `mesh.rules` has no rule for logical axis `{name}`')
    # Size-1 mesh axes split nothing; leaving them out keeps the spec canonical (XLA reports
    # outputs without them, and a spec that differs only there would recompile the step).
    axes = tuple(a for a in (table[name] if name else ()) if a not in used and mesh.shape[a] > 1)
    split = math.prod(mesh.shape[a] for a in axes)
    if not axes or size % split:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  while spec and spec[-1] is None:  # canonical form: no trailing replicated dimensions
    spec.pop()
  return PartitionSpec(*spec)


def tree_shardings(logical_tree: Any, shape_tree: Any, mesh: Mesh,
                   table: dict[str, tuple[str, ...]]) -> Any:
  """NamedShardings for a pytree of arrays (shape_tree) with matching logical-axes tuples."""
  return jax.tree.map(
      lambda axes, leaf: NamedSharding(mesh, partition_spec(axes, leaf.shape, mesh, table)),
      logical_tree, shape_tree, is_leaf=lambda x: isinstance(x, tuple))
