"""The record sources of the Grain data loader: `data.sources` parsing (source_spec.py), the shard
readers (record_readers.py) and one source → this process's endless records (source_datasets.py).

All data is written by the tests into tmp_path. Most pipelines here use `cycle_length=1,
shuffle_window=1`, under which a file source streams its shards one after the other, so the first
N elements of a process are exactly its first epoch and the tests can name them."""
from __future__ import annotations

import copy
import gzip
import json
import os
import pickle
import re

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
import zstandard

from rlp_jax.config import base_config
from rlp_jax.data import record_readers, source_datasets
from rlp_jax.data.corpora import load_documents
from rlp_jax.data.source_spec import (SOURCE_KINDS, SourceSpec, configured_sources,
                                      legacy_sources, parse_sources)
from rlp_jax.errors import ConfigError, DataError

from tests.local_gcs import make_bucket, record_reads, use_local_gcs

SEQUENTIAL = 'cycle_length=1, shuffle_window=1'


# ---------------------------------------------------------------------------------------------
# Writing test data and reading sources


def compress(data: bytes, suffix: str) -> bytes:
  if suffix.endswith('.gz'):
    return gzip.compress(data)
  if suffix.endswith('.zst'):
    return zstandard.ZstdCompressor().compress(data)
  return data


def write_jsonl(path, docs, field='text') -> list[str]:
  lines = [json.dumps({field: doc, 'id': i}) for i, doc in enumerate(docs)]
  with open(path, 'wb') as f:
    f.write(compress(('\n'.join(lines) + '\n').encode(), str(path)))
  return list(docs)


def write_lines(path, lines: list[bytes]) -> None:
  with open(path, 'wb') as f:
    f.write(compress(b'\n'.join(lines) + b'\n', str(path)))


def write_parquet(path, docs, field='text', row_group_size=3) -> list[str]:
  table = pa.table({'id': list(range(len(docs))), field: list(docs)})
  pq.write_table(table, str(path), row_group_size=row_group_size)
  return list(docs)


def write_shard(path, docs) -> list[str]:
  """`docs` in the format of `path`'s suffix (a .txt file holds the first one only)."""
  path = str(path)
  if '.txt' in path:
    with open(path, 'wb') as f:
      f.write(compress(docs[0].encode(), path))
    return [docs[0]]
  if path.endswith('.parquet'):
    return write_parquet(path, docs)
  return write_jsonl(path, docs)


def spec_of(text: str) -> SourceSpec:
  (spec,) = parse_sources(text)
  return spec


def take(dataset, n: int) -> list[dict]:
  iterator = iter(dataset)
  try:
    return [next(iterator) for _ in range(n)]
  finally:
    iterator.close()


def texts(elements) -> list[str]:
  return [e['text'] for e in elements]


def records(text: str, n: int, *, seed=0, process_index=0, process_count=1, policy='error',
            data_config=None) -> list[dict]:
  dataset = source_datasets.source_dataset(
      spec_of(text), data_config, seed=seed, process_index=process_index,
      process_count=process_count, on_bad_record=policy)
  return take(dataset, n)


def one_line_data_error(call) -> str:
  with pytest.raises(DataError) as info:
    call()
  message = str(info.value)
  assert '\n' not in message and message.startswith('data.sources'), message
  return message


# ---------------------------------------------------------------------------------------------
# data.sources


def test_parse_the_documented_example():
  specs = parse_sources('embedded@0.5; files(gs://b/web/*.jsonl.zst, field=content)@0.3; '
                        'tfds(my_corpus, split=train)@0.2')
  assert [s.kind for s in specs] == ['embedded', 'files', 'tfds']
  assert [s.name for s in specs] == ['embedded', 'files0', 'tfds:my_corpus']
  assert [s.weight for s in specs] == [0.5, 0.3, 0.2]
  assert specs[1].target == 'gs://b/web/*.jsonl.zst'
  assert specs[1].options == (('field', 'content'),)
  assert specs[1].option('field') == 'content' and specs[1].int_option('shuffle_window') > 1
  assert specs[2].option('split') == 'train' and specs[2].option('field') == 'text'
  assert SOURCE_KINDS == ('embedded', 'files', 'tfds')


