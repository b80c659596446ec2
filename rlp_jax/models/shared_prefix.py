"""Shared-prefix compute (DESIGN §2): one document pass serves every rollout. Public entry points
for both families; the dense (Qwen3) implementation lives here, the hybrid one in
hybrid_shared_prefix.py, the attention they share in prefix_attention.py.

`document_kv` runs the document once and keeps what its thoughts need: each attention layer's
keys/values (dense: after k-norm and RoPE) and, for the hybrid family, each Mamba2 layer's state at
the scored positions, next to the logits the next-token loss needs. `thought_forward` runs the
tokens of N thoughts per document over it: thought (b, n) sees document columns s <
prefix_len[b, n] and its own tokens (and starts its Mamba layers from the document's state at
prefix_len). The per-token math reuses the model's own submodules (norms, projections, RoPE, MLP,
mixers, lm head), so the shared and naive paths run the same code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.errors import ConfigError
from rlp_jax.models.dense import DenseDecoder
from rlp_jax.models.hybrid import HybridDecoder
from rlp_jax.models.hybrid_cache import HybridCache
from rlp_jax.models.hybrid_shared_prefix import (empty_hybrid_thought_cache, hybrid_document_kv,
                                                 hybrid_thought_forward)
from rlp_jax.models.kv_cache import KVCache, causal_attention_mask, empty_kv_cache
from rlp_jax.models.layers import RESIDUAL_AXES, layer_forward, resolve_dtype, rope_cos_sin
from rlp_jax.models.prefix_attention import (DocumentKV, ThoughtMasks, attend_over_document,
                                             shared_prefix_attention, thought_masks)
from rlp_jax.parallel.activation_sharding import constrain

__all__ = ['DocumentKV', 'document_kv', 'empty_thought_cache', 'shared_prefix_attention',
           'thought_forward']

ThoughtCache = KVCache | HybridCache


def _model(graphdef: nnx.GraphDef, params: Any) -> DenseDecoder | HybridDecoder:
  model = nnx.merge(graphdef, params)
  if not isinstance(model, (DenseDecoder, HybridDecoder)):
    raise ConfigError(f'rlp.prefix_mode="shared" has no implementation for {type(model).__name__}')
  return model


def document_kv(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array, positions: jax.Array,
                mask: jax.Array, state_positions: jax.Array | None = None,
                ) -> tuple[jax.Array, DocumentKV]:
  """One causal forward over documents [B, L]: (fp32 logits [B, L, V], DocumentKV).

  The logits are those of `registry.forward(graphdef, params, tokens, positions, mask)`.
  `state_positions` int32 [B, K] (each ≥ 1): the scored positions whose Mamba states the hybrid
  family keeps (required there; the dense family keeps every column's keys and ignores it).
  """
  model = _model(graphdef, params)
  if isinstance(model, HybridDecoder):
    if state_positions is None:
      raise ValueError('document_kv of a hybrid model needs state_positions [B, K]: the scored '
                       'positions whose Mamba states the thoughts start from')
    return hybrid_document_kv(model, tokens, mask, state_positions)
  cos, sin = rope_cos_sin(positions, model.head_dim, model.rope_theta)
  x = model.token_embedding(tokens)
  attention_mask = causal_attention_mask(mask)
  keys, values = [], []
  for layer in model.layers:
    x, (layer_keys, layer_values) = layer_forward(layer, x, cos, sin, attention_mask,
                                                  remat=model.remat)
    keys.append(layer_keys)
    values.append(layer_values)
  logits = model.logits(model.final_norm(x))
  return logits, DocumentKV(keys=tuple(keys), values=tuple(values), valid=mask.astype(jnp.bool_))


def empty_thought_cache(model_config: Any, doc_kv: DocumentKV, thoughts_per_document: int,
                        max_len: int) -> ThoughtCache:
  """Empty own-thought cache of B·N rows (row b·N + n) and `max_len` columns; for the hybrid
  family its Mamba states are the document's at each thought's position."""
  dtype = resolve_dtype(model_config.compute_dtype, 'model.compute_dtype')
  if model_config.family == 'hybrid':
    return empty_hybrid_thought_cache(model_config, doc_kv, thoughts_per_document, max_len, dtype)
  return empty_kv_cache(model_config.num_layers, doc_kv.valid.shape[0] * thoughts_per_document,
                        max_len, model_config.num_kv_heads, model_config.head_dim, dtype)


def _dense_thought_layer(layer: Any, x: jax.Array, cos: jax.Array, sin: jax.Array,
                         doc_keys: jax.Array, doc_values: jax.Array, masks: ThoughtMasks,
                         cache_kv: tuple[jax.Array, jax.Array] | None,
                         write_index: jax.Array | None) -> tuple[jax.Array, Any]:
  """One Qwen3 decoder layer for thought tokens [B, N·Tq, E] over the shared document."""
  out, written = attend_over_document(layer.attention, layer.attention_norm(x), cos, sin,
                                      doc_keys, doc_values, masks, cache_kv, write_index)
  x = constrain(x + out, RESIDUAL_AXES)
  return constrain(x + layer.mlp(layer.mlp_norm(x)), RESIDUAL_AXES), written


def thought_forward(graphdef: nnx.GraphDef, params: Any, doc_kv: DocumentKV,
                    prefix_len: jax.Array, thought_tokens: jax.Array,
                    thought_positions: jax.Array, thought_mask: jax.Array,
                    self_cache: ThoughtCache | None = None,
                    ) -> tuple[jax.Array, ThoughtCache | None]:
  """Thought tokens over a shared document: (fp32 logits [B, N, Tq, V], updated own cache).

  Thought (b, n) sees document columns s < prefix_len[b, n] (and valid) and its own tokens: the
  Tq given ones causally (masked by thought_mask) or, with `self_cache` (B·N rows), the cache
  columns up to its own after writing the Tq new ones at `self_cache.index`.
  """
  model = _model(graphdef, params)
  if isinstance(model, HybridDecoder):
    return hybrid_thought_forward(model, doc_kv, prefix_len, thought_tokens, thought_mask,
                                  self_cache)
  batch, num_thoughts, length = thought_tokens.shape
  cos, sin = rope_cos_sin(thought_positions.reshape(batch, num_thoughts * length),
                          model.head_dim, model.rope_theta)
  x = model.token_embedding(thought_tokens.reshape(batch, num_thoughts * length))
  masks = thought_masks(doc_kv, prefix_len, thought_mask, self_cache)
  new_keys, new_values = [], []
  remat = model.remat if self_cache is None else 'none'  # decoding takes no gradient
  for i, layer in enumerate(model.layers):
    cache_kv = None if self_cache is None else (self_cache.keys[i], self_cache.values[i])
    x, written = layer_forward(layer, x, cos, sin, doc_kv.keys[i], doc_kv.values[i], masks,
                               cache_kv, None if self_cache is None else self_cache.index,
                               remat=remat, call=_dense_thought_layer)
    if written is not None:
      new_keys.append(written[0])
      new_values.append(written[1])
  logits = model.logits(model.final_norm(x)).reshape(batch, num_thoughts, length, -1)
  if self_cache is None:
    return logits, None
  return logits, KVCache(keys=tuple(new_keys), values=tuple(new_values), valid=masks.own_valid,
                         index=self_cache.index + length)
