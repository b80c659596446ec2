"""The 'dense' family (Qwen3): its record, decode caches, and shared-prefix passes.

Shared-prefix passes: `document_kv` runs the documents once and keeps every layer's keys/values
(after k-norm and RoPE) next to the logits the next-token loss needs (or, `return_hidden`, the
residual stream those logits come from, for log-probs a chunk of tokens at a time:
objective/chunked_log_probs.py); `thought_forward` runs the N thoughts of each document over
them, thought (b, n) seeing document columns s < prefix_len[b, n] and its own tokens
(prefix_attention.py). Both reuse the decoder's own submodules (norms,
projections, RoPE, MLP, lm head), so the shared and naive paths run the same per-token code.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlp_jax.errors import ConfigError
from rlp_jax.models.dense import DenseDecoder
from rlp_jax.models.family import ModelFamily
from rlp_jax.models.hf_names.qwen3 import QWEN3
from rlp_jax.models.attention_kernels import CausalMask
from rlp_jax.models.kv_cache import (KVCache, empty_attention_entry,
                                     empty_cache)
from rlp_jax.models.layer_stack import run_stack, zip_values
from rlp_jax.models.layers import RESIDUAL_AXES, resolve_dtype, rope_cos_sin
from rlp_jax.models.prefix_attention import (DocumentKV, ThoughtMasks, attend_over_document,
                                             thought_masks)
from rlp_jax.parallel.activation_sharding import constrain


def validate_dense_config(model_config: Any) -> None:
  """The dense family has no keys of its own; it refuses the hybrid layer pattern."""
  if model_config.get('layer_pattern'):
    raise ConfigError("config key `model.layer_pattern` is only used by `model.family` 'hybrid'")


def _attention_entries(model_config: Any, batch_size: int, max_len: int) -> KVCache:
  dtype = resolve_dtype(model_config.compute_dtype, 'model.compute_dtype')
  return empty_cache(DenseDecoder.layer_plan(model_config), batch_size, max_len,
                     lambda _: empty_attention_entry(batch_size, max_len, model_config.num_kv_heads,
                                                     model_config.head_dim, dtype))


def init_dense_cache(model_config: Any, batch_size: int, max_len: int) -> KVCache:
  """Empty KV cache (zeros, nothing valid, index 0) in the compute dtype."""
  return _attention_entries(model_config, batch_size, max_len)


def empty_dense_thought_cache(model_config: Any, doc_kv: DocumentKV, thoughts_per_document: int,
                              max_len: int) -> KVCache:
  """Empty own-thought KV cache of B·N rows (row b·N + n) and `max_len` columns."""
  return _attention_entries(model_config, doc_kv.valid.shape[0] * thoughts_per_document, max_len)


def _document_layer(layer: Any, x: jax.Array, value: None, cos: jax.Array, sin: jax.Array,
                    attention_mask: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  del value
  return layer(x, cos, sin, attention_mask)


def dense_document_kv(model: DenseDecoder, tokens: jax.Array, positions: jax.Array,
                      mask: jax.Array, state_positions: jax.Array | None = None,
                      segment_ids: jax.Array | None = None, *, return_hidden: bool = False,
                      ) -> tuple[jax.Array, DocumentKV]:
  """One causal forward over documents [B, L]: (fp32 logits [B, L, V], every layer's keys and
  values); with `return_hidden` the residual stream [B, L, E] before the final norm instead of
  the logits (`model.output_logits` of it gives them). `state_positions` is ignored (every
  column's keys are kept). With `segment_ids` (packed rows) attention stays in each document and
  the DocumentKV keeps the ids, so each thought sees its own document only; `positions` then
  restart per document."""
  del state_positions
  cos, sin = rope_cos_sin(positions, model.head_dim, model.rope_theta)
  x, kept = run_stack(model, model.plan, model.token_embedding(tokens), _document_layer, None,
                      (cos, sin, CausalMask(mask, segment_ids)), model.remat)
  return (x if return_hidden else model.output_logits(x)), DocumentKV(
      layers=kept, valid=mask.astype(jnp.bool_), segment_ids=segment_ids)


def _thought_layer(layer: Any, x: jax.Array, value: Any, cos: jax.Array, sin: jax.Array,
                   masks: ThoughtMasks, write_index: jax.Array | None) -> tuple[jax.Array, Any]:
  """One Qwen3 decoder layer for thought tokens [B, N·Tq, E] over the shared document; `value` is
  ((document keys, values), own cache keys/values or None)."""
  (doc_keys, doc_values), cache_kv = value
  out, written = attend_over_document(layer.attention, layer.attention_norm(x), cos, sin,
                                      doc_keys, doc_values, masks, cache_kv, write_index)
  x = constrain(x + out, RESIDUAL_AXES)
  return constrain(x + layer.mlp(layer.mlp_norm(x)), RESIDUAL_AXES), written


def dense_thought_forward(model: DenseDecoder, doc_kv: DocumentKV, prefix_len: jax.Array,
                          thought_tokens: jax.Array, thought_positions: jax.Array,
                          thought_mask: jax.Array, self_cache: KVCache | None = None, *,
                          return_hidden: bool = False) -> tuple[jax.Array, KVCache | None]:
  """Thought tokens [B, N, Tq] over a shared document: (fp32 logits [B, N, Tq, V], new cache);
  with `return_hidden` the residual stream [B, N, Tq, E] before the final norm instead of the
  logits."""
  batch, num_thoughts, length = thought_tokens.shape
  cos, sin = rope_cos_sin(thought_positions.reshape(batch, num_thoughts * length),
                          model.head_dim, model.rope_theta)
  x = model.token_embedding(thought_tokens.reshape(batch, num_thoughts * length))
  masks = thought_masks(doc_kv, prefix_len, thought_mask, self_cache)
  remat = model.remat if self_cache is None else 'none'  # decoding takes no gradient
  own = None if self_cache is None else self_cache.layers
  x, written = run_stack(model, model.plan, x, _thought_layer, zip_values(doc_kv.layers, own),
                         (cos, sin, masks, None if self_cache is None else self_cache.index),
                         remat)
  logits = (x if return_hidden else model.output_logits(x)).reshape(batch, num_thoughts, length,
                                                                     -1)
  if self_cache is None:
    return logits, None
  return logits, KVCache(layers=written, valid=masks.own_valid, index=self_cache.index + length)


DENSE = ModelFamily(
    name='dense',
    decoder=DenseDecoder,
    init_cache=init_dense_cache,
    validate_config=validate_dense_config,
    document_kv=dense_document_kv,
    thought_forward=dense_thought_forward,
    empty_thought_cache=empty_dense_thought_cache,
    hf=QWEN3,
)
