"""The next-token step (no thoughts): one jitted, donated optax update on the next-token loss.

The step is a pure function of (state, batch); `make_ntp_step` closes over the static pieces
(model graph, optimizer) and compiles once for the configured batch shape. An update whose loss,
gradient norm or update is not finite is skipped (train/nonfinite.py).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from rlp_jax.models import registry
from rlp_jax.models.segments import segment_ids_of
from rlp_jax.objective.chunked_log_probs import DEFAULT_CHUNK_TOKENS
from rlp_jax.objective.next_token import next_token_loss_from_head
from rlp_jax.parallel.activation_sharding import activation_layout, mesh_of
from rlp_jax.train.nonfinite import keep_finite_update
from rlp_jax.train.state import TrainState, constrain_state
from rlp_jax.train.state_sharding import StepJit

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def make_ntp_step(graphdef: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
                  state_sharding: TrainState | None = None, rules: Any = None,
                  logits_chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                  ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Returns `ntp_step(state, batch) -> (state, metrics)`, jitted with the state donated.

  The loss takes its logits over the vocabulary `logits_chunk_tokens` tokens per device at a time
  (`model.logits_chunk_tokens`, objective/chunked_log_probs.py; 0: all at once).

  With `state_sharding` (on a mesh) the returned state keeps that layout; inputs arrive already
  sharded (the state from `create_sharded_state`, the batch from `put_batch`). With `rules` too
  (the config's `mesh.rules`) the model's activations are pinned by them on that mesh.
  """
  mesh = mesh_of(state_sharding)

  def loss_fn(params, batch):
    tokens, mask = batch['tokens'], batch['mask']
    segment_ids = segment_ids_of(batch)  # packed rows: each document kept to itself
    hidden, _ = registry.forward_hidden(graphdef, params, tokens,
                                        registry.document_positions(tokens, segment_ids), mask,
                                        segment_ids=segment_ids)
    normed, head = registry.output_head(graphdef, params, hidden)
    loss, num_predicted = next_token_loss_from_head(head, normed, tokens, mask, segment_ids,
                                                    logits_chunk_tokens)
    return loss, num_predicted

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    state, _ = state.next_key()  # the RLP objective draws its rollout keys here
    with activation_layout(mesh, rules):
      (loss, num_predicted), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params,
                                                                               batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = {
        'ntp_loss': loss,
        'grad_norm': grad_norm,
        'learning_rate': jnp.asarray(schedule(state.step), jnp.float32),
        'predicted_tokens': num_predicted,
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              data_position=state.data_position + 1)
    # A non-finite loss, gradient norm or update keeps θ and the optimizer state.
    new_state, skipped = keep_finite_update(state, new_state, loss, grad_norm, updates)
    return constrain_state(new_state, state_sharding), dict(metrics, **skipped)

  return StepJit(train_step, state_sharding, rules)
