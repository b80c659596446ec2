"""Dense decoder with the Qwen3 architecture.

  x = embed(tokens)
  per layer: x = x + attention(RMSNorm(x)); x = x + mlp(RMSNorm(x))
  logits = lm_head(RMSNorm(x))          (lm_head tied to the embedding or separate, by config)

`residual_stream` runs embedding and layers (x before the final norm); `output_logits` applies the
final norm and lm head, so a caller can take logits of only the columns it needs.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.models.attention import Attention
from rlp_jax.models.kv_cache import (KVCache, cached_attention_mask, causal_attention_mask,
                                     write_columns)
from rlp_jax.models.layers import (LOGITS_AXES, RESIDUAL_AXES, Embedding, Projection, RMSNorm,
                                   SwiGLU, layer_forward, remat_option, resolve_dtype,
                                   rope_cos_sin)
from rlp_jax.parallel.activation_sharding import constrain


class DecoderLayer(nnx.Module):
  """Pre-norm residual block: attention then SwiGLU MLP."""

  def __init__(self, config: Any, *, param_dtype: Any, compute_dtype: Any, rngs: nnx.Rngs):
    common = dict(init_std=config.init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    self.attention_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, param_dtype=param_dtype)
    self.attention = Attention(config.hidden_size, config.num_heads, config.num_kv_heads,
                               config.head_dim, norm_eps=config.norm_eps, **common)
    self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, param_dtype=param_dtype)
    self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, **common)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
               past_kv: tuple[jax.Array, jax.Array] | None = None,
               write_index: jax.Array | None = None,
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    attended, kv = self.attention(self.attention_norm(x), cos, sin, mask, past_kv, write_index)
    x = constrain(x + attended, RESIDUAL_AXES)
    x = constrain(x + self.mlp(self.mlp_norm(x)), RESIDUAL_AXES)
    return x, kv


class DenseDecoder(nnx.Module):
  """Qwen3-style decoder; `__call__` returns fp32 logits and the updated cache (or None)."""

  def __init__(self, config: Any, rngs: nnx.Rngs):
    param_dtype = resolve_dtype(config.param_dtype, 'model.param_dtype')
    compute_dtype = resolve_dtype(config.compute_dtype, 'model.compute_dtype')
    self.compute_dtype = compute_dtype
    self.head_dim = int(config.head_dim)
    self.rope_theta = float(config.rope_theta)
    self.tie_embeddings = bool(config.tie_embeddings)
    self.remat = remat_option(config)
    common = dict(init_std=config.init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    self.token_embedding = Embedding(config.vocab_size, config.hidden_size, **common)
    self.layers = nnx.List([
        DecoderLayer(config, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
        for _ in range(config.num_layers)
    ])
    self.final_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, param_dtype=param_dtype)
    if not self.tie_embeddings:
      self.lm_head = Projection('ble,ev->blv', (config.hidden_size, config.vocab_size),
                                ('embed', 'vocab'), output_dtype=jnp.float32, **common)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """fp32 logits [B, L, V] from final-normed hidden states."""
    if self.tie_embeddings:
      return self.token_embedding.attend(hidden)
    return constrain(self.lm_head(hidden), LOGITS_AXES)

  def output_logits(self, x: jax.Array) -> jax.Array:
    """fp32 logits [B, L, V] from the residual stream (final norm, then lm head)."""
    return self.logits(self.final_norm(x))

  def __call__(self, tokens: jax.Array, positions: jax.Array,
               token_mask: jax.Array | None = None, cache: KVCache | None = None,
               ) -> tuple[jax.Array, KVCache | None]:
    """tokens/positions int32 [B, L], token_mask bool [B, L] (None: all real)."""
    x, cache = self.residual_stream(tokens, positions, token_mask, cache)
    return self.output_logits(x), cache

  def residual_stream(self, tokens: jax.Array, positions: jax.Array,
                      token_mask: jax.Array | None = None, cache: KVCache | None = None,
                      ) -> tuple[jax.Array, KVCache | None]:
    """The residual stream after the last layer [B, L, E] (before the final norm) and the
    updated cache (None without one). Without a cache the layers follow `model.remat`."""
    if token_mask is None:
      token_mask = jnp.ones(tokens.shape, jnp.bool_)
    cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta)
    x = self.token_embedding(tokens)
    if cache is None:
      mask = causal_attention_mask(token_mask)
      for layer in self.layers:
        x, _ = layer_forward(layer, x, cos, sin, mask, remat=self.remat)
      return x, None

    valid = write_columns(cache.valid, token_mask, cache.index)
    mask = cached_attention_mask(valid, cache.index, tokens.shape[1])
    new_keys, new_values = [], []
    for layer, past_k, past_v in zip(self.layers, cache.keys, cache.values, strict=True):
      x, (keys, values) = layer(x, cos, sin, mask, (past_k, past_v), cache.index)
      new_keys.append(keys)
      new_values.append(values)
    new_cache = KVCache(keys=tuple(new_keys), values=tuple(new_values), valid=valid,
                        index=cache.index + tokens.shape[1])
    return x, new_cache
