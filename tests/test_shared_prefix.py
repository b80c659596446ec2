"""Shared-prefix path (`rlp.prefix_mode='shared'`, docs/architecture.md) against the naive
re-encode path, for the dense (Qwen3) and the
hybrid (Nemotron-H: Mamba2 + attention + MLP) families: same samples for the same key, same
thought log-probs, S_pred, rewards, advantages, losses and parameter gradients (fp32; the
gradients, and the hybrid document's Mamba states against a prefill cache, whose fp32 rounding
depends on the CPU, against float64 runs of both paths), with scored
positions at the first allowed position, inside the document, at its last token and (hybrid,
Mamba chunk size 4) exactly at chunk boundaries and one past them."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.models import registry
from rlp_jax.models.attention import grouped_query_attention
from rlp_jax.models.shared_prefix import document_kv, shared_prefix_attention, thought_forward
from rlp_jax.models.ssd import ssd_chunked_scan
from rlp_jax.rollout.reasoned_evidence import build_scored_sequences, score_thoughts
from rlp_jax.rollout.prefix_strategies import (sample_thoughts_shared, score_thoughts_shared,
                                               thought_prompts)
from rlp_jax.rollout.thought_sampler import build_prompts, sample_thoughts
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.train.rlp_loss import rlp_loss
from rlp_jax.rollout.rlp_rollout import rollout_batch
from rlp_jax.models.registry import document_positions
from tests import helpers
from tests.float64 import float64_run, max_abs, max_diff, to_float64

# THINK_END is a common token: thoughts end early too.
THINK_START, THINK_END, PAD = helpers.THINK_START, helpers.THINK_END, helpers.PAD
SPECIAL = SpecialTokens(think_start_id=THINK_START, think_end_id=THINK_END, pad_id=PAD)
GROUP = 2
LIMIT = 6
REL = 1e-5
# fp32 comparisons whose rounding depends on the CPU (docs/architecture.md, "fp32 tolerances
# derived from float64 runs"): the two paths in float64 on the same inputs agree to F64_REL, and
# the shared path's fp32 error against its own float64 run is at most ACCURACY_FACTOR × the naive
# path's largest fp32 error in the same update (+ ACCURACY_FLOOR), relative to each leaf's scale.
F64_REL = 1e-12
ACCURACY_FACTOR = 2.0
ACCURACY_FLOOR = 1e-7


FAMILIES = ('dense', 'hybrid')
FAMILIES_HYBRID_SLOW = ('dense', pytest.param('hybrid', marks=pytest.mark.slow))
CHUNK = helpers.ROLLOUT_MAMBA_CHUNK  # 4, the hybrid's Mamba chunk: a 12-token document is 3


def model_config(family='dense'):
  """The rollout tests' tiny model (init_std 0.3); hybrid: layers 'M*-M', Mamba chunk CHUNK."""
  return helpers.rollout_model_config(family)


def rlp_config(**overrides):
  return helpers.rollout_rlp_config(
      **{'thoughts_per_position': GROUP, 'max_thought_tokens': LIMIT, **overrides})


def documents():
  """Lengths 12, 5, 4 with min_context 2: the second has exactly 3 allowed positions (2, 3, 4:
  first allowed, inside, last token), the third 2 of 3 (one skipped slot)."""
  return helpers.rollout_documents([12, 5, 4])


# dense: first allowed (2), inside (6, 3), last token of each document (11, 4, 3).
# hybrid (chunk 4): the thought at t starts from the state after t tokens: t = 8 and 4 end exactly
# on a chunk boundary, t = 5 is one past it, 3 and 11 inside a chunk, 2 the first allowed, 11/4/3
# the documents' last tokens.
POSITIONS = {'dense': jnp.asarray([[2, 6, 11], [2, 3, 4], [2, 3, 3]], jnp.int32),
             'hybrid': jnp.asarray([[5, 8, 11], [2, 3, 4], [2, 3, 3]], jnp.int32)}


