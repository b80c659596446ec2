"""Which positions of each document are scored: K per document, seeded, never padding.

Uniformly at random (`weights=None`, the default rule) or, with per-position weights, drawn
without replacement with probability proportional to the weight (Gumbel-top-k). The rules of
`rlp.position_rule` are declared here (`POSITION_RULES`); baseline_evidence.py applies them.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from rlp_jax.errors import ConfigError
from rlp_jax.models.segments import positions_in_segment

# Allowed positions weigh at least this much, so a zero (or negative, or NaN) weight never makes an
# allowed position impossible while others fill the K slots first.
MIN_POSITION_WEIGHT = 1e-6


def allowed_positions(token_mask: jax.Array, min_context: int,
                      segment_ids: jax.Array | None = None) -> jax.Array:
  """bool [B, L]: x_t is a real token and at least `min_context` tokens of its own document
  precede it (with `segment_ids`, packed rows: counted from its segment's start)."""
  if segment_ids is None:
    history = jnp.arange(token_mask.shape[1])[None, :]
  else:
    history = positions_in_segment(segment_ids)
  return token_mask & (history >= min_context)


def choose_positions(key: jax.Array, token_mask: jax.Array, num_positions: int,
                     min_context: int, weights: jax.Array | None = None,
                     segment_ids: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """K distinct scored positions per row among the allowed ones.

  A position t is allowed when x_t is a real token and at least `min_context` tokens of its own
  document precede it (t >= min_context; in a packed row, `segment_ids` given, t − its
  document's start >= min_context, so no scored prefix is cut at a document boundary). The K
  are drawn per row: in a packed row its documents share them. Rows with fewer than K allowed
  positions get fewer: the missing slots come back with `valid` False (their position is still
  a legal index, t = 1 at worst).

  Without `weights` the K positions are uniform among the allowed ones. With `weights` they are
  drawn without replacement with probability proportional to max(weight, MIN_POSITION_WEIGHT)
  (Gumbel-top-k on the log-weights): for K = 1 exactly the categorical distribution
  weights / sum(weights) over the allowed positions.

  Args:
    key: PRNG key.
    token_mask: bool [B, L], True on real tokens.
    num_positions: K.
    min_context: tokens of history required before t (>= 1).
    weights: float [B, L] sampling weights (any scale), or None for the uniform rule.
    segment_ids: int32 [B, L] of packed rows (models/segments.py), or None: one document a row.

  Returns:
    positions int32 [B, K] (ascending among valid ones) and valid bool [B, K].
  """
  allowed = allowed_positions(token_mask, min_context, segment_ids)
  if weights is None:
    top_index, valid = _uniform_top_k(key, allowed, num_positions)
  else:
    top_index, valid = _weighted_top_k(key, allowed, num_positions, weights)
  return _ascending_positions(top_index, valid, min_context, token_mask.shape[1])


def _uniform_top_k(key: jax.Array, allowed: jax.Array,
                   num_positions: int) -> tuple[jax.Array, jax.Array]:
  """The K allowed columns with the largest uniform draws (disallowed ones score −1)."""
  scores = jnp.where(allowed, jax.random.uniform(key, allowed.shape), -1.0)
  top_scores, top_index = jax.lax.top_k(scores, num_positions)
  return top_index, top_scores >= 0.0


def _weighted_top_k(key: jax.Array, allowed: jax.Array, num_positions: int,
                    weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Gumbel-top-k: the K allowed columns with the largest log(weight) + Gumbel noise, which is a
  draw of K columns without replacement with probability proportional to the weights."""
  log_weights = jnp.log(_floored_weights(weights))
  noise = jax.random.gumbel(key, allowed.shape, jnp.float32)
  scores = jnp.where(allowed, log_weights + noise, -jnp.inf)
  _, top_index = jax.lax.top_k(scores, num_positions)
  return top_index, jnp.take_along_axis(allowed, top_index, axis=1)


def _floored_weights(weights: jax.Array) -> jax.Array:
  """float32 weights with NaN, zero and negative entries raised to MIN_POSITION_WEIGHT."""
  weights = jnp.nan_to_num(weights.astype(jnp.float32), nan=0.0)
  return jnp.maximum(weights, MIN_POSITION_WEIGHT)


def _ascending_positions(top_index: jax.Array, valid: jax.Array, min_context: int,
                         length: int) -> tuple[jax.Array, jax.Array]:
  """Chosen positions sorted ascending, invalid slots last and set to a legal index."""
  order_key = jnp.where(valid, top_index, length + top_index)
  order = jnp.argsort(order_key, axis=1)
  positions = jnp.take_along_axis(top_index, order, axis=1).astype(jnp.int32)
  valid = jnp.take_along_axis(valid, order, axis=1)
  positions = jnp.where(valid, positions, jnp.minimum(min_context, length - 1))
  return positions, valid


def teacher_loss_weights(log_prob: jax.Array, entropy: jax.Array) -> jax.Array:
  """'teacher_loss': weight −log p_φ(x_t | x_<t), where the no-think teacher is surprised."""
  del entropy
  return -log_prob


def teacher_entropy_weights(log_prob: jax.Array, entropy: jax.Array) -> jax.Array:
  """'teacher_entropy': weight H(p_φ(· | x_<t)), where the no-think teacher is uncertain."""
  del log_prob
  return entropy


# rlp.position_rule → the sampling weight [B, L] of each position from φ's (log_prob, entropy) at
# every column (baseline_evidence.teacher_next_token_stats).
POSITION_WEIGHTS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'teacher_loss': teacher_loss_weights,
    'teacher_entropy': teacher_entropy_weights,
}
# Rules that need no teacher statistics: uniform among allowed positions, or among the tokens
# right after `rlp.position_marker`.
UNWEIGHTED_RULES = ('uniform', 'after_marker')
POSITION_RULES = (*UNWEIGHTED_RULES, *POSITION_WEIGHTS)


def after_marker(tokens: jax.Array, marker_ids: tuple[int, ...],
                 segment_ids: jax.Array | None = None) -> jax.Array:
  """bool [B, L]: True at t when tokens[t − m : t] are the m marker ids (the token right after
  each occurrence of the marker), within t's own document when `segment_ids` are given."""
  length, m = tokens.shape[1], len(marker_ids)
  if m == 0:
    raise ConfigError("config key `rlp.position_marker` must be set (non-empty) when "
                      "`rlp.position_rule` is 'after_marker'")
  if segment_ids is None:
    match = jnp.arange(length)[None, :] >= m
  else:  # the marker must not start in the previous document
    match = positions_in_segment(segment_ids) >= m
  for j, marker_id in enumerate(marker_ids):  # tokens[t − m + j] == marker[j]
    shifted = jnp.pad(tokens, ((0, 0), (m - j, 0)), constant_values=-1)[:, :length]
    match = match & (shifted == marker_id)
  return match
