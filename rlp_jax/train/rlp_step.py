"""The RLP step (DESIGN §1): a rollout under θ_old, then `updates_per_rollout` optax updates on
policy_loss + ntp_weight · ntp_loss (+ kl_weight · KL to φ), each followed by the EMA update of φ.

`make_rlp_step` returns two jitted pure functions, each compiled once:
  rollout(state, batch) -> (state, Rollout)    key and data position advanced; no gradient
  update(state, batch, rollout) -> (state, metrics)                     state donated
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.objective import next_token_loss, token_log_probs
from rlp_jax.parallel.activation_sharding import activation_layout, mesh_of
from rlp_jax.parallel.sharding import StepJit
from rlp_jax.rollout.positions import choose_positions
from rlp_jax.rollout.reasoned_evidence import build_scored_sequences, score_thoughts
from rlp_jax.rollout.thought_sampler import build_prompts, sample_thoughts
from rlp_jax.train.ema import ema_update
from rlp_jax.train.rollout_outcome import (Rollout, SpecialTokens, combine_update_loss,
                                           finish_rollout)
from rlp_jax.train.state import TrainState, constrain_state
from rlp_jax.train.step import document_positions

Batch = dict[str, jax.Array]


def baseline_evidence(graphdef: Any, teacher_params: Any, tokens: jax.Array, mask: jax.Array,
                      positions: jax.Array) -> jax.Array:
  """S_ema [B, K] = log p_φ(x_t | x_<t) at the scored positions, from one teacher forward whose
  logits are computed only at the K columns t − 1 (not [B, L, V])."""
  hidden, _ = registry.forward_hidden(graphdef, teacher_params, tokens, document_positions(tokens),
                                      mask)
  before = jnp.take_along_axis(hidden, (positions - 1)[:, :, None], axis=1)  # [B, K, E]
  logits = registry.logits_from_hidden(graphdef, teacher_params, before)  # [B, K, V]
  return token_log_probs(logits, jnp.take_along_axis(tokens, positions, axis=1))


def teacher_next_token_stats(graphdef: Any, teacher_params: Any, tokens: jax.Array,
                             mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """φ's prediction of every token from one teacher-forced forward over all columns.

  Returns (log_prob, entropy), both float32 [B, L]: at column t ≥ 1, log p_φ(x_t | x_<t) and the
  entropy of φ's next-token distribution that predicts x_t (log-softmax of the logits at t − 1,
  in fp32); column 0 (nothing predicts it) is 0 in both.
  """
  logits, _ = registry.forward(graphdef, teacher_params, tokens, document_positions(tokens), mask)
  log_softmax = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)  # [B, L-1, V]
  log_prob = jnp.take_along_axis(log_softmax, tokens[:, 1:, None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(log_softmax) * log_softmax, axis=-1)
  first_column = jnp.zeros_like(log_prob[:, :1])
  return (jnp.concatenate([first_column, log_prob], axis=1),
          jnp.concatenate([first_column, entropy], axis=1))


def teacher_loss_weights(log_prob: jax.Array, entropy: jax.Array) -> jax.Array:
  """'teacher_loss': weight −log p_φ(x_t | x_<t), where the no-think teacher is surprised."""
  del entropy
  return -log_prob


def teacher_entropy_weights(log_prob: jax.Array, entropy: jax.Array) -> jax.Array:
  """'teacher_entropy': weight H(p_φ(· | x_<t)), where the no-think teacher is uncertain."""
  del log_prob
  return entropy


# rlp.position_rule → the sampling weight [B, L] of each position from the (log_prob, entropy) of
# `teacher_next_token_stats`; 'uniform' has no weights (choose_positions' uniform path).
POSITION_WEIGHTS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'teacher_loss': teacher_loss_weights,
    'teacher_entropy': teacher_entropy_weights,
}


def after_marker(tokens: jax.Array, marker_ids: tuple[int, ...]) -> jax.Array:
  """bool [B, L]: True at t when tokens[t − m : t] are the m marker ids (the token right after
  each occurrence of the marker)."""
  length, m = tokens.shape[1], len(marker_ids)
  if m == 0:
    raise ConfigError("config key `rlp.position_marker` must be set (non-empty) when "
                      "`rlp.position_rule` is 'after_marker'")
  match = jnp.arange(length)[None, :] >= m
  for j, marker_id in enumerate(marker_ids):  # tokens[t − m + j] == marker[j]
    shifted = jnp.pad(tokens, ((0, 0), (m - j, 0)), constant_values=-1)[:, :length]
    match = match & (shifted == marker_id)
  return match


def scored_positions_and_baseline(graphdef: Any, teacher_params: Any, key: jax.Array,
                                  tokens: jax.Array, mask: jax.Array,
                                  rlp: ml_collections.ConfigDict,
                                  marker_ids: tuple[int, ...] = (),
                                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Step 1 and 2 of both prefix modes: the K scored positions by `rlp.position_rule` and the
  no-think evidence S_ema = log p_φ(x_t | x_<t) there.

  'uniform': positions uniform from `key`, then teacher logits only at the K columns
  (`baseline_evidence`). 'after_marker': the same among the tokens right after an occurrence of
  `marker_ids` (the tokens of `rlp.position_marker`); documents with fewer such tokens get fewer
  positions (counted as skipped). 'teacher_loss' / 'teacher_entropy': one teacher forward over
  all columns gives φ's loss / entropy at every position as the sampling weight, and S_ema is
  gathered from the same log-probs (no second forward).

  Returns:
    positions int32 [B, K], valid bool [B, K], S_ema float32 [B, K].
  """
  k, min_context = rlp.positions_per_document, rlp.min_context
  if rlp.position_rule in ('uniform', 'after_marker'):
    allowed = mask if rlp.position_rule == 'uniform' else mask & after_marker(tokens, marker_ids)
    positions, valid = choose_positions(key, allowed, k, min_context)
    return positions, valid, baseline_evidence(graphdef, teacher_params, tokens, mask, positions)
  if rlp.position_rule not in POSITION_WEIGHTS:
    raise ConfigError(f"config key `rlp.position_rule` must be one of "
                      f"{['uniform', *POSITION_WEIGHTS]}, got {rlp.position_rule!r}")
  log_prob, entropy = teacher_next_token_stats(graphdef, teacher_params, tokens, mask)
  weights = POSITION_WEIGHTS[rlp.position_rule](log_prob, entropy)
  positions, valid = choose_positions(key, mask, k, min_context, weights)
  return positions, valid, jnp.take_along_axis(log_prob, positions, axis=1)


