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
from rlp_jax.rollout.positions import choose_positions
from rlp_jax.rollout.shared_prefix_sampler import (build_thought_sequences, sample_thoughts_shared,
                                                   score_thoughts_shared, thought_prompts)
from rlp_jax.train.rollout_outcome import (Rollout, SpecialTokens, combine_update_loss,
                                           finish_rollout)
from rlp_jax.train.rlp_step import baseline_evidence
from rlp_jax.train.step import document_positions

Batch = dict[str, jax.Array]


def shared_rollout_batch(graphdef: Any, params: Any, teacher_params: Any, key: jax.Array,
                         batch: Batch, model_config: ml_collections.ConfigDict,
                         rlp: ml_collections.ConfigDict, special: SpecialTokens) -> Rollout:
  """`rlp_step.rollout_batch` with one θ_old document pass shared by sampling and S_pred."""
  tokens, mask = batch['tokens'], batch['mask']
  k, g, limit = rlp.positions_per_document, rlp.thoughts_per_position, rlp.max_thought_tokens
  key_positions, key_sample = jax.random.split(key)
  positions, position_valid = choose_positions(key_positions, mask, k, rlp.min_context)
  doc_positions = document_positions(tokens)

  s_ema = baseline_evidence(graphdef, teacher_params, tokens, mask, positions)  # [B, K]
  s_ema = jnp.repeat(s_ema.reshape(-1), g)  # [R]

  _, doc = document_kv(graphdef, params, tokens, doc_positions, mask, positions)
  prompts = thought_prompts(tokens, positions, g, special.think_start_id)
  thoughts = sample_thoughts_shared(graphdef, params, model_config, doc, prompts, key_sample,
                                    limit, rlp.sample_temperature, special.think_end_id,
                                    special.pad_id)
  sequences = build_thought_sequences(prompts, thoughts, special.think_end_id, special.pad_id)
  _, s_pred = score_thoughts_shared(graphdef, params, doc, sequences, limit,
                                    rlp.sample_temperature)
  return finish_rollout(sequences, thoughts, s_pred, s_ema, position_valid, rlp)


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
