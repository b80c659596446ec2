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
from rlp_jax.models.hybrid_cache import (HybridCache, MambaState, empty_hybrid_cache,
                                         thought_start_state)
from rlp_jax.models.attention_kernels import CausalMask
from rlp_jax.models.kv_cache import empty_attention_entry
from rlp_jax.models.layer_stack import map_values, run_stack, zip_values
from rlp_jax.models.layers import RESIDUAL_AXES, resolve_dtype
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
  return empty_hybrid_cache(model_config, HybridDecoder.layer_plan(model_config), batch_size,
                            max_len, dtype)


def _document_block(layer: Any, x: jax.Array, value: None, mask: jax.Array,
                    attention_mask: jax.Array, state_positions: jax.Array,
                    segment_ids: jax.Array | None) -> tuple[jax.Array, Any]:
  """One block over the documents: (x + mixer(norm(x)), what the thoughts need from it: the
  Mamba states at the positions, the attention keys/values, or None)."""
  del value
  normed = layer.norm(x)
  kept = None
  if layer.kind == 'M':
    out, kept = layer.mixer.document_scan(normed, mask, state_positions, segment_ids)
  elif layer.kind == '*':
    out, kept = layer.mixer(normed, None, None, attention_mask)
  else:
    out = layer.mixer(normed)
  return constrain(x + out, RESIDUAL_AXES), kept


def _thought_block(layer: Any, x: jax.Array, value: Any, row_mask: jax.Array,
                   masks: ThoughtMasks, write_index: Any, *, num_thoughts: int,
                   ) -> tuple[jax.Array, Any]:
  """One block for thought rows x [B·N, Tq, E]; `value` is (the document pass's value of the
  layer, the own cache's value or None). Returns (new x, the Mamba state or the written own
  keys/values with a cache, else None)."""
  document, own = value
  normed = layer.norm(x)
  kept = None
  if layer.kind == 'M':
    start = own if own is not None else thought_start_state(document, num_thoughts)
    out, kept = layer.mixer(normed, row_mask, start)
    kept = None if own is None else kept
  elif layer.kind == '*':
    rows, length = x.shape[:2]
    doc_keys, doc_values = document
    out, kept = attend_over_document(
        layer.mixer, normed.reshape(rows // num_thoughts, num_thoughts * length, -1), None, None,
        doc_keys, doc_values, masks, own, write_index)
    out = out.reshape(x.shape)
  else:
    out = layer.mixer(normed)
  return constrain(x + out, RESIDUAL_AXES), kept


def hybrid_document_kv(model: HybridDecoder, tokens: jax.Array, positions: jax.Array,
                       mask: jax.Array, state_positions: jax.Array | None,
                       segment_ids: jax.Array | None = None, *, return_hidden: bool = False,
                       ) -> tuple[jax.Array, DocumentKV]:
  """One causal forward over documents [B, L]: (fp32 logits [B, L, V], DocumentKV with Mamba
  states at the K positions `state_positions` int32 [B, K] (each ≥ 1: after x_0 … x_{t-1}));
  with `return_hidden` the residual stream [B, L, E] before the final norm instead of the
  logits; positions are ignored. With `segment_ids` (packed rows) attention and the Mamba2 scans
  stay in each document, so the states at t hold t's document prefix alone."""
  del positions
  if state_positions is None:
    raise ValueError('document_kv of a hybrid model needs state_positions [B, K]: the scored '
                     'positions whose Mamba states the thoughts start from')
  x, kept = run_stack(model, model.plan, model.token_embedding(tokens), _document_block, None,
                      (mask, CausalMask(mask, segment_ids), state_positions,
                       segment_ids), model.remat)
  return (x if return_hidden else model.output_logits(x)), DocumentKV(
      layers=kept, valid=mask.astype(jnp.bool_), segment_ids=segment_ids)


def empty_hybrid_thought_cache(model_config: Any, doc_kv: DocumentKV, thoughts_per_document: int,
                               max_len: int) -> HybridCache:
  """Own-thought cache of B·N rows: empty attention columns, Mamba states from the document."""
  dtype = resolve_dtype(model_config.compute_dtype, 'model.compute_dtype')
  rows = doc_kv.valid.shape[0] * thoughts_per_document

  def entry(document: Any) -> Any:
    if isinstance(document, MambaState):
      return thought_start_state(document, thoughts_per_document)
    return empty_attention_entry(rows, max_len, model_config.num_kv_heads, model_config.head_dim,
                                 dtype)

  return HybridCache(layers=map_values(doc_kv.layers, entry),
                     valid=jnp.zeros((rows, max_len), jnp.bool_), index=jnp.zeros((), jnp.int32))


def hybrid_thought_forward(model: HybridDecoder, doc_kv: DocumentKV, prefix_len: jax.Array,
                           thought_tokens: jax.Array, thought_positions: jax.Array,
                           thought_mask: jax.Array, self_cache: HybridCache | None = None, *,
                           return_hidden: bool = False) -> tuple[jax.Array, HybridCache | None]:
  """Thought tokens [B, N, Tq] over a shared document: (fp32 logits [B, N, Tq, V], new cache);
  with `return_hidden` the residual stream [B, N, Tq, E] before the final norm instead of the
  logits.

  Mamba layers run each row from its document state (or the cache's state), attention layers
  attend to document columns < prefix_len[b, n] plus the thought's own tokens; positions are
  ignored.
  """
  del thought_positions
  batch, num_thoughts, length = thought_tokens.shape
  rows = batch * num_thoughts
  row_mask = thought_mask.reshape(rows, length)
  masks = thought_masks(doc_kv, prefix_len, thought_mask, self_cache)
  x = model.token_embedding(thought_tokens.reshape(rows, length))  # [B·N, Tq, E]
  remat = model.remat if self_cache is None else 'none'  # decoding takes no gradient
  block = functools.partial(_thought_block, num_thoughts=num_thoughts)
  own = None if self_cache is None else self_cache.layers
  x, kept = run_stack(model, model.plan, x, block, zip_values(doc_kv.layers, own),
                      (row_mask, masks, None if self_cache is None else self_cache.index), remat)
  logits = (x if return_hidden else model.output_logits(x)).reshape(batch, num_thoughts, length,
                                                                     -1)
  if self_cache is None:
    return logits, None
  return logits, HybridCache(layers=kept, valid=masks.own_valid, index=self_cache.index + length)


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
