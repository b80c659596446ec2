"""Log-probs and cross-entropy over the vocabulary in chunks (objective/chunked_log_probs.py,
`model.logits_chunk_tokens`) against the unchunked path (chunk_tokens=0): per-token log-probs and
their gradients (tied and untied head), the next-token loss, the teacher's log-prob and entropy,
and one shared-prefix RLP update's loss and gradient, each with a chunk size that divides neither
the tokens nor the vocabulary; and the compiled gradient's temporaries shrink by the [tokens, V]
logits.

Tolerances (docs/architecture.md, "fp32 tolerances derived from float64 runs"). Chunked, a token's
log-prob is the same computation on a smaller matmul, the head's gradient the same per-element sum
over all tokens, and the states' gradient the sum of the vocabulary blocks' shares: the same
mathematics in another fp32 order. So
- exactness: the log-prob case runs both paths again in float64 on the same inputs, where they
  must agree to F64_REL = 1e-12 relative (measured ≤ 5e-16);
- fp32: chunked and unchunked agree to CHUNKED_REL = 1e-5 of each leaf's largest magnitude. Both
  paths' fp32 errors against float64 are a few ulps here (1e-7 … 2.3e-6, moving with the chunk
  shapes on either path, so their ratio means nothing), and chunked vs unchunked differ by at most
  1.0e-6 over every case of this file with the default XLA flags,
  `--xla_cpu_enable_fast_math=false` and `--xla_cpu_max_isa=SSE4_2`
  (tests/scripts/chunked_log_probs_margins.py, whose docstring has the table): a margin of ≥ 10×.
A shape that fits one chunk and one vocabulary block runs the identical ops: compared bitwise.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.config.axis_rules import DEFAULT_LOGICAL_AXIS_RULES
from rlp_jax.models import registry
from rlp_jax.models.registry import document_positions
from rlp_jax.models.shared_prefix import document_kv, thought_forward
from rlp_jax.objective import next_token_loss, next_token_loss_from_head
from rlp_jax.objective.chunked_log_probs import chunk_width, head_token_log_probs, vocab_blocks
from rlp_jax.parallel.activation_sharding import activation_layout
from rlp_jax.rollout.baseline_evidence import teacher_next_token_stats
from rlp_jax.rollout.prefix_strategies import thought_prompts
from rlp_jax.rollout.reasoned_evidence import build_scored_sequences
from rlp_jax.rollout.rlp_rollout import finish_rollout
from rlp_jax.rollout.thought_sampler import Thoughts
from rlp_jax.train.rlp_loss import rlp_loss
from tests import helpers
from tests.float64 import float64_run, max_abs, max_diff, to_float64

F64_REL = 1e-12
CHUNKED_REL = 1e-5


def model_config(tied: bool):
  """A one-layer Qwen3-shaped model (vocab 97, hidden 64), tied or untied head."""
  return helpers.dense_model_config(num_layers=1, tie_embeddings=tied, init_std=0.3)


def documents(rows: int = 3, length: int = 23, vocab: int = 97, seed: int = 0):
  """tokens int32 [rows, length] and a mask with a padded tail on every row but the first."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, size=(rows, length))
  lengths = [length] + [length - 4 - 3 * r for r in range(1, rows)]
  mask = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
  return jnp.asarray(np.where(mask, tokens, 0), jnp.int32), jnp.asarray(mask)


def hidden_states(shape, seed: int = 0):
  return jax.random.normal(jax.random.key(seed), shape + (64,), jnp.float32)


# ------------------------------------------------------------------ the cases: (config, run, chunk,
# args) with run(graphdef, chunk_tokens, *args) -> a pytree of float32 arrays.


def log_probs_case(tied: bool):
  """Log-probs at temperature 0.7 from given hidden states [3, 22, E] through the model's final
  norm and head, and the gradient of Σ weights · log-probs into the parameters and the hidden
  states; 10 tokens per chunk: forward chunks of 3 columns (8 of them, the last padded by 2),
  backward blocks of 7 of the 97 vocabulary ids (16 blocks, the head padded by 15 ids)."""
  config = model_config(tied)
  _, params = registry.init_params(config, seed=0)
  tokens, _ = documents()
  targets = tokens[:, 1:]

  def run(graphdef, chunk, params, hidden, weights):
    def total(params, hidden):
      normed, head = registry.output_head(graphdef, params, hidden)
      log_probs = head_token_log_probs(head, normed, targets, 0.7, chunk)
      return jnp.sum(weights * log_probs), log_probs
    (_, log_probs), grads = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(params,
                                                                                     hidden)
    return log_probs, grads

  weights = jax.random.normal(jax.random.key(1), (3, 22))
  return config, run, 10, (params, hidden_states((3, 22)), weights)


