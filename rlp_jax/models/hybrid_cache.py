"""Decode cache of the hybrid (Nemotron-H) model: kv_cache.KVCache with a value per layer.

Per layer (B rows, S = max_len columns; K = conv kernel, H/P Mamba heads/head_dim, G/N
groups/state):
  '*' attention: (keys, values) [B, S, Hkv, D], sharing the cache's `valid` [B, S] and `index`;
  'M' Mamba2:    a `MambaState`:
    conv_x [B, K-1, H, P], conv_b / conv_c [B, K-1, G, N]: the last K-1 inputs of the depthwise
        causal convolution (x, B and C streams), oldest first, in the compute dtype;
    ssm [B, H, P, N]: the SSM state, fp32;
  '-' MLP:       None.
The Mamba states carry no columns: a masked token (token_mask False) leaves them untouched in a
one-token step, and left padding before the first real token of a prefill leaves them exactly as
an unpadded row would (zero conv inputs, dt = 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from rlp_jax.models.kv_cache import KVCache, empty_attention_entry, empty_cache
from rlp_jax.models.layer_stack import LayerPlan


@struct.dataclass
class MambaState:
  """One Mamba2 layer's recurrent state (see module docstring)."""
  conv_x: jax.Array
  conv_b: jax.Array
  conv_c: jax.Array
  ssm: jax.Array


HybridCache = KVCache  # the hybrid family's cache (the layout above)


def empty_mamba_state(batch_size: int, num_heads: int, head_dim: int, num_groups: int,
                      state_size: int, conv_kernel: int, dtype: Any) -> MambaState:
  """All-zero Mamba2 state (no token seen)."""
  window = conv_kernel - 1
  return MambaState(
      conv_x=jnp.zeros((batch_size, window, num_heads, head_dim), dtype),
      conv_b=jnp.zeros((batch_size, window, num_groups, state_size), dtype),
      conv_c=jnp.zeros((batch_size, window, num_groups, state_size), dtype),
      ssm=jnp.zeros((batch_size, num_heads, head_dim, state_size), jnp.float32),
  )


def empty_hybrid_cache(model_config: Any, plan: LayerPlan, batch_size: int, max_len: int,
                       dtype: Any) -> HybridCache:
  """Empty cache for the layers of `plan`: zeros, no valid column, index 0."""

  def entry(kind: str) -> Any:
    if kind == '*':
      return empty_attention_entry(batch_size, max_len, model_config.num_kv_heads,
                                   model_config.head_dim, dtype)
    if kind == 'M':
      return empty_mamba_state(batch_size, model_config.mamba_num_heads,
                               model_config.mamba_head_dim, model_config.mamba_n_groups,
                               model_config.ssm_state_size, model_config.mamba_conv_kernel, dtype)
    return None

  return empty_cache(plan, batch_size, max_len, entry)


def thought_start_state(document_state: MambaState, thoughts_per_document: int) -> MambaState:
  """The state each of the B·N thought rows starts from: the document's state at the thought's
  position (`document_state`: arrays leading with [B, K], one per scored position, see
  prefix_attention.DocumentKV), repeated to [B·N, ...] (n = k·G + g)."""
  batch, num_positions = document_state.ssm.shape[:2]
  if thoughts_per_document % num_positions:
    raise ValueError(f'{thoughts_per_document} thoughts per document are not a multiple of the '
                     f'{num_positions} positions the document states were taken at')
  group = thoughts_per_document // num_positions
  rows = lambda t: jnp.repeat(t, group, axis=1).reshape((batch * thoughts_per_document,)
                                                        + t.shape[2:])
  return jax.tree.map(rows, document_state)
