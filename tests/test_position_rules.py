"""Position rules (rlp.position_rule) and the std-normalised advantage estimators.

Weighted `choose_positions` (allowed, distinct, short documents, pick frequencies against the
weights); the teacher's per-position loss and entropy against a float64 numpy loop; naive and
shared rollouts choosing the same weighted positions; 'group_std' and 'batch_std' against float64
references."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlp_jax.config import base_config, validate_config
from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.objective.advantage import (ADVANTAGE_ESTIMATORS, batch_std_advantage,
                                         get_advantage_estimator, group_std_advantage)
from rlp_jax.rollout.positions import MIN_POSITION_WEIGHT, choose_positions
from rlp_jax.rollout.positions import POSITION_WEIGHTS
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.rollout.baseline_evidence import (baseline_evidence, scored_positions_and_baseline,
                                               teacher_next_token_stats)
from rlp_jax.rollout.rlp_rollout import rollout_batch
from rlp_jax.models.registry import document_positions
from tests import helpers

model_config = helpers.rollout_model_config  # the tiny dense model of the rollout tests
THINK_START, THINK_END, PAD = helpers.THINK_START, helpers.THINK_END, helpers.PAD
SPECIAL = SpecialTokens(think_start_id=THINK_START, think_end_id=THINK_END, pad_id=PAD)
SIGMAS = 5.0  # frequency tolerance in binomial standard deviations (fixed keys: deterministic)


def rlp_config(**overrides) -> ml_collections.ConfigDict:
  """The rollout tests' rlp config with T 4 and the 'teacher_loss' rule, then `overrides`."""
  return helpers.rollout_rlp_config(
      **{'max_thought_tokens': 4, 'position_rule': 'teacher_loss', **overrides})


def with_prefix_mode(rlp: ml_collections.ConfigDict, mode: str) -> ml_collections.ConfigDict:
  config = rlp.copy_and_resolve_references()
  config.prefix_mode = mode
  return config


def documents() -> dict[str, jax.Array]:
  """Lengths 12, 5, 4 with min_context 2: 10, 3 and 2 allowed positions (the last skips one)."""
  return helpers.rollout_documents([12, 5, 4])


def lengths_mask(lengths, width: int) -> jax.Array:
  return jnp.asarray(np.arange(width)[None, :] < np.asarray(lengths)[:, None])


def floored(weights: np.ndarray) -> np.ndarray:
  return np.maximum(np.asarray(weights, np.float64), MIN_POSITION_WEIGHT)


# ------------------------------------------------------------------ (a) weighted choose_positions


def test_weighted_positions_are_allowed_distinct_and_short_documents_get_fewer():
  lengths, width, k, min_context = [10, 6, 3, 1], 10, 4, 2
  mask = lengths_mask(lengths, width)
  rng = np.random.default_rng(0)
  # Huge weights on padding and on the first min_context columns: they must still never be picked.
  weights = np.where(np.asarray(mask) & (np.arange(width) >= min_context),
                     rng.exponential(size=(4, width)), 1e6)
  weights[0, 2:5] = 0.0  # zero weights on some allowed positions
  for seed in range(20):
    key = jax.random.key(seed)
    positions, valid = choose_positions(key, mask, k, min_context, jnp.asarray(weights))
    uniform_positions, uniform_valid = choose_positions(key, mask, k, min_context)
    positions, valid = np.asarray(positions), np.asarray(valid)
    np.testing.assert_array_equal(valid, np.asarray(uniform_valid))  # same slots skipped
    for b, length in enumerate(lengths):
      chosen = positions[b][valid[b]]
      assert len(set(chosen.tolist())) == len(chosen)
      assert np.all(chosen >= min_context) and np.all(chosen < length)
      assert valid[b].sum() == min(k, max(length - min_context, 0))
      assert np.all(np.diff(chosen) > 0)  # ascending, like the uniform rule
      # Skipped slots carry the same legal placeholder index as the uniform rule's.
      np.testing.assert_array_equal(positions[b][~valid[b]],
                                    np.asarray(uniform_positions)[b][~valid[b]])


def test_zero_weights_fill_the_slots_only_when_nothing_else_is_allowed():
  mask = lengths_mask([8], 8)
  weights = jnp.asarray([[0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]])
  for seed in range(20):
    positions, valid = choose_positions(jax.random.key(seed), mask, 1, 2, weights)
    assert int(positions[0, 0]) == 3 and bool(valid[0, 0])
    positions, valid = choose_positions(jax.random.key(seed), mask, 3, 2, weights)
    assert 3 in np.asarray(positions[0]).tolist() and bool(np.all(valid))


