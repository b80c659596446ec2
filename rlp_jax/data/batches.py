"""Deterministic document batches: batch `p` of a run depends only on (documents, seed, p).

The document stream is the concatenation of epochs, each a seeded permutation of the documents;
batch p holds stream items [p*B, (p+1)*B) (a batch may straddle two epochs). Nothing depends on
which batches were asked for before, so a resumed run only needs its step's position.

On several hosts each process asks only for its own rows (`batch(p, rows=...)`, the rows its
devices hold; see `parallel.batch_sharding.process_rows`) and tokenizes only those documents; the
pieces of all processes, put in row order, are exactly the single-process `batch(p)`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from rlp_jax.data.tokenizer import Tokenizer
from rlp_jax.errors import ConfigError


class DocumentBatches:
  """Batches of one document per row: [bos] + tokens + [eos], truncated, right-padded."""

  def __init__(self, documents: Sequence[str], tokenizer: Tokenizer, batch_size: int,
               seq_len: int, seed: int, cache_size: int = 100_000):
    if len(documents) == 0:
      name = getattr(documents, 'description', 'the configured corpus')
      raise ConfigError(f'data.corpus: {name} has no documents')
    if batch_size < 1:
      raise ConfigError(f'batch size must be >= 1, got {batch_size}')
    if seq_len < 2:
      raise ConfigError(f'sequence length must be >= 2, got {seq_len}')
    self._documents = documents
    self._tokenizer = tokenizer
    self.batch_size = batch_size
    self.seq_len = seq_len
    self.seed = seed
    self._cache_size = cache_size
    self._rows: OrderedDict[int, np.ndarray] = OrderedDict()
    self._permutations: OrderedDict[int, np.ndarray] = OrderedDict()

  @property
  def num_documents(self) -> int:
    return len(self._documents)

  def epoch_permutation(self, epoch: int) -> np.ndarray:
    """The document order of `epoch`."""
    if epoch not in self._permutations:
      rng = np.random.default_rng([self.seed, epoch])
      self._permutations[epoch] = rng.permutation(self.num_documents)
      if len(self._permutations) > 4:
        self._permutations.popitem(last=False)
    return self._permutations[epoch]

  def document_indices(self, position: int) -> np.ndarray:
    """Indices of the documents in batch `position` (one per row)."""
    if position < 0:
      raise ValueError(f'batch position must be >= 0, got {position}')
    n = self.num_documents
    stream = np.arange(position * self.batch_size, (position + 1) * self.batch_size)
    return np.array([self.epoch_permutation(int(s) // n)[int(s) % n] for s in stream])

  def document_tokens(self, index: int) -> np.ndarray:
    """[bos] + encode(document) + [eos] of document `index`, cut to seq_len (cached)."""
    row = self._rows.get(index)
    if row is None:
      row = document_row(self._tokenizer, self._documents[index], self.seq_len)
      self._rows[index] = row
      if len(self._rows) > self._cache_size:
        self._rows.popitem(last=False)
    else:
      self._rows.move_to_end(index)
    return row

  def batch(self, position: int, rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """tokens int32[n, L] (pad_id after eos) and mask bool[n, L] (True on bos..eos).

    `rows` (indices into the global batch, default all B) picks the rows to build: only their
    documents are read and tokenized.
    """
    indices = self.document_indices(position)
    if rows is not None:
      rows = np.asarray(rows, dtype=np.int64)
      if rows.ndim != 1 or np.any((rows < 0) | (rows >= self.batch_size)):
        raise ValueError(f'rows must index the batch of {self.batch_size}, got {rows.tolist()}')
      indices = indices[rows]
    return padded_rows([self.document_tokens(int(index)) for index in indices], self.seq_len,
                       self._tokenizer.pad_id)


def document_row(tokenizer: Tokenizer, text: str, seq_len: int) -> np.ndarray:
  """[bos] + encode(text) + [eos], cut to `seq_len`: one document as a training row holds it."""
  ids = [tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.eos_id]
  return np.asarray(ids[:seq_len], dtype=np.int32)


def padded_rows(rows: Sequence[np.ndarray], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
  """tokens int32[n, seq_len] (`pad_id` after each row) and mask bool[n, seq_len]."""
  tokens = np.full((len(rows), seq_len), pad_id, dtype=np.int32)
  mask = np.zeros((len(rows), seq_len), dtype=np.bool_)
  for i, ids in enumerate(rows):
    tokens[i, :len(ids)] = ids
    mask[i, :len(ids)] = True
  return {'tokens': tokens, 'mask': mask}
