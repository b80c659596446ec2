"""Where softmax attention runs: `model.attention_impl` picks the implementation.

  'reference'    the plain einsum softmax (attention.py; scores [B, K, G, L, S] in fp32). The
                 default, and the path every other one is checked against.
  'dot_product'  `jax.nn.dot_product_attention`: cuDNN flash attention on a GPU for bf16/fp16
                 inputs, XLA's own fusion elsewhere.
  'pallas'       Pallas flash kernels for causal self-attention with segment ids (training, the
                 document pass, teacher-forced scoring): splash attention on TPU (interpret mode
                 on CPU, which is how the tests run it), the Pallas GPU flash kernel on a GPU.
                 Decode steps (one query over a cache) take the reference path: they are bound
                 by reading the cache, which the einsum does once.

A self-attention mask without a decode cache is a `CausalMask` (token mask and segment ids,
models/segments.py), the structure the kernels take; with a cache it is the dense bool [B, L, S]
(kv_cache.cached_attention_mask). The kernels' outputs at padding queries differ from the
reference's (neither is ever read: a padding column reaches no real one); at real queries they
are the reference's up to fp rounding.

The thought-into-document attention of the shared prefix (prefix_attention.py) is one softmax
over two key blocks; its kernel form is merged_attention.py, built on `attend_with_lse`.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


ATTENTION_IMPLS = ('reference', 'dot_product', 'pallas')

_MASKED_SCORE = -1e30  # finite, so a query with no visible key stays finite (then zeroed)
EMPTY_LSE = -1e30  # the log-sum-exp of a query that sees nothing in a block


@flax.struct.dataclass
class CausalMask:
  """Causal self-attention without a cache: query l sees key s iff s ≤ l, token_mask[s] and, with
  segment_ids int32 [B, L] (packed rows; 0 on padding), both are in one segment."""
  token_mask: jax.Array
  segment_ids: jax.Array | None = None

  def dense(self) -> jax.Array:
    """bool [B, L, L], the reference mask (kv_cache.causal_attention_mask)."""
    length = self.token_mask.shape[1]
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
    mask = causal[None, :, :] & self.token_mask[:, None, :]
    if self.segment_ids is None:
      return mask
    return mask & (self.segment_ids[:, :, None] == self.segment_ids[:, None, :])

  def kernel_segments(self) -> jax.Array:
    """int32 [B, L] for a kernel that masks by segment equality and causality: the packed ids, or
    1 on real tokens and 0 on padding. A real query sees exactly the reference's keys."""
    if self.segment_ids is not None:
      return self.segment_ids.astype(jnp.int32)
    return self.token_mask.astype(jnp.int32)


def dense_mask(mask: jax.Array | CausalMask) -> jax.Array:
  return mask.dense() if isinstance(mask, CausalMask) else mask


def check_attention_impl(impl: str) -> str:
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f'config key `model.attention_impl` must be one of {list(ATTENTION_IMPLS)}, '
                     f'got {impl!r}')
  return impl


# --- the reference -------------------------------------------------------------------------


def _grouped(queries: jax.Array, num_kv_heads: int) -> jax.Array:
  batch, length, num_heads, head_dim = queries.shape
  return queries.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)


def reference_attention(queries: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array,
                        with_lse: bool = False) -> Any:
  """Softmax attention with grouped kv heads (the 'reference' implementation).

  queries [B, L, H, D], keys/values [B, S, K, D] (H = K * G; q head h uses kv head h // G),
  mask bool [B, L, S]. Scores and softmax in fp32; returns [B, L, H, D] in the queries' dtype
  (and with `with_lse` the fp32 log-sum-exp [B, L, H] of the scaled scores, `EMPTY_LSE` where
  the query sees nothing). A query that sees no key at all (a padding row) gets zeros, not NaN.
  """
  batch, length, num_heads, head_dim = queries.shape
  grouped = _grouped(queries, keys.shape[2])
  scores = jnp.einsum('blkgd,bskd->bkgls', grouped, keys.astype(queries.dtype),
                      preferred_element_type=jnp.float32) * (head_dim ** -0.5)
  visible = mask[:, None, None, :, :]
  scores = jnp.where(visible, scores, _MASKED_SCORE)
  probs = jax.nn.softmax(scores, axis=-1)
  seen = jnp.any(visible, axis=-1, keepdims=True)
  probs = jnp.where(seen, probs, 0.0)
  out = jnp.einsum('bkgls,bskd->blkgd', probs.astype(queries.dtype), values.astype(queries.dtype))
  out = out.reshape(batch, length, num_heads, head_dim)
  if not with_lse:
    return out
  lse = jnp.where(seen[..., 0], jax.nn.logsumexp(scores, axis=-1), EMPTY_LSE)  # [B, K, G, L]
  return out, jnp.moveaxis(lse, 3, 1).reshape(batch, length, num_heads)


