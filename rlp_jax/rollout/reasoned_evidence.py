"""The thinking side of the reward: G thoughts per scored position and their reasoned evidence
S_pred = log p(x_t | x_<t, <think> c </think>) (`reasoned_evidence`, for either prefix strategy),
next to the no-think baseline S_ema of baseline_evidence.py.

Scoring is teacher-forced, in one forward over `prompt ‖ c </think> x_t` (`score_thoughts` is the
naive strategy's; prefix_strategies.py has the shared one): per-token thought log-probs and S_pred,
from the final-normed states of the thought region and the lm head, never holding the logits of
every token over the vocabulary at once (`region_scores`, objective/chunked_log_probs.py,
`model.logits_chunk_tokens`).
The same function scores under θ_old at rollout time (no gradient) and under θ in the update
(with gradient), so on the first update of a rollout the importance ratio is exactly 1 up to the
decode-vs-forward rounding.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.models import registry
from rlp_jax.models.decoder import OutputHead
from rlp_jax.objective.chunked_log_probs import (DEFAULT_CHUNK_TOKENS, chunk_tokens_of,
                                                 head_token_log_probs)
from rlp_jax.rollout.thought_sampler import Prompts, Thoughts


@flax.struct.dataclass
class ScoredSequences:
  """`prompt ‖ thought region` rows: tokens/positions int32 [R, P + T + 2], mask bool.

  The thought region (width T + 2) holds the sampled tokens, a forced `</think>` when the thought
  hit the limit, then x_t at `closed_length`, then padding. `positions` are RoPE positions
  (within the document); `scored_position` int32 [R] is t as a column of the batch row, what
  the shared prefix strategy attends up to and the update's document pass takes states at
  (built by `build_scored_sequences`; a naive-only caller may leave it None).
  """
  tokens: jax.Array
  positions: jax.Array
  mask: jax.Array
  closed_length: jax.Array  # int32 [R]: thought tokens incl. `</think>` (forced or sampled)
  prompt_length: int = flax.struct.field(pytree_node=False)
  scored_position: jax.Array | None = None


def build_scored_sequences(prompts: Prompts, thoughts: Thoughts, think_end_id: int,
                           pad_id: int) -> ScoredSequences:
  rows, limit = thoughts.tokens.shape
  u = jnp.arange(limit + 2)[None, :]
  padded = jnp.pad(thoughts.tokens, ((0, 0), (0, 2)), constant_values=pad_id)
  n = thoughts.length[:, None]
  closed = jnp.where(thoughts.ended, thoughts.length, thoughts.length + 1)[:, None]
  region = jnp.where(u < n, padded, pad_id)
  region = jnp.where((u == n) & ~thoughts.ended[:, None], think_end_id, region)
  region = jnp.where(u == closed, prompts.next_token[:, None], region)
  region_positions = prompts.positions[:, -1:] + 1 + u  # after `<think>`'s RoPE position
  return ScoredSequences(
      tokens=jnp.concatenate([prompts.tokens, region.astype(jnp.int32)], axis=1),
      positions=jnp.concatenate([prompts.positions, region_positions.astype(jnp.int32)], axis=1),
      mask=jnp.concatenate([prompts.mask, u <= closed], axis=1),
      closed_length=closed[:, 0].astype(jnp.int32),
      prompt_length=prompts.tokens.shape[1],
      scored_position=prompts.scored_position,
  )


def score_thoughts(graphdef: Any, params: Any, sequences: ScoredSequences, max_thought_tokens: int,
                   temperature: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                   ) -> tuple[jax.Array, jax.Array]:
  """(thought log-probs float32 [R, T] at the sampling temperature, S_pred float32 [R]).

  Logits are computed only for the columns that predict the thought region, not for the prompt
  (the prompt's [R, P, V] fp32 logits would be most of the step's memory), and of those only
  `chunk_tokens` per device at a time (`region_scores`; 0: all at once)."""
  hidden, _ = registry.forward_hidden(graphdef, params, sequences.tokens, sequences.positions,
                                      sequences.mask)
  start = sequences.prompt_length - 1  # the `<think>` column predicts the first thought token
  region_hidden = hidden[:, start:start + max_thought_tokens + 2]  # column u predicts region[u]
  region_tokens = sequences.tokens[:, start + 1:start + 1 + max_thought_tokens + 2]
  normed, head = registry.output_head(graphdef, params, region_hidden)
  return region_scores(head, normed, region_tokens, sequences.closed_length, max_thought_tokens,
                       temperature, chunk_tokens)


def region_scores(head: OutputHead, region_normed: jax.Array, region_tokens: jax.Array,
                  closed_length: jax.Array, max_thought_tokens: int, temperature: float,
                  chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> tuple[jax.Array, jax.Array]:
  """From the final-normed states [R, T + 2, E] whose column u predicts region token u and the lm
  head (`registry.output_head`): (thought log-probs [R, T] at the sampling temperature, S_pred
  [R] = log p(x_t) at column `closed_length`). The R·T thought tokens' logits are taken
  `chunk_tokens` per device at a time (objective/chunked_log_probs.py), S_pred's from the one
  column `closed_length` of each row."""
  thought_log_probs = head_token_log_probs(
      head, region_normed[:, :max_thought_tokens], region_tokens[:, :max_thought_tokens],
      temperature if temperature > 0 else 1.0, chunk_tokens)
  closed = closed_length
  answer_normed = jnp.take_along_axis(region_normed, closed[:, None, None], axis=1)  # [R, 1, E]
  answer_token = jnp.take_along_axis(region_tokens, closed[:, None], axis=1)  # [R, 1]
  s_pred = head_token_log_probs(head, answer_normed, answer_token, 1.0, chunk_tokens)
  return thought_log_probs, s_pred[:, 0]


def reasoned_evidence(strategy: Any, graphdef: Any, params: Any, model_config: Any,
                      key: jax.Array, tokens: jax.Array, mask: jax.Array, positions: jax.Array,
                      group_size: int, max_thought_tokens: int, temperature: float,
                      special: SpecialTokens, segment_ids: jax.Array | None = None,
                      ) -> tuple[ScoredSequences, Thoughts, jax.Array]:
  """G thoughts per scored position [B, K] sampled under `params` and their reasoned evidence
  S_pred [R] = log p(x_t | x_<t, <think> c </think>) under `params`, through `strategy` (a
  prefix_strategies.PrefixStrategy: how each thought sees its document prefix). With
  `segment_ids` (packed rows) x_<t is t's own document before t.

  The rollout (θ_old) and the evaluator (the evaluated θ, rlp_jax.eval) both call this."""
  _, context = strategy.encode(graphdef, params, tokens, mask, positions, need_hidden=False,
                               segment_ids=segment_ids)
  prompts = strategy.prompts(tokens, positions, group_size, special.think_start_id, segment_ids)
  thoughts = strategy.sample(graphdef, params, model_config, context, prompts, key,
                             max_thought_tokens, temperature, special.think_end_id,
                             special.pad_id)
  sequences = build_scored_sequences(prompts, thoughts, special.think_end_id, special.pad_id)
  _, s_pred = strategy.score(graphdef, params, context, sequences, max_thought_tokens,
                             temperature, chunk_tokens_of(model_config))
  return sequences, thoughts, s_pred
