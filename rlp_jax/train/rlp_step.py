"""The RLP step: a rollout under θ_old, then `updates_per_rollout` optax updates on
policy_loss + ntp_weight · ntp_loss (+ kl_weight · KL to φ), each followed by the EMA update of φ
(docs/objective.md). The prefix strategy (`rlp.prefix_mode`) is chosen inside the rollout and the
loss.

`make_rlp_step` returns two jitted pure functions, each compiled once:
  rollout(state, batch) -> (state, Rollout)    key and data position advanced; no gradient
  update(state, batch, rollout) -> (state, metrics)                     state donated
An update whose loss, gradient norm or update is not finite is skipped (train/nonfinite.py).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.objective.chunked_log_probs import chunk_tokens_of
from rlp_jax.parallel.activation_sharding import activation_layout, mesh_of
from rlp_jax.rollout.rlp_rollout import Rollout, rollout_batch
from rlp_jax.train.ema import ema_update
from rlp_jax.train.nonfinite import keep_finite_update
from rlp_jax.train.rlp_loss import rlp_loss
from rlp_jax.train.state import TrainState, constrain_state
from rlp_jax.train.state_sharding import StepJit

Batch = dict[str, jax.Array]


def make_rlp_step(graphdef: Any, model_config: ml_collections.ConfigDict,
                  rlp: ml_collections.ConfigDict, special: SpecialTokens,
                  tx: optax.GradientTransformation, schedule: optax.Schedule,
                  state_sharding: TrainState | None = None,
                  rules: Any = None) -> tuple[Callable, Callable]:
  """(rollout, update), both jitted; see the module docstring. With `state_sharding` (on a mesh)
  both return the state in that layout; with `rules` too (the config's `mesh.rules`) the model's
  activations are pinned by them on that mesh (parallel/activation_sharding.py)."""
  mesh = mesh_of(state_sharding)

  def rollout(state: TrainState, batch: Batch) -> tuple[TrainState, Rollout]:
    state, key = state.next_key()
    state = state.replace(data_position=state.data_position + 1)  # this batch is consumed
    with activation_layout(mesh, rules):
      rollout_data = rollout_batch(graphdef, state.params, state.teacher_params, key, batch,
                                   model_config, rlp, special)
    return constrain_state(state, state_sharding), rollout_data

  def update(state: TrainState, batch: Batch,
             rollout_data: Rollout) -> tuple[TrainState, dict[str, jax.Array]]:
    grad_fn = jax.value_and_grad(rlp_loss, has_aux=True)
    with activation_layout(mesh, rules):
      (loss, metrics), grads = grad_fn(state.params, state.teacher_params, graphdef, batch,
                                       rollout_data, rlp, chunk_tokens_of(model_config))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    teacher = ema_update(state.teacher_params, params, rlp.ema_decay)
    grad_norm = optax.global_norm(grads)
    metrics = dict(metrics, grad_norm=grad_norm,
                   learning_rate=jnp.asarray(schedule(state.step), jnp.float32))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              teacher_params=teacher)
    # A non-finite loss, gradient norm or update keeps θ, φ and the optimizer state.
    new_state, skipped = keep_finite_update(state, new_state, loss, grad_norm, updates)
    return constrain_state(new_state, state_sharding), dict(metrics, **skipped)

  return StepJit(rollout, state_sharding, rules), StepJit(update, state_sharding, rules)
