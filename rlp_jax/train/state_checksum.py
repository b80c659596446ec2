"""A checksum of every array of a pytree that does not depend on how the arrays are sharded.

Each leaf is read as unsigned words of its own width (bool, 8- and 16-bit types widened to uint32,
32-bit types bitcast to uint32, 64-bit types split into two uint32 halves, low half first), each
word w_i at flattened position i is multiplied by the odd number m_i = (i · 2654435761 + 1) | 1 and
the products are summed, everything in uint32 arithmetic that wraps (mod 2^32):

    checksum(leaf) = Σ_i w_i · m_i  mod 2^32

Integer sums are exact, so the result is the same for any sharding, number of devices or processes
and any reduction order. A flipped bit b of word i changes the sum by ±2^b · m_i, which is never
0 mod 2^32 because m_i is odd: any single flipped bit changes the checksum; the multiplier depends
on the position, so moved or swapped blocks do too (a random change goes unnoticed with
probability 2^-32 per leaf).

It runs as one jitted function where the arrays live (each device sums its shard, then one
all-reduce of a scalar per leaf): nothing is gathered to the host. On several processes every
process calls it with the same global arrays and gets the same numbers.
"""
from __future__ import annotations

from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

MULTIPLIER = 2654435761  # 2^32 / golden ratio, odd (Knuth's multiplicative hash)


def leaf_name(path: tuple) -> str:
  """'params/layers_0/attn/q/kernel', 'opt_state/0/mu/…': the leaf's path joined by '/'."""
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _words(x: jax.Array) -> jax.Array:
  """The leaf as uint32 words (64-bit leaves get a trailing axis of their two halves)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  dtype = np.dtype(x.dtype)
  if dtype == np.bool_:
    return x.astype(jnp.uint32)
  width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}.get(dtype.itemsize)
  if width is None:
    raise TypeError(f'state_checksum: unsupported dtype {dtype}')
  words = lax.bitcast_convert_type(x, width)  # 64-bit → (..., 2), low half first
  return words.astype(jnp.uint32)


def _leaf_checksum(x: jax.Array) -> jax.Array:
  words = _words(x)
  index = jnp.zeros(words.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(words.ndim)):  # row-major flattened index, without a reshape
    index = index + lax.broadcasted_iota(jnp.uint32, words.shape, axis) * np.uint32(stride % 2**32)
    stride *= words.shape[axis]
  multiplier = (index * np.uint32(MULTIPLIER) + np.uint32(1)) | np.uint32(1)
  return jnp.sum(words * multiplier, dtype=jnp.uint32)


@jax.jit
def _checksums(leaves: list[jax.Array]) -> list[jax.Array]:
  return [_leaf_checksum(leaf) for leaf in leaves]


def _to_int(value: jax.Array) -> int:
  if not value.is_fully_addressable:  # a replicated scalar of a multi-process computation
    value = value.addressable_data(0)
  return int(np.asarray(value))


def state_checksums(tree: Any) -> dict[str, int]:
  """{leaf path: checksum} of every array leaf of `tree` (None leaves are skipped)."""
  with_paths = jax.tree_util.tree_leaves_with_path(tree)
  if not with_paths:
    return {}
  sums = _checksums([leaf for _, leaf in with_paths])
  return {leaf_name(path): _to_int(value) for (path, _), value in zip(with_paths, sums)}


def first_difference(expected: dict[str, int], actual: dict[str, int]) -> str | None:
  """The first leaf (in `expected`'s order) whose checksum differs or that one side lacks."""
  for name, value in expected.items():
    if actual.get(name) != value:
      return name
  for name in actual:
    if name not in expected:
      return name
  return None
