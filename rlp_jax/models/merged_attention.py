"""One softmax over two key blocks, each run by its own attention kernel and merged by their
log-sum-exps: the kernel form of the shared prefix's thought-into-document attention
(prefix_attention.py; docs/models.md, "Attention kernels").

Kernels differentiate their output only (cuDNN and the Pallas kernels drop a cotangent on the
log-sum-exp they return), so `merged_attention` has its own backward, exact for such kernels
(`_merged_bwd`).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.models.attention_kernels import EMPTY_LSE, attend, attend_with_lse


@flax.struct.dataclass
class Block:
  """One key block of a merged softmax: its keys/values and mask, and how the common query
  layout [B, N, Q, H, D] is laid out for it (`layout` 'document': [B, N·Q, H, D] against
  [B, L, K, D] keys; 'own': [B·N, Q, H, D] against [B·N, S, K, D])."""
  keys: jax.Array
  values: jax.Array
  mask: Any  # dense bool, or CausalMask
  layout: str = flax.struct.field(pytree_node=False)
  impl: str = flax.struct.field(pytree_node=False)


def _to_block(x: jax.Array, layout: str) -> jax.Array:
  batch, num_thoughts, length = x.shape[:3]
  if layout == 'document':
    return x.reshape(batch, num_thoughts * length, *x.shape[3:])
  return x.reshape(batch * num_thoughts, length, *x.shape[3:])


def _from_block(x: jax.Array, layout: str, shape: tuple[int, ...]) -> jax.Array:
  return x.reshape(*shape[:3], *x.shape[2:])


def _block_attend(queries: jax.Array, keys: jax.Array, values: jax.Array, block: Block
                  ) -> jax.Array:
  out = attend(_to_block(queries, block.layout), keys, values, block.mask, block.impl)
  return _from_block(out, block.layout, queries.shape)


def _merged_forward(queries, first, second):
  outs, lses = [], []
  for block in (first, second):
    out, lse = attend_with_lse(_to_block(queries, block.layout), block.keys, block.values,
                               block.mask, block.impl)
    outs.append(_from_block(out, block.layout, queries.shape).astype(jnp.float32))
    lses.append(jnp.maximum(_from_block(lse, block.layout, queries.shape), EMPTY_LSE))
  total = jnp.logaddexp(lses[0], lses[1])
  weights = [jnp.exp(lse - total) for lse in lses]  # each block's share of the softmax mass
  seen = total > EMPTY_LSE / 2  # [B, N, Q, H]: the query sees some key
  merged = sum(w[..., None] * out for w, out in zip(weights, outs))
  merged = jnp.where(seen[..., None], merged, 0.0)
  return merged, (outs, weights, seen)


@jax.custom_vjp
def merged_attention(queries: jax.Array, first: Block, second: Block) -> jax.Array:
  """Softmax attention of queries [B, N, Q, H, D] over the union of two key blocks, each run by
  its own kernel (`Block.impl`) and merged by their log-sum-exps; [B, N, Q, H, D] in the
  queries' dtype, zeros where a query sees nothing."""
  return _merged_forward(queries, first, second)[0].astype(queries.dtype)


def _merged_fwd(queries, first, second):
  merged, (outs, weights, seen) = _merged_forward(queries, first, second)
  return merged.astype(queries.dtype), (queries, first, second, merged, outs, weights, seen)


def _merged_bwd(saved, cotangent):
  """Exact gradients from kernels that differentiate only their output.

  With P the merged softmax, P_i block i's own softmax and w_i its share (P = w_i P_i on block
  i), the score gradient of block i is P ∘ (dO·v − D), D = dO·O. Block i's kernel VJP with
  cotangent w_i dO gives w_i P_i ∘ (dO·v − D_i), D_i = dO·o_i; the rest, g_i P_i with
  g_i = w_i (D_i − D) per query, is the gradient of block i's log-sum-exp. Its query part is
  scale · g_i · Σ_s P_i[s] k_s (block i's attention with the keys as values) and its key part
  scale · Σ_q g_i[q] P_i[q, s] q_q (the value-VJP of block i with cotangent g_i · q).
  """
  queries, first, second, merged, outs, weights, seen = saved
  dtype = queries.dtype
  d_out = jnp.where(seen[..., None], cotangent.astype(jnp.float32), 0.0)
  total_d = jnp.sum(d_out * merged, axis=-1)  # D [B, N, Q, H]
  scale = queries.shape[-1] ** -0.5
  d_queries = jnp.zeros(queries.shape, jnp.float32)
  block_grads = []
  for block, out, weight in zip((first, second), outs, weights):
    attend_block = lambda q, k, v, block=block: _block_attend(q, k, v, block)
    _, vjp = jax.vjp(attend_block, queries, block.keys, block.values)
    dq, dk, dv = vjp((weight[..., None] * d_out).astype(dtype))
    g = weight * (jnp.sum(d_out * out, axis=-1) - total_d)  # [B, N, Q, H]
    # One kernel call gives both: its output with the keys as values, and its value-VJP.
    keys_as_values, value_vjp = jax.vjp(
        lambda v, block=block: _block_attend(queries, block.keys, v, block), block.keys)
    dq = dq.astype(jnp.float32) + scale * g[..., None] * keys_as_values.astype(jnp.float32)
    (dk_lse,) = value_vjp((scale * g[..., None] * queries.astype(jnp.float32)).astype(dtype))
    d_queries = d_queries + dq
    block_grads.append(block.replace(keys=(dk.astype(jnp.float32) + dk_lse.astype(jnp.float32)
                                           ).astype(block.keys.dtype),
                                     values=dv.astype(block.values.dtype),
                                     mask=jax.tree.map(_zero_cotangent, block.mask)))
  return (d_queries.astype(dtype), *block_grads)


def _zero_cotangent(x: jax.Array) -> Any:
  return np.zeros(x.shape, jax.dtypes.float0)


merged_attention.defvjp(_merged_fwd, _merged_bwd)