def assert_close(got, want, rel=REL):
  helpers.assert_close(got, want, rel)


def fp32_errors(shared32, naive32, shared64, naive64):
  """(shared fp32 error, naive fp32 error) against the float64 run of the same path on the same
  inputs, relative to max |naive64|."""
  scale = max(max_abs(naive64), 1e-30)
  return max_diff(shared32, shared64) / scale, max_diff(naive32, naive64) / scale


@functools.partial(jax.jit, static_argnums=(0, 3, 5))
def _naive(graphdef, params, batch, temperature, key, family):
  prompts = build_prompts(batch['tokens'], POSITIONS[family], GROUP, THINK_START)
  thoughts = sample_thoughts(graphdef, params, model_config(family), prompts, key, LIMIT,
                             temperature, THINK_END, PAD)
  sequences = build_scored_sequences(prompts, thoughts, THINK_END, PAD)
  return (thoughts,) + score_thoughts(graphdef, params, sequences, LIMIT, temperature)


@functools.partial(jax.jit, static_argnums=(0, 3, 5))
def _shared(graphdef, params, batch, temperature, key, family):
  tokens = batch['tokens']
  _, doc = document_kv(graphdef, params, tokens, document_positions(tokens), batch['mask'],
                       POSITIONS[family])
  prompts = thought_prompts(tokens, POSITIONS[family], GROUP, THINK_START)
  thoughts = sample_thoughts_shared(graphdef, params, model_config(family), doc, prompts, key,
                                    LIMIT, temperature, THINK_END, PAD)
  sequences = build_scored_sequences(prompts, thoughts, THINK_END, PAD)
  return (thoughts,) + score_thoughts_shared(graphdef, params, doc, sequences, LIMIT, temperature)


def test_attention_equals_gqa_over_the_tiled_document_and_own_keys():
  b, n, q, s, length = 2, 3, 4, 5, 7
  keys = jax.random.split(jax.random.key(0), 5)
  queries = jax.random.normal(keys[0], (b, n, q, 4, 8))
  doc_keys, doc_values = (jax.random.normal(k, (b, length, 2, 8)) for k in keys[1:3])
  own_keys, own_values = (jax.random.normal(k, (b, n, s, 2, 8)) for k in keys[3:5])
  rng = np.random.default_rng(0)
  doc_visible = jnp.asarray(rng.random((b, n, length)) < 0.6)
  own_visible = jnp.asarray(rng.random((b, n, q, s)) < 0.5)
  doc_visible = doc_visible.at[0, 1].set(False)
  own_visible = own_visible.at[0, 1, 2].set(False)  # a query that sees no key at all
  got = shared_prefix_attention(queries, doc_keys, doc_values, doc_visible, own_keys, own_values,
                                own_visible)
  tile = lambda x: jnp.repeat(x, n, axis=0)  # the naive layout: document copied per thought
  all_keys = jnp.concatenate([tile(doc_keys), own_keys.reshape(b * n, s, 2, 8)], axis=1)
  all_values = jnp.concatenate([tile(doc_values), own_values.reshape(b * n, s, 2, 8)], axis=1)
  mask = jnp.concatenate([jnp.broadcast_to(doc_visible.reshape(b * n, 1, length),
                                           (b * n, q, length)),
                          own_visible.reshape(b * n, q, s)], axis=-1)
  want = grouped_query_attention(queries.reshape(b * n, q, 4, 8), all_keys, all_values, mask)
  assert_close(got, want.reshape(got.shape))
  assert np.all(np.asarray(got[0, 1, 2]) == 0.0)


