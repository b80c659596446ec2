"""One RLP rollout, for either prefix strategy: scored positions and the baseline evidence S_ema
(φ), G thoughts per position and their reasoned evidence S_pred (θ_old), then reward
(information gain) → group advantage → metrics. `Rollout` is what the updates of the batch need.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.models.segments import segment_ids_of
from rlp_jax.objective import get_advantage_estimator, information_gain
from rlp_jax.objective.chunked_log_probs import chunk_tokens_of
from rlp_jax.rollout.baseline_evidence import scored_positions_and_baseline
from rlp_jax.rollout.prefix_strategies import prefix_strategy
from rlp_jax.rollout.reasoned_evidence import ScoredSequences, reasoned_evidence
from rlp_jax.rollout.thought_sampler import Thoughts

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class Rollout:
  """What the updates of one rollout batch need, plus the rollout's metrics."""
  sequences: ScoredSequences
  thought_mask: jax.Array  # bool [R, T]: sampled thought tokens of valid rows
  old_log_probs: jax.Array  # float32 [R, T]: sampling-distribution log-probs under θ_old
  advantages: jax.Array  # float32 [R]
  metrics: dict[str, jax.Array]
  # Per-row values the updates do not read: the thought samples of `train.sample_every`
  # (train/thought_samples.py) show them. None only in a Rollout built by hand (bench/).
  s_pred: jax.Array | None = None  # float32 [R]: log p_θold(x_t | x_<t, <think> c </think>)
  s_ema: jax.Array | None = None  # float32 [R]: log p_φ(x_t | x_<t), repeated over the group
  reward: jax.Array | None = None  # float32 [R]: S_pred − S_ema
  row_valid: jax.Array | None = None  # bool [R]: the row's position was scored (not skipped)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _masked_std(values: jax.Array, mask: jax.Array) -> jax.Array:
  mean = _masked_mean(values, mask)
  return jnp.sqrt(_masked_mean((values - mean) ** 2, mask))


def finish_rollout(sequences: ScoredSequences, thoughts: Thoughts, s_pred: jax.Array,
                   s_ema: jax.Array, position_valid: jax.Array,
                   rlp: ml_collections.ConfigDict) -> Rollout:
  """Reward, group advantage and rollout metrics; the same for both prefix strategies."""
  num_docs, k = position_valid.shape
  g = rlp.thoughts_per_position
  row_valid = jnp.repeat(position_valid.reshape(-1), g)  # [R]
  reward = information_gain(s_pred, s_ema)
  advantages = get_advantage_estimator(rlp.advantage_estimator)(reward.reshape(num_docs, k, g))
  advantages = jnp.where(row_valid, advantages.reshape(-1), 0.0)
  if rlp.truncated_thoughts == 'no_gradient':  # overlong filtering: no credit for cut thoughts
    advantages = jnp.where(thoughts.ended, advantages, 0.0)
  length = thoughts.length.astype(jnp.float32)
  metrics = {
      'reward_mean': _masked_mean(reward, row_valid),
      'reward_std': _masked_std(reward, row_valid),
      'reward_positive_fraction': _masked_mean((reward > 0).astype(jnp.float32), row_valid),
      's_pred_mean': _masked_mean(s_pred, row_valid),
      's_ema_mean': _masked_mean(s_ema, row_valid),
      'thought_length_mean': _masked_mean(length, row_valid),
      'thought_hit_limit_fraction': _masked_mean((~thoughts.ended).astype(jnp.float32), row_valid),
      'skipped_positions': jnp.sum(~position_valid).astype(jnp.float32),
      'scored_positions': jnp.sum(position_valid).astype(jnp.float32),
      'thought_tokens': jnp.sum(thoughts.mask & row_valid[:, None]).astype(jnp.float32),
  }
  return Rollout(sequences=sequences, thought_mask=thoughts.mask & row_valid[:, None],
                 old_log_probs=thoughts.log_probs, advantages=advantages, metrics=metrics,
                 s_pred=s_pred, s_ema=s_ema, reward=reward, row_valid=row_valid)


def rollout_batch(graphdef: Any, params: Any, teacher_params: Any, key: jax.Array, batch: Batch,
                  model_config: ml_collections.ConfigDict, rlp: ml_collections.ConfigDict,
                  special: SpecialTokens) -> Rollout:
  """Positions and S_ema (teacher) → thoughts (θ_old) → S_pred → reward → group advantage, with
  the prefix strategy of `rlp.prefix_mode`. `batch` holds `tokens`, `mask` and, for packed rows,
  `segment_ids` (absent: one document per row); every prefix stays inside its document."""
  tokens, mask = batch['tokens'], batch['mask']
  segment_ids = segment_ids_of(batch)
  key_positions, key_sample = jax.random.split(key)
  positions, position_valid, s_ema = scored_positions_and_baseline(
      graphdef, teacher_params, key_positions, tokens, mask, rlp, special.marker_ids,
      segment_ids, chunk_tokens_of(model_config))
  s_ema = jnp.repeat(s_ema.reshape(-1), rlp.thoughts_per_position)  # [R]
  sequences, thoughts, s_pred = reasoned_evidence(
      prefix_strategy(rlp.prefix_mode), graphdef, params, model_config, key_sample, tokens, mask,
      positions, rlp.thoughts_per_position, rlp.max_thought_tokens, rlp.sample_temperature,
      special, segment_ids)
  return finish_rollout(sequences, thoughts, s_pred, s_ema, position_valid, rlp)
