"""How a thought sees its document prefix x_<t: the few operations in which the two prefix modes
(`rlp.prefix_mode`) differ. Everything else — positions, baseline evidence, the decode loop,
scored sequences, reward, advantage, the update loss — is one code path for both.

  naive   the reference: every rollout row re-encodes its own left-padded prefix `x_<t <think>`
          (thought_sampler.build_prompts / sample_thoughts, reasoned_evidence.score_thoughts).
  shared  one document pass serves every rollout (models/shared_prefix.py): a row is the
          one-token prompt `<think>` at position t attending to the document columns < t.

In a packed row (segment ids, models/segments.py) the prefix is only t's own document before t in
both modes: the naive prompt leaves earlier documents out, the shared thought attends to its
document's columns only (and, hybrid, starts from Mamba states that restarted at its start).

Row r of a rollout is (b, k, g) flattened as r = (b·K + k)·G + g in both modes; the shared mode's
[B, N] thought rows (n = k·G + g) are the same rows. For the same key both modes draw the same
tokens (one key split per decode step, thought_sampler.decode_thoughts).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.models.segments import prefix_starts
from rlp_jax.models.shared_prefix import (DocumentKV, document_kv, empty_thought_cache,
                                          thought_forward)
from rlp_jax.objective.chunked_log_probs import DEFAULT_CHUNK_TOKENS
from rlp_jax.rollout.decode_inputs import decode_params, loop_document_kv, shared_decode_step
from rlp_jax.rollout.reasoned_evidence import ScoredSequences, region_scores, score_thoughts
from rlp_jax.rollout.thought_sampler import (Prompts, Thoughts, build_prompts, decode_thoughts,
                                             sample_thoughts)


class PrefixStrategy:
  """The operations a prefix mode implements; `context` is what `encode` keeps of the documents
  for `sample` and `score` (None for the naive mode, the DocumentKV for the shared one)."""
  name = ''

  def encode(self, graphdef: Any, params: Any, tokens: jax.Array, mask: jax.Array,
             positions: jax.Array, need_hidden: bool, segment_ids: jax.Array | None = None,
             ) -> tuple[jax.Array | None, Any]:
    """(the documents' residual stream [B, L, E] before the final norm when `need_hidden` (else
    may be None), context): `registry.logits_from_hidden` of it are the document logits, which
    the next-token loss takes a chunk of tokens at a time (objective/next_token.py).
    `positions` int32 [B, K]: the scored positions; `segment_ids` int32 [B, L] of packed rows
    (models/segments.py) or None: every document is kept to itself."""
    raise NotImplementedError

  def prompts(self, tokens: jax.Array, positions: jax.Array, group_size: int,
              think_start_id: int, segment_ids: jax.Array | None = None) -> Prompts:
    """The prompt of every rollout row (R = B·K·G) ending in `<think>`, its RoPE positions
    counted from the start of t's document."""
    raise NotImplementedError

  def sample(self, graphdef: Any, params: Any, model_config: Any, context: Any, prompts: Prompts,
             key: jax.Array, max_thought_tokens: int, temperature: float, think_end_id: int,
             pad_id: int) -> Thoughts:
    """Up to T thought tokens per row under `params`, each row stopping at `</think>`."""
    raise NotImplementedError

  def score(self, graphdef: Any, params: Any, context: Any, sequences: ScoredSequences,
            max_thought_tokens: int, temperature: float,
            chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced (thought log-probs float32 [R, T] at the sampling temperature,
    S_pred float32 [R]), the logits over the vocabulary `chunk_tokens` per device at a time
    (`model.logits_chunk_tokens`; 0: all at once)."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class NaivePrefix(PrefixStrategy):
  """Each row re-encodes its prefix: simple and exact, and R/B times the prefix compute."""
  name = 'naive'

  def encode(self, graphdef, params, tokens, mask, positions, need_hidden, segment_ids=None):
    del positions
    if not need_hidden:
      return None, None
    hidden, _ = registry.forward_hidden(graphdef, params, tokens,
                                        registry.document_positions(tokens, segment_ids), mask,
                                        segment_ids=segment_ids)
    return hidden, None

  def prompts(self, tokens, positions, group_size, think_start_id, segment_ids=None):
    return build_prompts(tokens, positions, group_size, think_start_id, segment_ids)

  def sample(self, graphdef, params, model_config, context, prompts, key, max_thought_tokens,
             temperature, think_end_id, pad_id):
    del context
    return sample_thoughts(graphdef, params, model_config, prompts, key, max_thought_tokens,
                           temperature, think_end_id, pad_id)

  def score(self, graphdef, params, context, sequences, max_thought_tokens, temperature,
            chunk_tokens=DEFAULT_CHUNK_TOKENS):
    del context
    return score_thoughts(graphdef, params, sequences, max_thought_tokens, temperature,
                          chunk_tokens)


@dataclasses.dataclass(frozen=True)
class SharedPrefix(PrefixStrategy):
  """One document pass (keys/values, and for the hybrid family the Mamba states at the scored
  positions) serves every row's sampling and scoring; with gradient in the update, so every
  rollout's gradient reaches its shared prefix."""
  name = 'shared'

  def encode(self, graphdef, params, tokens, mask, positions, need_hidden, segment_ids=None):
    del need_hidden  # one pass either way; an unused residual stream costs nothing more
    return document_kv(graphdef, params, tokens, registry.document_positions(tokens, segment_ids),
                       mask, positions, segment_ids, return_hidden=True)

  def prompts(self, tokens, positions, group_size, think_start_id, segment_ids=None):
    return thought_prompts(tokens, positions, group_size, think_start_id, segment_ids)

  def sample(self, graphdef, params, model_config, context, prompts, key, max_thought_tokens,
             temperature, think_end_id, pad_id):
    return sample_thoughts_shared(graphdef, params, model_config, context, prompts, key,
                                  max_thought_tokens, temperature, think_end_id, pad_id)

  def score(self, graphdef, params, context, sequences, max_thought_tokens, temperature,
            chunk_tokens=DEFAULT_CHUNK_TOKENS):
    return score_thoughts_shared(graphdef, params, context, sequences, max_thought_tokens,
                                 temperature, chunk_tokens)


PREFIX_STRATEGIES: dict[str, PrefixStrategy] = {s.name: s for s in (NaivePrefix(), SharedPrefix())}


def prefix_strategy(prefix_mode: str) -> PrefixStrategy:
  """The strategy of `rlp.prefix_mode`."""
  if prefix_mode not in PREFIX_STRATEGIES:
    raise ConfigError(f'config key `rlp.prefix_mode` must be one of {list(PREFIX_STRATEGIES)}, '
                      f'got {prefix_mode!r}')
  return PREFIX_STRATEGIES[prefix_mode]


def thought_prompts(tokens: jax.Array, positions: jax.Array, group_size: int,
                    think_start_id: int, segment_ids: jax.Array | None = None) -> Prompts:
  """One-token prompts `<think>` at column t for every rollout row: tokens/positions [R, 1], the
  RoPE position t less the start of t's document (t itself without segment ids)."""
  batch = tokens.shape[0]
  t = jnp.repeat(positions.reshape(-1), group_size).astype(jnp.int32)  # [R]
  start = jnp.repeat(prefix_starts(segment_ids, positions).reshape(-1), group_size)  # [R]
  doc = jnp.repeat(jnp.arange(batch), positions.shape[1] * group_size)
  return Prompts(tokens=jnp.full((t.shape[0], 1), think_start_id, jnp.int32),
                 positions=(t - start)[:, None].astype(jnp.int32),
                 mask=jnp.ones((t.shape[0], 1), jnp.bool_), scored_position=t,
                 next_token=tokens[doc, t].astype(jnp.int32))


def sample_thoughts_shared(graphdef: Any, params: Any, model_config: Any, doc_kv: DocumentKV,
                           prompts: Prompts, key: jax.Array, max_thought_tokens: int,
                           temperature: float, think_end_id: int, pad_id: int) -> Thoughts:
  """`thought_sampler.sample_thoughts` over a shared document cache; `prompts` from
  `thought_prompts`. Decode step u attends to doc columns < t plus the thought's own cache.

  What every step reads is prepared once, before the loop (decode_inputs.py): the weights in the
  compute dtype, and (reference attention) the one document cache heads-major, read by all N
  thoughts of the document without a copy per thought. Exact: the same thoughts and log-probs."""
  batch = doc_kv.valid.shape[0]
  rows = prompts.tokens.shape[0]
  num_thoughts = rows // batch
  prefix_len = prompts.scored_position.reshape(batch, num_thoughts)
  params = decode_params(graphdef, params)
  # The kernels of other `model.attention_impl`s take the document in the model's layout.
  heads_major = model_config.get('attention_impl', 'reference') == 'reference'
  loop_kv = loop_document_kv(doc_kv) if heads_major else doc_kv
  forward = functools.partial(shared_decode_step, graphdef, params, loop_kv, prefix_len,
                              heads_major=heads_major)

  cache = empty_thought_cache(model_config, doc_kv, num_thoughts, max_thought_tokens + 1)
  logits, cache = forward(prompts.tokens, prompts.positions, prompts.mask, cache)
  return decode_thoughts(forward, logits, cache, prompts.positions[:, -1], key,
                         max_thought_tokens, temperature, think_end_id, pad_id)


def score_thoughts_shared(graphdef: Any, params: Any, doc_kv: DocumentKV,
                          sequences: ScoredSequences, max_thought_tokens: int,
                          temperature: float, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                          ) -> tuple[jax.Array, jax.Array]:
  """`reasoned_evidence.score_thoughts` over a shared document cache, for `<think> ‖ c </think>
  x_t` rows (prompt_length 1): (thought log-probs float32 [R, T], S_pred float32 [R]), the
  logits `chunk_tokens` per device at a time (`region_scores`)."""
  if sequences.prompt_length != 1 or sequences.scored_position is None:
    raise ValueError('score_thoughts_shared wants sequences built from `thought_prompts` '
                     f'(prompt_length 1, scored_position set), got prompt_length '
                     f'{sequences.prompt_length}')
  batch = doc_kv.valid.shape[0]
  rows, width = sequences.tokens.shape
  shape = (batch, rows // batch, width - 1)  # the last column is only ever a target
  prefix_len = sequences.scored_position.reshape(shape[:2])  # columns < t (t's document)
  hidden, _ = thought_forward(graphdef, params, doc_kv, prefix_len,
                              sequences.tokens[:, :-1].reshape(shape),
                              sequences.positions[:, :-1].reshape(shape),
                              sequences.mask[:, :-1].reshape(shape), return_hidden=True)
  # column u predicts region[u]
  normed, head = registry.output_head(graphdef, params, hidden.reshape(rows, width - 1, -1))
  return region_scores(head, normed, sequences.tokens[:, 1:], sequences.closed_length,
                       max_thought_tokens, temperature, chunk_tokens)
