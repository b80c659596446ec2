"""The loss of one RLP update, for either prefix strategy: the clipped surrogate of the thoughts
(advantages from the rollout) + ntp_weight · the next-token loss (+ kl_weight · KL to φ).

With the shared strategy the θ document pass runs once WITH gradient: its residual stream gives
the next-token loss and its keys/values serve the thought tokens of all K·G rollouts, so every
rollout's gradient reaches its shared prefix. The next-token loss and the thoughts' log-probs
take their logits over the vocabulary `model.logits_chunk_tokens` tokens per device at a time,
forward and backward (objective/chunked_log_probs.py): the update never holds [tokens, V] fp32
logits of the batch.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rlp_jax.models import registry
from rlp_jax.models.segments import segment_ids_of
from rlp_jax.objective import (clipped_surrogate, kl_to_teacher, next_token_loss_from_head,
                               rlp_total_loss)
from rlp_jax.objective.chunked_log_probs import DEFAULT_CHUNK_TOKENS
from rlp_jax.rollout.prefix_strategies import prefix_strategy
from rlp_jax.rollout.rlp_rollout import Rollout

Batch = dict[str, jax.Array]


def rlp_loss(params: Any, teacher_params: Any, graphdef: Any, batch: Batch, rollout: Rollout,
             rlp: ml_collections.ConfigDict, logits_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The combined loss of one update and its metrics (gradient flows only into `params`);
  `logits_chunk_tokens` is `model.logits_chunk_tokens` (0: logits of all tokens at once)."""
  strategy = prefix_strategy(rlp.prefix_mode)
  limit, temperature = rlp.max_thought_tokens, rlp.sample_temperature
  tokens, mask = batch['tokens'], batch['mask']
  segment_ids = segment_ids_of(batch)  # packed rows; absent: one document per row
  sequences = rollout.sequences
  # The scored columns t [B, K] of the rows (b, k, g).
  positions = sequences.scored_position.reshape(tokens.shape[0], rlp.positions_per_document,
                                                rlp.thoughts_per_position)[:, :, 0]
  hidden, context = strategy.encode(graphdef, params, tokens, mask, positions, need_hidden=True,
                                    segment_ids=segment_ids)
  normed, head = registry.output_head(graphdef, params, hidden)
  ntp_loss, _ = next_token_loss_from_head(head, normed, tokens, mask, segment_ids,
                                          logits_chunk_tokens)
  new_log_probs, _ = strategy.score(graphdef, params, context, sequences, limit, temperature,
                                    logits_chunk_tokens)
  teacher_log_probs = None
  if rlp.kl_weight > 0:
    teacher = jax.lax.stop_gradient(teacher_params)
    _, teacher_context = strategy.encode(graphdef, teacher, tokens, mask, positions,
                                         need_hidden=False, segment_ids=segment_ids)
    teacher_log_probs, _ = strategy.score(graphdef, teacher, teacher_context, sequences, limit,
                                          temperature, logits_chunk_tokens)
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
