"""Batched, jitted answer generation for the evaluator: direct answers and think-then-answer.

Prompts of different lengths are left-padded to one width (RoPE positions count from each
prompt's first token), so every row decodes at the same cache column; generation is the rollout
sampler (`rollout.thought_sampler.sample_thoughts`: one prefill, then cached decode steps in a
`lax.while_loop`), not a Python loop per token. Rows go through in chunks of a fixed size (the last
chunk padded), so each phase compiles once.

  direct   prompt ─▶ answer (greedy; `<think>` banned)
  think    prompt <think> ─▶ thought (greedy or sampled, ends at `</think>` or is closed after
           T tokens) ─▶ prompt <think> c </think> ─▶ answer (greedy; `<think>` banned)

An answer ends at the first token whose text holds a newline, at eos, or after
`max_answer_tokens`; `answers.extract_final_answer` then reads the answer off the text.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.rollout.thought_sampler import Prompts, sample_thoughts


@dataclasses.dataclass(frozen=True)
class PackedPrompts:
  """Left-padded prompts: tokens/positions int32 [R, P], mask bool [R, P], last int32 [R]
  (the RoPE position of each prompt's last token)."""
  tokens: np.ndarray
  positions: np.ndarray
  mask: np.ndarray
  last: np.ndarray


def pack_prompts(prompts: Sequence[Sequence[int]], width: int, pad_id: int) -> PackedPrompts:
  """Left-pads token lists to `width`; longer prompts keep their last `width` tokens."""
  rows = len(prompts)
  tokens = np.full((rows, width), pad_id, np.int32)
  positions = np.zeros((rows, width), np.int32)
  mask = np.zeros((rows, width), np.bool_)
  last = np.zeros((rows,), np.int32)
  for row, ids in enumerate(prompts):
    ids = list(ids)[-width:]
    if not ids:
      raise ValueError(f'prompt {row} is empty')
    n = len(ids)
    tokens[row, width - n:] = ids
    positions[row, width - n:] = np.arange(n)
    mask[row, width - n:] = True
    last[row] = n - 1
  return PackedPrompts(tokens, positions, mask, last)


def newline_stop_ids(tokenizer: Any) -> np.ndarray:
  """eos and every id whose text holds a newline: where a generated answer ends."""
  ids = [tokenizer.eos_id]
  ids += [i for i in range(tokenizer.vocab_size) if '\n' in tokenizer.decode([i])]
  return np.unique(np.asarray(ids, np.int32))


class Generator:
  """Jitted generation over fixed-size row chunks for one model (see the module docstring)."""

  def __init__(self, graphdef: Any, model_config: Any, tokenizer: Any, rows_per_call: int,
               prompt_width: int, max_thought_tokens: int, max_answer_tokens: int):
    self.tokenizer = tokenizer
    self.rows_per_call = rows_per_call
    self.prompt_width = prompt_width
    self.max_thought_tokens = max_thought_tokens
    self.max_answer_tokens = max_answer_tokens
    answer_stops = jnp.asarray(newline_stop_ids(tokenizer))
    no_think = jnp.asarray([tokenizer.think_start_id], jnp.int32)
    think_end = tokenizer.think_end_id

    def sample(params, packed, key, limit, temperature, stops, banned):
      prompts = Prompts(tokens=packed['tokens'], positions=packed['positions'],
                        mask=packed['mask'], scored_position=packed['last'],
                        next_token=jnp.zeros_like(packed['last']))
      out = sample_thoughts(graphdef, params, model_config, prompts, key, limit, temperature,
                            stops, tokenizer.pad_id, banned)
      return out.tokens, out.length, out.ended

    # temperature is static: 0 (greedy) and the training temperature compile separately.
    self._thought = jax.jit(
        lambda params, packed, key, temperature: sample(
            params, packed, key, max_thought_tokens, temperature, think_end, None),
        static_argnums=3)
    self._answer = jax.jit(lambda params, packed, key: sample(
        params, packed, key, max_answer_tokens, 0.0, answer_stops, no_think))

  def _chunks(self, packed: PackedPrompts, run: Callable, on_chunk: Callable[[], None] | None):
    """Runs `run(chunk dict, chunk number) -> arrays` over fixed-size chunks; concatenates the
    real rows."""
    rows, size = packed.tokens.shape[0], self.rows_per_call
    outputs = []
    for number, start in enumerate(range(0, rows, size)):
      chunk = {}
      for name in ('tokens', 'positions', 'mask', 'last'):
        part = getattr(packed, name)[start:start + size]
        pad = size - part.shape[0]
        if pad:  # filler rows: one real token so every row is a valid prompt
          filler = np.repeat(part[-1:], pad, axis=0)
          part = np.concatenate([part, filler], axis=0)
        chunk[name] = part
      outputs.append([np.asarray(x)[:min(size, rows - start)] for x in run(chunk, number)])
      if on_chunk is not None:
        on_chunk()
    return [np.concatenate(parts, axis=0) for parts in zip(*outputs)]

  def answers(self, params: Any, prompts: Sequence[Sequence[int]],
              on_chunk: Callable[[], None] | None = None) -> list[str]:
    """Greedy answer text after each prompt (no thought)."""
    packed = pack_prompts(prompts, self.prompt_width + self.max_thought_tokens + 2,
                          self.tokenizer.pad_id)
    key = jax.random.key(0)  # greedy: the key is not used
    tokens, lengths, _ = self._chunks(packed, lambda c, _: self._answer(params, c, key),
                                      on_chunk)
    return [self.tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths)]

  def thoughts(self, params: Any, prompts: Sequence[Sequence[int]], key: jax.Array,
               temperature: float, on_chunk: Callable[[], None] | None = None,
               ) -> list[list[int]]:
    """A thought after each `prompt <think>`: its token ids, `</think>` excluded."""
    think_start, think_end = self.tokenizer.think_start_id, self.tokenizer.think_end_id
    packed = pack_prompts([list(p) + [think_start] for p in prompts], self.prompt_width + 1,
                          self.tokenizer.pad_id)
    tokens, lengths, _ = self._chunks(
        packed, lambda c, number: self._thought(params, c, jax.random.fold_in(key, number),
                                                float(temperature)), on_chunk)
    return [[t for t in row[:n].tolist() if t != think_end] for row, n in zip(tokens, lengths)]

  def think_then_answer(self, params: Any, prompts: Sequence[Sequence[int]], key: jax.Array,
                        temperature: float, on_chunk: Callable[[], None] | None = None,
                        ) -> tuple[list[str], list[str]]:
    """(thought texts, answer texts): a thought per prompt, closed, then the greedy answer."""
    thoughts = self.thoughts(params, prompts, key, temperature, on_chunk)
    tok = self.tokenizer
    closed = [list(p) + [tok.think_start_id] + c + [tok.think_end_id]
              for p, c in zip(prompts, thoughts)]
    return [tok.decode(c) for c in thoughts], self.answers(params, closed, on_chunk)
