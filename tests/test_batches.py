"""DocumentBatches: layout, determinism, order independence, epochs."""

import numpy as np
import pytest

from rlp_jax.data.batches import DocumentBatches
from rlp_jax.data.tokenizer import Tokenizer
from rlp_jax.errors import ConfigError


class CharTokenizer:
  """One id per character; counts encode calls."""
  vocab_size, pad_id, bos_id, eos_id, think_start_id, think_end_id = 300, 0, 1, 2, 3, 4

  def __init__(self):
    self.calls = 0

  def encode(self, text):
    self.calls += 1
    return [5 + ord(c) % 290 for c in text]

  def decode(self, ids):
    return ''.join(chr(i - 5) for i in ids if i >= 5)


# Document i starts with its index, so a row tells which document it holds; lengths vary from
# short (padded) to longer than SEQ_LEN (truncated).
DOCS = [f'{i:02d}:' + 'x' * (i * 3) for i in range(10)]
SEQ_LEN, BATCH = 16, 3


def make(seed=0, docs=DOCS, batch_size=BATCH, tokenizer=None):
  return DocumentBatches(docs, tokenizer or CharTokenizer(), batch_size, SEQ_LEN, seed)


def row_document(tokens_row) -> int:
  return int(CharTokenizer().decode(tokens_row[1:3]))


def test_tokenizer_protocol():
  assert isinstance(CharTokenizer(), Tokenizer)


def test_shapes_dtypes_and_layout():
  batches = make()
  tok = CharTokenizer()
  assert batches.num_documents == len(DOCS)
  for position in range(4):
    batch = batches.batch(position)
    assert batch['tokens'].shape == batch['mask'].shape == (BATCH, SEQ_LEN)
    assert batch['tokens'].dtype == np.int32 and batch['mask'].dtype == np.bool_
    for row, index in enumerate(batches.document_indices(position)):
      expected = ([tok.bos_id] + tok.encode(DOCS[index]) + [tok.eos_id])[:SEQ_LEN]
      n = len(expected)
      assert batch['tokens'][row, :n].tolist() == expected
      assert (batch['tokens'][row, n:] == tok.pad_id).all()
      assert batch['mask'][row].tolist() == [True] * n + [False] * (SEQ_LEN - n)
      assert row_document(batch['tokens'][row]) == index


def test_short_and_truncated_rows_occur():
  rows = np.concatenate([make().batch(p)['mask'] for p in range(4)])
  lengths = rows.sum(axis=1)
  assert lengths.min() < SEQ_LEN and lengths.max() == SEQ_LEN
  tokens = np.concatenate([make().batch(p)['tokens'] for p in range(4)])
  full = tokens[lengths == SEQ_LEN]
  assert (full[:, -1] != CharTokenizer.eos_id).any()  # truncated rows lose their eos


def test_deterministic_across_instances_and_seeds():
  a, b = make(seed=5), make(seed=5)
  for position in (0, 1, 7, 40):
    for key in ('tokens', 'mask'):
      np.testing.assert_array_equal(a.batch(position)[key], b.batch(position)[key])
  orders = [np.concatenate([make(seed=s).document_indices(p) for p in range(3)]) for s in (0, 1)]
  assert not np.array_equal(*orders)


def test_batch_does_not_depend_on_call_order():
  used = make(seed=3)
  used.batch(5)
  used.batch(0)
  late = used.batch(2)
  fresh = make(seed=3).batch(2)
  np.testing.assert_array_equal(late['tokens'], fresh['tokens'])
  np.testing.assert_array_equal(late['mask'], fresh['mask'])


def test_each_epoch_covers_every_document_once():
  batches = make(seed=9)
  n = len(DOCS)
  # 10 batches of 3 = 30 stream items = 3 epochs; batch 3 straddles epochs 0 and 1.
  stream = np.concatenate([
      [row_document(r) for r in batches.batch(p)['tokens']] for p in range(10)])
  np.testing.assert_array_equal(stream, np.concatenate(
      [batches.document_indices(p) for p in range(10)]))
  for epoch in range(3):
    assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
    np.testing.assert_array_equal(stream[epoch * n:(epoch + 1) * n],
                                  batches.epoch_permutation(epoch))
  assert not np.array_equal(stream[:n], stream[n:2 * n])


def test_tokenizations_are_cached():
  tok = CharTokenizer()
  batches = make(tokenizer=tok)
  for position in range(20):  # 6 epochs
    batches.batch(position)
  assert tok.calls == len(DOCS)


def test_empty_corpus_and_bad_sizes_raise_config_error():
  with pytest.raises(ConfigError, match='data.corpus'):
    make(docs=[])
  with pytest.raises(ConfigError, match='batch'):
    make(batch_size=0)


def test_per_process_rows_together_equal_the_whole_batch():
  """Each process builds only its rows; the pieces in row order are the single-process batch."""
  whole = make(batch_size=4)
  for position in range(7):  # batches straddle epochs
    expected = whole.batch(position)
    for process_count in (1, 2, 4):
      per_process = 4 // process_count
      pieces = [make(batch_size=4).batch(position, rows=range(i * per_process,
                                                              (i + 1) * per_process))
                for i in range(process_count)]
      for name in ('tokens', 'mask'):
        assert np.array_equal(np.concatenate([p[name] for p in pieces]), expected[name])
  scattered = make(batch_size=4).batch(3, rows=[3, 0])  # any order, any subset
  assert np.array_equal(scattered['tokens'], whole.batch(3)['tokens'][[3, 0]])


def test_a_process_tokenizes_only_its_own_rows():
  tok = CharTokenizer()
  batches = make(batch_size=4, tokenizer=tok)
  batches.batch(0, rows=[1, 2])
  assert tok.calls == 2
  with pytest.raises(ValueError, match='rows'):
    batches.batch(0, rows=[4])
