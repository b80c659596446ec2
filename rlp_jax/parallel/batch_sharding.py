"""Placing batches on a device mesh: the batch sharding from the rules table, the rows each
process holds, and global arrays from process-local rows. (The train state's shardings are in
train/state_sharding.py.)
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlp_jax.errors import ConfigError
from rlp_jax.parallel.logical_rules import rules_table


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, rules, ndim: int = 2) -> NamedSharding:
  """Documents split over the mesh axes of the logical `batch` axis; the rest replicated."""
  batch_axes = rules_table(rules).get('batch', ())
  spec = (batch_axes if len(batch_axes) != 1 else batch_axes[0]) if batch_axes else None
  return NamedSharding(mesh, PartitionSpec(spec, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh, rules) -> int:
  """How many pieces the batch is split into: the product of the mesh axes of the `batch` rule."""
  return int(np.prod([mesh.shape[a] for a in rules_table(rules).get('batch', ())]))


def resolve_batch_size(batch_size: int, mesh: Mesh, rules) -> int:
  """`data.batch_size`, with −1 meaning one document per batch shard (`batch_shards`)."""
  return batch_shards(mesh, rules) if batch_size == -1 else batch_size


def check_batch_divides(batch_size: int, mesh: Mesh, rules) -> None:
  split = batch_shards(mesh, rules)
  if batch_size % split:
    raise ConfigError(f'config key `data.batch_size` ({batch_size}) must be a multiple of the '
                      f'mesh axes that shard the batch ({split} devices)')


def process_rows(sharding: NamedSharding, batch_size: int) -> np.ndarray:
  """The rows of the global batch this process's devices hold, in the order
  `make_array_from_process_local_data` expects them (all rows on a single host; the same rows on
  processes that are replicas of each other)."""
  starts = sorted({index[0].start or 0
                   for index in sharding.addressable_devices_indices_map((batch_size,)).values()})
  rows_per_shard = sharding.shard_shape((batch_size,))[0]
  return np.concatenate([np.arange(s, s + rows_per_shard) for s in starts])


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding,
              batch_size: int | None = None) -> dict[str, jax.Array]:
  """Global arrays of `batch_size` rows from this process's rows of the batch (`process_rows`).

  Without `batch_size` the local rows are the whole batch (a single process)."""
  def put(value: np.ndarray) -> jax.Array:
    shape = None if batch_size is None else (batch_size,) + value.shape[1:]
    return jax.make_array_from_process_local_data(sharding, value, shape)
  return {name: put(value) for name, value in batch.items()}
