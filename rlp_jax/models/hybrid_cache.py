"""Decode cache of the hybrid (Nemotron-H) model: an explicit pytree passed into and out of forward.

Layout (B rows, S = max_len columns; K = conv kernel, H/P Mamba heads/head_dim, G/N groups/state):
  attention: a `KVCache` (kv_cache.py) whose keys/values tuples hold one entry per attention
             ('*') layer, in layer order, plus the shared `valid` [B, S] and write `index`;
  mamba:     a tuple with one `MambaState` per Mamba2 ('M') layer, in layer order:
    conv_x [B, K-1, H, P], conv_b / conv_c [B, K-1, G, N]: the last K-1 inputs of the depthwise
        causal convolution (x, B and C streams), oldest first, in the compute dtype;
    ssm [B, H, P, N]: the SSM state, fp32.
MLP ('-') layers hold no state. The Mamba states carry no columns: a masked token (token_mask
False) leaves them untouched in a one-token step, and left padding before the first real token
of a prefill leaves them exactly as an unpadded row would (zero conv inputs, dt = 0).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from rlp_jax.models.kv_cache import KVCache, empty_kv_cache


@struct.dataclass
class MambaState:
  """One Mamba2 layer's recurrent state (see module docstring)."""
  conv_x: jax.Array
  conv_b: jax.Array
  conv_c: jax.Array
  ssm: jax.Array


@struct.dataclass
class HybridCache:
  """Attention KV cache for the '*' layers and recurrent states for the 'M' layers."""
  attention: KVCache
  mamba: tuple[MambaState, ...]

  @property
  def index(self) -> jax.Array:
    """The next column to write (tokens seen so far, padding included)."""
    return self.attention.index

  @property
  def max_len(self) -> int:
    return self.attention.max_len


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


def empty_hybrid_cache(model_config: Any, batch_size: int, max_len: int, dtype: Any) -> HybridCache:
  """Empty cache for `model_config.layer_pattern`: zeros, no valid column, index 0."""
  pattern = model_config.layer_pattern
  attention = empty_kv_cache(pattern.count('*'), batch_size, max_len, model_config.num_kv_heads,
                             model_config.head_dim, dtype)
  mamba = tuple(
      empty_mamba_state(batch_size, model_config.mamba_num_heads, model_config.mamba_head_dim,
                        model_config.mamba_n_groups, model_config.ssm_state_size,
                        model_config.mamba_conv_kernel, dtype)
      for _ in range(pattern.count('M')))
  return HybridCache(attention=attention, mamba=mamba)


def thought_start_states(document_states: tuple[MambaState, ...], thoughts_per_document: int,
                         ) -> tuple[MambaState, ...]:
  """Per Mamba layer, the state each of the B·N thought rows starts from: the document's state
  at the thought's position (`document_states`: arrays leading with [B, K], one per scored
  position, see prefix_attention.DocumentKV), repeated to [B·N, ...] (n = k·G + g)."""
  if not document_states:
    return ()
  batch, num_positions = document_states[0].ssm.shape[:2]
  if thoughts_per_document % num_positions:
    raise ValueError(f'{thoughts_per_document} thoughts per document are not a multiple of the '
                     f'{num_positions} positions the document states were taken at')
  group = thoughts_per_document // num_positions
  rows = lambda t: jnp.repeat(t, group, axis=1).reshape((batch * thoughts_per_document,)
                                                        + t.shape[2:])
  return tuple(jax.tree.map(rows, state) for state in document_states)
