"""The 'hybrid' family (Nemotron-H): its record, config checks, decode caches, shared-prefix passes.

Shared-prefix passes: one document pass (`hybrid_document_kv`) keeps, per attention layer, the
document's keys/values and, per Mamba2 layer, the recurrent state after the first t tokens for
each of the K scored positions t, read off the document's own chunked scan
(`Mamba2Mixer.document_scan`): the SSM state from the chunk states plus one partial chunk, the
conv window from the conv inputs before t. No prefix is re-scanned. A thought of position t then
starts its Mamba layers from those states and its attention layers attend into the document cache
(prefix_attention.py), so `<think> c </think> x_t` after the shared document equals the naive
path's forward over `x_<t <think> c </think> x_t`.

Thought rows are B·N (row b·N + n, n = k·G + g); the K states of a document are repeated G = N/K
times, once per thought, because each thought's state then evolves on its own. Nothing in the
hybrid model depends on positions, so none are used.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from rlp_jax.errors import ConfigError
from rlp_jax.models.family import ModelFamily
from rlp_jax.models.hf_names.nemotron_h import NEMOTRON_H
from rlp_jax.models.hybrid import HybridDecoder
from rlp_jax.models.hybrid_cache import HybridCache, empty_hybrid_cache, thought_start_states
from rlp_jax.models.kv_cache import KVCache, causal_attention_mask, empty_kv_cache
from rlp_jax.models.layers import RESIDUAL_AXES, layer_forward, resolve_dtype
from rlp_jax.models.prefix_attention import (DocumentKV, ThoughtMasks, attend_over_document,
                                             thought_masks)
from rlp_jax.parallel.activation_sharding import constrain


def validate_hybrid_config(model_config: Any) -> None:
  """ConfigError naming the first bad key: the layer pattern, the Mamba2 sizes, the dt clamp."""
  pattern = model_config.layer_pattern
  if not pattern or set(pattern) - set('M*-'):
    raise ConfigError('config key `model.layer_pattern` must be a non-empty string of M (Mamba2), '
                      f'* (attention) and - (MLP), got {pattern!r}')
  if len(pattern) != model_config.num_layers:
    raise ConfigError(f'config key `model.num_layers` ({model_config.num_layers}) must equal the '
                      f'length of `model.layer_pattern` ({len(pattern)})')
  if 'M' in pattern:
    for key in ('mamba_num_heads', 'mamba_head_dim', 'ssm_state_size', 'mamba_n_groups',
                'mamba_conv_kernel', 'mamba_chunk_size'):
      if not model_config[key] > 0:
        raise ConfigError(f'config key `model.{key}` must be > 0 when the layer pattern has '
                          f'Mamba2 layers, got {model_config[key]!r}')
    if model_config.mamba_num_heads % model_config.mamba_n_groups:
      raise ConfigError(f'config key `model.mamba_n_groups` ({model_config.mamba_n_groups}) must '
                        f'divide `model.mamba_num_heads` ({model_config.mamba_num_heads})')
  if not 0 <= model_config.mamba_dt_limit_min <= model_config.mamba_dt_limit_max:
    raise ConfigError('config keys `model.mamba_dt_limit_min` <= `model.mamba_dt_limit_max` must '
                      f'hold with min >= 0, got {model_config.mamba_dt_limit_min}, '
                      f'{model_config.mamba_dt_limit_max}')


def init_hybrid_cache(model_config: Any, batch_size: int, max_len: int) -> HybridCache:
  """Empty decode cache in the compute dtype (SSM states fp32); see hybrid_cache.py."""
  dtype = resolve_dtype(model_config.compute_dtype, 'model.compute_dtype')
  return empty_hybrid_cache(model_config, batch_size, max_len, dtype)


def _document_block(layer: Any, x: jax.Array, mask: jax.Array, attention_mask: jax.Array,
                    state_positions: jax.Array) -> tuple[jax.Array, Any]:
  """One block over the documents: (x + mixer(norm(x)), what the thoughts need from it: the
  Mamba states at the positions, the attention keys/values, or None)."""
  normed = layer.norm(x)
  kept = None
  if layer.kind == 'M':
    out, kept = layer.mixer.document_scan(normed, mask, state_positions)
  elif layer.kind == '*':
    out, kept = layer.mixer(normed, None, None, attention_mask)
  else:
    out = layer.mixer(normed)
  return constrain(x + out, RESIDUAL_AXES), kept


def _thought_block(layer: Any, x: jax.Array, row_mask: jax.Array, mamba_state: Any,
                   doc_keys: Any, doc_values: Any, masks: ThoughtMasks, cache_kv: Any,
                   write_index: Any, *, num_thoughts: int) -> tuple[jax.Array, Any]:
  """One block for thought rows x [B·N, Tq, E]: (new x, the Mamba state or the written own
  keys/values, or None)."""
  normed = layer.norm(x)
  kept = None
  if layer.kind == 'M':
    out, kept = layer.mixer(normed, row_mask, mamba_state)
  elif layer.kind == '*':
    rows, length = x.shape[:2]
    out, kept = attend_over_document(
        layer.mixer, normed.reshape(rows // num_thoughts, num_thoughts * length, -1), None, None,
        doc_keys, doc_values, masks, cache_kv, write_index)
    out = out.reshape(x.shape)
  else:
    out = layer.mixer(normed)
  return constrain(x + out, RESIDUAL_AXES), kept


def hybrid_document_kv(model: HybridDecoder, tokens: jax.Array, positions: jax.Array,
                       mask: jax.Array, state_positions: jax.Array | None,
                       ) -> tuple[jax.Array, DocumentKV]:
  """One causal forward over documents [B, L]: (fp32 logits [B, L, V], DocumentKV with Mamba
  states at the K positions `state_positions` int32 [B, K] (each ≥ 1: after x_0 … x_{t-1}));
  positions are ignored."""
  del positions
  if state_positions is None:
    raise ValueError('document_kv of a hybrid model needs state_positions [B, K]: the scored '
                     'positions whose Mamba states the thoughts start from')
  x = model.token_embedding(tokens)
  attention_mask = causal_attention_mask(mask)
  keys, values, states = [], [], []
  for layer in model.layers:
    x, kept = layer_forward(layer, x, mask, attention_mask, state_positions, remat=model.remat,
                            call=_document_block)
    if layer.kind == 'M':
      states.append(kept)
    elif layer.kind == '*':
      keys.append(kept[0])
      values.append(kept[1])
  logits = model.output_logits(x)
  return logits, DocumentKV(keys=tuple(keys), values=tuple(values),
                            valid=mask.astype(jnp.bool_), mamba=tuple(states))


def empty_hybrid_thought_cache(model_config: Any, doc_kv: DocumentKV, thoughts_per_document: int,
                               max_len: int) -> HybridCache:
  """Own-thought cache of B·N rows: empty attention columns, Mamba states from the document."""
  dtype = resolve_dtype(model_config.compute_dtype, 'model.compute_dtype')
  rows = doc_kv.valid.shape[0] * thoughts_per_document
  attention = empty_kv_cache(model_config.layer_pattern.count('*'), rows, max_len,
                             model_config.num_kv_heads, model_config.head_dim, dtype)
  return HybridCache(attention=attention,
                     mamba=thought_start_states(doc_kv.mamba, thoughts_per_document))


def hybrid_thought_forward(model: HybridDecoder, doc_kv: DocumentKV, prefix_len: jax.Array,
                           thought_tokens: jax.Array, thought_positions: jax.Array,
                           thought_mask: jax.Array, self_cache: HybridCache | None = None,
                           ) -> tuple[jax.Array, HybridCache | None]:
  """Thought tokens [B, N, Tq] over a shared document: (fp32 logits [B, N, Tq, V], new cache).

  Mamba layers run each row from its document state (or the cache's state), attention layers
  attend to document columns < prefix_len[b, n] plus the thought's own tokens; positions are
  ignored.
  """
  del thought_positions
  batch, num_thoughts, length = thought_tokens.shape
  rows = batch * num_thoughts
  row_mask = thought_mask.reshape(rows, length)
  own_kv = None if self_cache is None else self_cache.attention
  masks = thought_masks(doc_kv, prefix_len, thought_mask, own_kv)
  mamba_in = (thought_start_states(doc_kv.mamba, num_thoughts) if self_cache is None
              else self_cache.mamba)
  x = model.token_embedding(thought_tokens.reshape(rows, length))  # [B·N, Tq, E]
  new_keys, new_values, new_mamba = [], [], []
  remat = model.remat if self_cache is None else 'none'  # decoding takes no gradient
  block = functools.partial(_thought_block, num_thoughts=num_thoughts)
  attention_index = 0
  for layer in model.layers:
    state = doc_keys = doc_values = cache_kv = write_index = None
    if layer.kind == 'M':
      state = mamba_in[len(new_mamba)]
    elif layer.kind == '*':
      i, attention_index = attention_index, attention_index + 1
      doc_keys, doc_values = doc_kv.keys[i], doc_kv.values[i]
      if own_kv is not None:
        cache_kv, write_index = (own_kv.keys[i], own_kv.values[i]), own_kv.index
    x, kept = layer_forward(layer, x, row_mask, state, doc_keys, doc_values, masks, cache_kv,
                            write_index, remat=remat, call=block)
    if layer.kind == 'M':
      new_mamba.append(kept)
    elif layer.kind == '*' and kept is not None:
      new_keys.append(kept[0])
      new_values.append(kept[1])
  logits = model.output_logits(x).reshape(batch, num_thoughts, length, -1)
  if self_cache is None:
    return logits, None
  attention = KVCache(keys=tuple(new_keys), values=tuple(new_values), valid=masks.own_valid,
                      index=own_kv.index + length)
  return logits, HybridCache(attention=attention, mamba=tuple(new_mamba))


HYBRID = ModelFamily(
    name='hybrid',
    decoder=HybridDecoder,
    init_cache=init_hybrid_cache,
    validate_config=validate_hybrid_config,
    document_kv=hybrid_document_kv,
    thought_forward=hybrid_thought_forward,
    empty_thought_cache=empty_hybrid_thought_cache,
    hf=NEMOTRON_H,
)
