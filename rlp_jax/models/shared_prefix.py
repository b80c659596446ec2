"""Shared-prefix compute for the dense family (DESIGN §2): one document pass serves every rollout.

`document_kv` runs the document once and keeps each layer's keys/values (after k-norm and RoPE),
next to the logits the next-token loss needs. `thought_forward` runs the tokens of N thoughts per
document, where thought (b, n) attends to the document columns s < prefix_len[b, n] and to its own
earlier tokens: two score blocks, the document block an einsum against the UN-copied
[B, L, Hkv, D] document keys, merged in one softmax (a log-sum-exp merge: one shared max and
denominator). The per-token math reuses the dense model's own submodules (norms, projections,
RoPE, MLP, lm head), so both paths run the same code.

Layouts: N thoughts per document (rollout n = k·G + g), Tq tokens per thought. The thoughts' own
keys live in a `KVCache` over B·N rows (row b·N + n), so decoding reuses kv_cache.py's bookkeeping.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.errors import ConfigError
from rlp_jax.models.dense import DenseDecoder
from rlp_jax.models.kv_cache import (KVCache, cached_attention_mask, causal_attention_mask,
                                     empty_kv_cache, write_columns)
from rlp_jax.models.layers import resolve_dtype, rope_cos_sin

_MASKED_SCORE = -1e30  # as attention.py: finite, so a query with no visible key stays finite


@flax.struct.dataclass
class DocumentKV:
  """Per-layer document keys/values [B, L, Hkv, D] (keys after k-norm and RoPE), valid [B, L]."""
  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  valid: jax.Array


def _dense_model(graphdef: nnx.GraphDef, params: Any) -> DenseDecoder:
  model = nnx.merge(graphdef, params)
  if not isinstance(model, DenseDecoder):
    raise ConfigError('rlp.prefix_mode="shared" supports model.family="dense" only so far, got '
                      f'{type(model).__name__}')
  return model


def document_kv(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array, positions: jax.Array,
                mask: jax.Array) -> tuple[jax.Array, DocumentKV]:
  """One causal forward over documents [B, L]: (fp32 logits [B, L, V], DocumentKV).

  The logits are those of `registry.forward(graphdef, params, tokens, positions, mask)`.
  """
  model = _dense_model(graphdef, params)
  cos, sin = rope_cos_sin(positions, model.head_dim, model.rope_theta)
  x = model.token_embedding(tokens)
  attention_mask = causal_attention_mask(mask)
  keys, values = [], []
  for layer in model.layers:
    x, (layer_keys, layer_values) = layer(x, cos, sin, attention_mask)
    keys.append(layer_keys)
    values.append(layer_values)
  logits = model.logits(model.final_norm(x))
  return logits, DocumentKV(keys=tuple(keys), values=tuple(values), valid=mask.astype(jnp.bool_))


def empty_thought_cache(model_config: Any, batch_size: int, thoughts_per_document: int,
                        max_len: int) -> KVCache:
  """Empty own-thought cache: B·N rows of `max_len` columns (row b·N + n)."""
  dtype = resolve_dtype(model_config.compute_dtype, 'model.compute_dtype')
  return empty_kv_cache(model_config.num_layers, batch_size * thoughts_per_document, max_len,
                        model_config.num_kv_heads, model_config.head_dim, dtype)


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


def thought_forward(graphdef: nnx.GraphDef, params: Any, doc_kv: DocumentKV,
                    prefix_len: jax.Array, thought_tokens: jax.Array,
                    thought_positions: jax.Array, thought_mask: jax.Array,
                    self_cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
  """Thought tokens over a shared document: (fp32 logits [B, N, Tq, V], updated own cache).

  Thought (b, n) sees document columns s < prefix_len[b, n] (and valid) and its own tokens: the
  Tq given ones causally (masked by thought_mask) or, with `self_cache` (B·N rows), the cache
  columns up to its own after writing the Tq new ones at `self_cache.index`.
  """
  model = _dense_model(graphdef, params)
  batch, num_thoughts, length = thought_tokens.shape
  rows = batch * num_thoughts
  flat_positions = thought_positions.reshape(batch, num_thoughts * length)
  cos, sin = rope_cos_sin(flat_positions, model.head_dim, model.rope_theta)
  x = model.token_embedding(thought_tokens.reshape(batch, num_thoughts * length))

  doc_columns = jnp.arange(doc_kv.valid.shape[1], dtype=jnp.int32)
  doc_visible = doc_kv.valid[:, None, :] & (doc_columns[None, None, :] < prefix_len[:, :, None])
  row_mask = thought_mask.reshape(rows, length)
  if self_cache is None:
    own_visible = causal_attention_mask(row_mask)
  else:
    valid = write_columns(self_cache.valid, row_mask, self_cache.index)
    own_visible = cached_attention_mask(valid, self_cache.index, length)
  own_visible = own_visible.reshape(batch, num_thoughts, length, -1)

  new_keys, new_values = [], []
  for i, layer in enumerate(model.layers):
    attention = layer.attention
    normed = layer.attention_norm(x)
    queries = attention.project_queries(normed, cos, sin)  # [B, N·Tq, H, D]
    keys, values = attention.project_kv(normed, cos, sin)  # [B, N·Tq, Hkv, D]
    keys = keys.reshape(rows, length, *keys.shape[2:])
    values = values.reshape(rows, length, *values.shape[2:])
    if self_cache is not None:
      keys = write_columns(self_cache.keys[i], keys, self_cache.index)
      values = write_columns(self_cache.values[i], values, self_cache.index)
      new_keys.append(keys)
      new_values.append(values)
    attended = shared_prefix_attention(
        queries.reshape(batch, num_thoughts, length, *queries.shape[2:]),
        doc_kv.keys[i], doc_kv.values[i], doc_visible,
        keys.reshape(batch, num_thoughts, *keys.shape[1:]),
        values.reshape(batch, num_thoughts, *values.shape[1:]), own_visible)
    x = x + attention.o_proj(attended.reshape(batch, num_thoughts * length, *attended.shape[3:]))
    x = x + layer.mlp(layer.mlp_norm(x))
  logits = model.logits(model.final_norm(x)).reshape(batch, num_thoughts, length, -1)
  if self_cache is None:
    return logits, None
  new_cache = KVCache(keys=tuple(new_keys), values=tuple(new_values), valid=valid,
                      index=self_cache.index + length)
  return logits, new_cache
