"""Thought samples: every `train.sample_every` batches (and at the last batch of the run) a few
rows of the rollout as text — the tail of the context, the thought, the real next token, S_pred,
S_ema, reward and advantage — which the MetricsWriter appends to thoughts.jsonl and TensorBoard's
text tab (docs/inspect.md; `python -m rlp_jax.inspect` prints them).

Which rows: `train.sample_count` scored positions, each the first scored position (k = 0, 1, …,
the first not skipped) of another document of the batch, documents in batch order; of each, the
first `train.sample_thoughts` thoughts of its group of G (rollout row r = (b·K + k)·G + g), so the
rows of one position show the contrast the group advantage learns from. Fewer documents with a
scored position give fewer samples.

Only process 0 calls this. It reads the picked rows from the shards of the rollout arrays on its
own devices (`addressable_shards`): no collective, nothing from other processes, and only those
rows leave the devices. In a multi-process run the documents shown are the first ones whose rows
process 0's devices hold (a single process holds every row).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlp_jax.rollout.rlp_rollout import Rollout

# The fields of a thoughts.jsonl row, in order (docs/inspect.md).
SAMPLE_FIELDS = ('step', 'row', 'position', 'thought_index', 'rollout_row', 'context_tokens',
                 'context_tail_tokens', 'context_tail', 'thought', 'thought_tokens', 'ended',
                 'next_token', 's_pred', 's_ema', 'reward', 'advantage')


def is_sample_step(step: int, every: int, num_steps: int) -> bool:
  """Whether loop step `step` (counted from 1) writes samples: every `every` and the run's last
  (`train.num_steps`, the same whether or not the run was interrupted and resumed)."""
  return every > 0 and (step % every == 0 or step == num_steps)


def pick_rows(valid: Mapping[int, bool], num_rows: int, positions_per_document: int,
              group_size: int, positions: int, thoughts: int) -> list[int]:
  """Rollout rows to show: for documents b = 0, 1, … (until `positions` are found) the group of
  the first position k whose first `thoughts` rows are in `valid` and valid, those rows.

  `valid` maps the rows this process holds to whether their position was scored."""
  thoughts = min(thoughts, group_size)
  picked = []
  found = 0
  for document in range(num_rows // (positions_per_document * group_size)):
    if found == positions:
      break
    for k in range(positions_per_document):
      first = (document * positions_per_document + k) * group_size
      group = list(range(first, first + thoughts))
      if all(valid.get(row, False) for row in group):
        picked.extend(group)
        found += 1
        break
  return picked


@dataclasses.dataclass(frozen=True)
class ThoughtSampler:
  """Reads the sample rows of a rollout (`rows`); built from the config by `thought_sampler`."""
  every: int
  positions: int
  thoughts: int
  context_tokens: int
  positions_per_document: int  # K
  group_size: int  # G
  tokenizer: Any

  def due(self, step: int, num_steps: int) -> bool:
    return is_sample_step(step, self.every, num_steps)

  def rows(self, rollout: Rollout, batch: Mapping[str, Any], step: int) -> list[dict[str, Any]]:
    """The thoughts.jsonl rows of loop step `step` from `rollout` of `batch` (its documents
    give the context: the naive strategy's prompts hold it, the shared one's do not)."""
    sequences = rollout.sequences
    arrays = {'tokens': sequences.tokens, 'rope_position': sequences.positions,
              'thought_mask': rollout.thought_mask, 'closed_length': sequences.closed_length,
              'position': sequences.scored_position, 's_pred': rollout.s_pred,
              's_ema': rollout.s_ema, 'reward': rollout.reward, 'advantage': rollout.advantages}
    per_document = self.positions_per_document * self.group_size
    held = _held_values(rollout.row_valid)
    valid = {row: bool(value) for row, value in held.items()
             if all(_holds(array, row) for array in arrays.values())
             and _holds(batch['tokens'], row // per_document)}
    num_rows = rollout.advantages.shape[0]
    picked = pick_rows(valid, num_rows, self.positions_per_document, self.group_size,
                       self.positions, self.thoughts)
    if not picked:
      return []
    values = {name: _fetch_rows(array, picked) for name, array in arrays.items()}
    documents = sorted({row // per_document for row in picked})
    document_tokens = dict(zip(documents, _fetch_rows(batch['tokens'], documents)))
    prompt = sequences.prompt_length  # column prompt − 1 holds `<think>`
    decode = self.tokenizer.decode
    rows = []
    for i, rollout_row in enumerate(picked):
      tokens = values['tokens'][i]
      t = int(values['position'][i])
      start = t - int(values['rope_position'][i][prompt - 1])  # `<think>` sits at t − start
      context = document_tokens[rollout_row // per_document][start:t]  # x_<t of t's document
      tail = context[-self.context_tokens:]
      length = int(values['thought_mask'][i].sum())  # sampled tokens, `</think>` included
      closed = int(values['closed_length'][i])  # + 1 when `</think>` was forced
      rows.append({
          'step': int(step),
          'row': rollout_row // per_document,
          'position': t,
          'thought_index': rollout_row % self.group_size,
          'rollout_row': rollout_row,
          'context_tokens': int(context.size),
          'context_tail_tokens': int(tail.size),
          'context_tail': decode(tail.tolist()),
          'thought': decode(tokens[prompt:prompt + length].tolist()),
          'thought_tokens': length,
          'ended': closed == length,
          'next_token': decode([int(tokens[prompt + closed])]),
          's_pred': float(values['s_pred'][i]),
          's_ema': float(values['s_ema'][i]),
          'reward': float(values['reward'][i]),
          'advantage': float(values['advantage'][i]),
      })
    return rows


def thought_sampler(train: ml_collections.ConfigDict, rlp: ml_collections.ConfigDict,
                    tokenizer: Any) -> ThoughtSampler | None:
  """The sampler of `train.sample_*` (None when `train.sample_every` is 0 or RLP is off)."""
  if not (rlp.enabled and train.sample_every):
    return None
  return ThoughtSampler(every=train.sample_every, positions=train.sample_count,
                        thoughts=train.sample_thoughts,
                        context_tokens=train.sample_context_tokens,
                        positions_per_document=rlp.positions_per_document,
                        group_size=rlp.thoughts_per_position, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------
# Rows of sharded arrays, from this process's devices only.

_take_rows = jax.jit(lambda array, rows: jnp.take(array, rows, axis=0))


def _row_shards(array: Any) -> Iterator[tuple[int, int, Any]]:
  """(first row, end row, data) of each shard of `array` on this process's devices (a numpy
  array: one shard)."""
  if not isinstance(array, jax.Array):
    yield 0, array.shape[0], np.asarray(array)
    return
  for shard in array.addressable_shards:
    start, stop, _ = shard.index[0].indices(array.shape[0])
    yield start, stop, shard.data


def _holds(array: Any, row: int) -> bool:
  return any(start <= row < stop for start, stop, _ in _row_shards(array))


def _held_values(vector: Any) -> dict[int, Any]:
  """Row → value of a [R] array, for the rows this process holds."""
  values = {}
  for start, _, data in _row_shards(vector):
    for offset, value in enumerate(np.asarray(data)):
      values.setdefault(start + offset, value)
  return values


def _fetch_rows(array: Any, rows: Sequence[int]) -> np.ndarray:
  """`array[rows]` on the host, each row taken on a device of this process that holds it."""
  taken: list[Any] = [None] * len(rows)
  for start, stop, data in _row_shards(array):
    wanted = [i for i, row in enumerate(rows) if taken[i] is None and start <= row < stop]
    if wanted:
      offsets = np.asarray([rows[i] - start for i in wanted], np.int32)
      for i, value in zip(wanted, np.asarray(_take_rows(data, offsets))):
        taken[i] = value
  return np.stack(taken)
