"""The no-think side of the reward: which positions are scored, and the baseline evidence
S_ema = log p_φ(x_t | x_<t) of the EMA teacher there. Its counterpart, the reasoned evidence
S_pred of the thoughts, is in reasoned_evidence.py; information gain = S_pred − S_ema.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.objective.chunked_log_probs import DEFAULT_CHUNK_TOKENS, head_log_probs_and_entropy
from rlp_jax.objective.log_probs import token_log_probs
from rlp_jax.rollout.positions import (POSITION_RULES, POSITION_WEIGHTS, UNWEIGHTED_RULES,
                                       after_marker, choose_positions)


def baseline_evidence(graphdef: Any, teacher_params: Any, tokens: jax.Array, mask: jax.Array,
                      positions: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """S_ema [B, K] = log p_φ(x_t | x_<t) at the scored positions, from one teacher forward whose
  logits are computed only at the K columns t − 1 (not [B, L, V]). With `segment_ids` (packed
  rows) x_<t is t's own document before t."""
  hidden, _ = registry.forward_hidden(graphdef, teacher_params, tokens,
                                      registry.document_positions(tokens, segment_ids), mask,
                                      segment_ids=segment_ids)
  before = jnp.take_along_axis(hidden, (positions - 1)[:, :, None], axis=1)  # [B, K, E]
  logits = registry.logits_from_hidden(graphdef, teacher_params, before)  # [B, K, V]
  return token_log_probs(logits, jnp.take_along_axis(tokens, positions, axis=1))


def teacher_next_token_stats(graphdef: Any, teacher_params: Any, tokens: jax.Array,
                             mask: jax.Array, segment_ids: jax.Array | None = None,
                             chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                             ) -> tuple[jax.Array, jax.Array]:
  """φ's prediction of every token from one teacher-forced forward over all columns.

  Returns (log_prob, entropy), both float32 [B, L]: at column t ≥ 1, log p_φ(x_t | x_<t) and the
  entropy of φ's next-token distribution that predicts x_t (log-softmax of the logits at t − 1,
  in fp32, computed `chunk_tokens` per device at a time: objective/chunked_log_probs.py, 0: all
  at once); column 0 (nothing predicts it) is 0 in both. With `segment_ids` (packed rows) x_<t is
  t's own document; at a document's first token the numbers come from the previous document's
  last column and mean nothing, but such a column is never an allowed position.
  """
  hidden, _ = registry.forward_hidden(graphdef, teacher_params, tokens,
                                      registry.document_positions(tokens, segment_ids), mask,
                                      segment_ids=segment_ids)
  normed, head = registry.output_head(graphdef, teacher_params, hidden[:, :-1])
  log_prob, entropy = head_log_probs_and_entropy(head, normed, tokens[:, 1:],  # [B, L-1] each
                                                 chunk_tokens)
  first_column = jnp.zeros_like(log_prob[:, :1])
  return (jnp.concatenate([first_column, log_prob], axis=1),
          jnp.concatenate([first_column, entropy], axis=1))


def scored_positions_and_baseline(graphdef: Any, teacher_params: Any, key: jax.Array,
                                  tokens: jax.Array, mask: jax.Array,
                                  rlp: ml_collections.ConfigDict,
                                  marker_ids: tuple[int, ...] = (),
                                  segment_ids: jax.Array | None = None,
                                  chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The K scored positions by `rlp.position_rule` and the baseline evidence S_ema there.

  With `segment_ids` (packed rows, models/segments.py) a position needs `rlp.min_context` tokens
  of its own document before it, a marker must lie in that document, and S_ema conditions on
  that document alone.

  'uniform': positions uniform from `key`, then teacher logits only at the K columns
  (`baseline_evidence`). 'after_marker': the same among the tokens right after an occurrence of
  `marker_ids` (the tokens of `rlp.position_marker`); documents with fewer such tokens get fewer
  positions (counted as skipped). 'teacher_loss' / 'teacher_entropy': one teacher forward over
  all columns gives φ's loss / entropy at every position as the sampling weight (its logits
  `chunk_tokens` per device at a time, `model.logits_chunk_tokens`), and S_ema is gathered from
  the same log-probs (no second forward).

  Returns:
    positions int32 [B, K], valid bool [B, K], S_ema float32 [B, K].
  """
  k, min_context = rlp.positions_per_document, rlp.min_context
  if rlp.position_rule in UNWEIGHTED_RULES:
    allowed = mask if rlp.position_rule == 'uniform' else mask & after_marker(
        tokens, marker_ids, segment_ids)
    positions, valid = choose_positions(key, allowed, k, min_context, segment_ids=segment_ids)
    return positions, valid, baseline_evidence(graphdef, teacher_params, tokens, mask, positions,
                                               segment_ids)
  if rlp.position_rule not in POSITION_WEIGHTS:
    raise ConfigError(f"config key `rlp.position_rule` must be one of {list(POSITION_RULES)}, "
                      f"got {rlp.position_rule!r}")
  log_prob, entropy = teacher_next_token_stats(graphdef, teacher_params, tokens, mask,
                                               segment_ids, chunk_tokens)
  weights = POSITION_WEIGHTS[rlp.position_rule](log_prob, entropy)
  positions, valid = choose_positions(key, mask, k, min_context, weights, segment_ids)
  return positions, valid, jnp.take_along_axis(log_prob, positions, axis=1)
