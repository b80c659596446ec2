"""The special tokens RLP relies on, declared once: their text, and the ids a tokenizer gives them.

Both tokenizer kinds (tokenizer.py, hf_tokenizer.py) must know `<think>` and `</think>` as single
tokens; the rollout, the updates and the evaluator receive the ids as one `SpecialTokens` record
built from the tokenizer by `special_tokens`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rlp_jax.errors import ConfigError

THINK_START = '<think>'
THINK_END = '</think>'
NEWLINE = '\n'


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  think_start_id: int
  think_end_id: int
  pad_id: int
  # The token ids of `rlp.position_marker` ('after_marker' rule: score the token after them).
  marker_ids: tuple[int, ...] = ()


def marker_token_ids(tokenizer: Any, position_marker: str) -> tuple[int, ...]:
  """The token ids of `rlp.position_marker` as they appear inside a document ('' → ())."""
  if not position_marker:
    return ()
  # Encoded after a newline, as the marker follows one in a document (sentencepiece would
  # otherwise treat it as the start of a text), then cut off what the newline encodes to.
  newline = tokenizer.encode(NEWLINE)
  ids = tokenizer.encode(NEWLINE + position_marker)
  if ids[:len(newline)] == newline:
    ids = ids[len(newline):]
  if not ids:
    raise ConfigError(f'config key `rlp.position_marker` ({position_marker!r}) encodes to no '
                      'tokens')
  return tuple(int(i) for i in ids)


def special_tokens(tokenizer: Any, position_marker: str = '') -> SpecialTokens:
  """The tokenizer's think/pad ids (and the marker's ids, when a marker is configured)."""
  return SpecialTokens(think_start_id=tokenizer.think_start_id,
                       think_end_id=tokenizer.think_end_id, pad_id=tokenizer.pad_id,
                       marker_ids=marker_token_ids(tokenizer, position_marker))