def next_token_case():
  """`next_token_loss_from_head` and its gradient (parameters, hidden states) against
  `next_token_loss` of all the logits (chunk 0), on rows with padding, the first packed with two
  documents; 7 tokens per chunk: 3 rows, 2 columns a chunk, 11 chunks of the 22 predicting
  columns; 32 vocabulary blocks in the backward."""
  config = model_config(tied=False)
  _, params = registry.init_params(config, seed=2)
  tokens, mask = documents(seed=2)
  second_document = (jnp.arange(23) >= 9)[None, :] & (jnp.arange(3) == 0)[:, None]
  segment_ids = jnp.where(mask, 1 + second_document, 0).astype(jnp.int32)

  def run(graphdef, chunk, params, hidden):
    def loss(params, hidden):
      if chunk == 0:  # the logits path: next_token_loss of all the logits
        logits = registry.logits_from_hidden(graphdef, params, hidden)
        return next_token_loss(logits, tokens, mask, segment_ids)[0]
      normed, head = registry.output_head(graphdef, params, hidden)
      return next_token_loss_from_head(head, normed, tokens, mask, segment_ids, chunk)[0]
    return jax.value_and_grad(loss, argnums=(0, 1))(params, hidden)

  return config, run, 7, (params, hidden_states((3, 23), seed=2))


def teacher_case():
  """`teacher_next_token_stats` (a model forward, then log-prob and entropy of every column) at
  5 tokens per chunk (one column of each of the 3 rows a chunk)."""
  config = model_config(tied=True)
  _, params = registry.init_params(config, seed=3)
  tokens, mask = documents(seed=3)

  def run(graphdef, chunk, params):
    return teacher_next_token_stats(graphdef, params, tokens, mask, chunk_tokens=chunk)

  return config, run, 5, (params,)


@jax.jit
def _hand_rollout_arrays(tokens, positions, thought_tokens, log_probs, sampled, length, ended,
                         evidence):
  rlp = helpers.rollout_rlp_config(prefix_mode='shared', ntp_weight=1.0)
  thoughts = Thoughts(tokens=thought_tokens, log_probs=log_probs, mask=sampled, length=length,
                      ended=ended)
  prompts = thought_prompts(tokens, positions, rlp.thoughts_per_position, helpers.THINK_START)
  sequences = build_scored_sequences(prompts, thoughts, helpers.THINK_END, helpers.PAD)
  return finish_rollout(sequences, thoughts, evidence[0], evidence[1],
                        jnp.ones(positions.shape, jnp.bool_), rlp)


def update_case():
  """One RLP update (shared prefix, clipped surrogate + next-token loss) on a rollout built by
  hand (fixed positions, random thoughts ended or cut at T, old log-probs and evidence: what an
  update reads, without compiling the sampler), the file's one-layer model without remat. 20
  tokens per chunk: the next-token loss takes 2 chunks of 6 of its 11 columns (the last padded)
  and 8 vocabulary blocks, the 18 thought rows of T = 6 tokens one column per chunk (6 chunks)
  and 16 blocks, S_pred one chunk and 8 blocks."""
  config = model_config(tied=True)
  config.remat_policy = 'none'
  _, params = registry.init_params(config, seed=0)
  rlp = helpers.rollout_rlp_config(prefix_mode='shared', ntp_weight=1.0)
  batch = helpers.rollout_documents([12, 9, 6])
  rows, limit = 18, rlp.max_thought_tokens
  rng = np.random.default_rng(0)
  length = rng.integers(1, limit + 1, size=rows)
  sampled = np.arange(limit)[None, :] < length[:, None]
  rollout = _hand_rollout_arrays(
      batch['tokens'], jnp.asarray([[2, 6, 11], [2, 5, 8], [2, 3, 5]], jnp.int32),
      jnp.asarray(np.where(sampled, rng.integers(5, helpers.ROLLOUT_VOCAB, (rows, limit)),
                           helpers.PAD), jnp.int32),
      jnp.asarray(np.where(sampled, -3 * rng.random((rows, limit)), 0), jnp.float32),
      jnp.asarray(sampled), jnp.asarray(length, jnp.int32), jnp.asarray(rng.random(rows) < 0.6),
      jnp.asarray(rng.normal(size=(2, rows)), jnp.float32))

  def run(graphdef, chunk, params, rollout):
    return jax.value_and_grad(rlp_loss, has_aux=True)(params, params, graphdef, batch, rollout,
                                                      rlp, chunk)

  return config, run, 20, (params, rollout)


