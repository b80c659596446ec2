"""Packed rows: several documents in one row of a batch, told apart by segment ids.

A batch's `segment_ids` int32 [B, L] is 0 on padding and 1, 2, 3, … on the successive documents
of a row (an unpacked row is `mask.astype(int32)`: one segment). Nothing may flow from one
document into another, so that a packed document's numbers are those it has alone in a row:

  attention   query l sees key s iff s ≤ l, key s is real and both are in one segment
              (kv_cache.causal_attention_mask);
  RoPE        positions restart at 0 at each document start (`positions_in_segment`);
  Mamba2      the SSM state is zeroed at each document start (`segment_resets`, ssd.py) and the
              causal conv takes no tap from another segment (mamba2.CausalConv).

The functions here are [B, L] bookkeeping (cumulative maxima and shifted comparisons); no
[L, L] array is built beyond the attention mask the model builds anyway. Segment ids apply to a
forward without a decode cache (documents, scored sequences): decoding rows hold one prompt each.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp


def segment_ids_of(batch: Mapping[str, jax.Array]) -> jax.Array | None:
  """The batch's `segment_ids` as int32 [B, L], or None when it has none: one document per row.

  None means `mask.astype(int32)` (one segment a row) and takes the code path from before
  packing, op for op, so callers and tests built before packing keep their numbers bit for bit.
  A row with one segment gives the same numbers either way up to fp rounding: the segment masks
  are exact, but XLA may fuse (and contract multiply-adds) differently around them."""
  segment_ids = batch.get('segment_ids')
  return None if segment_ids is None else jnp.asarray(segment_ids).astype(jnp.int32)


def segment_starts(segment_ids: jax.Array) -> jax.Array:
  """int32 [B, L]: the column where the segment of each column starts (0 for the row's first
  segment; a padding run counts as a segment of its own)."""
  length = segment_ids.shape[1]
  columns = jnp.arange(length, dtype=jnp.int32)
  changed = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], jnp.bool_),
                             segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  return jax.lax.cummax(jnp.where(changed, columns[None, :], 0), axis=1)


def positions_in_segment(segment_ids: jax.Array) -> jax.Array:
  """int32 [B, L]: each column's index within its own document (RoPE positions of packed rows;
  0..L-1 on a row with one segment and no padding before it)."""
  columns = jnp.arange(segment_ids.shape[1], dtype=jnp.int32)
  return columns[None, :] - segment_starts(segment_ids)


def segment_resets(segment_ids: jax.Array) -> jax.Array:
  """bool [B, L]: True at the first token of every document but one starting at column 0 — where
  a recurrent state must forget what came before. False on padding and everywhere on a row with
  one document (nothing to forget: its scan is the unpacked one)."""
  previous = jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
  first_column = jnp.arange(segment_ids.shape[1]) == 0
  return (segment_ids != previous) & (segment_ids > 0) & ~first_column[None, :]


def segment_at(segment_ids: jax.Array, columns: jax.Array) -> jax.Array:
  """int32 [B, K]: the segment id of columns `columns` int32 [B, K] of each row (clipped to the
  row): which document a scored position belongs to."""
  clipped = jnp.clip(columns, 0, segment_ids.shape[1] - 1)
  return jnp.take_along_axis(segment_ids, clipped, axis=1)


def prefix_starts(segment_ids: jax.Array | None, positions: jax.Array) -> jax.Array:
  """int32 [B, K]: where the prefix of scored position t = positions[b, k] starts — the first
  column of the document of column t − 1, the document a thought at t continues (t's own for
  every allowed position). 0 without segment ids (one document per row)."""
  if segment_ids is None:
    return jnp.zeros_like(positions, jnp.int32)
  last = jnp.clip(positions - 1, 0, segment_ids.shape[1] - 1)
  return jnp.take_along_axis(segment_starts(segment_ids), last, axis=1)