@pytest.mark.parametrize('family', FAMILIES_HYBRID_SLOW)
def test_document_kv_logits_are_the_model_forward(family):
  graphdef, params = registry.init_params(model_config(family), seed=0)
  batch = documents()
  positions = document_positions(batch['tokens'])
  logits, doc = document_kv(graphdef, params, batch['tokens'], positions, batch['mask'],
                            POSITIONS[family])
  expected, _ = registry.forward(graphdef, params, batch['tokens'], positions, batch['mask'])
  attention, mamba = attention_values(family, doc), mamba_values(family, doc)
  if family == 'dense':
    np.testing.assert_array_equal(np.asarray(logits), np.asarray(expected))
    assert attention[0][0].shape == (3, 12, 2, 8) and len(attention) == 2 and not mamba
  else:  # document_scan is the Mamba forward plus state read-outs: same numbers, not same ops
    assert_close(logits, expected, rel=1e-6)
    assert len(attention) == 1 and len(mamba) == 2
    assert mamba[0].ssm.shape == (3, 3, 4, 8, 8)  # [B, K, H, P, N]


def attention_values(family, doc):
  """Per attention layer, in order, the (keys, values) a DocumentKV (or cache) holds."""
  plan = registry.layer_plan(model_config(family))
  return doc.layers.of_kind(plan, 'D' if family == 'dense' else '*')


def mamba_values(family, doc):
  """Per Mamba2 layer, in order, the MambaState a DocumentKV (or cache) holds."""
  return doc.layers.of_kind(registry.layer_plan(model_config(family)), 'M')


def document_and_prefill_states(config, graphdef, params, batch, positions):
  """{(field, b, k, layer): (the Mamba state a thought at positions[b, k] starts from, read off
  the document's chunked scan; the state a decode cache holds after prefilling x_<t alone)}, both
  paths in one jitted computation (positions: numpy, fixed at trace time)."""
  tokens = batch['tokens']

  @jax.jit
  def states(params):
    _, doc = document_kv(graphdef, params, tokens, document_positions(tokens), batch['mask'],
                         jnp.asarray(positions))
    out = {}
    for b in range(tokens.shape[0]):
      for k in range(positions.shape[1]):
        t = int(positions[b, k])
        cache = registry.init_cache(config, 1, t)
        _, cache = registry.forward(graphdef, params, tokens[b:b + 1, :t],
                                    jnp.arange(t)[None], None, cache)
        plan = registry.layer_plan(config)
        for layer, (got, want) in enumerate(zip(doc.layers.of_kind(plan, 'M'),
                                                cache.layers.of_kind(plan, 'M'))):
          for name in ('ssm', 'conv_x', 'conv_b', 'conv_c'):
            out[name, b, k, layer] = (getattr(got, name)[b, k], getattr(want, name)[0])
    return out

  return states(params)


@pytest.mark.slow
def test_hybrid_document_states_equal_a_cache_filled_with_the_prefix():
  """The Mamba state a thought at t starts from (read off the document's chunked scan) equals the
  state a decode cache holds after prefilling x_<t alone (its own scan), every layer: exactly in
  float64, and in fp32 (two scans that sum the same terms in different orders, CPU-dependent
  rounding) the document path's error against its own float64 run is within ACCURACY_FACTOR × the
  prefill path's largest."""
  config = model_config('hybrid')
  graphdef, params = registry.init_params(config, seed=0)
  batch = documents()
  positions = np.asarray(POSITIONS['hybrid'])
  states32 = document_and_prefill_states(config, graphdef, params, batch, positions)
  with float64_run():
    graphdef64, _ = registry.abstract_params(config)
    states64 = document_and_prefill_states(config, graphdef64, to_float64(params), batch,
                                           positions)
  errors = {}
  for what, (doc64, cache64) in states64.items():
    assert doc64.dtype == jnp.float64
    helpers.assert_close(doc64, cache64, F64_REL, str(what))
    errors[what] = fp32_errors(*states32[what], doc64, cache64)
  prefill_accuracy = max(prefill for _, prefill in errors.values())
  doc_error = max(doc for doc, _ in errors.values())
  print(f'fp32 vs float64: document {doc_error:.1e}, prefill {prefill_accuracy:.1e}')
  for what, (error_doc, _) in errors.items():
    assert error_doc <= ACCURACY_FACTOR * prefill_accuracy + ACCURACY_FLOOR, (
        what, error_doc, prefill_accuracy)


