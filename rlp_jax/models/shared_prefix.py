"""Shared-prefix compute: one document pass serves every thought rollout of its documents.

`document_kv` runs the documents once and keeps what their thoughts need (each attention layer's
keys/values and, for a family with recurrent layers, their states at the scored positions), next
to the logits the next-token loss needs (or, `return_hidden`, the residual stream they come from,
so that the caller takes log-probs a chunk of tokens at a time: objective/chunked_log_probs.py).
`thought_forward` runs the tokens of N thoughts per document over it: thought (b, n) sees
document columns s < prefix_len[b, n] and its own tokens.
Each family implements both in its record (dense_family.py, hybrid_family.py) with the model's own
submodules, so the shared and naive paths run the same per-token code; the attention they share
is prefix_attention.py. This module only dispatches to the record.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.models.family import ModelFamily
from rlp_jax.models.prefix_attention import DocumentKV, shared_prefix_attention

__all__ = ['DocumentKV', 'document_kv', 'empty_thought_cache', 'shared_prefix_attention',
           'thought_forward']

ThoughtCache = Any  # the family's decode cache type over B·N thought rows (registry.Cache)


def _shared_prefix_family(family: ModelFamily) -> ModelFamily:
  if None in (family.document_kv, family.thought_forward, family.empty_thought_cache):
    raise ConfigError(f'rlp.prefix_mode="shared" has no implementation for the {family.name!r} '
                      'model family')
  return family


def document_kv(graphdef: nnx.GraphDef, params: Any, tokens: jax.Array, positions: jax.Array,
                mask: jax.Array, state_positions: jax.Array | None = None,
                segment_ids: jax.Array | None = None, *, return_hidden: bool = False,
                ) -> tuple[jax.Array, DocumentKV]:
  """One causal forward over documents [B, L]: (fp32 logits [B, L, V], DocumentKV).

  The logits are those of `registry.forward(graphdef, params, tokens, positions, mask,
  segment_ids=segment_ids)`; with `return_hidden` the first output is instead the residual stream
  [B, L, E] before the final norm (`registry.forward_hidden`'s, whose `logits_from_hidden` gives
  those logits). `state_positions` int32 [B, K] (each ≥ 1): the scored positions
  whose Mamba states the hybrid family keeps (required there; the dense family keeps every
  column's keys and ignores it). `segment_ids` (packed rows, segments.py): every document kept
  to itself, and each thought later sees only the document its prefix ends in.
  """
  model = nnx.merge(graphdef, params)
  family = _shared_prefix_family(registry.family_of_model(model))
  return family.document_kv(model, tokens, positions, mask, state_positions, segment_ids,
                            return_hidden=return_hidden)


def empty_thought_cache(model_config: Any, doc_kv: DocumentKV, thoughts_per_document: int,
                        max_len: int) -> ThoughtCache:
  """Empty own-thought cache of B·N rows (row b·N + n) and `max_len` columns; for the hybrid
  family its Mamba states are the document's at each thought's position."""
  family = _shared_prefix_family(registry.family_of(model_config))
  return family.empty_thought_cache(model_config, doc_kv, thoughts_per_document, max_len)


def thought_forward(graphdef: nnx.GraphDef, params: Any, doc_kv: DocumentKV,
                    prefix_len: jax.Array, thought_tokens: jax.Array,
                    thought_positions: jax.Array, thought_mask: jax.Array,
                    self_cache: ThoughtCache | None = None, *, return_hidden: bool = False,
                    ) -> tuple[jax.Array, ThoughtCache | None]:
  """Thought tokens over a shared document: (fp32 logits [B, N, Tq, V], updated own cache); with
  `return_hidden` the residual stream [B, N, Tq, E] before the final norm instead of the logits
  (`registry.logits_from_hidden` of it gives them).

  Thought (b, n) sees document columns s < prefix_len[b, n] (and valid) and its own tokens: the
  Tq given ones causally (masked by thought_mask) or, with `self_cache` (B·N rows, from
  `empty_thought_cache`), the cache columns up to its own after writing the Tq new ones at
  `self_cache.index`.
  """
  model = nnx.merge(graphdef, params)
  family = _shared_prefix_family(registry.family_of_model(model))
  return family.thought_forward(model, doc_kv, prefix_len, thought_tokens, thought_positions,
                                thought_mask, self_cache, return_hidden=return_hidden)
