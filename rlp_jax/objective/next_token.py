"""The ordinary next-token (teacher-forced cross-entropy) loss on documents."""

import jax
import jax.numpy as jnp

from rlp_jax.objective.log_probs import token_log_probs


def next_token_loss(
    logits: jax.Array, tokens: jax.Array, mask: jax.Array,
    segment_ids: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy of predicting tokens[:, 1:] from logits[:, :-1].

  A position t predicts tokens[:, t + 1]; it counts only where both mask[:, t] and
  mask[:, t + 1] are True (a real token predicted from a real token) and, in a packed row,
  both are of one document: a document's first token is never predicted from the one before.

  Args:
    logits: [B, L, V] model outputs for `tokens`.
    tokens: [B, L] int32 token ids.
    mask: [B, L] bool, True on real (non-padding) tokens.
    segment_ids: [B, L] int32 document ids of packed rows (0 on padding), or None.

  Returns:
    (loss, num_predicted): float32 mean loss over counted positions (0 when there are
    none, with a zero gradient) and the int32 number of counted positions.
  """
  mask = mask.astype(bool)
  predicted = mask[:, :-1] & mask[:, 1:]
  if segment_ids is not None:
    predicted = predicted & (segment_ids[:, :-1] == segment_ids[:, 1:])
  log_probs = token_log_probs(logits[:, :-1], tokens[:, 1:])
  num_predicted = jnp.sum(predicted, dtype=jnp.int32)
  total = -jnp.sum(jnp.where(predicted, log_probs, 0.0))
  loss = total / jnp.maximum(num_predicted, 1).astype(jnp.float32)
  return loss, num_predicted
