"""The attention half of shared-prefix compute (shared_prefix.py; measured in docs/performance.md),
common to the dense and hybrid families.

A thought token of rollout (b, n) attends to the document columns s < prefix_len[b, n] and to its
own earlier thought tokens: two score blocks, the document block an einsum against the UN-copied
[B, L, Hkv, D] document keys, merged in one softmax (a log-sum-exp merge: one shared max and
denominator). `DocumentKV` is what one document pass leaves for its rollouts; `ThoughtMasks` and
`attend_over_document` run one attention layer of the thought tokens.

Layouts: N thoughts per document (rollout n = k·G + g), Tq tokens per thought. The thoughts' own
keys live in a `KVCache` over B·N rows (row b·N + n), so decoding reuses kv_cache.py's bookkeeping.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from rlp_jax.models.attention import Attention
from rlp_jax.models.layer_stack import LayerValues
from rlp_jax.models.segments import segment_at
from rlp_jax.models.attention_kernels import CausalMask
from rlp_jax.models.merged_attention import Block, merged_attention
from rlp_jax.models.kv_cache import KVCache, cached_attention_mask, write_columns

_MASKED_SCORE = -1e30  # as attention.py: finite, so a query with no visible key stays finite


@flax.struct.dataclass
class DocumentKV:
  """What one document pass leaves for its rollouts.

  layers: a value per layer (layer_stack.LayerValues, the model's layout): for an attention layer
  its (keys, values) [B, L, Hkv, D] (keys after k-norm and RoPE where the family has them); for a
  Mamba2 layer (hybrid family) the recurrent state after the first t tokens of the document for
  each of the K scored positions t, arrays leading with [B, K] (hybrid_cache.MambaState layout
  otherwise); None for an MLP layer. valid bool [B, L]. segment_ids int32 [B, L] of packed rows
  (models/segments.py), or None (one document per row): a thought then sees only the columns of
  the document its prefix ends in.
  """
  layers: LayerValues
  valid: jax.Array
  segment_ids: jax.Array | None = None


@flax.struct.dataclass
class ThoughtMasks:
  """doc_visible bool [B, N, L]; own_visible bool [B, N, Tq, S]; own_valid [B·N, S] with a cache
  (the cache's `valid` after writing the new tokens), else None; own_causal the same visibility
  as a CausalMask over the B·N thought rows without a cache (what the kernels take), else None."""
  doc_visible: jax.Array
  own_visible: jax.Array
  own_valid: jax.Array | None
  own_causal: CausalMask | None = None


def thought_masks(doc_kv: DocumentKV, prefix_len: jax.Array, thought_mask: jax.Array,
                  self_cache: KVCache | None) -> ThoughtMasks:
  """Visibility of the document and of a thought's own tokens for thought tokens [B, N, Tq]:
  document columns < prefix_len[b, n] (and valid; in a packed row only those of the segment of
  column prefix_len − 1, the document the prefix ends in); own tokens causally (masked by
  thought_mask), or with `self_cache` the cache columns up to the token's own after writing at
  `index`."""
  batch, num_thoughts, length = thought_mask.shape
  doc_columns = jnp.arange(doc_kv.valid.shape[1], dtype=jnp.int32)
  doc_visible = doc_kv.valid[:, None, :] & (doc_columns[None, None, :] < prefix_len[:, :, None])
  if doc_kv.segment_ids is not None:
    own_document = segment_at(doc_kv.segment_ids, prefix_len - 1)  # [B, N]
    doc_visible = doc_visible & (doc_kv.segment_ids[:, None, :] == own_document[:, :, None])
  row_mask = thought_mask.reshape(batch * num_thoughts, length)
  own_valid = own_causal = None
  if self_cache is None:
    own_causal = CausalMask(row_mask)
    own_visible = own_causal.dense()
  else:
    own_valid = write_columns(self_cache.valid, row_mask, self_cache.index)
    own_visible = cached_attention_mask(own_valid, self_cache.index, length)
  return ThoughtMasks(doc_visible=doc_visible,
                      own_visible=own_visible.reshape(batch, num_thoughts, length, -1),
                      own_valid=own_valid, own_causal=own_causal)


def shared_prefix_attention(queries: jax.Array, doc_keys: jax.Array, doc_values: jax.Array,
                            doc_visible: jax.Array, own_keys: jax.Array, own_values: jax.Array,
                            own_visible: jax.Array) -> jax.Array:
  """GQA of thought queries over [document ‖ own thought] keys: one softmax, log-sum-exp merged.

  queries [B, N, Q, H, D]; doc_keys/values [B, L, K, D] (shared by the N thoughts, never tiled);
  doc_visible bool [B, N, L]; own_keys/values [B, N, S, K, D]; own_visible bool [B, N, Q, S].
  Each score block stays in the layout its einsum produces (the document block batches over
  (b, kv head) with all N·G·Q thought queries as rows, so the document keys are read once); the
  blocks share one running max and one denominator. Scores and softmax in fp32; returns
  [B, N, Q, H, D] in the queries' dtype. A query that sees no key at all gets zeros (as
  attention.py).
  """
  batch, num_thoughts, length, num_heads, head_dim = queries.shape
  num_kv_heads = doc_keys.shape[2]
  dtype = queries.dtype
  grouped = queries.reshape(batch, num_thoughts, length, num_kv_heads, num_heads // num_kv_heads,
                            head_dim)
  scale = head_dim ** -0.5
  doc_scores = jnp.einsum('bnqkgd,bskd->bkngqs', grouped, doc_keys.astype(dtype),
                          preferred_element_type=jnp.float32) * scale
  own_scores = jnp.einsum('bnqkgd,bnskd->bnkgqs', grouped, own_keys.astype(dtype),
                          preferred_element_type=jnp.float32) * scale
  doc_seen = doc_visible[:, None, :, None, None, :]  # [B, 1, N, 1, 1, L]
  own_seen = own_visible[:, :, None, None, :, :]  # [B, N, 1, 1, Q, S]
  doc_scores = jnp.where(doc_seen, doc_scores, _MASKED_SCORE)
  own_scores = jnp.where(own_seen, own_scores, _MASKED_SCORE)
  to_own_layout = lambda x: jnp.swapaxes(x, 1, 2)  # [B, K, N, ...] <-> [B, N, K, ...]
  row_max = jax.lax.stop_gradient(jnp.maximum(to_own_layout(jnp.max(doc_scores, axis=-1)),
                                              jnp.max(own_scores, axis=-1)))  # [B, N, K, G, Q]
  doc_probs = jnp.exp(doc_scores - to_own_layout(row_max)[..., None])
  own_probs = jnp.exp(own_scores - row_max[..., None])
  denominator = to_own_layout(jnp.sum(doc_probs, axis=-1)) + jnp.sum(own_probs, axis=-1)
  out = jnp.einsum('bkngqs,bskd->bnqkgd', doc_probs.astype(dtype), doc_values.astype(dtype),
                   preferred_element_type=jnp.float32)
  out = out + jnp.einsum('bnkgqs,bnskd->bnqkgd', own_probs.astype(dtype),
                         own_values.astype(dtype), preferred_element_type=jnp.float32)
  out = out / jnp.moveaxis(denominator, -1, 2)[..., None]  # [B, N, Q, K, G, D]
  any_seen = jnp.any(doc_visible, axis=-1)[:, :, None] | jnp.any(own_visible, axis=-1)  # [B,N,Q]
  out = jnp.where(any_seen[..., None, None, None], out, 0.0)
  return out.astype(dtype).reshape(batch, num_thoughts, length, num_heads, head_dim)


def attend_over_document(attention: Attention, normed: jax.Array, cos: jax.Array | None,
                         sin: jax.Array | None, doc_keys: jax.Array, doc_values: jax.Array,
                         masks: ThoughtMasks, cache_kv: tuple[jax.Array, jax.Array] | None,
                         write_index: jax.Array | None,
                         ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
  """One attention layer for thought tokens: normed [B, N·Tq, E] → (o_proj output [B, N·Tq, E],
  the own-cache keys/values with the new tokens written at `write_index`, or None without a
  cache). The layer's own projections (and q/k-norm, RoPE when cos/sin are given) are used."""
  batch, num_thoughts, length = masks.own_visible.shape[:3]
  rows = batch * num_thoughts
  queries = attention.project_queries(normed, cos, sin)  # [B, N·Tq, H, D]
  keys, values = attention.project_kv(normed, cos, sin)  # [B, N·Tq, Hkv, D]
  keys = keys.reshape(rows, length, *keys.shape[2:])
  values = values.reshape(rows, length, *values.shape[2:])
  if cache_kv is not None:
    keys = write_columns(cache_kv[0], keys, write_index)
    values = write_columns(cache_kv[1], values, write_index)
  attended = thought_attention(
      attention.impl, queries.reshape(batch, num_thoughts, length, *queries.shape[2:]),
      doc_keys, doc_values, masks, keys, values)
  out = attention.o_proj(attended.reshape(batch, num_thoughts * length, *attended.shape[3:]))
  return out, (None if cache_kv is None else (keys, values))


def thought_attention(impl: str, queries: jax.Array, doc_keys: jax.Array, doc_values: jax.Array,
                      masks: ThoughtMasks, own_keys: jax.Array, own_values: jax.Array,
                      ) -> jax.Array:
  """Thought queries [B, N, Q, H, D] over [document ‖ own] keys by `model.attention_impl`: the
  reference `shared_prefix_attention`, or two kernel calls merged by their log-sum-exps
  (attention_kernels.merged_attention). own_keys/values [B·N, S, K, D].

  The document block's mask (columns below each thought's own prefix length) is data-dependent
  per thought, which the Pallas kernels' static masks and segment ids cannot express; under
  'pallas' that block runs through `jax.nn.dot_product_attention` and the own-thought block (causal
  within its row) through the Pallas kernel."""
  batch, num_thoughts = queries.shape[:2]
  if impl == 'reference':
    return shared_prefix_attention(
        queries, doc_keys, doc_values, masks.doc_visible,
        own_keys.reshape(batch, num_thoughts, *own_keys.shape[1:]),
        own_values.reshape(batch, num_thoughts, *own_values.shape[1:]), masks.own_visible)
  length, doc_len = queries.shape[2], doc_keys.shape[1]
  doc_mask = jnp.broadcast_to(masks.doc_visible[:, :, None, :],
                              (batch, num_thoughts, length, doc_len))
  document = Block(doc_keys, doc_values, doc_mask.reshape(batch, num_thoughts * length, doc_len),
                   layout='document', impl='dot_product' if impl == 'pallas' else impl)
  own_mask = masks.own_causal if masks.own_causal is not None else masks.own_visible.reshape(
      batch * num_thoughts, length, -1)
  own = Block(own_keys, own_values, own_mask, layout='own', impl=impl)
  return merged_attention(queries, document, own)