def test_parse_paths_weights_and_names():
  specs = parse_sources('files(a/*.txt, gs://b/lang=en/*.parquet); files(c.jsonl)@2; embedded; '
                        'embedded@3;;tfds(c/d:1.0.0, data_dir=/x)')
  assert specs[0].target == 'a/*.txt,gs://b/lang=en/*.parquet'  # `=` inside a path stays a path
  assert specs[0].weight == 1.0 and specs[1].weight == 2.0
  assert [s.name for s in specs] == ['files0', 'files1', 'embedded', 'embedded_2', 'tfds:c/d:1.0.0']
  assert parse_sources(str(specs[0])) == [specs[0]]  # str() writes it back


@pytest.mark.parametrize('text', [
    '', '  ;  ', 'web(x)', 'files(a.txt)@x', 'files(a.txt)@0', 'files(a.txt)@-1',
    'files(a.txt)@nan', 'files(a.txt, fild=x)', 'files()', 'files', 'embedded(x)', 'tfds()',
    'tfds(a, b)', 'files(a.txt, shuffle_window=0)', 'files(a.txt, field=)', 'files(a.txt',
    'files(field=x, a.txt)', 'files(a.txt, field=a, field=b)', 'files(a.txt,,b.txt)'])
def test_parse_errors_are_one_line_config_errors(text):
  with pytest.raises(ConfigError) as info:
    parse_sources(text)
  message = str(info.value)
  assert message.startswith('data.sources') and '\n' not in message


def test_legacy_keys_map_to_sources():
  data = base_config().data
  assert legacy_sources(data) == 'embedded'
  data.corpus, data.files, data.text_field = 'local_text', 'a.txt, b/*.jsonl', 'content'
  assert legacy_sources(data) == 'files(a.txt,b/*.jsonl, field=content)'
  (spec,) = configured_sources(data)
  assert spec.target == 'a.txt,b/*.jsonl' and spec.option('field') == 'content'
  data.sources = 'embedded@2'
  assert configured_sources(data)[0].weight == 2.0
  data.sources, data.files = '', ''
  with pytest.raises(ConfigError, match='data.files'):
    legacy_sources(data)


# ---------------------------------------------------------------------------------------------
# Shards and readers


def test_list_shards(tmp_path):
  for name in ('b.jsonl', 'a.jsonl', 'c.parquet', 'x.csv'):
    (tmp_path / name).write_bytes(b'')
  (tmp_path / 'dir.jsonl.d').mkdir()
  found = record_readers.list_shards(
      f'{tmp_path}/*.jsonl, {tmp_path}/a.jsonl,{tmp_path}/*.parquet')
  assert found == [str(tmp_path / n) for n in ('a.jsonl', 'b.jsonl', 'c.parquet')]
  assert 'no file matches' in one_line_data_error(
      lambda: record_readers.list_shards(f'{tmp_path}/*.txt'))
  assert 'unknown suffix' in one_line_data_error(
      lambda: record_readers.list_shards(f'{tmp_path}/*.csv'))
  assert 'is a directory' in one_line_data_error(
      lambda: record_readers.list_shards(f'{tmp_path}/dir*'))


READERS = ('.txt', '.txt.gz', '.jsonl', '.jsonl.gz', '.jsonl.zst', '.parquet')


@pytest.mark.parametrize('suffix', READERS)
def test_reader(suffix, tmp_path):
  """Every document of a shard in order; a state taken after any element restores (JSON) into a
  fresh iterator that continues with exactly the next one; a source of such shards reads each
  document once per epoch."""
  is_txt = '.txt' in suffix
  expected = []
  for s in range(3):
    docs = [f'shard {s} doc {i}\nsecond line é' for i in range(1 if is_txt else 7)]
    expected += write_shard(tmp_path / f's{s}{suffix}', docs)
  shard = record_readers.ShardDataset(str(tmp_path / f's1{suffix}'))
  everything = list(shard)
  assert texts(everything) == [d for d in expected if d.startswith('shard 1')]
  assert all(e['bad_records'] == 0 for e in everything)
  for k in range(len(everything) + 1):
    iterator = iter(shard)
    for _ in range(k):
      next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    fresh = iter(shard)
    fresh.set_state(state)
    assert list(fresh) == everything[k:]
  epoch = texts(records(f'files({tmp_path}/*{suffix}, {SEQUENTIAL})', len(expected)))
  assert sorted(epoch) == sorted(expected)


