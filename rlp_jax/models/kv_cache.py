"""Decode cache: an explicit pytree passed into and out of `forward`.

Layout (S = max_len columns, shared by all rows):
  layers: a layer_stack.LayerValues (a value per layer, in the model's unrolled or scanned
          layout): for an attention layer (keys, values), each [B, S, num_kv_heads, head_dim] in
          compute dtype (keys stored after q/k-norm and RoPE); for a hybrid Mamba2 layer its
          hybrid_cache.MambaState; None for a layer without state (MLP);
  valid:  bool [B, S], True where a column holds a real token;
  index:  int32 scalar, the next column to write (the same for every row).
Writing L tokens fills columns [index, index + L) of every row and sets `valid` there from the
token mask. Ragged prompts are LEFT padded (pad columns stay invalid) and carry explicit RoPE
positions, so all rows decode at the same column. The caller keeps index + L <= S
(`lax.dynamic_update_slice` clamps the start index, it does not raise).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from rlp_jax.models.attention_kernels import CausalMask
from rlp_jax.models.layer_stack import LayerPlan, LayerValues, build_values


@struct.dataclass
class KVCache:
  """Per-layer cache values plus the shared column bookkeeping (see module docstring)."""
  layers: LayerValues
  valid: jax.Array
  index: jax.Array

  @property
  def max_len(self) -> int:
    return self.valid.shape[1]


def empty_attention_entry(batch_size: int, max_len: int, num_kv_heads: int, head_dim: int,
                          dtype: Any) -> tuple[jax.Array, jax.Array]:
  """One attention layer's all-zero (keys, values)."""
  shape = (batch_size, max_len, num_kv_heads, head_dim)
  return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def empty_cache(plan: LayerPlan, batch_size: int, max_len: int,
                make_entry: Callable[[str], Any]) -> KVCache:
  """A cache with `make_entry(kind)` per layer, no valid column and index 0."""
  return KVCache(layers=build_values(plan, make_entry),
                 valid=jnp.zeros((batch_size, max_len), jnp.bool_),
                 index=jnp.zeros((), jnp.int32))


def write_columns(buffer: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """Writes `new` [B, L, ...] into `buffer` [B, S, ...] at columns [index, index + L)."""
  start = (jnp.zeros((), jnp.int32), index) + (jnp.zeros((), jnp.int32),) * (buffer.ndim - 2)
  return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), start)


def cached_attention_mask(valid: jax.Array, index: jax.Array, num_new: int) -> jax.Array:
  """bool [B, num_new, S]: new token l sees column c iff valid[c] and c <= index + l.

  `valid` must already include the new tokens' columns.
  """
  columns = jnp.arange(valid.shape[1], dtype=jnp.int32)
  query_columns = index + jnp.arange(num_new, dtype=jnp.int32)
  causal = columns[None, :] <= query_columns[:, None]
  return valid[:, None, :] & causal[None, :, :]


def causal_attention_mask(token_mask: jax.Array, segment_ids: jax.Array | None = None,
                          ) -> jax.Array:
  """bool [B, L, L] without a cache: query l sees key s iff s <= l and token_mask[s], and with
  `segment_ids` [B, L] (packed rows, models/segments.py) only when both are in one segment
  (attention_kernels.CausalMask, densified)."""
  return CausalMask(token_mask, segment_ids).dense()