# --- jax.nn.dot_product_attention ----------------------------------------------------------


def _on_gpu() -> bool:
  return jax.default_backend() == 'gpu'


def _cudnn_dtype(dtype: Any) -> bool:
  return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def dot_product_attention(queries: jax.Array, keys: jax.Array, values: jax.Array,
                          mask: jax.Array) -> jax.Array:
  """`jax.nn.dot_product_attention` with a dense bool mask [B, L, S]: cuDNN on a GPU for
  bf16/fp16, XLA otherwise. Rows that see nothing are zeroed (as the reference)."""
  implementation = 'cudnn' if _on_gpu() and _cudnn_dtype(queries.dtype) else 'xla'
  out = jax.nn.dot_product_attention(queries, keys.astype(queries.dtype),
                                     values.astype(queries.dtype), mask=mask[:, None],
                                     implementation=implementation)
  seen = jnp.any(mask, axis=-1)[:, :, None, None]
  return jnp.where(seen, out, 0).astype(queries.dtype)


def _dot_product_with_lse(queries: jax.Array, keys: jax.Array, values: jax.Array,
                          mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(output, fp32 log-sum-exp [B, L, H]) — cuDNN's own fp32 statistics on a GPU (the public
  API casts them to the output dtype, too coarse to merge bf16 blocks by), else the reference's
  fused XLA computation."""
  if not (_on_gpu() and _cudnn_dtype(queries.dtype)):
    return reference_attention(queries, keys, values, mask, with_lse=True)
  from jax._src.cudnn import fused_attention_stablehlo as cudnn  # pylint: disable=g-import-not-at-top
  groups = queries.shape[2] // keys.shape[2]
  out, lse = cudnn.dot_product_attention(
      queries, jnp.repeat(keys.astype(queries.dtype), groups, axis=2),
      jnp.repeat(values.astype(queries.dtype), groups, axis=2), mask=mask[:, None],
      scale=queries.shape[-1] ** -0.5, return_residual=True)
  seen = jnp.any(mask, axis=-1)[:, :, None]
  lse = jnp.where(seen, jnp.swapaxes(lse, 1, 2).astype(jnp.float32), EMPTY_LSE)
  return jnp.where(seen[..., None], out, 0).astype(queries.dtype), lse


# --- Pallas flash kernels (causal + segment ids) -------------------------------------------


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _padded_length(length: int) -> tuple[int, int]:
  """(padded length, block) for the kernels' tiling: blocks of 128 up to 512 columns."""
  block = min(512, _round_up(length, 128))
  return _round_up(length, block), block


@functools.lru_cache(maxsize=None)
def _splash_kernel(group_size: int, length: int, block: int, save_residuals: bool,
                   interpret: bool):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash  # pylint: disable=g-import-not-at-top
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks  # pylint: disable=g-import-not-at-top
  mask = masks.MultiHeadMask([masks.CausalMask((length, length))] * group_size)
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            block_q_dq=block, block_kv_dq=block)
  with jax.ensure_compile_time_eval():  # the mask tables are constants, cached across traces
    kernel = splash.make_splash_mqa(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    save_residuals=save_residuals, interpret=interpret)
  return kernel, splash


def _splash(queries: jax.Array, keys: jax.Array, values: jax.Array, segments: jax.Array,
            with_lse: bool) -> Any:
  """Splash attention (TPU; interpret mode elsewhere): one MQA kernel per kv head, vmapped over
  batch and kv heads. Inputs already padded to the kernel's length."""
  batch, length, num_heads, head_dim = queries.shape
  num_kv_heads = keys.shape[2]
  group = num_heads // num_kv_heads
  _, block = _padded_length(length)
  kernel, splash = _splash_kernel(group, length, block, with_lse, jax.default_backend() != 'tpu')
  scaled = (queries * jnp.asarray(head_dim ** -0.5, queries.dtype))
  q = jnp.transpose(_grouped(scaled, num_kv_heads), (0, 2, 3, 1, 4))  # [B, K, G, L, D]
  k = jnp.transpose(keys.astype(queries.dtype), (0, 2, 1, 3))  # [B, K, L, D]
  v = jnp.transpose(values.astype(queries.dtype), (0, 2, 1, 3))

  def one(q, k, v, segments):
    return kernel(q, k, v, splash.SegmentIds(q=segments, kv=segments))

  per_head = jax.vmap(one, in_axes=(0, 0, 0, None))  # over kv heads
  result = jax.vmap(per_head, in_axes=(0, 0, 0, 0))(q, k, v, segments)  # over batch
  out, lse = result if with_lse else (result, None)
  out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(batch, length, num_heads, head_dim)
  if not with_lse:
    return out.astype(queries.dtype)
  lse = jnp.transpose(lse[0], (0, 3, 1, 2)).reshape(batch, length, num_heads)
  return out.astype(queries.dtype), lse.astype(jnp.float32)