def test_url_glob_reads_only_this_process_shards(tmp_path, monkeypatch):
  """gs:// globs through rlp_jax.paths (tests/local_gcs.py); every format at a URL; a process
  fetches only its own shards; a .jsonl state at a URL restores by seeking."""
  root = use_local_gcs(tmp_path / 'gcs', monkeypatch)
  make_bucket(root, 'b')
  os.makedirs(os.path.join(root, 'b', 'web'))
  names = ('a.jsonl.gz', 'b.parquet', 'c.txt.zst', 'd.jsonl', 'e.jsonl.zst', 'f.txt')
  docs = {n: write_shard(os.path.join(root, 'b', 'web', n), [f'{n} {i}' for i in range(5)])
          for n in names}
  log = record_reads(monkeypatch)
  source = f'files(gs://b/web/*.jsonl*, gs://b/web/*.parquet, gs://b/web/*.txt*, {SEQUENTIAL})'
  mine = sorted(names)[1::2]
  got = texts(records(source, sum(len(docs[n]) for n in mine), process_index=1, process_count=2))
  assert sorted(got) == sorted(sum((docs[n] for n in mine), []))
  # Only this process's shards were fetched (the stand-in logs `read`, not `readline`).
  assert log and {name for name, _, _ in log} <= {f'b/web/{n}' for n in mine}
  others = sorted(names)[0::2]
  got = texts(records(source, sum(len(docs[n]) for n in others), process_index=0, process_count=2))
  assert sorted(got) == sorted(sum((docs[n] for n in others), []))
  shard = record_readers.ShardDataset('gs://b/web/d.jsonl')
  iterator = iter(shard)
  next(iterator), next(iterator)
  fresh = iter(shard)
  fresh.set_state(iterator.get_state())
  assert list(fresh) == list(iterator) == [{'text': f'd.jsonl {i}', 'bad_records': 0}
                                           for i in range(2, 5)]


# ---------------------------------------------------------------------------------------------
# TFDS


class RlpTinyCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """24 train and 5 validation documents in the feature `content` (plus an int feature)."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                 features=tfds.features.FeaturesDict({
                                     'content': tfds.features.Text(),
                                     'number': tfds.features.Scalar(np.int32)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(0, 24),
            'validation': self._generate_examples(24, 29)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, {'content': f'tfds doc {i}', 'number': i}


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """A data dir holding the prepared RlpTinyCorpus (array_record); the builder class is not
  registered, so reading it by name goes through the prepared files only."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  RlpTinyCorpus(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


def tfds_source(data_dir) -> str:
  return f'tfds(rlp_tiny_corpus, field=content, data_dir={data_dir})'


def test_tfds_named_dataset(tfds_dir):
  assert sorted(texts(records(tfds_source(tfds_dir), 24))) == sorted(
      f'tfds doc {i}' for i in range(24))
  validation = f'tfds(rlp_tiny_corpus:1.0.0, split=validation, field=content, data_dir={tfds_dir})'
  assert sorted(texts(records(validation, 5))) == [f'tfds doc {i}' for i in range(24, 29)]
  line = source_datasets.describe_source(spec_of(validation), None, process_index=0,
                                         process_count=1, on_bad_record='error')
  assert '5 records' in line and '\n' not in line
  assert 'cannot open' in one_line_data_error(
      lambda: records(f'tfds(no_such_corpus, data_dir={tfds_dir})', 1))
  assert "'number' is not a string" in one_line_data_error(
      lambda: records(tfds_source(tfds_dir).replace('content', 'number'), 1))
  with pytest.raises(ConfigError, match='array_record reads local files only'):
    records('tfds(rlp_tiny_corpus, data_dir=gs://b/tfds)', 1)


# ---------------------------------------------------------------------------------------------
# Bad records

GOOD = [json.dumps({'text': f'good {i}'}).encode() for i in range(3)]