def run_both(case, float64=False):
  """The case's (chunked, unchunked) trees in one jitted call (in float64 with `float64`)."""
  config, run, chunk, args = case
  both = lambda graphdef, *args: (run(graphdef, chunk, *args), run(graphdef, 0, *args))
  if not float64:
    return jax.jit(both, static_argnums=0)(registry.abstract_params(config)[0], *args)
  with float64_run():
    graphdef64, _ = registry.abstract_params(config)
    return jax.jit(both, static_argnums=0)(graphdef64, *to_float64(args))


def leaf_errors(tree, reference):
  """max |leaf − reference leaf| / max |reference leaf| of every leaf (float64)."""
  return [max_diff(a, b) / max(max_abs(b), 1e-30)
          for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference))]


def assert_chunked_close(case):
  """The case's chunked and unchunked fp32 trees agree to CHUNKED_REL; returns the chunked."""
  chunked, plain = run_both(case)
  errors = leaf_errors(chunked, plain)
  print('chunked vs unchunked fp32, worst leaf:', max(errors))
  assert max(errors) <= CHUNKED_REL, errors
  return chunked


# ------------------------------------------------------------------------------------ the tests


@pytest.mark.parametrize('tied', [True, False], ids=['tied', 'untied'])
def test_log_probs_and_gradients_equal_unchunked(tied):
  assert chunk_width(3, 22, 10) == 3 and vocab_blocks(3, 22, 97, 64, 10) == 16
  case = log_probs_case(tied)
  chunked64, plain64 = run_both(case, float64=True)
  assert jax.tree.leaves(plain64)[0].dtype == jnp.float64
  assert max(leaf_errors(chunked64, plain64)) <= F64_REL  # exactness: the same mathematics
  log_probs, (grads, grad_hidden) = assert_chunked_close(case)
  assert log_probs.shape == (3, 22) and log_probs.dtype == jnp.float32
  # The gradient reaches the hidden states, the final norm and the head (tied: the embedding).
  head = grads['token_embedding'] if tied else grads['lm_head']
  for leaf in [grad_hidden, grads['final_norm']] + jax.tree.leaves(head):
    assert np.all(np.any(np.asarray(leaf) != 0, axis=-1))
  assert ('lm_head' in grads) == (not tied)


def test_one_chunk_is_exactly_the_unchunked_computation():
  config, run, _, args = log_probs_case(tied=True)
  # 130 ≥ the 66 tokens + E = 64: one chunk, one vocabulary block.
  assert chunk_width(3, 22, 130) == 22 and vocab_blocks(3, 22, 97, 64, 130) == 1
  both = jax.jit(lambda graphdef, *args: (run(graphdef, 130, *args), run(graphdef, 0, *args)),
                 static_argnums=0)
  whole, plain = both(registry.abstract_params(config)[0], *args)
  jax.tree.map(np.testing.assert_array_equal, whole, plain)


def test_next_token_loss_and_gradients_equal_the_logits_path():
  loss, _ = assert_chunked_close(next_token_case())
  assert np.isfinite(float(loss)) and float(loss) > 0


def test_teacher_log_probs_and_entropy_equal_unchunked():
  log_prob, entropy = assert_chunked_close(teacher_case())
  assert log_prob.shape == entropy.shape == (3, 23)
  assert np.all(np.asarray(entropy)[:, 1:] > 0) and np.all(np.asarray(log_prob)[:, 0] == 0)


def test_shared_prefix_update_loss_and_gradient_equal_unchunked():
  assert chunk_width(3, 11, 20) == 6 and chunk_width(18, 6, 20) == 1
  assert [vocab_blocks(*shape, 97, 64, 20) for shape in ((3, 11), (18, 6), (18, 1))] == [8, 16, 8]
  (_, metrics), grads = assert_chunked_close(update_case())
  assert float(metrics['ntp_loss']) > 0 and float(metrics['clip_fraction']) > 0
  assert all(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(grads))