def rollout_batch(graphdef: Any, params: Any, teacher_params: Any, key: jax.Array, batch: Batch,
                  model_config: ml_collections.ConfigDict, rlp: ml_collections.ConfigDict,
                  special: SpecialTokens) -> Rollout:
  """Positions and S_ema (teacher) → thoughts (θ_old) → S_pred → reward → group advantage."""
  tokens, mask = batch['tokens'], batch['mask']
  g, limit = rlp.thoughts_per_position, rlp.max_thought_tokens
  key_positions, key_sample = jax.random.split(key)
  positions, position_valid, s_ema = scored_positions_and_baseline(
      graphdef, teacher_params, key_positions, tokens, mask, rlp, special.marker_ids)
  s_ema = jnp.repeat(s_ema.reshape(-1), g)  # [R]

  prompts = build_prompts(tokens, positions, g, special.think_start_id)
  thoughts = sample_thoughts(graphdef, params, model_config, prompts, key_sample, limit,
                             rlp.sample_temperature, special.think_end_id, special.pad_id)
  sequences = build_scored_sequences(prompts, thoughts, special.think_end_id, special.pad_id)
  _, s_pred = score_thoughts(graphdef, params, sequences, limit, rlp.sample_temperature)

  return finish_rollout(sequences, thoughts, s_pred, s_ema, position_valid, rlp)


def rlp_loss(params: Any, teacher_params: Any, graphdef: Any, batch: Batch, rollout: Rollout,
             rlp: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The combined loss of one update and its metrics (gradient flows only into `params`)."""
  limit = rlp.max_thought_tokens
  new_log_probs, _ = score_thoughts(graphdef, params, rollout.sequences, limit,
                                    rlp.sample_temperature)
  tokens, mask = batch['tokens'], batch['mask']
  logits, _ = registry.forward(graphdef, params, tokens, document_positions(tokens), mask)
  ntp_loss, _ = next_token_loss(logits, tokens, mask)
  teacher_log_probs = None
  if rlp.kl_weight > 0:
    teacher_log_probs, _ = score_thoughts(graphdef, jax.lax.stop_gradient(teacher_params),
                                          rollout.sequences, limit, rlp.sample_temperature)
  return combine_update_loss(new_log_probs, teacher_log_probs, ntp_loss, rollout, rlp)


def make_rlp_step(graphdef: Any, model_config: ml_collections.ConfigDict,
                  rlp: ml_collections.ConfigDict, special: SpecialTokens,
                  tx: optax.GradientTransformation, schedule: optax.Schedule,
                  state_sharding: TrainState | None = None,
                  rules: Any = None) -> tuple[Callable, Callable]:
  """(rollout, update), both jitted; see the module docstring. With `state_sharding` (on a mesh)
  both return the state in that layout; with `rules` too (the config's `mesh.rules`) the model's
  activations are pinned by them on that mesh (parallel/activation_sharding.py)."""

  if rlp.prefix_mode == 'shared':
    from rlp_jax.train.shared_prefix_step import (  # pylint: disable=import-outside-toplevel
        shared_rlp_loss, shared_rollout_batch)
    rollout_fn, loss_fn = shared_rollout_batch, shared_rlp_loss
  else:
    rollout_fn, loss_fn = rollout_batch, rlp_loss
  mesh = mesh_of(state_sharding)

  def rollout(state: TrainState, batch: Batch) -> tuple[TrainState, Rollout]:
    state, key = state.next_key()
    state = state.replace(data_position=state.data_position + 1)  # this batch is consumed
    with activation_layout(mesh, rules):
      rollout_data = rollout_fn(graphdef, state.params, state.teacher_params, key, batch,
                                model_config, rlp, special)
    return constrain_state(state, state_sharding), rollout_data

  def update(state: TrainState, batch: Batch,
             rollout_data: Rollout) -> tuple[TrainState, dict[str, jax.Array]]:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    with activation_layout(mesh, rules):
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

  return StepJit(rollout, state_sharding, rules), StepJit(update, state_sharding, rules)
