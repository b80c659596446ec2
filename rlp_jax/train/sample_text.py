"""The thought samples of thoughts.jsonl (train/thought_samples.py) as text: a few lines per
sample, for TensorBoard's text tab and for `python -m rlp_jax.inspect`. No JAX: the command line
that prints them starts at once."""
from __future__ import annotations

import json
from typing import Any, Mapping, Sequence


def _one_line(text: str) -> str:
  return text.replace('\n', '\\n')


def format_sample(row: Mapping[str, Any]) -> list[str]:
  """A thoughts.jsonl row as five lines (the same in TensorBoard and in the command line):
  which sample, the numbers, the context tail (`…` when cut), the thought, the real next token."""
  ended = 'ended' if row['ended'] else 'hit the limit (`</think>` forced)'
  dots = '…' if row['context_tokens'] > row['context_tail_tokens'] else ''
  return [
      f"step {row['step']} · document {row['row']}, position {row['position']}, "
      f"thought {row['thought_index']} · {row['thought_tokens']} tokens, {ended}",
      f"  reward {row['reward']:+.4f} (S_pred {row['s_pred']:.4f}, S_ema {row['s_ema']:.4f})"
      f" · advantage {row['advantage']:+.4f}",
      f"  context  {dots}{_one_line(row['context_tail'])}",
      f"  thought  <think>{_one_line(row['thought'])}",
      f"  next     {json.dumps(row['next_token'], ensure_ascii=False)}",
  ]


def samples_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  """The rows of one step for TensorBoard's text tab (markdown): each sample a code block, so
  the text shows as written."""
  return '\n\n'.join('```\n' + '\n'.join(format_sample(row)) + '\n```' for row in rows)