def test_shared_prefix_passes_return_the_hidden_states_of_their_logits():
  """Dense; the hybrid record returns its residual stream the same way (hybrid_family.py), which
  tests/test_shared_prefix.py and tests/test_packing.py score through."""
  graphdef, params = registry.init_params(model_config(tied=True), seed=0)
  batch = helpers.rollout_documents([12, 9, 6])
  tokens, positions = batch['tokens'], jnp.asarray([[4], [5], [3]], jnp.int32)
  thought = jnp.full((3, 2, 3), 7, jnp.int32)
  prefix_len = jnp.repeat(positions, 2, axis=1)

  @jax.jit
  def outputs(params):
    out = []
    for hidden in (False, True):
      first, doc = document_kv(graphdef, params, tokens, document_positions(tokens),
                               batch['mask'], positions, return_hidden=hidden)
      second, _ = thought_forward(graphdef, params, doc, prefix_len, thought,
                                  prefix_len[..., None] + jnp.arange(3),
                                  jnp.ones(thought.shape, jnp.bool_), return_hidden=hidden)
      out.append((first, second))
    (doc_logits, thought_logits), (doc_hidden, thought_hidden) = out
    as_logits = functools.partial(registry.logits_from_hidden, graphdef, params)
    return (doc_logits, thought_logits), (doc_hidden, thought_hidden), (
        as_logits(doc_hidden), as_logits(thought_hidden.reshape(6, 3, 64)).reshape(3, 2, 3, -1))

  logits, hidden, from_hidden = outputs(params)
  assert hidden[0].shape == tokens.shape + (64,) and hidden[1].shape == (3, 2, 3, 64)
  jax.tree.map(np.testing.assert_array_equal, from_hidden, logits)


def test_chunks_are_per_device_whole_rows_and_balanced():
  assert chunk_width(4, 129, 0) == 129  # 0: unchunked
  assert chunk_width(4, 129, 4 * 129) == 129  # fits one chunk
  assert chunk_width(16, 129, 1024) == 43  # 64 columns at most: 3 balanced chunks, not 64+64+1
  assert chunk_width(2048, 129, 1024) == 1  # more rows than tokens: one column of every row
  assert chunk_width(128, 129, 2048) == 15  # no layout: all 128 rows on one device
  # Backward blocks: a power of two ≥ (tokens per device + E) / chunk_tokens, at most V.
  assert vocab_blocks(16, 128, 151936, 2048, 1024) == 4  # (2048 + 2048) / 1024
  assert vocab_blocks(1, 1023, 151936, 2048, 1024) == 4  # 3071 / 1024 → 3 → 4
  assert vocab_blocks(4, 129, 97, 64, 4 * 129 + 64) == 1
  assert vocab_blocks(4096, 129, 97, 64, 1) == 97
  mesh = jax.sharding.AbstractMesh((2, 4, 1), ('data', 'fsdp', 'tensor'))
  with activation_layout(mesh, DEFAULT_LOGICAL_AXIS_RULES):  # 'batch' → data × fsdp: 8 shards
    assert chunk_width(128, 129, 2048) == 65  # 16 rows per device: 128 columns → 2 chunks
    assert chunk_width(4, 129, 1024) == 129  # 4 rows do not split 8 ways: all on each device
    assert vocab_blocks(128, 129, 151936, 2048, 1024) == 8  # (16 · 129 + 2048) / 1024 → 5 → 8


def test_chunked_gradient_needs_less_memory_by_the_logits():
  """XLA's temporaries of the next-token loss gradient (into the head, the final norm and the
  hidden states; V 32768, 4 × 512 tokens, hidden 16): chunked at 512 tokens (forward chunks of
  4 × 128 tokens, 8 backward blocks of 4096 ids), the gradient saves at least the [tokens, V]
  fp32 logits less one chunk's (it saves more: the unchunked path also keeps their softmax and
  cotangent). Without chunking the saving is 0 and this fails."""
  config = helpers.dense_model_config(vocab_size=32768, hidden_size=16, num_layers=1,
                                      tie_embeddings=True)
  graphdef, params = registry.abstract_params(config)
  hidden = jax.ShapeDtypeStruct((4, 512, 16), jnp.float32)
  tokens = jax.ShapeDtypeStruct((4, 512), jnp.int32)
  mask = jax.ShapeDtypeStruct((4, 512), jnp.bool_)

  def temporaries(chunk_tokens):
    def loss(params, hidden, tokens, mask):
      normed, head = registry.output_head(graphdef, params, hidden)
      return next_token_loss_from_head(head, normed, tokens, mask, chunk_tokens=chunk_tokens)[0]
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, hidden, tokens,
                                                             mask).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert chunk_width(4, 511, 512) == 128 and vocab_blocks(4, 511, 32768, 16, 512) == 8
  logits_bytes = 4 * 511 * 32768 * 4
  chunk_bytes = 4 * 128 * 32768 * 4
  unchunked, chunked = temporaries(0), temporaries(512)
  print(f'temporaries MiB: unchunked {unchunked / 2**20:.1f}, chunked {chunked / 2**20:.1f}')
  assert unchunked - chunked >= logits_bytes - chunk_bytes, (unchunked, chunked)
