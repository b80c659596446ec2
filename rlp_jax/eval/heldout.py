"""Held-out next-token loss and held-out information gain of thinking, under the evaluated θ.

Information gain here is `log p_θ(x_t | x_<t, <think> c </think>) − log p_θ(x_t | x_<t)`: both
terms under the same θ (not the EMA teacher), so it measures what the thought buys the model being
evaluated, not how far θ has moved from φ. Thoughts come from the training code's shared-prefix
rollout (`rollout.reasoned_evidence.reasoned_evidence` with the shared prefix strategy), sampled at the training temperature
(G per position) and greedily (one per position).

Positions: `all` draws K positions per document uniformly (as `rlp.position_rule='uniform'`
training does); `answer` takes the first token of each answer of an answer-only document of the
embedded corpus (the token a worked document puts its thought before: `Answer: <think> …
</think>51` vs `Answer: 51`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.data.reasoning_corpus import ANSWER_PREFIX, WORK_INTRO
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.models import registry
from rlp_jax.objective.chunked_log_probs import chunk_tokens_of
from rlp_jax.objective.next_token import next_token_loss_from_head
from rlp_jax.rollout.baseline_evidence import baseline_evidence
from rlp_jax.rollout.positions import choose_positions
from rlp_jax.rollout.prefix_strategies import SharedPrefix
from rlp_jax.rollout.reasoned_evidence import reasoned_evidence

_ANSWER_START = re.compile(re.escape(ANSWER_PREFIX) + r' (?!' + re.escape(WORK_INTRO) + ')')


def answer_char_starts(text: str) -> list[int]:
  """Character offsets where the answers of an answer-only document start."""
  return [m.end() for m in _ANSWER_START.finditer(text)]


def token_starts(tokenizer: Any, ids: Sequence[int]) -> list[int] | None:
  """The character offset where each token of `ids` starts in `tokenizer.decode(ids)`, or None
  when decoding is not prefix-consistent (then no offsets can be trusted)."""
  text = tokenizer.decode(ids)
  starts, previous = [], ''
  for i in range(len(ids)):
    prefix = tokenizer.decode(ids[:i])
    if not text.startswith(prefix) or len(prefix) < len(previous):
      return None
    starts.append(len(prefix))
    previous = prefix
  return starts


def answer_positions(tokenizer: Any, row: np.ndarray, text: str) -> list[int]:
  """Token positions (in `row` = [bos] + encode(text), maybe cut) where the answers of an
  answer-only document start; [] when the document shows worked thoughts."""
  if WORK_INTRO in text:
    return []
  starts = token_starts(tokenizer, row.tolist())
  if starts is None:
    return []
  wanted = set(answer_char_starts(tokenizer.decode(row.tolist())))
  return [t for t, start in enumerate(starts) if start in wanted and t > 0]


class HeldOut:
  """Jitted held-out measurements for one model config."""

  def __init__(self, graphdef: Any, model_config: Any, rlp: Any, special: SpecialTokens,
               thoughts_per_position: int):
    self.rlp = rlp
    self.group = thoughts_per_position

    def ntp_sums(params, tokens, mask):  # the logits `model.logits_chunk_tokens` at a time
      hidden, _ = registry.forward_hidden(graphdef, params, tokens,
                                          registry.document_positions(tokens), mask)
      normed, head = registry.output_head(graphdef, params, hidden)
      loss, count = next_token_loss_from_head(head, normed, tokens, mask,
                                              chunk_tokens=chunk_tokens_of(model_config))
      return loss * count, count

    def gains(params, key, tokens, mask, positions, group, temperature):
      batch, k = positions.shape
      s_plain = baseline_evidence(graphdef, params, tokens, mask, positions)  # [B, K]
      _, thoughts, s_think = reasoned_evidence(
          SharedPrefix(), graphdef, params, model_config, key, tokens, mask, positions, group,
          rlp.max_thought_tokens, temperature, special)
      return s_think.reshape(batch, k, group) - s_plain[:, :, None], thoughts

    self._ntp = jax.jit(ntp_sums)
    self.log_prob_at = jax.jit(functools.partial(baseline_evidence, graphdef))
    # gains(params, key, tokens [B, L], mask, positions [B, K], G, temperature) ->
    #   (gain [B, K, G], Thoughts with rows r = (b·K + k)·G + g)
    self.gains = jax.jit(gains, static_argnums=(5, 6))
    self._positions = jax.jit(choose_positions, static_argnums=(2, 3))

  def next_token(self, params: Any, batches: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    total, count = 0.0, 0
    for batch in batches:
      loss_sum, n = self._ntp(params, batch['tokens'], batch['mask'])
      total, count = total + float(loss_sum), count + int(n)
    loss = total / max(count, 1)
    return {'ntp_loss': loss, 'perplexity': float(np.exp(min(loss, 80.0))),
            'ntp_tokens': float(count)}

  def uniform_positions(self, key: jax.Array, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positions, valid = self._positions(key, jnp.asarray(mask), self.rlp.positions_per_document,
                                       self.rlp.min_context)
    return np.asarray(positions), np.asarray(valid)

  def information_gain(self, params: Any, key: jax.Array,
                       batches: Sequence[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]],
                       on_batch: Callable[[], None] | None = None) -> dict[str, float]:
    """Mean and fraction positive of the gain over the valid positions of `batches`
    ((batch, positions [B, K], valid [B, K]) triples), sampled and greedy thoughts."""
    sampled, greedy, lengths = [], [], []
    for i, (batch, positions, valid) in enumerate(batches):
      args = (params, jax.random.fold_in(key, i), batch['tokens'], batch['mask'], positions)
      g_sampled, thoughts = self.gains(*args, self.group, float(self.rlp.sample_temperature))
      g_greedy, _ = self.gains(*args, 1, 0.0)
      sampled.append(np.asarray(g_sampled)[valid].reshape(-1))
      greedy.append(np.asarray(g_greedy)[valid].reshape(-1))
      length = np.asarray(thoughts.length).reshape(g_sampled.shape)
      lengths.append(length[valid].reshape(-1))
      if on_batch is not None:
        on_batch()
    out = {'positions': float(sum(int(v.sum()) for _, _, v in batches))}
    for name, values in (('sampled', sampled), ('greedy', greedy)):
      values = np.concatenate(values) if values else np.zeros((0,))
      out[f'{name}_mean'] = float(values.mean()) if values.size else float('nan')
      out[f'{name}_positive'] = float((values > 0).mean()) if values.size else float('nan')
    lengths = np.concatenate(lengths) if lengths else np.zeros((0,))
    out['thought_length_mean'] = float(lengths.mean()) if lengths.size else float('nan')
    return out
