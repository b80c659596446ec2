"""Which positions of each document are scored: K per document, seeded, never padding.

Uniformly at random (`weights=None`, the default rule) or, with per-position weights, drawn
without replacement with probability proportional to the weight (Gumbel-top-k).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Allowed positions weigh at least this much, so a zero (or negative, or NaN) weight never makes an
# allowed position impossible while others fill the K slots first.
MIN_POSITION_WEIGHT = 1e-6


def allowed_positions(token_mask: jax.Array, min_context: int) -> jax.Array:
  """bool [B, L]: x_t is a real token and at least `min_context` tokens precede it."""
  length = token_mask.shape[1]
  return token_mask & (jnp.arange(length) >= min_context)[None, :]


def choose_positions(key: jax.Array, token_mask: jax.Array, num_positions: int,
                     min_context: int, weights: jax.Array | None = None,
                     ) -> tuple[jax.Array, jax.Array]:
  """K distinct scored positions per document among the allowed ones.

  A position t is allowed when x_t is a real token and at least `min_context` tokens precede it
  (t >= min_context). Documents with fewer than K allowed positions get fewer: the missing slots
  come back with `valid` False (their position is still a legal index, t = 1 at worst).

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

  Returns:
    positions int32 [B, K] (ascending among valid ones) and valid bool [B, K].
  """
  allowed = allowed_positions(token_mask, min_context)
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
