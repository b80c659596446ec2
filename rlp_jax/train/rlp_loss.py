"""The loss of one RLP update, for either prefix strategy: the clipped surrogate of the thoughts
(advantages from the rollout) + ntp_weight · the next-token loss (+ kl_weight · KL to φ).

With the shared strategy the θ document pass runs once WITH gradient: its logits give the
next-token loss and its keys/values serve the thought tokens of all K·G rollouts, so every
rollout's gradient reaches its shared prefix.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rlp_jax.models.segments import segment_ids_of
from rlp_jax.objective import clipped_surrogate, kl_to_teacher, next_token_loss, rlp_total_loss
from rlp_jax.rollout.prefix_strategies import prefix_strategy
from rlp_jax.rollout.rlp_rollout import Rollout

Batch = dict[str, jax.Array]


def rlp_loss(params: Any, teacher_params: Any, graphdef: Any, batch: Batch, rollout: Rollout,
             rlp: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The combined loss of one update and its metrics (gradient flows only into `params`)."""
  strategy = prefix_strategy(rlp.prefix_mode)
  limit, temperature = rlp.max_thought_tokens, rlp.sample_temperature
  tokens, mask = batch['tokens'], batch['mask']
  segment_ids = segment_ids_of(batch)  # packed rows; absent: one document per row
  sequences = rollout.sequences
  # The scored columns t [B, K] of the rows (b, k, g).
  positions = sequences.scored_position.reshape(tokens.shape[0], rlp.positions_per_document,
                                                rlp.thoughts_per_position)[:, :, 0]
  logits, context = strategy.encode(graphdef, params, tokens, mask, positions, need_logits=True,
                                    segment_ids=segment_ids)
  ntp_loss, _ = next_token_loss(logits, tokens, mask, segment_ids)
  new_log_probs, _ = strategy.score(graphdef, params, context, sequences, limit, temperature)
  teacher_log_probs = None
  if rlp.kl_weight > 0:
    teacher = jax.lax.stop_gradient(teacher_params)
    _, teacher_context = strategy.encode(graphdef, teacher, tokens, mask, positions,
                                         need_logits=False, segment_ids=segment_ids)
    teacher_log_probs, _ = strategy.score(graphdef, teacher, teacher_context, sequences, limit,
                                          temperature)
  return combine_update_loss(new_log_probs, teacher_log_probs, ntp_loss, rollout, rlp)


def combine_update_loss(new_log_probs: jax.Array, teacher_log_probs: jax.Array | None,
                        ntp_loss: jax.Array, rollout: Rollout, rlp: ml_collections.ConfigDict,
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """policy_loss + ntp_weight · ntp_loss (+ kl_weight · KL) and the update's metrics."""
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