def test_ssd_states_after_any_prefix_equal_the_recurrence():
  """ssd_chunked_scan(state_ends=…) vs a plain float64 numpy loop of the recurrence, from a
  non-zero initial state, at 0 tokens, chunk ends, one past them, inside chunks and the end."""
  batch, length, heads, head_dim, groups, state = 2, 13, 4, 3, 2, 5
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, length, heads, head_dim))
  dt = np.log1p(np.exp(rng.normal(size=(batch, length, heads))))
  a = -np.exp(rng.normal(size=heads))
  bb, cc = rng.normal(size=(2, batch, length, groups, state))
  start = rng.normal(size=(batch, heads, head_dim, state))
  ends = np.array([[0, 1, 4, 5, 13], [12, 8, 9, 3, 2]])
  as32 = lambda t: jnp.asarray(t, jnp.float32)
  _, _, got = ssd_chunked_scan(as32(x), as32(dt), as32(a), as32(bb), as32(cc), 4, as32(start),
                               jnp.asarray(ends, jnp.int32))
  _, states = helpers.ssd_recurrence(x, dt, a, bb, cc, start=start)
  for b in range(batch):
    for k, end in enumerate(ends[b]):
      assert_close(got[b, k], states[b, end])


@pytest.mark.parametrize('family,temperature', [('dense', 0.9), ('dense', 0.0),
                                                ('hybrid', 0.9), ('hybrid', 0.0)])
@pytest.mark.slow
def test_same_samples_log_probs_and_s_pred_as_naive(family, temperature):
  graphdef, params = registry.init_params(model_config(family), seed=0)
  batch = documents()
  naive, naive_logp, naive_s_pred = _naive(graphdef, params, batch, temperature,
                                           jax.random.key(1), family)
  shared, shared_logp, shared_s_pred = _shared(graphdef, params, batch, temperature,
                                               jax.random.key(1), family)
  np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(naive.tokens))
  np.testing.assert_array_equal(np.asarray(shared.mask), np.asarray(naive.mask))
  np.testing.assert_array_equal(np.asarray(shared.ended), np.asarray(naive.ended))
  ended = np.asarray(naive.ended)
  if temperature > 0:
    assert ended.any() and (~ended).any(), 'want thoughts that end early and ones that hit T'
  assert_close(shared.log_probs, naive.log_probs)  # sampled, at the sampling temperature
  mask = np.asarray(naive.mask)
  assert_close(np.asarray(shared_logp)[mask], np.asarray(naive_logp)[mask])  # teacher-forced
  assert_close(shared_s_pred, naive_s_pred)


@pytest.fixture(scope='module', params=FAMILIES)
def rollouts(request):
  """(family, θ, φ, naive rollout, shared rollout) for one key; ε and kl_weight do not enter a
  rollout."""
  family = request.param
  graphdef, params = registry.init_params(model_config(family), seed=0)
  _, teacher = registry.init_params(model_config(family), seed=1)

  @jax.jit
  def both(params, teacher):  # the same rollout, through each prefix strategy
    return tuple(rollout_batch(graphdef, params, teacher, jax.random.key(3), documents(),
                               model_config(family), rlp_config(prefix_mode=mode), SPECIAL)
                 for mode in ('naive', 'shared'))

  return (family, params, teacher) + both(params, teacher)


