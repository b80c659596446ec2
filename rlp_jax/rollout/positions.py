"""Which positions of each document are scored: K per document, seeded, never padding."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def choose_positions(key: jax.Array, token_mask: jax.Array, num_positions: int,
                     min_context: int) -> tuple[jax.Array, jax.Array]:
  """K distinct scored positions per document, uniformly at random among the allowed ones.

  A position t is allowed when x_t is a real token and at least `min_context` tokens precede it
  (t >= min_context). Documents with fewer than K allowed positions get fewer: the missing slots
  come back with `valid` False (their position is still a legal index, t = 1 at worst).

  Args:
    key: PRNG key.
    token_mask: bool [B, L], True on real tokens.
    num_positions: K.
    min_context: tokens of history required before t (>= 1).

  Returns:
    positions int32 [B, K] (ascending among valid ones) and valid bool [B, K].
  """
  length = token_mask.shape[1]
  allowed = token_mask & (jnp.arange(length) >= min_context)[None, :]
  scores = jnp.where(allowed, jax.random.uniform(key, token_mask.shape), -1.0)
  top_scores, top_index = jax.lax.top_k(scores, num_positions)
  valid = top_scores >= 0.0
  # Sort chosen positions ascending, invalid slots last.
  order_key = jnp.where(valid, top_index, length + top_index)
  order = jnp.argsort(order_key, axis=1)
  positions = jnp.take_along_axis(top_index, order, axis=1).astype(jnp.int32)
  valid = jnp.take_along_axis(valid, order, axis=1)
  positions = jnp.where(valid, positions, jnp.minimum(min_context, length - 1))
  return positions, valid
