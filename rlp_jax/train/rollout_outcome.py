"""What a rollout hands to the updates, and the parts of the RLP step both prefix modes share:
reward → group advantage → metrics (`finish_rollout`) and the combined update loss
(`combine_update_loss`)."""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from rlp_jax.objective import (clipped_surrogate, get_advantage_estimator, information_gain,
                               kl_to_teacher, rlp_total_loss)
from rlp_jax.rollout.reasoned_evidence import ScoredSequences
from rlp_jax.rollout.thought_sampler import Thoughts


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  think_start_id: int
  think_end_id: int
  pad_id: int
  # The token ids of `rlp.position_marker` ('after_marker' rule: score the token after them).
  marker_ids: tuple[int, ...] = ()


@flax.struct.dataclass
class Rollout:
  """What the updates of one rollout batch need, plus the rollout's metrics."""
  sequences: ScoredSequences
  thought_mask: jax.Array  # bool [R, T]: sampled thought tokens of valid rows
  old_log_probs: jax.Array  # float32 [R, T]: sampling-distribution log-probs under θ_old
  advantages: jax.Array  # float32 [R]
  metrics: dict[str, jax.Array]


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _masked_std(values: jax.Array, mask: jax.Array) -> jax.Array:
  mean = _masked_mean(values, mask)
  return jnp.sqrt(_masked_mean((values - mean) ** 2, mask))


def finish_rollout(sequences: ScoredSequences, thoughts: Thoughts, s_pred: jax.Array,
                   s_ema: jax.Array, position_valid: jax.Array,
                   rlp: ml_collections.ConfigDict) -> Rollout:
  """Reward, group advantage and rollout metrics; the same for both prefix modes."""
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
                 old_log_probs=thoughts.log_probs, advantages=advantages, metrics=metrics)


def combine_update_loss(new_log_probs: jax.Array, teacher_log_probs: jax.Array | None,
                        ntp_loss: jax.Array, rollout: Rollout, rlp: ml_collections.ConfigDict,
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """policy_loss + ntp_weight · ntp_loss (+ kl_weight · KL) and metrics, as `rlp_step.rlp_loss`."""
  policy_loss, policy_metrics = clipped_surrogate(
      new_log_probs, rollout.old_log_probs, rollout.advantages, rollout.thought_mask,
      rlp.epsilon_low, rlp.epsilon_high)
  # Average over the thoughts of scored positions only (skipped slots carry no tokens).
  rows = rollout.thought_mask.shape[0]
  valid_rows = jnp.sum(jnp.any(rollout.thought_mask, axis=1))
  policy_loss = policy_loss * rows / jnp.maximum(valid_rows, 1)
  if teacher_log_probs is None:
    kl = jnp.zeros((), jnp.float32)
  else:
    kl = kl_to_teacher(new_log_probs, teacher_log_probs, rollout.thought_mask)
  total = rlp_total_loss(policy_loss, ntp_loss, kl, rlp.ntp_weight, rlp.kl_weight)
  metrics = dict(policy_metrics, policy_loss=policy_loss, ntp_loss=ntp_loss, kl_to_teacher=kl,
                 total_loss=total)
  return total, metrics
