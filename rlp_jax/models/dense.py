"""Dense decoder with the Qwen3 architecture (the 'dense' family; its record: dense_family.py).

  x = embed(tokens)
  per layer: x = x + attention(RMSNorm(x)); x = x + mlp(RMSNorm(x))
  logits = lm_head(RMSNorm(x))          (lm_head tied to the embedding or separate, by config)

Embedding, final norm and head are the shared tail in decoder.py; this module holds the layers.
Parameter tree: decoder.py's, with layers[i].{attention_norm, attention, mlp_norm, mlp}.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from rlp_jax.models.attention import Attention
from rlp_jax.models.decoder import Decoder
from rlp_jax.models.attention_kernels import CausalMask
from rlp_jax.models.kv_cache import KVCache, cached_attention_mask, write_columns
from rlp_jax.models.layer_stack import run_stack
from rlp_jax.models.layers import RESIDUAL_AXES, RMSNorm, SwiGLU, rope_cos_sin
from rlp_jax.parallel.activation_sharding import constrain


class DecoderLayer(nnx.Module):
  """Pre-norm residual block: attention then SwiGLU MLP."""

  def __init__(self, config: Any, *, param_dtype: Any, compute_dtype: Any, rngs: nnx.Rngs):
    common = dict(init_std=config.init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    self.attention_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, param_dtype=param_dtype)
    self.attention = Attention(config.hidden_size, config.num_heads, config.num_kv_heads,
                               config.head_dim, norm_eps=config.norm_eps,
                               impl=config.get('attention_impl', 'reference'), **common)
    self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps, param_dtype=param_dtype)
    self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, **common)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array | CausalMask,
               past_kv: tuple[jax.Array, jax.Array] | None = None,
               write_index: jax.Array | None = None,
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    attended, kv = self.attention(self.attention_norm(x), cos, sin, mask, past_kv, write_index)
    x = constrain(x + attended, RESIDUAL_AXES)
    x = constrain(x + self.mlp(self.mlp_norm(x)), RESIDUAL_AXES)
    return x, kv


class DenseDecoder(Decoder):
  """Qwen3-style decoder; `__call__` returns fp32 logits and the updated KVCache (or None)."""

  def __init__(self, config: Any, rngs: nnx.Rngs):
    self.head_dim = int(config.head_dim)
    self.rope_theta = float(config.rope_theta)
    super().__init__(config, rngs)

  def build_layers(self, config: Any, *, param_dtype: Any, compute_dtype: Any,
                   rngs: nnx.Rngs) -> list[DecoderLayer]:
    return [DecoderLayer(config, param_dtype=param_dtype, compute_dtype=compute_dtype, rngs=rngs)
            for _ in range(config.num_layers)]

  @staticmethod
  def layer_kinds(config: Any) -> str:
    return 'D' * int(config.num_layers)

  def run_layers(self, x: jax.Array, positions: jax.Array, token_mask: jax.Array,
                 cache: KVCache | None, segment_ids: jax.Array | None = None,
                 ) -> tuple[jax.Array, KVCache | None]:
    cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta)
    if cache is None:
      x, _ = run_stack(self, self.plan, x, _plain_layer, None, (cos, sin, CausalMask(
          token_mask, segment_ids)), self.remat)
      return x, None
    valid = write_columns(cache.valid, token_mask, cache.index)
    mask = cached_attention_mask(valid, cache.index, x.shape[1])
    x, layers = run_stack(self, self.plan, x, _cached_layer, cache.layers,
                          (cos, sin, mask, cache.index), 'none')
    return x, KVCache(layers=layers, valid=valid, index=cache.index + x.shape[1])


def _plain_layer(layer: DecoderLayer, x: jax.Array, value: None, cos: jax.Array, sin: jax.Array,
                 mask: CausalMask) -> tuple[jax.Array, None]:
  del value
  return layer(x, cos, sin, mask)[0], None


def _cached_layer(layer: DecoderLayer, x: jax.Array, past_kv: tuple[jax.Array, jax.Array],
                  cos: jax.Array, sin: jax.Array, mask: jax.Array, index: jax.Array,
                  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  return layer(x, cos, sin, mask, past_kv, index)
