"""The RLP step (DESIGN §1): a rollout under θ_old, then `updates_per_rollout` optax updates on
policy_loss + ntp_weight · ntp_loss (+ kl_weight · KL to φ), each followed by the EMA update of φ.

`make_rlp_step` returns two jitted pure functions, each compiled once:
  rollout(state, batch) -> (state, Rollout)    key and data position advanced; no gradient
  update(state, batch, rollout) -> (state, metrics)                     state donated
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from rlp_jax.models import registry
from rlp_jax.objective import (clipped_surrogate, get_advantage_estimator, information_gain,
                               kl_to_teacher, next_token_loss, rlp_total_loss, token_log_probs)
from rlp_jax.rollout.positions import choose_positions
from rlp_jax.rollout.reasoned_evidence import (ScoredSequences, build_scored_sequences,
                                               score_thoughts)
from rlp_jax.rollout.thought_sampler import build_prompts, sample_thoughts
from rlp_jax.train.ema import ema_update
from rlp_jax.train.state import TrainState, constrain_state
from rlp_jax.train.step import document_positions

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  think_start_id: int
  think_end_id: int
  pad_id: int


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


def rollout_batch(graphdef: Any, params: Any, teacher_params: Any, key: jax.Array, batch: Batch,
                  model_config: ml_collections.ConfigDict, rlp: ml_collections.ConfigDict,
                  special: SpecialTokens) -> Rollout:
  """Positions → S_ema (teacher) → thoughts (θ_old) → S_pred → reward → group advantage."""
  tokens, mask = batch['tokens'], batch['mask']
  num_docs = tokens.shape[0]
  k, g, limit = rlp.positions_per_document, rlp.thoughts_per_position, rlp.max_thought_tokens
  key_positions, key_sample = jax.random.split(key)
  positions, position_valid = choose_positions(key_positions, mask, k, rlp.min_context)

  teacher_logits, _ = registry.forward(graphdef, teacher_params, tokens, document_positions(tokens),
                                       mask)
  baseline = token_log_probs(teacher_logits[:, :-1], tokens[:, 1:])  # [B, L-1]: log p_φ(x_t|x_<t)
  s_ema = jnp.take_along_axis(baseline, positions - 1, axis=1)  # [B, K]
  s_ema = jnp.repeat(s_ema.reshape(-1), g)  # [R]

  prompts = build_prompts(tokens, positions, g, special.think_start_id)
  thoughts = sample_thoughts(graphdef, params, model_config, prompts, key_sample, limit,
                             rlp.sample_temperature, special.think_end_id, special.pad_id)
  sequences = build_scored_sequences(prompts, thoughts, special.think_end_id, special.pad_id)
  _, s_pred = score_thoughts(graphdef, params, sequences, limit, rlp.sample_temperature)

  row_valid = jnp.repeat(position_valid.reshape(-1), g)  # [R]
  reward = information_gain(s_pred, s_ema)
  advantages = get_advantage_estimator(rlp.advantage_estimator)(reward.reshape(num_docs, k, g))
  advantages = jnp.where(row_valid, advantages.reshape(-1), 0.0)
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


def rlp_loss(params: Any, teacher_params: Any, graphdef: Any, batch: Batch, rollout: Rollout,
             rlp: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The combined loss of one update and its metrics (gradient flows only into `params`)."""
  limit = rlp.max_thought_tokens
  new_log_probs, _ = score_thoughts(graphdef, params, rollout.sequences, limit,
                                    rlp.sample_temperature)
  policy_loss, policy_metrics = clipped_surrogate(
      new_log_probs, rollout.old_log_probs, rollout.advantages, rollout.thought_mask,
      rlp.epsilon_low, rlp.epsilon_high)
  # Average over the thoughts of scored positions only (skipped slots carry no tokens).
  rows = rollout.thought_mask.shape[0]
  valid_rows = jnp.sum(jnp.any(rollout.thought_mask, axis=1))
  policy_loss = policy_loss * rows / jnp.maximum(valid_rows, 1)

  tokens, mask = batch['tokens'], batch['mask']
  logits, _ = registry.forward(graphdef, params, tokens, document_positions(tokens), mask)
  ntp_loss, _ = next_token_loss(logits, tokens, mask)
  if rlp.kl_weight > 0:
    teacher_log_probs, _ = score_thoughts(graphdef, jax.lax.stop_gradient(teacher_params),
                                          rollout.sequences, limit, rlp.sample_temperature)
    kl = kl_to_teacher(new_log_probs, teacher_log_probs, rollout.thought_mask)
  else:
    kl = jnp.zeros((), jnp.float32)
  total = rlp_total_loss(policy_loss, ntp_loss, kl, rlp.ntp_weight, rlp.kl_weight)
  metrics = dict(policy_metrics, policy_loss=policy_loss, ntp_loss=ntp_loss, kl_to_teacher=kl,
                 total_loss=total)
  return total, metrics


def make_rlp_step(graphdef: Any, model_config: ml_collections.ConfigDict,
                  rlp: ml_collections.ConfigDict, special: SpecialTokens,
                  tx: optax.GradientTransformation, schedule: optax.Schedule,
                  state_sharding: TrainState | None = None) -> tuple[Callable, Callable]:
  """(rollout, update), both jitted; see the module docstring. With `state_sharding` (on a mesh)
  both return the state in that layout."""

  def rollout(state: TrainState, batch: Batch) -> tuple[TrainState, Rollout]:
    state, key = state.next_key()
    state = state.replace(data_position=state.data_position + 1)  # this batch is consumed
    return constrain_state(state, state_sharding), rollout_batch(graphdef, state.params, state.teacher_params, key, batch,
                                model_config, rlp, special)

  def update(state: TrainState, batch: Batch,
             rollout_data: Rollout) -> tuple[TrainState, dict[str, jax.Array]]:
    grad_fn = jax.value_and_grad(rlp_loss, has_aux=True)
    (_, metrics), grads = grad_fn(state.params, state.teacher_params, graphdef, batch,
                                  rollout_data, rlp)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    teacher = ema_update(state.teacher_params, params, rlp.ema_decay)
    metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                   learning_rate=jnp.asarray(schedule(state.step), jnp.float32))
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          teacher_params=teacher)
    return constrain_state(state, state_sharding), metrics

  return jax.jit(rollout, donate_argnums=0), jax.jit(update, donate_argnums=0)
