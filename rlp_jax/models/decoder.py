"""The decoder tail every family shares: embed → layers → final RMSNorm → logits.

  x = token_embedding(tokens)
  x = layers(x)                         (family-specific: `build_layers`, `run_layers`)
  logits = lm_head(final_norm(x))       (lm_head tied to the embedding or separate, by config)

Parameter tree (logical axes in brackets), the same for every family:
  token_embedding.embedding [vocab, embed]
  layers[i].*                           (the family's layer modules; with model.scan_layers
                                         blocks[s][j].* stacked per unit position, layer_stack.py)
  final_norm.scale [norm]
  lm_head.kernel [embed, vocab]         (absent when tied)
Parameters are created in that order (embedding, layers, final norm, head), which fixes the random
initialisation of each seed. `residual_stream` runs embedding and layers (x before the final
norm); `output_logits` applies the final norm and lm head, so a caller can take logits of only
the columns it needs; `output_head` gives the final-normed states and the head as one matrix
(`OutputHead`), for log-probs that never hold the logits of every token at once
(objective/chunked_log_probs.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.models.layer_stack import LayerPlan, layer_plan, stack_layers
from rlp_jax.models.layers import (LOGITS_AXES, Embedding, Projection, RMSNorm, remat_option,
                                   resolve_dtype)
from rlp_jax.parallel.activation_sharding import constrain


class OutputHead(NamedTuple):
  """The lm head as one matrix, as stored (the parameter's dtype): `weight` [V, E] (layout 've',
  the tied embedding) or [E, V] ('ev', the separate lm head's kernel), multiplied in
  `compute_dtype`. `logits(normed)` are the fp32 logits of final-normed states [R, C, E] (the only place
  the model computes logits: `Decoder.output_logits` calls it); a slice of `weight` along its vocabulary axis gives the
  logits of those vocabulary ids."""
  weight: jax.Array
  layout: str
  compute_dtype: Any

  @property
  def vocab_axis(self) -> int:
    return self.layout.index('v')

  def logits(self, normed: jax.Array) -> jax.Array:
    """fp32 logits [R, C, V'] (V' = the weight's vocabulary size) of normed [R, C, E]."""
    return constrain(jnp.einsum(f'ble,{self.layout}->blv', normed.astype(self.compute_dtype),
                                self.weight.astype(self.compute_dtype),
                                preferred_element_type=jnp.float32), LOGITS_AXES)


class Decoder(nnx.Module):
  """Base decoder; `__call__` returns fp32 logits and the updated cache (or None).

  A family subclasses it with `build_layers` (the layer modules, in order) and `run_layers` (the
  residual stream through them, with or without a decode cache); `final_norm_scale_in_fp32`
  picks the final RMSNorm's flavour (see layers.RMSNorm).
  """
  final_norm_scale_in_fp32: bool = False

  def __init__(self, config: Any, rngs: nnx.Rngs):
    param_dtype = resolve_dtype(config.param_dtype, 'model.param_dtype')
    compute_dtype = resolve_dtype(config.compute_dtype, 'model.compute_dtype')
    self.tie_embeddings = bool(config.tie_embeddings)
    self.remat = remat_option(config)
    common = dict(init_std=config.init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    self.token_embedding = Embedding(config.vocab_size, config.hidden_size, **common)
    layers = self.build_layers(config, param_dtype=param_dtype, compute_dtype=compute_dtype,
                               rngs=rngs)
    self.plan = self.layer_plan(config)
    if self.plan.scanned:  # the same random layers, stacked: a seed inits both layouts alike
      self.blocks = stack_layers(layers, self.plan)
    else:
      self.layers = nnx.List(layers)
    self.final_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, param_dtype=param_dtype,
                              scale_in_fp32=self.final_norm_scale_in_fp32)
    if not self.tie_embeddings:
      self.lm_head = Projection('ble,ev->blv', (config.hidden_size, config.vocab_size),
                                ('embed', 'vocab'), output_dtype=jnp.float32, **common)

  def build_layers(self, config: Any, *, param_dtype: Any, compute_dtype: Any,
                   rngs: nnx.Rngs) -> list[nnx.Module]:
    """The family's layer modules, in order (stored as `layers`, or stacked as `blocks`)."""
    raise NotImplementedError

  @staticmethod
  def layer_kinds(config: Any) -> str:
    """One character per layer naming its kind; layers of one kind share a structure."""
    raise NotImplementedError

  @classmethod
  def layer_plan(cls, config: Any) -> LayerPlan:
    """Where each layer's parameters and per-layer values live (`model.scan_layers`)."""
    return layer_plan(cls.layer_kinds(config), bool(config.get('scan_layers', False)))

  def run_layers(self, x: jax.Array, positions: jax.Array, token_mask: jax.Array,
                 cache: Any | None, segment_ids: jax.Array | None = None,
                 ) -> tuple[jax.Array, Any | None]:
    """Embedded tokens x [B, L, E] through every layer: (residual stream, updated cache or None).
    Without a cache the layers follow `self.remat`; `segment_ids` (packed rows, segments.py)
    keeps every document to itself."""
    raise NotImplementedError

  def output_logits(self, x: jax.Array) -> jax.Array:
    """fp32 logits [B, L, V] from the residual stream (final norm, then lm head: `output_head`)."""
    normed, head = self.output_head(x)
    return head.logits(normed)

  def output_head(self, x: jax.Array) -> tuple[jax.Array, OutputHead]:
    """(final_norm(x) in the compute dtype, the lm head as an `OutputHead`): its
    `logits(normed)` are `output_logits(x)`, the model's only logits computation."""
    if self.tie_embeddings:
      embedding = self.token_embedding
      return (self.final_norm(x).astype(embedding.compute_dtype),
              OutputHead(embedding.embedding[...], 've', embedding.compute_dtype))
    head = self.lm_head
    return (self.final_norm(x).astype(head.compute_dtype),
            OutputHead(head.kernel[...], 'ev', head.compute_dtype))

  def __call__(self, tokens: jax.Array, positions: jax.Array,
               token_mask: jax.Array | None = None, cache: Any | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, Any | None]:
    """tokens/positions int32 [B, L], token_mask bool [B, L] (None: all real), segment_ids
    int32 [B, L] (None: one document per row; see `residual_stream`)."""
    x, cache = self.residual_stream(tokens, positions, token_mask, cache, segment_ids)
    return self.output_logits(x), cache

  def residual_stream(self, tokens: jax.Array, positions: jax.Array,
                      token_mask: jax.Array | None = None, cache: Any | None = None,
                      segment_ids: jax.Array | None = None) -> tuple[jax.Array, Any | None]:
    """The residual stream after the last layer [B, L, E] (before the final norm) and the
    updated cache (None without one). Without a cache the layers follow `model.remat`.

    `segment_ids` int32 [B, L] (packed rows: 0 padding, 1, 2, … per document; segments.py):
    attention stays inside a segment and Mamba2 states restart at each document start; the
    caller gives positions that restart there too (`segments.positions_in_segment`). Only
    without a cache: a decode row holds one prompt."""
    if token_mask is None:
      token_mask = jnp.ones(tokens.shape, jnp.bool_)
    if segment_ids is not None and cache is not None:
      raise ValueError('segment_ids (packed rows) apply to a forward without a decode cache')
    return self.run_layers(self.token_embedding(tokens), positions, token_mask, cache,
                           segment_ids)
