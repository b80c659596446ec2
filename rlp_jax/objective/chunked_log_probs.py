"""Log-probs (and entropies) of target tokens from final-normed hidden states and the lm head,
without the fp32 logits of every token over the vocabulary at once: never a [tokens, V] array of
the batch, in the forward pass or the backward.

  head_token_log_probs(head, normed [..., E], targets [...], temperature, chunk_tokens)
      = token_log_probs(head.logits(normed), targets, temperature), float32 [...]
  head_log_probs_and_entropy(head, normed, targets, chunk_tokens)
      = (log p(target), entropy of the distribution), both float32 [...]

`normed, head = registry.output_head(graphdef, params, hidden)`: the final-normed states in the
compute dtype and the lm head as one matrix (models/decoder.OutputHead; `head.logits` is exactly
the model's logits). The first dimension of `normed` is the batch (rows; sharded over the mesh's
batch axes), the others are flattened into columns.

Forward: the columns are cut into chunks of equal width and `jax.lax.map` runs them one after the
other; a chunk's logits [rows, width, V] give each token's log-sum-exp and target logit, and only
those are kept. Backward (`head_token_log_probs`, a custom VJP): `jax.lax.scan` over blocks of the
vocabulary; a block recomputes the logits of every token for its vocabulary ids, [rows, columns,
Vb], turns them into d logits = ct · (onehot − softmax) / temperature with the saved log-sum-exp,
writes its own rows of the head's gradient (each computed in one matmul over all tokens: no
[V, E] partial sums to add up) and adds its share to the gradient of the states ([rows, columns,
E] in fp32). A forward chunk holds `chunk_tokens` (`model.logits_chunk_tokens`) × V logits per
device; a backward block of Vb ids holds (tokens per device + E) × Vb (its logits and its rows of
the head's gradient), at most as many (`vocab_blocks`). Chunking the backward by tokens instead
(autodiff of the forward chunks) would add every chunk's full [V, E] head gradient into an
accumulator: at a few thousand tokens per device that costs more than the logits it saves
(measured: docs/performance.md). The head enters as stored (the parameter's dtype; cast to the
compute dtype block by block), so its gradient is written straight into the parameter's
gradient; an output nobody differentiates (S_pred in the update) gets a symbolic zero cotangent
and no backward pass. Vocabulary blocks are strided (block i holds the ids ≡ i mod the block
count) so that each block keeps the head's sharding over the `tensor` axis; the block count is a
power of two, which divides vocabularies padded to a multiple of 128 (qwen3 151936, Nemotron-H
131072) up to 128 blocks; otherwise the head is padded with masked ids.

`chunk_tokens` is the number of tokens one device takes logits of at a time: a forward chunk is
`chunk_tokens // rows per device` columns of every row (at least one column, so a chunk never
splits the rows, which stay sharded as they came), rows per device = rows / the shards of the
'batch' rule under the step's activation layout (parallel/activation_sharding.py; all rows without
one). Column widths are balanced (129 columns at a width of 64 become 3 chunks of 43). 0, or a
shape that fits one chunk and one vocabulary block, is the plain computation on all tokens at
once (autodiff of `token_log_probs(head.logits(normed), …)`), the reference the tests compare
against. Chunked, each token's log-prob is the same computation on a smaller matmul; the
head's gradient is the same per-element sum over all tokens; the states' gradient sums the
vocabulary blocks' shares in turn, another fp32 order (tests/test_chunked_log_probs.py: equal in
float64 to 1e-12, in fp32 to 1e-5 with its margin measured against float64 runs).

`head_log_probs_and_entropy` serves φ's statistics in the rollout, which take no gradient: its
forward is chunked the same way, and it stays differentiable by plain autodiff of the chunks
(each under `jax.checkpoint`), without the vocabulary-block backward.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rlp_jax.models.decoder import OutputHead
from rlp_jax.objective.log_probs import token_log_probs
from rlp_jax.parallel.activation_sharding import shard_count

# Tokens per device per chunk. 1024 keeps the head's matmuls compute-bound (a chunk of t tokens
# does 2·t·E·V flops per E·V weights read: t flops per byte of bf16 weights, against ≈ 300 on
# H100, ≈ 170 on TPU v5p, ≈ 560 on v6e) while a chunk's fp32 logits stay ≈ 0.6 GiB at V = 152k
# (qwen3) and 0.5 GiB at V = 131k (Nemotron-H); a few such arrays (logits, softmax, cotangent)
# are live at once. docs/performance.md, "Chunked vocabulary log-probs".
DEFAULT_CHUNK_TOKENS = 1024


def chunk_tokens_of(model_config: Any) -> int:
  """`model.logits_chunk_tokens` of a model config (the default when a hand-built one lacks it)."""
  return int(model_config.get('logits_chunk_tokens', DEFAULT_CHUNK_TOKENS))


def _rows_per_device(rows: int) -> int:
  return -(-rows // shard_count('batch', rows))


def chunk_width(rows: int, columns: int, chunk_tokens: int) -> int:
  """Columns per forward chunk for [rows, columns] tokens (`columns`: one chunk); see the module
  doc."""
  if chunk_tokens <= 0:
    return columns
  width = max(1, chunk_tokens // _rows_per_device(rows))
  if width >= columns:
    return columns
  count = -(-columns // width)
  return -(-columns // count)


def vocab_blocks(rows: int, columns: int, vocab: int, embed: int, chunk_tokens: int) -> int:
  """How many strided vocabulary blocks the backward pass takes: the fewest, as a power of two,
  such that a block's [rows per device · columns, V / blocks] logits and its [V / blocks, E] rows
  of the head's gradient (computed in fp32, then written in the compute dtype) hold at most
  chunk_tokens × V elements together. At a few thousand tokens per device the gradient rows weigh
  as much as the logits (qwen3: E = 2048), so both count."""
  tokens = _rows_per_device(rows) * columns
  wanted = -(-(tokens + embed) // max(chunk_tokens, 1))  # blocks ≥ (T + E) / chunk_tokens
  return min(1 << max(wanted - 1, 0).bit_length(), vocab)


def _flat(normed: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  if targets.ndim < 1 or normed.shape[:-1] != targets.shape:
    raise ValueError(f'normed {normed.shape} must be targets {targets.shape} + (E,)')
  rows = targets.shape[0]
  return normed.reshape(rows, -1, normed.shape[-1]), targets.reshape(rows, -1)


def _by_column_chunks(body: Callable[..., tuple[jax.Array, ...]], normed: jax.Array,
                      targets: jax.Array, width: int, checkpoint: bool) -> tuple[jax.Array, ...]:
  """`body(normed [R, w, E], targets [R, w])` (outputs [R, w]) over column chunks of width `width`
  of normed [R, C, E] / targets [R, C], one after the other; outputs [R, C]."""
  rows, columns = targets.shape
  count = -(-columns // width)
  pad = count * width - columns  # zero states and token 0: finite, then cut off
  normed = jnp.pad(normed, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))

  def split(x):  # [R, count·w, ...] -> [count, R, w, ...]: rows keep their sharding
    return jnp.moveaxis(x.reshape((rows, count, width) + x.shape[2:]), 1, 0)

  chunk = lambda pair: body(*pair)
  if checkpoint:  # the backward pass recomputes a chunk's logits instead of keeping them
    chunk = jax.checkpoint(chunk, prevent_cse=False)
  stacked = jax.lax.map(chunk, (split(normed), split(targets)))
  return tuple(jnp.moveaxis(out, 0, 1).reshape(rows, count * width)[:, :columns]
               for out in stacked)


def head_token_log_probs(head: OutputHead, normed: jax.Array, targets: jax.Array,
                         temperature: float = 1.0,
                         chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> jax.Array:
  """log softmax(head.logits(normed) / temperature) at `targets`, float32 like `targets` [...]
  (objective/log_probs.token_log_probs), the logits `chunk_tokens` per device at a time in the
  forward pass and the backward (module doc).

  Args:
    head: the lm head (`registry.output_head`).
    normed: [..., E] final-normed states in the compute dtype, the first dimension the rows.
    targets: [...] integer token ids in [0, V).
    temperature: > 0; 1.0 gives the untempered log-prob.
    chunk_tokens: tokens per device per chunk; 0: every token at once.
  """
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f'temperature must be > 0, got {temperature}')
  x, flat = _flat(normed, targets)
  rows, columns = flat.shape
  width = chunk_width(rows, columns, chunk_tokens)
  vocab = head.weight.shape[head.vocab_axis]
  blocks = 1 if chunk_tokens <= 0 else vocab_blocks(rows, columns, vocab, x.shape[-1],
                                                    chunk_tokens)
  if width >= columns and blocks == 1:  # one chunk, one block: the plain computation
    return token_log_probs(head.logits(x), flat, temperature).reshape(targets.shape)
  log_probs = _chunked_log_probs(head.layout, head.compute_dtype, width, blocks, x, head.weight,
                                 flat.astype(jnp.int32), jnp.asarray(temperature, jnp.float32))
  return log_probs.reshape(targets.shape)


def _forward(layout, compute_dtype, width, x, weight, targets, temperature):
  """(log-probs [R, C], log-sum-exp [R, C]) by column chunks, nothing else kept."""
  head = OutputHead(weight, layout, compute_dtype)

  def body(chunk, chunk_targets):
    scaled = head.logits(chunk) / temperature
    picked = jnp.take_along_axis(scaled, chunk_targets[..., None], axis=-1)[..., 0]
    lse = jax.nn.logsumexp(scaled, axis=-1)
    return picked - lse, lse

  if width >= targets.shape[1]:  # one chunk (the backward still goes by vocabulary blocks)
    return body(x, targets)
  return _by_column_chunks(body, x, targets, width, checkpoint=False)


def _chunked_log_probs_impl(layout, compute_dtype, width, blocks, x, weight, targets,
                            temperature):
  del blocks
  return _forward(layout, compute_dtype, width, x, weight, targets, temperature)[0]


# The head enters as stored (the parameter's dtype), cast to the compute dtype a block at a time,
# so that its gradient is written straight into the parameter's gradient: a compute-dtype
# cotangent would be one more [V, E] array (JAX's own transpose leaves the dot in fp32, and XLA
# drops the round trip through the compute dtype).
_chunked_log_probs = jax.custom_vjp(_chunked_log_probs_impl, nondiff_argnums=(0, 1, 2, 3))


def _chunked_log_probs_fwd(layout, compute_dtype, width, blocks, x, weight, targets,
                           temperature):
  del blocks  # symbolic_zeros: the differentiable arguments come as CustomVJPPrimal
  x, weight, targets, temperature = (a.value for a in (x, weight, targets, temperature))
  log_probs, lse = _forward(layout, compute_dtype, width, x, weight, targets, temperature)
  return log_probs, (x, weight, targets, temperature, lse)


def _chunked_log_probs_bwd(layout, compute_dtype, width, blocks, residuals, cotangent):
  """One pass over `blocks` strided vocabulary blocks (module doc)."""
  del width
  if isinstance(cotangent, jax.custom_derivatives.SymbolicZero):
    return None, None, None, None  # an unused output (S_pred in the update): nothing to do
  x, weight, targets, temperature, lse = residuals
  axis = layout.index('v')
  vocab = weight.shape[axis]
  block = -(-vocab // blocks)
  pad = [(0, 0), (0, 0)]
  pad[axis] = (0, block * blocks - vocab)
  # [V, E] -> [Vb, blocks, E] (or [E, V] -> [E, Vb, blocks]): id j·blocks + i is (j, i).
  strided = jnp.pad(weight, pad).reshape(weight.shape[:axis] + (block, blocks)
                                         + weight.shape[axis + 1:])
  block_axis = axis + 1
  scale = (cotangent / temperature)[..., None]  # d log p / d logit = (onehot − p) / temperature

  def step(carry, i):
    grad_x, grad_weight = carry
    part = jax.lax.dynamic_index_in_dim(strided, i, block_axis, keepdims=False)
    ids = jnp.arange(block) * blocks + i  # the vocabulary ids of `part`'s rows (or columns)
    scaled = OutputHead(part, layout, compute_dtype).logits(x) / temperature  # [R, C, Vb]
    probs = jnp.where(ids < vocab, jnp.exp(scaled - lse[..., None]), 0.0)
    grad_logits = scale * ((targets[..., None] == ids).astype(jnp.float32) - probs)
    # As JAX's own transpose of the logits' einsum: the fp32 cotangent against the compute-dtype
    # operand (a mixed dot_general: a jnp.einsum would promote the operand, and XLA would hoist
    # that conversion of the whole head to fp32 out of the loop).
    operands = (grad_logits, x) if layout == 've' else (x, grad_logits)
    grad_part = jax.lax.dot_general(  # [Vb, E] ('ve') or [E, Vb] ('ev'), over all tokens
        *operands, (((0, 1), (0, 1)), ((), ())), preferred_element_type=jnp.float32)
    grad_weight = jax.lax.dynamic_update_index_in_dim(grad_weight, grad_part.astype(weight.dtype),
                                                      i, block_axis)
    grad_x = grad_x + jax.lax.dot_general(  # this block's share of the states' gradient
        grad_logits, part.astype(compute_dtype), (((2,), (axis,)), ((), ())),
        preferred_element_type=jnp.float32)
    return (grad_x, grad_weight), None

  start = (jnp.zeros(x.shape, jnp.float32), jnp.zeros(strided.shape, weight.dtype))
  (grad_x, grad_weight), _ = jax.lax.scan(step, start, jnp.arange(blocks))
  grad_weight = grad_weight.reshape(
      weight.shape[:axis] + (block * blocks,) + weight.shape[axis + 1:])
  grad_weight = jax.lax.slice_in_dim(grad_weight, 0, vocab, axis=axis)
  return grad_x.astype(x.dtype), grad_weight, None, jnp.zeros_like(temperature)


_chunked_log_probs.defvjp(_chunked_log_probs_fwd, _chunked_log_probs_bwd, symbolic_zeros=True)


def head_log_probs_and_entropy(head: OutputHead, normed: jax.Array, targets: jax.Array,
                               chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                               ) -> tuple[jax.Array, jax.Array]:
  """(log p(targets), entropy −Σ_v p log p of the distribution), both float32 like `targets`,
  from the fp32 log-softmax of `head.logits(normed)`, the logits `chunk_tokens` per device at a
  time (arguments as `head_token_log_probs`). Meant for statistics without gradient; plain
  autodiff of its chunks (each recomputed in the backward) still gives one."""
  def body(chunk, chunk_targets):
    log_softmax = jax.nn.log_softmax(head.logits(chunk).astype(jnp.float32), axis=-1)
    log_prob = jnp.take_along_axis(log_softmax, chunk_targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(log_softmax) * log_softmax, axis=-1)
    return log_prob, entropy

  x, flat = _flat(normed, targets)
  flat = flat.astype(jnp.int32)
  rows, columns = flat.shape
  width = chunk_width(rows, columns, chunk_tokens)
  if width >= columns:
    outputs = body(x, flat)
  else:
    outputs = _by_column_chunks(body, x, flat, width, checkpoint=True)
  return tuple(out.reshape(targets.shape) for out in outputs)