def _gpu_flash(queries: jax.Array, keys: jax.Array, values: jax.Array, segments: jax.Array,
               with_lse: bool) -> Any:
  """The Pallas GPU flash-attention kernel (kv heads repeated to the query heads)."""
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention  # pylint: disable=g-import-not-at-top
  groups = queries.shape[2] // keys.shape[2]
  _, block = _padded_length(queries.shape[1])
  sizes = gpu_attention.BlockSizes(block_q=min(block, 128), block_k=min(block, 128),
                                   block_q_dkv=32, block_kv_dkv=32, block_q_dq=32,
                                   block_kv_dq=32)  # the kernel's own defaults
  result = gpu_attention.mha(
      queries, jnp.repeat(keys.astype(queries.dtype), groups, axis=2),
      jnp.repeat(values.astype(queries.dtype), groups, axis=2), segments,
      sm_scale=queries.shape[-1] ** -0.5, causal=True, block_sizes=sizes,
      return_residuals=with_lse, interpret=jax.default_backend() != 'gpu')
  if not with_lse:
    return result
  out, lse = result  # the kernel accumulates in base 2: its statistic is log2 Σ exp
  return out, jnp.swapaxes(lse, 1, 2).astype(jnp.float32) * jnp.float32(math.log(2.0))


def pallas_causal_attention(queries: jax.Array, keys: jax.Array, values: jax.Array,
                            mask: CausalMask, with_lse: bool = False) -> Any:
  """Causal self-attention with segment ids through a Pallas flash kernel; queries [B, L, H, D],
  keys/values [B, L, K, D]. Pads L to the kernel's tiling with a segment no query has."""
  length = queries.shape[1]
  padded, _ = _padded_length(length)
  segments = mask.kernel_segments()
  pad = padded - length
  if pad:
    widen = lambda x: jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    queries, keys, values = widen(queries), widen(keys), widen(values)
    segments = jnp.pad(segments, ((0, 0), (0, pad)), constant_values=-1)
  kernel = _gpu_flash if _on_gpu() else _splash
  result = kernel(queries, keys, values, segments, with_lse)
  if with_lse:
    out, lse = result
    return out[:, :length], lse[:, :length]
  return result[:, :length]


# --- dispatch ------------------------------------------------------------------------------


def attend(queries: jax.Array, keys: jax.Array, values: jax.Array,
           mask: jax.Array | CausalMask, impl: str) -> jax.Array:
  """Grouped-query attention by `model.attention_impl`; [B, L, H, D] in the queries' dtype.

  `mask` is a CausalMask (self-attention, no cache) or a dense bool [B, L, S]; 'pallas' takes
  the reference path for a dense mask (decode steps)."""
  if impl == 'pallas' and isinstance(mask, CausalMask):
    return pallas_causal_attention(queries, keys, values, mask)
  if impl == 'dot_product':
    return dot_product_attention(queries, keys, values, dense_mask(mask))
  if impl in ATTENTION_IMPLS:
    return reference_attention(queries, keys, values, dense_mask(mask))
  return check_attention_impl(impl)


def attend_with_lse(queries: jax.Array, keys: jax.Array, values: jax.Array,
                    mask: jax.Array | CausalMask, impl: str) -> tuple[jax.Array, jax.Array]:
  """`attend` and the fp32 log-sum-exp [B, L, H] of each query's scaled scores (forward only:
  `merged_attention` differentiates through `attend`)."""
  if impl == 'pallas' and isinstance(mask, CausalMask):
    return pallas_causal_attention(queries, keys, values, mask, with_lse=True)
  if impl == 'dot_product':
    return _dot_product_with_lse(queries, keys, values, dense_mask(mask))
  return reference_attention(queries, keys, values, dense_mask(mask), with_lse=True)
