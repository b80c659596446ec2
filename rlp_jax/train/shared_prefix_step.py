"""The RLP rollout and loss on the shared-prefix path (rlp.prefix_mode = 'shared', DESIGN §2).

Drop-in twins of `rlp_step.rollout_batch` and `rlp_step.rlp_loss` (same signatures, same `Rollout`
type, same numbers up to fp32 rounding). What changes is the compute:
  rollout: the θ_old document forward runs once per document; sampling and S_pred attend into it.
  update:  the θ document forward runs once WITH gradient; its logits give the next-token loss and
           its keys/values serve the thought tokens of all K·G rollouts, so every rollout's gradient
           reaches the shared prefix. `rollout.sequences` holds `<think> c </think> x_t` rows.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rlp_jax.models.shared_prefix import document_kv
from rlp_jax.objective import next_token_loss
from rlp_jax.rollout.reasoned_evidence import ScoredSequences
from rlp_jax.rollout.shared_prefix_sampler import (build_thought_sequences, sample_thoughts_shared,
                                                   score_thoughts_shared, thought_prompts)
from rlp_jax.rollout.thought_sampler import Thoughts
from rlp_jax.train.rollout_outcome import (Rollout, SpecialTokens, combine_update_loss,
                                           finish_rollout)
from rlp_jax.train.rlp_step import scored_positions_and_baseline
from rlp_jax.train.step import document_positions

Batch = dict[str, jax.Array]


def shared_rollout_batch(graphdef: Any, params: Any, teacher_params: Any, key: jax.Array,
                         batch: Batch, model_config: ml_collections.ConfigDict,
                         rlp: ml_collections.ConfigDict, special: SpecialTokens) -> Rollout:
  """`rlp_step.rollout_batch` with one θ_old document pass shared by sampling and S_pred."""
  tokens, mask = batch['tokens'], batch['mask']
  key_positions, key_sample = jax.random.split(key)
  positions, position_valid, s_ema = scored_positions_and_baseline(
      graphdef, teacher_params, key_positions, tokens, mask, rlp,
      special.marker_ids)  # the same as rollout_batch
  s_ema = jnp.repeat(s_ema.reshape(-1), rlp.thoughts_per_position)  # [R]
  sequences, thoughts, s_pred = reasoned_evidence_shared(
      graphdef, params, model_config, key_sample, tokens, mask, positions,
      rlp.thoughts_per_position, rlp.max_thought_tokens, rlp.sample_temperature, special)
  return finish_rollout(sequences, thoughts, s_pred, s_ema, position_valid, rlp)


def reasoned_evidence_shared(graphdef: Any, params: Any, model_config: ml_collections.ConfigDict,
                             key: jax.Array, tokens: jax.Array, mask: jax.Array,
                             positions: jax.Array, group_size: int, max_thought_tokens: int,
                             temperature: float, special: SpecialTokens,
                             ) -> tuple[ScoredSequences, Thoughts, jax.Array]:
  """G thoughts per scored position sampled under `params` over one shared document pass, and
  their reasoned evidence S_pred [R] = log p(x_t | x_<t, <think> c </think>) under `params`.

  The rollout (θ_old) and the evaluator (the evaluated θ, rlp_jax.eval) both call this."""
  _, doc = document_kv(graphdef, params, tokens, document_positions(tokens), mask, positions)
  prompts = thought_prompts(tokens, positions, group_size, special.think_start_id)
  thoughts = sample_thoughts_shared(graphdef, params, model_config, doc, prompts, key,
                                    max_thought_tokens, temperature, special.think_end_id,
                                    special.pad_id)
  sequences = build_thought_sequences(prompts, thoughts, special.think_end_id, special.pad_id)
  _, s_pred = score_thoughts_shared(graphdef, params, doc, sequences, max_thought_tokens,
                                    temperature)
  return sequences, thoughts, s_pred


def shared_rlp_loss(params: Any, teacher_params: Any, graphdef: Any, batch: Batch,
                    rollout: Rollout, rlp: ml_collections.ConfigDict,
                    ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """`rlp_step.rlp_loss` with ONE document forward (with gradient) for NTP and all thoughts."""
  limit, temperature = rlp.max_thought_tokens, rlp.sample_temperature
  tokens, mask = batch['tokens'], batch['mask']
  doc_positions = document_positions(tokens)
  # The scored positions t, [B, K]: every row (b, k, g) of a rollout starts its thought at t.
  state_positions = rollout.sequences.positions[:, 0].reshape(
      tokens.shape[0], rlp.positions_per_document, rlp.thoughts_per_position)[:, :, 0]
  logits, doc = document_kv(graphdef, params, tokens, doc_positions, mask, state_positions)
  ntp_loss, _ = next_token_loss(logits, tokens, mask)
  new_log_probs, _ = score_thoughts_shared(graphdef, params, doc, rollout.sequences, limit,
                                           temperature)
  teacher_log_probs = None
  if rlp.kl_weight > 0:
    teacher = jax.lax.stop_gradient(teacher_params)
    _, teacher_doc = document_kv(graphdef, teacher, tokens, doc_positions, mask,
                                 state_positions)
    teacher_log_probs, _ = score_thoughts_shared(graphdef, teacher, teacher_doc,
                                                 rollout.sequences, limit, temperature)
  return combine_update_loss(new_log_probs, teacher_log_probs, ntp_loss, rollout, rlp)