@pytest.mark.slow
def test_rollout_rewards_advantages_and_metrics_match_naive(rollouts):
  _, _, _, naive, shared = rollouts
  assert float(naive.metrics['skipped_positions']) == 1.0
  np.testing.assert_array_equal(np.asarray(shared.thought_mask), np.asarray(naive.thought_mask))
  assert_close(shared.old_log_probs, naive.old_log_probs)
  assert_close(shared.advantages, naive.advantages)
  for name in ('reward_mean', 'reward_std', 's_pred_mean', 's_ema_mean'):
    assert_close(shared.metrics[name], naive.metrics[name])
  for name in ('thought_length_mean', 'thought_tokens', 'scored_positions',
               'thought_hit_limit_fraction'):
    assert float(shared.metrics[name]) == float(naive.metrics[name])


@pytest.mark.parametrize('kl_weight', [0.0, 0.5])
@pytest.mark.slow
def test_update_loss_metrics_and_gradients_match_naive(rollouts, kl_weight):
  family, params, teacher, naive, shared = rollouts
  graphdef, _ = registry.abstract_params(model_config(family))
  rlp = {mode: rlp_config(kl_weight=kl_weight, epsilon_low=0.05, epsilon_high=0.05,
                         prefix_mode=mode) for mode in ('naive', 'shared')}
  # A later update of the rollout: θ ≠ θ_old, so ratios move and the clip band binds somewhere.
  noise = jax.tree.map(lambda x: 0.05 * jax.random.normal(jax.random.key(7), x.shape), params)
  theta = jax.tree.map(jnp.add, params, noise)

  def loss_and_grads(graphdef, mode):  # (θ, φ, rollout) → ((loss, metrics), ∇θ), jitted
    return jax.jit(jax.value_and_grad(
        lambda p, t, r: rlp_loss(p, t, graphdef, documents(), r, rlp[mode]), has_aux=True))

  (value_n, metrics_n), grads_n = loss_and_grads(graphdef, 'naive')(theta, teacher, naive)
  (value_s, metrics_s), grads_s = loss_and_grads(graphdef, 'shared')(theta, teacher, shared)
  assert float(metrics_n['clip_fraction']) > 0.0
  assert_close(value_s, value_n)
  for name in metrics_n:
    assert_close(metrics_s[name], metrics_n[name])
  # The gradients sum many cancelling terms: their fp32 rounding (≈ 1e-5 of a leaf, CPU-dependent)
  # is compared against float64 runs of the same paths, on the same inputs: each path on its own
  # rollout, and the shared path on its rollout with the naive rollout's floats (the two paths'
  # float64 gap on identical inputs).
  with float64_run():
    graphdef64, _ = registry.abstract_params(model_config(family))
    theta64, teacher64 = to_float64(theta), to_float64(teacher)
    shared_on_naive = dataclasses.replace(shared, old_log_probs=naive.old_log_probs,
                                          advantages=naive.advantages)
    naive64 = loss_and_grads(graphdef64, 'naive')(theta64, teacher64, to_float64(naive))
    loss_shared64 = loss_and_grads(graphdef64, 'shared')
    shared64 = loss_shared64(theta64, teacher64, to_float64(shared))
    same64 = loss_shared64(theta64, teacher64, to_float64(shared_on_naive))
  (value_n64, metrics_n64), grads_n64 = naive64
  (value_s64, metrics_s64), grads_s64 = shared64
  (value_x64, metrics_x64), grads_x64 = same64
  assert jax.tree.leaves(grads_n64)[0].dtype == jnp.float64
  assert_close(value_x64, value_n64, rel=F64_REL)
  for name in metrics_n:
    assert_close(metrics_x64[name], metrics_n64[name], rel=F64_REL)
  flat_n = jax.tree_util.tree_leaves_with_path(grads_n)
  flat_s, flat_n64, flat_s64, flat_x64 = (dict(jax.tree_util.tree_leaves_with_path(tree))
                                          for tree in (grads_s, grads_n64, grads_s64, grads_x64))
  errors = {}
  for path, grad_n in flat_n:
    assert np.any(np.asarray(grad_n) != 0), path
    assert_close(flat_x64[path], flat_n64[path], rel=F64_REL)
    errors[jax.tree_util.keystr(path)] = fp32_errors(flat_s[path], grad_n, flat_s64[path],
                                                     flat_n64[path])
  naive_accuracy = max(naive for _, naive in errors.values())
  print(f'gradients fp32 vs float64: shared {max(shared for shared, _ in errors.values()):.1e}, '
        f'naive {naive_accuracy:.1e}')
  for what, (error_shared, _) in errors.items():
    assert error_shared <= ACCURACY_FACTOR * naive_accuracy + ACCURACY_FLOOR, (
        what, error_shared, naive_accuracy)


