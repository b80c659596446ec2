"""Hybrid decoder with the Nemotron-H architecture: Mamba2 + attention + MLP layers (the 'hybrid'
family; its record: hybrid_family.py).

  x = embed(tokens)
  per layer (one character of model.layer_pattern):  x = x + mixer(RMSNorm(x)), mixer one of
    'M' Mamba2 (mamba2.py), '*' GQA attention without RoPE or q/k-norm, '-' down(relu(up(x))²)
  logits = lm_head(RMSNorm(x))          (untied for Nemotron; tied if model.tie_embeddings)

Embedding, final norm and head are the shared tail in decoder.py; this module holds the layers.
Parameter tree: decoder.py's, with (mixer parameters: mamba2.py, attention.py, layers.py)
  layers[i].norm.scale [norm]
  layers[i].mixer.*                          (Mamba2Mixer | Attention | SquaredReLUMLP)
Positions are accepted and ignored: nothing in the model is position-dependent except causality.
Packed rows (`segment_ids`, segments.py): attention masked to the query's segment, each Mamba2
layer's state and conv window restarted at every document start.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from rlp_jax.models.attention import Attention
from rlp_jax.models.decoder import Decoder
from rlp_jax.models.hybrid_cache import HybridCache, MambaState
from rlp_jax.models.attention_kernels import CausalMask
from rlp_jax.models.kv_cache import cached_attention_mask, write_columns
from rlp_jax.models.layer_stack import run_stack
from rlp_jax.models.layers import RESIDUAL_AXES, RMSNorm, SquaredReLUMLP
from rlp_jax.models.mamba2 import Mamba2Mixer
from rlp_jax.parallel.activation_sharding import constrain

LayerState = tuple[jax.Array, jax.Array] | MambaState | None


class HybridBlock(nnx.Module):
  """x + mixer(RMSNorm(x)) for one layer kind: 'M' Mamba2, '*' attention, '-' MLP."""

  def __init__(self, kind: str, config: Any, *, param_dtype: Any, compute_dtype: Any,
               rngs: nnx.Rngs):
    self.kind = kind
    common = dict(init_std=config.init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps, param_dtype=param_dtype,
                        scale_in_fp32=True)
    if kind == 'M':
      self.mixer = Mamba2Mixer(config, param_dtype=param_dtype, compute_dtype=compute_dtype,
                               rngs=rngs)
    elif kind == '*':
      self.mixer = Attention(config.hidden_size, config.num_heads, config.num_kv_heads,
                             config.head_dim, norm_eps=config.norm_eps, qk_norm=False,
                             impl=config.get('attention_impl', 'reference'), **common)
    elif kind == '-':
      self.mixer = SquaredReLUMLP(config.hidden_size, config.intermediate_size, **common)
    else:
      raise ValueError(f'unknown layer kind {kind!r} (expected M, * or -)')

  def __call__(self, x: jax.Array, token_mask: jax.Array, attention_mask: jax.Array | CausalMask,
               state: LayerState = None, write_index: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, LayerState]:
    """The layer's output and its updated state: (keys, values) for attention (the cache buffers
    when `state` holds them), a MambaState for Mamba2 with a cache, otherwise None.
    `segment_ids` (packed rows, no cache) restart the Mamba2 state at each document start; the
    attention mask already keeps documents apart."""
    normed = self.norm(x)
    if self.kind == 'M':
      out, state = self.mixer(normed, token_mask, state, segment_ids)
    elif self.kind == '*':
      out, state = self.mixer(normed, None, None, attention_mask, state, write_index)
    else:
      out = self.mixer(normed)
    return constrain(x + out, RESIDUAL_AXES), state


class HybridDecoder(Decoder):
  """Nemotron-H decoder; `__call__` returns fp32 logits and the updated HybridCache (or None)."""
  final_norm_scale_in_fp32 = True

  def build_layers(self, config: Any, *, param_dtype: Any, compute_dtype: Any,
                   rngs: nnx.Rngs) -> list[HybridBlock]:
    return [HybridBlock(kind, config, param_dtype=param_dtype, compute_dtype=compute_dtype,
                        rngs=rngs) for kind in config.layer_pattern]

  @staticmethod
  def layer_kinds(config: Any) -> str:
    return str(config.layer_pattern)

  def run_layers(self, x: jax.Array, positions: jax.Array, token_mask: jax.Array,
                 cache: HybridCache | None, segment_ids: jax.Array | None = None,
                 ) -> tuple[jax.Array, HybridCache | None]:
    del positions  # nothing in the model depends on positions except causality
    if cache is None:
      x, _ = run_stack(self, self.plan, x, _block, None,
                       (token_mask, CausalMask(token_mask, segment_ids), None,
                        segment_ids), self.remat)
      return x, None
    valid = write_columns(cache.valid, token_mask, cache.index)
    attention_mask = cached_attention_mask(valid, cache.index, x.shape[1])
    x, layers = run_stack(self, self.plan, x, _block, cache.layers,
                          (token_mask, attention_mask, cache.index, None), 'none')
    return x, HybridCache(layers=layers, valid=valid, index=cache.index + x.shape[1])


def _block(layer: HybridBlock, x: jax.Array, state: LayerState, token_mask: jax.Array,
           attention_mask: jax.Array, write_index: jax.Array | None,
           segment_ids: jax.Array | None) -> tuple[jax.Array, LayerState]:
  """One layer with its cache value (None without a cache): (x, its new value; None for MLP and
  without a cache)."""
  x, new_state = layer(x, token_mask, attention_mask, state, write_index, segment_ids)
  return x, (None if state is None else new_state)
