"""Grouped-query self-attention: Qwen3 (q/k RMSNorm per head, then RoPE); Nemotron-H (neither)."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from rlp_jax.models.attention_kernels import (CausalMask, attend, check_attention_impl,
                                              reference_attention)
from rlp_jax.models.kv_cache import write_columns
from rlp_jax.models.layers import (KV_AXES, QUERY_AXES, RESIDUAL_AXES, Projection, RMSNorm,
                                   apply_rope)
from rlp_jax.parallel.activation_sharding import constrain

# The reference softmax attention; `model.attention_impl` picks a kernel (attention_kernels.py).
grouped_query_attention = reference_attention


def _maybe_rope(x: jax.Array, cos: jax.Array | None, sin: jax.Array | None) -> jax.Array:
  """RoPE when cos/sin are given; models without positional encoding pass None."""
  return x if cos is None else apply_rope(x, cos, sin)


class Attention(nnx.Module):
  """q/k/v projections (no bias), optional q/k RMSNorm over head_dim, optional RoPE, GQA, o_proj.

  `qk_norm=False` builds no q_norm/k_norm parameters; cos/sin None applies no RoPE. `impl` is
  `model.attention_impl` (attention_kernels.py): which implementation runs the softmax.
  """

  def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               norm_eps: float, init_std: float, param_dtype: Any, compute_dtype: Any,
               rngs: nnx.Rngs, qk_norm: bool = True, impl: str = 'reference'):
    if num_heads % num_kv_heads:
      raise ValueError(f'num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}')
    common = dict(init_std=init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    self.q_proj = Projection('ble,ehd->blhd', (hidden_size, num_heads, head_dim),
                             ('embed', 'heads', 'head_dim'), **common)
    self.k_proj = Projection('ble,ehd->blhd', (hidden_size, num_kv_heads, head_dim),
                             ('embed', 'kv_heads', 'head_dim'), **common)
    self.v_proj = Projection('ble,ehd->blhd', (hidden_size, num_kv_heads, head_dim),
                             ('embed', 'kv_heads', 'head_dim'), **common)
    self.o_proj = Projection('blhd,hde->ble', (num_heads, head_dim, hidden_size),
                             ('heads', 'head_dim', 'embed'), **common)
    self.qk_norm = qk_norm
    self.impl = check_attention_impl(impl)
    if qk_norm:
      self.q_norm = RMSNorm(head_dim, eps=norm_eps, param_dtype=param_dtype)
      self.k_norm = RMSNorm(head_dim, eps=norm_eps, param_dtype=param_dtype)

  def project_queries(self, x: jax.Array, cos: jax.Array | None,
                      sin: jax.Array | None) -> jax.Array:
    """Queries [B, L, H, D] (normed and rotated when configured)."""
    queries = constrain(self.q_proj(x), QUERY_AXES)
    return _maybe_rope(self.q_norm(queries) if self.qk_norm else queries, cos, sin)

  def project_kv(self, x: jax.Array, cos: jax.Array | None,
                 sin: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Keys (normed and rotated when configured) and values [B, L, K, D] of the new tokens."""
    keys = constrain(self.k_proj(x), KV_AXES)
    keys = _maybe_rope(self.k_norm(keys) if self.qk_norm else keys, cos, sin)
    return keys, constrain(self.v_proj(x), KV_AXES)

  def __call__(self, x: jax.Array, cos: jax.Array | None, sin: jax.Array | None,
               mask: jax.Array | CausalMask,
               past_kv: tuple[jax.Array, jax.Array] | None = None,
               write_index: jax.Array | None = None,
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """x [B, L, E] → ([B, L, E], (keys, values) attended over).

    Without `past_kv` the keys/values are the L new ones and mask is a CausalMask (or its dense
    bool [B, L, L]). With `past_kv` (cache buffers [B, S, K, D]) the new ones are written at
    columns [write_index, +L) and mask is bool [B, L, S].
    """
    queries = self.project_queries(x, cos, sin)
    keys, values = self.project_kv(x, cos, sin)
    if past_kv is not None:
      keys = write_columns(past_kv[0], keys, write_index)
      values = write_columns(past_kv[1], values, write_index)
    attended = constrain(attend(queries, keys, values, mask, self.impl), QUERY_AXES)
    return constrain(self.o_proj(attended), RESIDUAL_AXES), (keys, values)
