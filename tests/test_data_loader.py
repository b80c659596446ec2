"""The Grain data pipeline (rlp_jax/data/loader.py): windows, padded and packed rows, mixtures,
per-process shares, skipped-record counts, and an iterator state that resumes at the exact batch.

The sources are jsonl files the tests write; the tokenizer maps one character to one id, so a row
can be read back as text and every document can be found again in the rows."""
import json

import numpy as np
import pytest

from rlp_jax.config import base_config
from rlp_jax.data.loader import DataIterator, build_pipeline, windows
from rlp_jax.errors import ConfigError

SEQ_LEN = 24


class CharTokenizer:
  """One id per character (ids 5..); pad 0, bos 1, eos 2. Picklable for the worker processes."""
  vocab_size, pad_id, bos_id, eos_id, think_start_id, think_end_id = 300, 0, 1, 2, 3, 4

  def encode(self, text):
    return [5 + ord(c) % 290 for c in text]

  def encode_batch(self, texts):
    return [self.encode(t) for t in texts]

  def decode(self, ids):
    return ''.join(chr(i - 5) for i in ids if i >= 5)


def write_jsonl(path, texts):
  path.write_text(''.join(json.dumps({'text': t}) + '\n' for t in texts), encoding='utf-8')
  return str(path)


def documents(prefix, count, seed=0, longest=56):
  """`count` documents `<prefix><i>:` + up to `longest` letters (by default some are longer than
  a row)."""
  rng = np.random.default_rng(seed)
  return [f'{prefix}{i}:' + 'abcdefghij'[i % 10] * int(rng.integers(0, longest))
          for i in range(count)]


def data_config(sources, **overrides):
  config = base_config().data
  config.sources = sources
  config.seq_len = SEQ_LEN
  config.prefetch = 0
  config.tokenize_chunk = 7
  config.update(overrides)
  return config


def pipeline(config, rows=4, seed=0, process_index=0, process_count=1):
  return DataIterator(build_pipeline(config, CharTokenizer(), seed=seed,
                                     process_index=process_index, process_count=process_count,
                                     local_rows=rows))


def take(iterator, count):
  out = []
  for _ in range(count):
    batch, stats = iterator.next_batch()
    out.append((batch, stats))
  return out


def segment_ids(batch):
  """The batch's segment ids; an unpacked batch has none: one document per row, the mask."""
  return batch.get('segment_ids', batch['mask'].astype(np.int32))


def segments(batch):
  """Every (row, segment) of a batch as token lists, in order."""
  found = []
  for tokens, ids in zip(batch['tokens'], segment_ids(batch)):
    for segment in range(1, int(ids.max()) + 1):
      found.append(tokens[ids == segment].tolist())
  return found