def shared_document(family):
  """(graphdef, θ, the documents' DocumentKV at POSITIONS, prefix_len [B, N] per thought)."""
  graphdef, params = registry.init_params(model_config(family), seed=0)
  batch = documents()
  tokens = batch['tokens']
  positions = POSITIONS[family]
  _, doc = document_kv(graphdef, params, tokens, document_positions(tokens), batch['mask'],
                       positions)
  return graphdef, params, doc, jnp.repeat(positions, GROUP, axis=1)


@pytest.mark.parametrize('family', FAMILIES_HYBRID_SLOW)
def test_every_rollout_gradient_reaches_only_its_own_prefix(family):
  """A thought row's output has gradient into the document keys/values of its own document's
  columns < t only and (hybrid) into the Mamba states of its own (document, position) only."""
  graphdef, params, doc, prefix_len = shared_document(family)
  thought = jnp.full(prefix_len.shape + (2,), 7, jnp.int32)
  thought_positions = prefix_len[..., None] + jnp.arange(2)
  mask = jnp.ones(thought.shape, jnp.bool_)

  @jax.jit
  def row_grads(differentiable, b, n):
    def row_output(differentiable):
      shared = doc.replace(layers=differentiable)
      logits, _ = thought_forward(graphdef, params, shared, prefix_len, thought,
                                  thought_positions, mask)
      return jnp.sum(logits[b, n, -1] ** 2)
    return jax.grad(row_output)(differentiable)

  for b, n in [(0, 0), (0, 5), (1, 4), (2, 3)]:
    grads = doc.replace(layers=row_grads(doc.layers, b, n))
    grad_attention, grad_mamba = attention_values(family, grads), mamba_values(family, grads)
    reach = np.asarray(jnp.any(grad_attention[0][0] != 0, axis=(2, 3))
                       | jnp.any(grad_attention[-1][1] != 0, axis=(2, 3)))  # [B, L] reached
    t = int(prefix_len[b, n])
    expected = np.zeros_like(reach)
    expected[b, :t] = True
    np.testing.assert_array_equal(reach, expected)
    for state in grad_mamba:  # [B, K, ...] per field: only (b, n // G) is reached
      for field in (state.ssm, state.conv_x, state.conv_b, state.conv_c):
        reached = np.asarray(jnp.any(field != 0, axis=tuple(range(2, field.ndim))))
        expected = np.zeros_like(reached)
        expected[b, n // GROUP] = True
        np.testing.assert_array_equal(reached, expected)


@pytest.mark.parametrize('family', FAMILIES_HYBRID_SLOW)
def test_document_keys_are_never_tiled_per_rollout(family):
  graphdef, params, doc, prefix_len = shared_document(family)
  thought = jnp.zeros(prefix_len.shape + (4,), jnp.int32)
  jaxpr = jax.make_jaxpr(lambda d: thought_forward(
      graphdef, params, d, prefix_len, thought, prefix_len[..., None] + jnp.arange(4),
      jnp.ones(thought.shape, jnp.bool_))[0])(doc)
  batch_size, length = doc.valid.shape
  rollouts = prefix_len.shape[1]
  tiled = [(batch_size, rollouts, length, 2, 8), (batch_size * rollouts, length, 2, 8)]
  shapes = [var.aval.shape for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars]
  assert attention_values(family, doc) and not any(shape in tiled for shape in shapes)
