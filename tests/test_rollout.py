"""Rollouts and the RLP step: positions, prompts, sampled log-probs vs teacher-forced recompute,
S_pred vs an unpadded forward, ratio 1 on the first update, no gradient into reward or teacher."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlp_jax.models import registry
from rlp_jax.rollout.positions import choose_positions
from rlp_jax.rollout.reasoned_evidence import build_scored_sequences, score_thoughts
from rlp_jax.rollout.thought_sampler import build_prompts, pick_tokens, sample_thoughts
from rlp_jax.train.ema import ema_update
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.train.rlp_loss import rlp_loss
from rlp_jax.rollout.rlp_rollout import rollout_batch
from tests import helpers

VOCAB = helpers.ROLLOUT_VOCAB
# THINK_END is a common token: thoughts end early too.
THINK_START, THINK_END, PAD = helpers.THINK_START, helpers.THINK_END, helpers.PAD


def model_config() -> ml_collections.ConfigDict:
  return helpers.rollout_model_config('dense')


def rlp_config(**overrides) -> ml_collections.ConfigDict:
  return helpers.rollout_rlp_config(**{'prefix_mode': 'naive', **overrides})


def documents():
  return helpers.rollout_documents([12, 9, 4])  # the last document is short


SPECIAL = SpecialTokens(think_start_id=THINK_START, think_end_id=THINK_END, pad_id=PAD)


def test_choose_positions_respects_context_padding_and_counts_skips():
  mask = jnp.asarray(np.arange(10)[None, :] < np.array([10, 6, 3])[:, None])
  for seed in range(5):
    positions, valid = choose_positions(jax.random.key(seed), mask, 4, min_context=2)
    positions, valid = np.asarray(positions), np.asarray(valid)
    for b, length in enumerate([10, 6, 3]):
      chosen = positions[b][valid[b]]
      assert len(set(chosen.tolist())) == len(chosen)
      assert np.all(chosen >= 2) and np.all(chosen < length)
      assert valid[b].sum() == min(4, max(length - 2, 0))
  again = choose_positions(jax.random.key(3), mask, 4, 2)
  np.testing.assert_array_equal(np.asarray(again[0]),
                                np.asarray(choose_positions(jax.random.key(3), mask, 4, 2)[0]))


def test_prompts_are_left_padded_prefixes_with_think():
  batch = documents()
  positions = jnp.asarray([[2, 5, 11], [3, 4, 8], [2, 3, 3]], jnp.int32)
  prompts = build_prompts(batch['tokens'], positions, 2, THINK_START)
  tokens = np.asarray(batch['tokens'])
  length = tokens.shape[1]
  row = 0
  for b in range(3):
    for k in range(3):
      for _ in range(2):
        t = int(positions[b, k])
        expected = list(tokens[b, :t]) + [THINK_START]
        got_mask = np.asarray(prompts.mask[row])
        assert got_mask.sum() == t + 1 and not got_mask[:length - t - 1].any()
        assert list(np.asarray(prompts.tokens[row])[got_mask]) == expected
        assert list(np.asarray(prompts.positions[row])[got_mask]) == list(range(t + 1))
        assert int(prompts.next_token[row]) == tokens[b, t]
        row += 1


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _rollout_and_score(graphdef, params, batch, limit, temperature, key, positions):
  prompts = build_prompts(batch['tokens'], positions, 2, THINK_START)
  thoughts = sample_thoughts(graphdef, params, model_config(), prompts, key, limit, temperature,
                             THINK_END, PAD)
  sequences = build_scored_sequences(prompts, thoughts, THINK_END, PAD)
  recomputed, s_pred = score_thoughts(graphdef, params, sequences, limit, temperature)
  return prompts, thoughts, recomputed, s_pred


def _positions():
  return jnp.asarray([[2, 6, 11], [3, 5, 8], [2, 3, 3]], jnp.int32)


def test_sampled_log_probs_equal_teacher_forced_recompute():
  graphdef, params = registry.init_params(model_config(), seed=0)
  batch = documents()
  limit = 6
  _, thoughts, recomputed, _ = _rollout_and_score(graphdef, params, batch, limit, 0.9,
                                                  jax.random.key(1), _positions())
  length = np.asarray(thoughts.length)
  ended = np.asarray(thoughts.ended)
  assert ended.any() and (~ended).any(), 'want thoughts that end early and ones that hit T'
  assert (length == 1).any() or (length < limit).any()
  assert np.all(length[~ended] == limit)
  mask = np.asarray(thoughts.mask)
  sampled = np.asarray(thoughts.log_probs)[mask]
  again = np.asarray(recomputed)[mask]
  np.testing.assert_allclose(again, sampled, rtol=1e-5, atol=1e-5)
  # Tokens after `</think>` are padding and carry no log-prob.
  assert np.all(np.asarray(thoughts.log_probs)[~mask] == 0.0)
  assert np.all(np.asarray(thoughts.tokens)[~mask] == PAD)


@pytest.mark.slow
def test_s_pred_equals_unpadded_forward_of_the_closed_thought():
  graphdef, params = registry.init_params(model_config(), seed=0)
  batch = documents()
  limit = 6
  prompts, thoughts, _, s_pred = _rollout_and_score(graphdef, params, batch, limit, 0.9,
                                                    jax.random.key(2), _positions())
  tokens = np.asarray(batch['tokens'])
  for row in range(prompts.tokens.shape[0]):
    b, t = row // 6, int(prompts.scored_position[row])
    n = int(thoughts.length[row])
    thought = list(np.asarray(thoughts.tokens[row])[:n])
    if not bool(thoughts.ended[row]):
      thought.append(THINK_END)
    sequence = list(tokens[b, :t]) + [THINK_START] + thought
    logits, _ = registry.forward(graphdef, params, jnp.asarray([sequence], jnp.int32),
                                 jnp.arange(len(sequence))[None, :])
    expected = np.asarray(jax.nn.log_softmax(logits[0, -1]))[tokens[b, t]]
    np.testing.assert_allclose(float(s_pred[row]), expected, rtol=1e-5, atol=1e-5)


def test_greedy_thought_is_deterministic_and_temperature_zero_records_untempered_log_probs():
  graphdef, params = registry.init_params(model_config(), seed=0)
  batch = documents()
  first = _rollout_and_score(graphdef, params, batch, 6, 0.0, jax.random.key(1), _positions())
  second = _rollout_and_score(graphdef, params, batch, 6, 0.0, jax.random.key(9), _positions())
  np.testing.assert_array_equal(np.asarray(first[1].tokens), np.asarray(second[1].tokens))


def _rollout(params, teacher, rlp, key=0):
  graphdef, _ = registry.abstract_params(model_config())
  return rollout_batch(graphdef, params, teacher, jax.random.key(key), documents(),
                       model_config(), rlp, SPECIAL)


@pytest.mark.slow
def test_first_update_has_ratio_one_and_no_clipping():
  graphdef, params = registry.init_params(model_config(), seed=0)
  rlp = rlp_config()
  rollout = jax.jit(lambda p, t: _rollout(p, t, rlp))(params, params)
  assert float(rollout.metrics['skipped_positions']) == 1.0  # the short document has 2 of 3
  _, metrics = rlp_loss(params, params, graphdef, documents(), rollout, rlp)
  assert abs(float(metrics['ratio_mean']) - 1.0) < 1e-5
  assert abs(float(metrics['ratio_max']) - 1.0) < 1e-5
  assert float(metrics['clip_fraction']) == 0.0
  assert abs(float(metrics['approx_kl'])) < 1e-9


@pytest.mark.parametrize('kl_weight', [0.0, 0.5])
@pytest.mark.slow
def test_no_gradient_reaches_the_reward_or_the_teacher(kl_weight):
  graphdef, params = registry.init_params(model_config(), seed=0)
  _, teacher = registry.init_params(model_config(), seed=1)
  rlp = rlp_config(kl_weight=kl_weight)

  def end_to_end(params, teacher):
    rollout = _rollout(params, teacher, rlp)  # reward, advantages, S_ema inside the gradient
    return rlp_loss(params, teacher, graphdef, documents(), rollout, rlp)[0]

  grad_params, grad_teacher = jax.jit(jax.grad(end_to_end, argnums=(0, 1)))(params, teacher)
  for leaf in jax.tree.leaves(grad_teacher):
    assert np.all(np.asarray(leaf) == 0.0)
  # With the rollout precomputed (a constant), θ's gradient is the same: nothing flowed through
  # the sampled thoughts, the reward or the advantages.
  rollout = jax.jit(lambda p, t: _rollout(p, t, rlp))(params, teacher)
  grad_fixed = jax.jit(jax.grad(lambda p: rlp_loss(p, teacher, graphdef, documents(), rollout,
                                                   rlp)[0]))(params)
  for a, b in zip(jax.tree.leaves(grad_params), jax.tree.leaves(grad_fixed)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b)), np.max(np.abs(a - b))
  assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(grad_params))


def test_ema_update_matches_numpy():
  rng = np.random.default_rng(0)
  teacher = {'a': rng.normal(size=(3, 4)).astype(np.float32), 'b': {'c': np.float32(rng.normal())}}
  params = {'a': rng.normal(size=(3, 4)).astype(np.float32), 'b': {'c': np.float32(rng.normal())}}
  updated = ema_update(jax.tree.map(jnp.asarray, teacher), jax.tree.map(jnp.asarray, params), 0.9)
  np.testing.assert_allclose(np.asarray(updated['a']), 0.9 * teacher['a'] + 0.1 * params['a'],
                             rtol=1e-6)
  np.testing.assert_allclose(float(updated['b']['c']),
                             0.9 * teacher['b']['c'] + 0.1 * params['b']['c'], rtol=1e-6)
  same = ema_update(jax.tree.map(jnp.asarray, teacher), jax.tree.map(jnp.asarray, params), 1.0)
  np.testing.assert_array_equal(np.asarray(same['a']), teacher['a'])


@pytest.mark.slow
def test_reward_is_s_pred_minus_s_ema_with_teacher_forward():
  graphdef, params = registry.init_params(model_config(), seed=0)
  _, teacher = registry.init_params(model_config(), seed=1)
  rlp = rlp_config()
  rollout = jax.jit(lambda p, t: _rollout(p, t, rlp))(params, teacher)
  batch = documents()
  # Independent S_ema: teacher log-prob of x_t from an unpadded forward of the document prefix.
  positions, valid = choose_positions(jax.random.split(jax.random.key(0))[0], batch['mask'], 3, 2)
  s_ema = []
  for b in range(3):
    for k in range(3):
      if bool(valid[b, k]):
        t = int(positions[b, k])
        prefix = batch['tokens'][b:b + 1, :t]
        logits, _ = registry.forward(graphdef, teacher, prefix, jnp.arange(t)[None, :])
        s_ema.append(float(jax.nn.log_softmax(logits[0, -1])[batch['tokens'][b, t]]))
  np.testing.assert_allclose(float(rollout.metrics['s_ema_mean']), np.mean(s_ema), rtol=1e-5)


@pytest.mark.parametrize('temperature', [0.7, 1.0, 2.5])
def test_sampling_draws_from_the_tempered_softmax(temperature):
  """The sampler's per-step draw: frequencies over 200k rows within 5 binomial standard
  deviations of softmax(logits / temperature) (float64 numpy), and a −inf logit never drawn."""
  logits = np.array([1.5, -0.5, 0.0, -np.inf, 2.0, -3.0], np.float32)
  rows = 200_000
  tokens = np.asarray(pick_tokens(jax.random.key(0), jnp.broadcast_to(logits, (rows, 6)),
                                  temperature))
  scaled = np.where(np.isinf(logits), -np.inf, logits.astype(np.float64) / temperature)
  probs = np.exp(scaled - scaled.max())
  probs /= probs.sum()
  counts = np.bincount(tokens, minlength=6)
  assert counts[3] == 0
  sigma = np.sqrt(rows * probs * (1 - probs))
  assert np.all(np.abs(counts - rows * probs) <= 5 * sigma + 1e-9), (counts, rows * probs)
