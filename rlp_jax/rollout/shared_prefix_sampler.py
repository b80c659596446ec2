"""Thought rollouts and reasoned evidence on the shared-prefix path (DESIGN §2).

Each document is encoded once (`models.shared_prefix.document_kv`); its N = K·G thoughts are rows
(b, n) of [B, N] with n = k·G + g, i.e. the naive path's row r = (b·K + k)·G + g = b·N + n.
Outputs use the naive path's flat [R, ...] layout (`Thoughts`, log-probs, S_pred), so everything
downstream (reward, advantage, surrogate) is shared. For the same key the samples are the naive
sampler's: one key split per decode step, one Gumbel-max draw per row (thought_sampler.pick_tokens).

A thought row (b, n) is `<think> c </think> x_t` at RoPE positions t, t+1, ... attending to the
document columns < t: exactly `reasoned_evidence.build_scored_sequences` with a one-token prompt.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlp_jax.models.shared_prefix import DocumentKV, empty_thought_cache, thought_forward
from rlp_jax.rollout.reasoned_evidence import (ScoredSequences, build_scored_sequences,
                                               region_scores)
from rlp_jax.rollout.thought_sampler import Prompts, Thoughts, decode_thoughts


def thought_prompts(tokens: jax.Array, positions: jax.Array, group_size: int,
                    think_start_id: int) -> Prompts:
  """One-token prompts `<think>` at position t for every rollout row: tokens/positions [R, 1]."""
  batch = tokens.shape[0]
  t = jnp.repeat(positions.reshape(-1), group_size).astype(jnp.int32)  # [R]
  doc = jnp.repeat(jnp.arange(batch), positions.shape[1] * group_size)
  return Prompts(tokens=jnp.full((t.shape[0], 1), think_start_id, jnp.int32),
                 positions=t[:, None], mask=jnp.ones((t.shape[0], 1), jnp.bool_),
                 scored_position=t, next_token=tokens[doc, t].astype(jnp.int32))


def sample_thoughts_shared(graphdef: Any, params: Any, model_config: Any, doc_kv: DocumentKV,
                           prompts: Prompts, key: jax.Array, max_thought_tokens: int,
                           temperature: float, think_end_id: int, pad_id: int) -> Thoughts:
  """`thought_sampler.sample_thoughts` over a shared document cache; `prompts` from
  `thought_prompts`. Decode step u attends to doc columns < t plus the thought's own cache."""
  batch = doc_kv.valid.shape[0]
  rows = prompts.tokens.shape[0]
  num_thoughts = rows // batch
  limit = max_thought_tokens
  prefix_len = prompts.scored_position.reshape(batch, num_thoughts)

  def forward(tokens, positions, mask, cache):
    logits, cache = thought_forward(
        graphdef, params, doc_kv, prefix_len, tokens.reshape(batch, num_thoughts, -1),
        positions.reshape(batch, num_thoughts, -1), mask.reshape(batch, num_thoughts, -1), cache)
    return logits.reshape(rows, -1, logits.shape[-1])[:, -1], cache

  cache = empty_thought_cache(model_config, doc_kv, num_thoughts, limit + 1)
  logits, cache = forward(prompts.tokens, prompts.positions, prompts.mask, cache)
  return decode_thoughts(forward, logits, cache, prompts.scored_position, key, limit,
                         temperature, think_end_id, pad_id)


def build_thought_sequences(prompts: Prompts, thoughts: Thoughts, think_end_id: int,
                            pad_id: int) -> ScoredSequences:
  """`<think> ‖ c </think> x_t` rows [R, T + 3] (prompt_length 1) for the shared scorer."""
  return build_scored_sequences(prompts, thoughts, think_end_id, pad_id)


def score_thoughts_shared(graphdef: Any, params: Any, doc_kv: DocumentKV,
                          sequences: ScoredSequences, max_thought_tokens: int,
                          temperature: float) -> tuple[jax.Array, jax.Array]:
  """`reasoned_evidence.score_thoughts` over a shared document cache:
  (thought log-probs float32 [R, T] at the sampling temperature, S_pred float32 [R])."""
  if sequences.prompt_length != 1:
    raise ValueError('score_thoughts_shared wants sequences from build_thought_sequences '
                     f'(prompt_length 1), got prompt_length {sequences.prompt_length}')
  batch = doc_kv.valid.shape[0]
  rows, width = sequences.tokens.shape
  shape = (batch, rows // batch, width - 1)  # the last column is only ever a target
  prefix_len = sequences.positions[:, 0].reshape(shape[:2])
  logits, _ = thought_forward(graphdef, params, doc_kv, prefix_len,
                              sequences.tokens[:, :-1].reshape(shape),
                              sequences.positions[:, :-1].reshape(shape),
                              sequences.mask[:, :-1].reshape(shape))
  region_logits = logits.reshape(rows, width - 1, -1)  # column u predicts region[u]
  return region_scores(region_logits, sequences.tokens[:, 1:], sequences.closed_length,
                       max_thought_tokens, temperature)