# case → (file name, contents (bytes, or lines), the error's line (a regex), the reason's start)
BAD_CASES = {
    'invalid_json': ('x.jsonl', [GOOD[0], b'{"text": oops}', GOOD[1], GOOD[2]], ':2',
                     'invalid JSON (Expecting value)'),
    'missing_field': ('x.jsonl', [GOOD[0], GOOD[1], b'{"other": "x"}', GOOD[2]], ':3',
                      "no field 'text'"),
    'field_not_string': ('x.jsonl.gz', [GOOD[0], GOOD[1], GOOD[2], b'{"text": 7}'], ':4',
                         "field 'text' is not a string (int)"),
    'not_utf8': ('x.jsonl.zst', [GOOD[0], b'{"text": "caf\xe9"}', GOOD[1], GOOD[2]], ':2',
                 'not UTF-8 (byte 0xe9 at column 14)'),
    'empty_document': ('x.jsonl', [GOOD[0], GOOD[1], b'{"text": " \\n "}', GOOD[2]], ':3',
                       'empty document'),
    'empty_txt': ('x.txt', b' \n\t', '', 'empty document'),
    'txt_not_utf8': ('x.txt', b'fine\nfine\nbad \xff', ':3', 'not UTF-8 (byte 0xff at column 5)'),
    'corrupt_gzip': ('x.jsonl.gz', b'this is not gzip', ':1', 'corrupt or unreadable gzip stream'),
    'truncated_zstd': ('x.jsonl.zst', None, r':\d+', 'corrupt or unreadable zstd stream'),
    'not_parquet': ('x.parquet', b'PAR1 but not really', '', 'cannot read as parquet'),
    'missing_file': ('x.jsonl', 'missing', '', 'cannot open'),
}