def pick_counts(mask: jax.Array, weights: jax.Array, k: int, min_context: int,
                num_keys: int) -> np.ndarray:
  """How often each column was chosen (valid slots) over `num_keys` fixed keys, [B, L]."""
  keys = jax.random.split(jax.random.key(1234), num_keys)
  draw = jax.jit(jax.vmap(lambda key: choose_positions(key, mask, k, min_context, weights)))
  positions, valid = (np.asarray(x) for x in draw(keys))
  counts = np.zeros(mask.shape, np.int64)
  for b in range(mask.shape[0]):
    np.add.at(counts[b], positions[:, b][valid[:, b]], 1)
  return counts


def assert_binomial_frequencies(counts: np.ndarray, probabilities: np.ndarray, trials: int):
  """Each count within SIGMAS binomial standard deviations (+1 for discreteness) of its mean."""
  expected = trials * probabilities
  sigma = np.sqrt(trials * probabilities * (1 - probabilities))
  deviation = np.abs(counts - expected)
  assert np.all(deviation <= SIGMAS * sigma + 1.0), (counts, expected, sigma)


def test_single_pick_frequencies_match_the_normalised_weights():
  min_context, num_keys = 2, 20000
  mask = lengths_mask([7, 8], 8)
  weights = np.array([[9.0, 9.0, 0.5, 2.0, 0.0, 1.0, 4.0, 9.0],  # 0, 1, 7 not allowed
                      [9.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # all zero: uniform
  counts = pick_counts(mask, jnp.asarray(weights), 1, min_context, num_keys)
  allowed = np.asarray(mask) & (np.arange(8) >= min_context)
  probabilities = np.where(allowed, floored(weights), 0.0)
  probabilities /= probabilities.sum(axis=1, keepdims=True)
  assert np.all(counts[~allowed] == 0)
  assert counts.sum() == 2 * num_keys
  assert_binomial_frequencies(counts, probabilities, num_keys)


def inclusion_probabilities(weights: np.ndarray, k: int) -> np.ndarray:
  """P(position i is among k drawn without replacement, each draw ∝ the remaining weights),
  by enumerating every ordered draw sequence."""
  total = np.zeros(len(weights))
  for sequence in itertools.permutations(range(len(weights)), k):
    probability, remaining = 1.0, weights.sum()
    for i in sequence:
      probability *= weights[i] / remaining
      remaining -= weights[i]
    total[list(sequence)] += probability
  return total


def test_two_pick_frequencies_match_sampling_without_replacement():
  min_context, num_keys, k = 2, 20000, 2
  mask = lengths_mask([7], 8)
  weights = np.array([[9.0, 9.0, 0.5, 2.0, 0.1, 1.0, 4.0, 9.0]])
  counts = pick_counts(mask, jnp.asarray(weights), k, min_context, num_keys)
  allowed_columns = np.arange(min_context, 7)
  probabilities = np.zeros((1, 8))
  probabilities[0, allowed_columns] = inclusion_probabilities(floored(weights[0, 2:7]), k)
  assert np.all(np.delete(counts[0], allowed_columns) == 0)
  assert_binomial_frequencies(counts, probabilities, num_keys)


# ------------------------------------------------------ (b) teacher weights and scored positions


def ref_teacher_stats(logits: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Float64 loops: log p(x_t | x_<t) and the entropy of the distribution at t − 1, column 0 = 0."""
  b_size, length, vocab = logits.shape
  log_prob, entropy = np.zeros((b_size, length)), np.zeros((b_size, length))
  for b in range(b_size):
    for t in range(1, length):
      row = logits[b, t - 1]
      top = max(row)
      log_norm = top + np.log(sum(np.exp(row[v] - top) for v in range(vocab)))
      log_prob[b, t] = row[tokens[b, t]] - log_norm
      entropy[b, t] = -sum(np.exp(row[v] - log_norm) * (row[v] - log_norm) for v in range(vocab))
  return log_prob, entropy


@pytest.fixture(scope='module')
def teacher():
  graphdef, params = registry.init_params(model_config(), seed=1)
  return graphdef, params


def test_teacher_loss_and_entropy_weights_match_numpy(teacher):
  graphdef, params = teacher
  batch = documents()
  tokens, mask = batch['tokens'], batch['mask']
  logits, _ = registry.forward(graphdef, params, tokens, document_positions(tokens), mask)
  want_log_prob, want_entropy = ref_teacher_stats(np.asarray(logits, np.float64),
                                                  np.asarray(tokens))
  log_prob, entropy = jax.jit(teacher_next_token_stats, static_argnums=0)(graphdef, params,
                                                                        tokens, mask)
  assert log_prob.dtype == jnp.float32 and entropy.dtype == jnp.float32
  np.testing.assert_allclose(POSITION_WEIGHTS['teacher_loss'](log_prob, entropy), -want_log_prob,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(POSITION_WEIGHTS['teacher_entropy'](log_prob, entropy), want_entropy,
                             rtol=1e-5, atol=1e-5)
  assert np.all(-want_log_prob[:, 1:] > 0) and np.all(want_entropy[:, 1:] > 0)


@pytest.mark.parametrize('rule,reference', [('teacher_loss', 'loss'),
                                            ('teacher_entropy', 'entropy')])
def test_weighted_rule_draws_by_the_teacher_and_gathers_s_ema(teacher, rule, reference):
  graphdef, params = teacher
  batch = documents()
  tokens, mask = batch['tokens'], batch['mask']
  logits, _ = registry.forward(graphdef, params, tokens, document_positions(tokens), mask)
  log_prob, entropy = ref_teacher_stats(np.asarray(logits, np.float64), np.asarray(tokens))
  weights = -log_prob if reference == 'loss' else entropy
  rlp = rlp_config(position_rule=rule)
  key = jax.random.key(5)
  positions, valid, s_ema = scored_positions_and_baseline(graphdef, params, key, tokens, mask,
                                                          rlp)
  want_positions, want_valid = choose_positions(key, mask, 3, rlp.min_context,
                                                jnp.asarray(weights, jnp.float32))
  np.testing.assert_array_equal(np.asarray(positions), np.asarray(want_positions))
  np.testing.assert_array_equal(np.asarray(valid), np.asarray(want_valid))
  # S_ema from the same log-probs equals the K-column baseline and the float64 loop.
  valid = np.asarray(valid)
  np.testing.assert_allclose(
      np.asarray(s_ema)[valid],
      np.asarray(baseline_evidence(graphdef, params, tokens, mask, positions))[valid],
      rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(s_ema)[valid],
                             np.take_along_axis(log_prob, np.asarray(positions), 1)[valid],
                             rtol=1e-5, atol=1e-5)


def test_uniform_rule_is_the_uniform_draw_and_the_k_column_baseline(teacher):
  graphdef, params = teacher
  batch = documents()
  tokens, mask = batch['tokens'], batch['mask']
  key = jax.random.key(5)
  positions, valid, s_ema = scored_positions_and_baseline(
      graphdef, params, key, tokens, mask, rlp_config(position_rule='uniform'))
  want_positions, want_valid = choose_positions(key, mask, 3, 2)
  np.testing.assert_array_equal(np.asarray(positions), np.asarray(want_positions))
  np.testing.assert_array_equal(np.asarray(valid), np.asarray(want_valid))
  np.testing.assert_array_equal(
      np.asarray(s_ema), np.asarray(baseline_evidence(graphdef, params, tokens, mask, positions)))


def test_position_rule_is_validated():
  config = base_config()
  for rule in ('uniform', 'teacher_loss', 'teacher_entropy'):
    config.rlp.position_rule = rule
    validate_config(config)
  config.rlp.position_rule = 'answers_only'
  with pytest.raises(ConfigError, match='rlp.position_rule'):
    validate_config(config)


# --------------------------------------------------------- (c) naive and shared weighted rollouts


def scored_position_of_rows(rollout) -> np.ndarray:
  """t of every rollout row: the RoPE position of its `<think>` token (both prefix modes)."""
  sequences = rollout.sequences
  return np.asarray(sequences.positions[:, sequences.prompt_length - 1])


@pytest.mark.slow
def test_naive_and_shared_rollouts_choose_the_same_weighted_positions(teacher):
  graphdef, params = registry.init_params(model_config(), seed=0)
  _, teacher_params = teacher
  rlp, batch, key = rlp_config(), documents(), jax.random.key(3)

  @jax.jit
  def both(params, teacher_params):
    return tuple(rollout_batch(graphdef, params, teacher_params, key, batch, model_config(),
                               with_prefix_mode(rlp, mode), SPECIAL)
                 for mode in ('naive', 'shared'))

  naive, shared = both(params, teacher_params)
  positions, valid, s_ema = scored_positions_and_baseline(
      graphdef, teacher_params, jax.random.split(key)[0], batch['tokens'], batch['mask'], rlp)
  rows_t = np.repeat(np.asarray(positions).reshape(-1), rlp.thoughts_per_position)
  np.testing.assert_array_equal(scored_position_of_rows(naive), rows_t)
  np.testing.assert_array_equal(scored_position_of_rows(shared), rows_t)
  assert float(naive.metrics['skipped_positions']) == 1.0
  assert float(shared.metrics['skipped_positions']) == 1.0
  valid = np.asarray(valid)
  want_s_ema_mean = np.asarray(s_ema, np.float64)[valid].mean()
  for rollout in (naive, shared):
    np.testing.assert_allclose(float(rollout.metrics['s_ema_mean']), want_s_ema_mean, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(shared.thought_mask), np.asarray(naive.thought_mask))
  for name in ('reward_mean', 'reward_std', 's_pred_mean', 's_ema_mean'):
    np.testing.assert_allclose(float(shared.metrics[name]), float(naive.metrics[name]),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(shared.advantages), np.asarray(naive.advantages),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_after_marker_rule_scores_only_the_tokens_after_the_marker(teacher):
  graphdef, params = registry.init_params(model_config(), seed=0)
  _, teacher_params = teacher
  marker = (7, 8)
  tokens = np.full((2, 12), 9, np.int32)
  tokens[0, [2, 3]] = marker  # t = 4 follows the marker
  tokens[0, [6, 7]] = marker  # t = 8
  tokens[0, 10] = 7  # a partial marker: t = 11 does not follow the whole marker
  tokens[1, [0, 1]] = marker  # t = 2 follows it, but min_context 3 rules it out
  tokens[1, [5, 6]] = marker  # t = 7
  mask = np.ones_like(tokens, bool)
  batch = {'tokens': jnp.asarray(tokens), 'mask': jnp.asarray(mask)}
  rlp = rlp_config(position_rule='after_marker', position_marker='x', positions_per_document=3,
                   min_context=3)
  special = SpecialTokens(THINK_START, THINK_END, PAD, marker_ids=marker)
  for seed in range(5):
    positions, valid, s_ema = scored_positions_and_baseline(
        graphdef, teacher_params, jax.random.key(seed), batch['tokens'], batch['mask'], rlp,
        marker)
    chosen = [sorted(np.asarray(positions)[b][np.asarray(valid)[b]].tolist()) for b in range(2)]
    assert chosen == [[4, 8], [7]]
    np.testing.assert_array_equal(
        np.asarray(s_ema), np.asarray(baseline_evidence(graphdef, teacher_params,
                                                        batch['tokens'], batch['mask'],
                                                        positions)))
  naive, shared = (rollout_batch(graphdef, params, teacher_params, jax.random.key(1), batch,
                                 model_config(), with_prefix_mode(rlp, mode), special)
                   for mode in ('naive', 'shared'))
  np.testing.assert_array_equal(scored_position_of_rows(naive), scored_position_of_rows(shared))
  assert float(naive.metrics['skipped_positions']) == 3.0
  with pytest.raises(ConfigError, match='rlp.position_marker'):
    scored_positions_and_baseline(graphdef, teacher_params, jax.random.key(0), batch['tokens'],
                                  batch['mask'], rlp, ())
  config = base_config()
  config.rlp.position_rule = 'after_marker'
  with pytest.raises(ConfigError, match='rlp.position_marker'):
    validate_config(config)
  config.rlp.position_marker = 'Answer: '
  validate_config(config)


# ------------------------------------------------------------------ (d) normalised advantages


def ref_group_std(rewards: np.ndarray) -> np.ndarray:
  """(r_i − mean) / (population std + 1e-6) per group, with loops in float64."""
  rewards = np.asarray(rewards, np.float64)
  out = np.zeros_like(rewards)
  for idx in np.ndindex(*rewards.shape[:-1]):
    group = list(rewards[idx])
    mean = sum(group) / len(group)
    std = np.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
    for i, r in enumerate(group):
      out[idx + (i,)] = (r - mean) / (std + 1e-6)
  return out


def ref_batch_std(rewards: np.ndarray) -> np.ndarray:
  """G/(G−1) (r_i − group mean) / (std of all group-centred rewards + 1e-6), float64 loops."""
  rewards = np.asarray(rewards, np.float64)
  g = rewards.shape[-1]
  centred = np.zeros_like(rewards)
  for idx in np.ndindex(*rewards.shape[:-1]):
    mean = sum(rewards[idx]) / g
    for i in range(g):
      centred[idx + (i,)] = rewards[idx + (i,)] - mean
  values = centred.reshape(-1)
  overall = sum(values) / len(values)
  std = np.sqrt(sum((v - overall) ** 2 for v in values) / len(values))
  return g / (g - 1) * centred / (std + 1e-6)


def rewards_with_an_equal_group(group_size: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  rewards = rng.normal(-2.0, 1.5, size=(3, 4, group_size)).astype(np.float32)
  # All equal; plain float32 r − mean(r) is ±1 ulp for this value at G = 3, 6, 7, 16.
  rewards[1, 2, :] = np.float32(-2.7)
  return rewards


@pytest.mark.parametrize('use_jit', [False, True])
@pytest.mark.parametrize('group_size', [2, 3, 6, 16])
@pytest.mark.parametrize('name,reference', [('group_std', ref_group_std),
                                            ('batch_std', ref_batch_std)])
def test_normalised_advantages_match_numpy(name, reference, group_size, use_jit):
  rewards = rewards_with_an_equal_group(group_size, seed=group_size)
  estimator = get_advantage_estimator(name)
  got = (jax.jit(estimator) if use_jit else estimator)(rewards)
  assert got.shape == rewards.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, reference(rewards), rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(got))
  assert np.all(np.asarray(got)[1, 2] == 0.0)  # the equal group: exactly 0
  np.testing.assert_allclose(np.asarray(got).sum(-1), 0.0, atol=1e-5)


@pytest.mark.parametrize('group_size', [3, 4])
def test_group_std_gives_unit_population_std_per_group(group_size):
  rewards = rewards_with_an_equal_group(group_size, seed=7)
  got = np.asarray(group_std_advantage(rewards), np.float64)
  stds = got.std(axis=-1)
  stds[1, 2] = 1.0  # the equal group has advantage 0
  np.testing.assert_allclose(stds, 1.0, rtol=1e-4)


def test_batch_std_is_the_group_advantage_rescaled_by_one_batch_constant():
  rewards = rewards_with_an_equal_group(4, seed=11)
  got = np.asarray(batch_std_advantage(rewards), np.float64)
  group = np.asarray(get_advantage_estimator('group')(rewards), np.float64)
  ratios = got[group != 0] / group[group != 0]
  np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)


@pytest.mark.parametrize('name', ['group_std', 'batch_std'])
def test_all_equal_rewards_give_zero_advantages(name):
  rewards = jnp.full((2, 3, 7), -2.7, jnp.float32)
  got = np.asarray(jax.jit(get_advantage_estimator(name))(rewards))
  assert np.all(got == 0.0)


@pytest.mark.parametrize('name', ['group_std', 'batch_std'])
def test_normalised_advantages_are_registered_stop_gradient_and_need_two(name):
  assert {'group_std', 'batch_std'} <= set(ADVANTAGE_ESTIMATORS)
  estimator = get_advantage_estimator(name)
  rewards = rewards_with_an_equal_group(4, seed=3)
  grad = jax.grad(lambda r: jnp.sum(estimator(r) * jnp.arange(4.0)))(jnp.asarray(rewards))
  assert np.all(np.asarray(grad) == 0.0)
  with pytest.raises(ValueError, match='at least 2'):
    estimator(jnp.zeros((3, 1)))
  config = base_config()
  config.rlp.advantage_estimator = name
  validate_config(config)


@pytest.mark.slow
def test_truncated_thoughts_no_gradient_zeroes_exactly_the_cut_thoughts(teacher):
  """'no_gradient': thoughts that hit T (no sampled `</think>`) get advantage 0, the others keep
  the advantage 'keep' gives them; with the same key both settings sample the same thoughts."""
  graphdef, params = registry.init_params(model_config(), seed=0)
  _, teacher_params = teacher
  batch, key = documents(), jax.random.key(3)
  rollouts = {}
  for mode in ('keep', 'no_gradient'):
    rlp = rlp_config(position_rule='uniform', max_thought_tokens=2, thoughts_per_position=4,
                     truncated_thoughts=mode, prefix_mode='shared')
    rollouts[mode] = rollout_batch(graphdef, params, teacher_params, key, batch,
                                          model_config(), rlp, SPECIAL)
  keep, cut = rollouts['keep'], rollouts['no_gradient']
  np.testing.assert_array_equal(np.asarray(keep.thought_mask), np.asarray(cut.thought_mask))
  # A row ended when its thought region holds a sampled </think> (the rollout's `ended`).
  sequences = keep.sequences
  region = np.asarray(sequences.tokens[:, sequences.prompt_length:])
  sampled = np.asarray(keep.thought_mask)
  ended = np.array([np.any((region[r, :2] == THINK_END) & sampled[r]) for r in range(len(region))])
  assert 0 < ended.sum() < len(ended), 'the test needs both ended and cut thoughts'
  np.testing.assert_array_equal(np.asarray(cut.advantages)[~ended], 0.0)
  np.testing.assert_array_equal(np.asarray(cut.advantages)[ended],
                                np.asarray(keep.advantages)[ended])
  assert np.any(np.asarray(keep.advantages)[~ended] != 0.0)