def test_windows_cover_the_document_with_the_stride():
  ids = list(range(10))
  assert windows(ids, 4, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
  assert windows(ids, 4, 3) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
  assert windows(list(range(9)), 4, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # a 1-token tail: nothing
  assert windows(ids[:3], 4, 4) == [[0, 1, 2]]
  assert windows(ids[:1], 4, 4) == [[0]]


def test_window_stride_larger_than_the_row_is_refused(tmp_path):
  config = data_config(f"files({write_jsonl(tmp_path / 'a.jsonl', ['x y z'])})",
                       window_stride=SEQ_LEN + 1)
  with pytest.raises(ConfigError, match='data.window_stride'):
    build_pipeline(config, CharTokenizer(), seed=0, process_index=0, process_count=1,
                   local_rows=2)


@pytest.mark.parametrize('packing', [False, True])
def test_one_epoch_of_rows_holds_every_document_once_split_into_windows(tmp_path, packing):
  texts = documents('d', 40)
  # One shard read in order, no window shuffle: the first rows are exactly one epoch.
  config = data_config(f"files({write_jsonl(tmp_path / 'a.jsonl', texts)}, shuffle_window=1, "
                       'cycle_length=1)', packing=packing)
  tokenizer = CharTokenizer()
  expected = sorted(w.tolist() if hasattr(w, 'tolist') else list(w)
                    for t in texts
                    for w in windows([1] + tokenizer.encode(t) + [2], SEQ_LEN, SEQ_LEN))
  data = pipeline(config, rows=4)
  found = []
  while len(found) < len(expected):
    batch, _ = data.next_batch()
    assert batch['tokens'].shape == batch['mask'].shape == (4, SEQ_LEN)
    assert ('segment_ids' in batch) == packing
    np.testing.assert_array_equal(batch['mask'], segment_ids(batch) > 0)
    assert (batch['tokens'][~batch['mask']] == tokenizer.pad_id).all()
    for ids in segment_ids(batch):  # segments are numbered 1.. left to right, padding last
      starts = ids[np.r_[True, ids[1:] != ids[:-1]]]
      nonzero = starts[starts > 0]
      assert nonzero.tolist() == list(range(1, len(nonzero) + 1))
      assert (ids[np.argmax(ids == 0):] == 0).all() if (ids == 0).any() else True
      if not packing:
        assert len(nonzero) == 1
    found += segments(batch)
  data.close()
  # The first epoch's windows are exactly the documents' windows (first fit may hold the last
  # few windows of the epoch back in its bins, in which case the next epoch's windows fill in).
  if not packing:
    assert sorted(found[:len(expected)]) == expected
  else:
    assert len([w for w in found if w in expected]) >= len(expected) - 4 * 4


def test_packing_fills_rows_better_than_padding(tmp_path):
  texts = documents('d', 60, longest=12)  # rows of 24 tokens hold 1 to 5 of these
  path = write_jsonl(tmp_path / 'a.jsonl', texts)
  fill = {}
  for packing in (False, True):
    data = pipeline(data_config(f'files({path})', packing=packing), rows=4)
    masks = [data.next_batch()[0]['mask'] for _ in range(6)]
    data.close()
    fill[packing] = float(np.mean(masks))
  assert fill[False] < 0.6 and fill[True] > 0.85, fill


def test_mixture_draws_by_weight_and_reports_the_proportions(tmp_path):
  a = write_jsonl(tmp_path / 'a.jsonl', documents('a', 30, seed=1))
  b = write_jsonl(tmp_path / 'b.jsonl', documents('b', 30, seed=2))
  data = pipeline(data_config(f'files({a})@3; files({b})@1'), rows=4)
  drawn = {'a': 0, 'b': 0}
  for batch, stats in take(data, 40):
    for row in batch['tokens']:
      if row[0] == 1:  # a row that starts a document: its first letter names the source
        drawn[CharTokenizer().decode(row[1:2])] += 1
  data.close()
  share = stats['data/proportion/files0']
  assert abs(share - 0.75) < 0.03, stats
  assert abs(stats['data/proportion/files1'] - 0.25) < 0.03, stats
  assert abs(drawn['a'] / (drawn['a'] + drawn['b']) - 0.75) < 0.05, drawn


def test_processes_read_disjoint_shares_that_cover_the_data(tmp_path):
  texts = [documents(f's{i}-', 6, seed=i, longest=12) for i in range(4)]  # one row each
  for i, shard in enumerate(texts):
    write_jsonl(tmp_path / f'{i}.jsonl', shard)
  # Shards read one after the other, no window shuffle: the first 12 rows are one epoch.
  config = data_config(f"files({tmp_path}/*.jsonl, shuffle_window=1, cycle_length=1)")
  for process in range(2):
    data = pipeline(config, rows=2, process_index=process, process_count=2)
    seen = set()
    for batch, _ in take(data, 6):  # 12 rows: one epoch of this process's 12 documents
      seen |= {CharTokenizer().decode(row[1:row.tolist().index(2)]) for row in batch['tokens']}
    data.close()
    assert seen == set(texts[process] + texts[process + 2])  # its shards, sorted [p::2]


def test_skipped_records_are_counted_in_the_batch_stats(tmp_path):
  path = tmp_path / 'bad.jsonl'
  path.write_text('{"text": "good one"}\nnot json\n{"other": 1}\n{"text": "good two"}\n'
                  '{"text": ""}\n{"text": "good three"}\n', encoding='utf-8')
  # Read in order (no window shuffle): the first 3 rows are the first epoch's 3 good records,
  # which carry the 3 bad ones skipped before them.
  data = pipeline(data_config(f'files({path}, shuffle_window=1, cycle_length=1)',
                              on_bad_record='skip'), rows=3)
  _, stats = data.next_batch()
  assert stats['data/bad_records'] == 3
  _, stats = data.next_batch()
  data.close()
  assert stats['data/bad_records'] == 6  # a running total
  with pytest.raises(Exception, match=r'bad.jsonl:2'):
    strict = pipeline(data_config(f'files({path})'), rows=3)
    try:
      strict.next_batch()
    finally:
      strict.close()


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for (a, _), (b, _) in zip(first, second):
    assert sorted(a) == sorted(b)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize('workers', [0, 2])
def test_a_restored_state_continues_at_the_exact_batch(tmp_path, workers):
  """Mixture, windows and packing, in this process or in 2 worker processes: the state after k
  batches, set on a new iterator, gives the batches an uninterrupted iterator gives next."""
  a = write_jsonl(tmp_path / 'a.jsonl', documents('a', 40, seed=1))
  b = write_jsonl(tmp_path / 'b.jsonl', documents('b', 40, seed=2))
  config = data_config(f'files({a})@2; files({b})@1', packing=True, workers=workers,
                       prefetch=2)
  uninterrupted = pipeline(config)
  take(uninterrupted, 3)
  expected = take(uninterrupted, 4)
  uninterrupted.close()

  interrupted = pipeline(config)
  take(interrupted, 3)
  state = json.loads(json.dumps(interrupted.get_state()))  # what the checkpoint stores
  interrupted.close()
  resumed = pipeline(config)
  resumed.set_state(state)
  assert_same_batches(take(resumed, 4), expected)
  resumed.close()


def test_the_state_names_its_pipeline(tmp_path):
  path = write_jsonl(tmp_path / 'a.jsonl', documents('a', 10))
  key = pipeline(data_config(f'files({path})'), rows=2).pipeline.state_key
  assert key == pipeline(data_config(f'files({path})'), rows=2).pipeline.state_key
  assert key != pipeline(data_config(f'files({path})', packing=True), rows=2).pipeline.state_key
  assert key != pipeline(data_config(f'files({path})'), rows=2,
                         process_count=2).pipeline.state_key


def test_embedded_source_with_the_legacy_keys(shared_data_dir):
  config = data_config('')
  config.data_dir = shared_data_dir
  config.num_documents = 200
  data = pipeline(config, rows=3)
  batch, stats = data.next_batch()
  data.close()
  assert batch['tokens'].shape == (3, SEQ_LEN) and batch['mask'][:, 0].all()
  assert 'data_wait_s' in stats and stats['data/bad_records'] == 0


def test_restore_data_state_names_the_process_counts(tmp_path):
  from rlp_jax.train.checkpointing import DATA_ITEM, Checkpointer
  checkpointer = Checkpointer(str(tmp_path / 'checkpoints'), every=1, keep=2)
  directory = tmp_path / 'checkpoints' / '4' / DATA_ITEM
  directory.mkdir(parents=True)
  (directory / 'process_0-of-2.json').write_text('{}')
  (directory / 'process_1-of-2.json').write_text('{}')
  state, reason = checkpointer.restore_data_state(4)
  assert state is None and 'state of 2 processes and this job has 1' in reason, reason
  state, reason = checkpointer.restore_data_state(5)
  assert state is None and 'no data loader state' in reason
  (directory / 'process_0-of-1.json').write_text('{"key": "k"}')
  assert checkpointer.restore_data_state(4) == ({'key': 'k'}, '')
  checkpointer.close()