def write_bad_case(tmp_path, case) -> tuple[str, int, int]:
  """Writes BAD_CASES[case] under tmp_path/bad/; (its path, good documents, bad records)."""
  name, contents, _, _ = BAD_CASES[case]
  os.makedirs(tmp_path / 'bad', exist_ok=True)
  path = str(tmp_path / 'bad' / name)
  if contents is None:  # a zstd file cut short
    data = compress(b'\n'.join(GOOD * 200), '.zst')
    contents = data[:len(data) // 2]
  if contents == 'missing':
    return path, 0, 1
  if isinstance(contents, list):
    write_lines(path, contents)
    return path, sum(line in GOOD for line in contents), 1
  with open(path, 'wb') as f:
    f.write(contents)
  return path, 0, 1


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_record_error_names_file_and_line(case, tmp_path):
  path, _, _ = write_bad_case(tmp_path, case)
  _, _, where, why = BAD_CASES[case]
  shard = record_readers.ShardDataset(path, on_bad_record='error')
  message = one_line_data_error(lambda: list(shard))
  assert re.match(re.escape(f'data.sources: {path}') + where + re.escape(f': {why}'), message)
  if case != 'missing_file':  # the same through a source (threads of the interleave)
    assert one_line_data_error(lambda: records(f'files({path}, {SEQUENTIAL})', 10)) == message


@pytest.mark.parametrize('case', sorted(BAD_CASES))
def test_bad_record_skip_counts(case, tmp_path):
  path, good, bad = write_bad_case(tmp_path, case)
  elements = list(record_readers.ShardDataset(path, on_bad_record='skip', end_marker=True))
  assert elements[-1]['text'] is None  # the end marker carries what the shard skipped last
  assert len(elements) - 1 == good and sum(e['bad_records'] for e in elements) == bad
  if case == 'missing_file':  # a source lists its files first: DataError 'no file matches'
    return
  # Through a source, next to a good shard: only good documents, the skipped ones counted.
  other = write_jsonl(tmp_path / 'good.jsonl', ['other 0', 'other 1'])
  source = f'files({path}, {tmp_path}/good.jsonl, {SEQUENTIAL})'
  per_epoch = good + len(other)
  got = records(source, 3 * per_epoch, policy='skip')
  assert set(texts(got)) == {f'good {i}' for i in range(3) if good} | set(other)
  assert 2 * bad <= sum(e['bad_records'] for e in got) <= 3 * bad


def test_probe_and_describe(tmp_path):
  write_jsonl(tmp_path / 'a.jsonl', ['a', 'b'])
  write_parquet(tmp_path / 'b.parquet', ['c'], field='content')
  (tmp_path / 'c.jsonl.gz').write_bytes(b'not gzip')
  assert record_readers.probe_shard(str(tmp_path / 'a.jsonl')) is None
  assert (record_readers.probe_shard(str(tmp_path / 'a.jsonl'), 'body')
          == "first record: no field 'body'")
  assert 'no column' in record_readers.probe_shard(str(tmp_path / 'b.parquet'))
  assert 'gzip' in record_readers.probe_shard(str(tmp_path / 'c.jsonl.gz'))
  spec = spec_of(f'files({tmp_path}/*.jsonl, {tmp_path}/*.jsonl.gz)@0.5')
  line = source_datasets.describe_source(spec, None, process_index=0, process_count=1,
                                         on_bad_record='skip')
  assert line.startswith('files0@0.5: ') and '2 shards (1 .jsonl, 1 .jsonl.gz)' in line
  assert '1 of its shards look bad' in line and 'c.jsonl.gz' in line and '\n' not in line
  assert 'c.jsonl.gz' in one_line_data_error(lambda: source_datasets.describe_source(
      spec, None, process_index=0, process_count=1, on_bad_record='error'))


def test_a_share_without_usable_records_stops(tmp_path):
  write_lines(tmp_path / 'x.jsonl', [b'{"text": ""}'] * 3)
  assert 'no usable record' in one_line_data_error(
      lambda: records(f'files({tmp_path}/x.jsonl)', 1, policy='skip'))


# ---------------------------------------------------------------------------------------------
# Processes, epochs, seeds


def test_many_shards_each_process_reads_its_own(tmp_path):
  docs = []
  for s in range(6):
    docs.append(write_jsonl(tmp_path / f's{s}.jsonl', [f's{s} d{i}' for i in range(4)]))
  source = f'files({tmp_path}/*.jsonl, cycle_length=2, shuffle_window=8)'
  seen = [set(texts(records(source, 60, process_index=p, process_count=2))) for p in range(2)]
  assert seen[0] == set(sum(docs[0::2], [])) and seen[1] == set(sum(docs[1::2], []))


def test_few_shards_every_process_keeps_every_nth_record(tmp_path):
  docs = write_parquet(tmp_path / 'only.parquet', [f'd{i}' for i in range(10)])
  source = f'files({tmp_path}/only.parquet, {SEQUENTIAL})'
  for p in range(3):
    share = [d for i, d in enumerate(docs) if i % 3 == p]
    assert texts(records(source, len(share), process_index=p, process_count=3)) == share
  (tmp_path / 'one.txt').write_text('one document')
  assert 'one document each' in one_line_data_error(
      lambda: records(f'files({tmp_path}/one.txt)', 1, process_index=0, process_count=2))


def test_random_access_processes_split_every_epoch(tfds_dir):
  everything = {f'tfds doc {i}' for i in range(24)}
  epochs = [texts(records(tfds_source(tfds_dir), 16, process_index=p, process_count=3))
            for p in range(3)]
  for epoch in range(2):
    shares = [set(e[8 * epoch:8 * (epoch + 1)]) for e in epochs]
    assert sum(len(s) for s in shares) == 24 and set().union(*shares) == everything
  assert [e[:8] for e in epochs] != [e[8:] for e in epochs]


def test_embedded_source_split_between_processes(tmp_path):
  data = base_config().data
  data.data_dir, data.num_documents = str(tmp_path / 'data'), 30
  documents = list(load_documents(data, 'train'))
  shares = [texts(records('embedded', len(range(p, len(documents), 2)), process_index=p,
                          process_count=2, data_config=data)) for p in range(2)]
  assert sorted(shares[0] + shares[1]) == sorted(documents)


def test_files_reshuffle_the_shard_order_every_epoch(tmp_path):
  for s in range(6):
    write_jsonl(tmp_path / f's{s}.jsonl', [f's{s} d{i}' for i in range(2)])
  got = texts(records(f'files({tmp_path}/*.jsonl, {SEQUENTIAL})', 36))
  orders = [[doc.split()[0] for doc in got[12 * e:12 * (e + 1):2]] for e in range(3)]
  assert all(sorted(order) == [f's{s}' for s in range(6)] for order in orders)
  assert len({tuple(order) for order in orders}) == 3


@pytest.mark.parametrize('kind', ['files', 'tfds'])
def test_deterministic_by_seed(kind, tmp_path, tfds_dir):
  if kind == 'files':
    for s in range(4):
      write_jsonl(tmp_path / f's{s}.jsonl', [f's{s} d{i}' for i in range(8)])
    source = f'files({tmp_path}/*.jsonl, shuffle_window=16)'
  else:
    source = tfds_source(tfds_dir)
  first = texts(records(source, 40, seed=3))
  assert texts(records(source, 40, seed=3)) == first
  assert texts(records(source, 40, seed=4)) != first


# ---------------------------------------------------------------------------------------------
# Iterator state


def mixed_shards(tmp_path) -> str:
  for s in range(3):
    write_jsonl(tmp_path / f's{s}.jsonl.gz', [f'gz{s} d{i}' for i in range(7)])
    write_parquet(tmp_path / f'p{s}.parquet', [f'pq{s} d{i}' for i in range(5)])
  return f'files({tmp_path}/*.jsonl.gz, {tmp_path}/*.parquet, cycle_length=3, shuffle_window=5)'


@pytest.mark.parametrize('kind', ['files', 'tfds'])
def test_state_round_trip(kind, tmp_path, tfds_dir):
  source = mixed_shards(tmp_path) if kind == 'files' else tfds_source(tfds_dir)
  dataset = source_datasets.source_dataset(spec_of(source), None, seed=1, process_index=0,
                                           process_count=1, on_bad_record='error')
  for k in (0, 17, 61):
    iterator = iter(dataset)
    for _ in range(k):
      next(iterator)
    state = json.dumps(iterator.get_state())
    expected = [next(iterator) for _ in range(30)]
    iterator.close()
    fresh = iter(dataset)
    fresh.set_state(json.loads(state))
    assert [next(fresh) for _ in range(30)] == expected
    fresh.close()


@pytest.fixture
def absl_flags_parsed():
  """Grain's worker processes read absl flags; outside a main() they are not parsed."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  parsed = flags.FLAGS.is_parsed()
  if not parsed:
    flags.FLAGS.mark_as_parsed()
  yield
  if not parsed:
    flags.FLAGS.unparse_flags()


def test_mp_prefetch_workers_split_the_shards_and_state_round_trips(tmp_path, absl_flags_parsed):
  # pylint: disable-next=import-outside-toplevel
  from grain._src.python.dataset.transformations import prefetch
  docs = [write_jsonl(tmp_path / f's{s}.jsonl', [f's{s} d{i}' for i in range(6)])
          for s in range(4)]
  # What each mp_prefetch worker runs: the pipeline sliced [w::2] (grain's own slicing).
  sequential = source_datasets.source_dataset(
      spec_of(f'files({tmp_path}/*.jsonl, {SEQUENTIAL})'), None, seed=0, process_index=0,
      process_count=1, on_bad_record='error')
  worker_epochs = []
  for worker in range(2):
    sliced = copy.deepcopy(sequential)
    # pylint: disable-next=protected-access
    prefetch._set_slice_iter_dataset(sliced, slice(worker, None, 2))
    worker_epochs.append(set(texts(take(sliced, 12))))
  assert not worker_epochs[0] & worker_epochs[1]
  assert worker_epochs[0] | worker_epochs[1] == set(sum(docs, []))
  # The real thing: pickled into 2 worker processes; the state restores exactly.
  dataset = source_datasets.source_dataset(
      spec_of(f'files({tmp_path}/*.jsonl, cycle_length=2, shuffle_window=4)'), None, seed=0,
      process_index=0, process_count=1, on_bad_record='error')
  pickle.dumps(dataset)
  dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=2))
  iterator = iter(dataset)
  try:
    first = [next(iterator) for _ in range(10)]
    state = json.dumps(iterator.get_state())
    expected = [next(iterator) for _ in range(10)]
  finally:
    iterator.close()
  assert set(texts(first + expected)) <= set(sum(docs, []))
  fresh = iter(dataset)
  try:
    fresh.set_state(json.loads(state))
    assert [next(fresh) for _ in range(10)] == expected
  finally:
    fresh.close()
