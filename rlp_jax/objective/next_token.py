"""The ordinary next-token (teacher-forced cross-entropy) loss on documents: from logits
(`next_token_loss`) or from the final-normed states and the lm head, never holding the logits of
every token at once (`next_token_loss_from_head`, objective/chunked_log_probs.py)."""

import jax
import jax.numpy as jnp

from rlp_jax.models.decoder import OutputHead
from rlp_jax.objective.chunked_log_probs import DEFAULT_CHUNK_TOKENS, head_token_log_probs
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
  return _mean_over_predicted(token_log_probs(logits[:, :-1], tokens[:, 1:]), mask, segment_ids)


def next_token_loss_from_head(
    head: OutputHead, normed: jax.Array, tokens: jax.Array, mask: jax.Array,
    segment_ids: jax.Array | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[jax.Array, jax.Array]:
  """`next_token_loss(head.logits(normed), tokens, mask, segment_ids)` without the [B, L, V]
  logits: those of columns 0 … L−2 (the last predicts nothing) are taken `chunk_tokens` per
  device at a time, in the forward pass and the backward
  (`chunked_log_probs.head_token_log_probs`; 0: all at once).

  Args:
    head, normed: `registry.output_head(graphdef, params, hidden)` of the residual stream
      [B, L, E] of `tokens` (registry.forward_hidden).
    tokens, mask, segment_ids: as `next_token_loss`.
  """
  log_probs = head_token_log_probs(head, normed[:, :-1], tokens[:, 1:], 1.0, chunk_tokens)
  return _mean_over_predicted(log_probs, mask, segment_ids)


def _mean_over_predicted(log_probs: jax.Array, mask: jax.Array, segment_ids: jax.Array | None,
                         ) -> tuple[jax.Array, jax.Array]:
  """(−mean of log_probs [B, L−1] over the counted positions, their count); see
  `next_token_loss`."""
  mask = mask.astype(bool)
  predicted = mask[:, :-1] & mask[:, 1:]
  if segment_ids is not None:
    predicted = predicted & (segment_ids[:, :-1] == segment_ids[:, 1:])
  num_predicted = jnp.sum(predicted, dtype=jnp.int32)
  total = -jnp.sum(jnp.where(predicted, log_probs, 0.0))
  loss = total / jnp.maximum(num_predicted, 1).astype(jnp.float32)
  return loss, num_predicted
