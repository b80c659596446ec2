"""One configured source → this process's records, as an endless, seeded Grain `IterDataset`.

`source_dataset(spec, ...)` yields `{'text': str, 'bad_records': int}` forever (`bad_records`:
records skipped just before this one; see record_readers.py). Each process reads only its share,
and the iterator's state (`get_state()`, JSON) restores at exactly the next record, also under
`mp_prefetch`, whose workers each read a disjoint part of it.

Random-access sources (`embedded`, `tfds`):

```
MapDataset.source(records)     + decode (field, UTF-8, bad-record policy)
  .shuffle(seed)               a permutation per epoch: Grain's ShuffleMapDataset seeds epoch e
                               (an index ≥ len) with seed + e
  [process_index::process_count]   this process's share of every epoch's permutation
  .repeat()                    endless (an index past the slice continues into the next epoch)
  .to_iter_dataset()           (mp_prefetch slices this MapDataset again per worker)
```

File sources (`files`): the shards are listed once (`list_shards`). With at least as many shards
as processes, process p reads only `shards[p::P]`; with fewer, every process reads every shard and
keeps the records whose index inside the shard is p modulo P (so nobody idles, at the price of
each process reading all bytes). Then:

```
MapDataset.range(n).shuffle(seed).repeat()   the shard order, a new permutation every epoch
  .map(→ ShardDataset)                       a shard's records, streamed in file order
InterleaveIterDataset(cycle_length)          that many shards open at once, records alternating
                                             (mp_prefetch slices this sequence of shards: each
                                             worker opens different shards)
WindowShuffleIterDataset(shuffle_window)     records of different shards mixed
```

An epoch is every shard of this process once. A shard that ends, and a random-access record that
is skipped, leave an internal marker carrying their bad-record count; `_FoldMarkers` adds it to the
next record, and stops with a one-line DataError when a long run of markers shows that this
process's share holds no usable record at all (instead of spinning forever).

Seeds: each source shuffles with a seed derived from (seed, spec.name), so two sources of a
mixture never share a permutation.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
import concurrent.futures
import os
from typing import Any
import zlib

import grain

from rlp_jax import paths
from rlp_jax.data import record_readers
from rlp_jax.data.source_spec import KEY, SourceSpec
from rlp_jax.errors import ConfigError, DataError

# How many markers in a row (shards without a record, or skipped random-access records) per shard
# or record of this process prove its share empty. Generous: an mp_prefetch worker sees a random
# part of each epoch, so a sparse share can leave it a long run by chance (probability below
# e^-IDLE_EPOCHS per run).
IDLE_EPOCHS = 64
# Random-access reads (array_record lookups) per source and worker: Grain's default of 16
# threads and 500 elements, times sources × workers, is more than a text source needs.
READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=128)


def source_seed(seed: int, spec: SourceSpec) -> int:
  """The shuffle seed of one source: a function of the run seed and the source's name, below
  2**31 so that Grain's per-epoch seed (seed + epoch, below 2**32) never wraps in practice."""
  return zlib.crc32(f'{int(seed)}/{spec.name}'.encode()) % (1 << 31)


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'process {process_index} of {process_count}')


class _FoldMarkers(grain.IterDataset):
  """Drops the `{'text': None, 'bad_records': n}` markers, adding their counts to the next
  record. Keeps its parent's state as is (between two `next` calls nothing is pending)."""

  def __init__(self, parent: grain.IterDataset, *, max_idle: int, label: str):
    super().__init__(parent)
    self._max_idle, self._label = max_idle, label

  def __iter__(self) -> _FoldMarkersIterator:
    return _FoldMarkersIterator(self._parent.__iter__(), self._max_idle, self._label)

  def __str__(self) -> str:
    return f'_FoldMarkers({self._label})'


class _FoldMarkersIterator(grain.DatasetIterator):
  """The iterator of _FoldMarkers; its state is the parent's."""

  def __init__(self, parent: grain.DatasetIterator, max_idle: int, label: str):
    super().__init__(parent)
    self._max_idle, self._label = max_idle, label

  def __next__(self) -> dict[str, Any]:
    bad = idle = 0
    while True:
      element = next(self._parent)
      bad += int(element['bad_records'])
      if element['text'] is not None:
        return {'text': element['text'], 'bad_records': bad}
      idle += 1
      if idle > self._max_idle:
        raise DataError(f'{KEY}: {self._label}: no usable record in {idle} shards/records in a '
                        f"row on this process ({bad} bad; data.on_bad_record='error' names the "
                        'first)')

  def get_state(self) -> Any:
    return self._parent.get_state()

  def set_state(self, state: Any) -> None:
    self._parent.set_state(state)

  def __str__(self) -> str:
    return f'_FoldMarkersIterator({self._label})'


class _DecodeRecord:
  """A random-access record → `{'text': str | None, 'bad_records': 0 | 1}` (None: skipped).

  A record is a str (embedded corpus) or a dict holding `field` (TFDS; Text features come back
  as bytes). `index` is the position in the source (modulo its length: epochs index past it)."""

  def __init__(self, field: str, on_bad_record: str, label: str, length: int):
    self._field, self._policy, self._label, self._length = field, on_bad_record, label, length

  def __call__(self, index: int, record: Any) -> dict[str, Any]:
    where = f'{self._label} record {index % self._length}'
    try:
      if not isinstance(record, dict):
        record = {self._field: record}
      # pylint: disable-next=protected-access
      text = record_readers._document(record, self._field, where)
    except record_readers._Bad as e:  # pylint: disable=protected-access
      if self._policy == 'error':
        raise DataError(f'{KEY}: {e}') from None
      return {'text': None, 'bad_records': 1}
    return {'text': text, 'bad_records': 0}


def _tfds_data_dir(spec: SourceSpec) -> str | None:
  data_dir = spec.option('data_dir')
  if not data_dir:
    return None
  if paths.is_url(data_dir):
    raise ConfigError(f'{KEY}: {spec}: data_dir {data_dir} is a URL; array_record reads local '
                      'files only, so copy the prepared dataset to a local disk first')
  return paths.resolve_str(data_dir, f'{KEY} data_dir')


def embedded_config(data_config: Any) -> Any:
  """`data_config` with `corpus='reasoning'`: the `embedded` source is the reasoning generator
  whatever `data.corpus` (which also names what the tokenizer and the evaluation read) says."""
  config = data_config.copy_and_resolve_references()
  config.corpus = 'reasoning'
  return config


def random_access_records(spec: SourceSpec, data_config: Any) -> tuple[Sequence[Any], str]:
  """(records, label) of an `embedded` or `tfds` source: a random-access sequence of str or
  dict records, and how messages name the source."""
  if spec.kind == 'embedded':
    from rlp_jax.data.corpora import load_documents  # pylint: disable=import-outside-toplevel
    documents = load_documents(embedded_config(data_config), 'train')
    return documents, f"embedded corpus {getattr(documents, 'description', '')}".strip()
  if spec.kind != 'tfds':
    raise ValueError(f'{spec.kind} is not a random-access source')
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  data_dir = _tfds_data_dir(spec)
  split = spec.option('split')
  label = f'tfds {spec.target}[{split}]'
  try:
    records = tfds.data_source(spec.target, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # pylint: disable=broad-exception-caught  # TFDS's many error types
    where = data_dir or 'the TFDS data dir'
    raise DataError(f'{KEY}: {label}: cannot open a prepared dataset under {where} '
                    f'({paths.reason(e)})') from None
  return records, label


def _random_access_dataset(spec: SourceSpec, data_config: Any, *, seed: int, process_index: int,
                           process_count: int, on_bad_record: str) -> grain.IterDataset:
  records, label = random_access_records(spec, data_config)
  n = len(records)
  if n < process_count:
    raise DataError(f'{KEY}: {label} has {n} records, fewer than the {process_count} processes '
                    'that share it')
  field = spec.option('field') if spec.kind == 'tfds' else 'text'
  share = len(range(process_index, n, process_count))
  dataset = (grain.MapDataset.source(records)
             .map_with_index(_DecodeRecord(field, on_bad_record, label, n))
             .shuffle(seed=source_seed(seed, spec))
             [process_index::process_count]
             .repeat()
             .to_iter_dataset(READ_OPTIONS))
  return _FoldMarkers(dataset, max_idle=IDLE_EPOCHS * share + 64, label=spec.name)


class _OpenShard:
  """Shard number → its ShardDataset (a picklable function for MapDataset.map)."""

  def __init__(self, shards: Sequence[str], field: str, on_bad_record: str,
               keep: tuple[int, int]):
    self._shards, self._field, self._policy, self._keep = tuple(shards), field, on_bad_record, keep

  def __call__(self, number: int) -> record_readers.ShardDataset:
    return record_readers.ShardDataset(self._shards[number], field=self._field,
                                       on_bad_record=self._policy, keep=self._keep,
                                       end_marker=True)


def process_shards(shards: Sequence[str], process_index: int,
                   process_count: int) -> tuple[list[str], tuple[int, int]]:
  """(the shards this process reads, the records it keeps of each as (modulus, remainder)):
  its own shards `shards[p::P]` when there are at least P of them, else all shards with every
  P-th record (module doc)."""
  if len(shards) >= process_count:
    return list(shards[process_index::process_count]), (1, 0)
  return list(shards), (process_count, process_index)


def _files_dataset(spec: SourceSpec, *, seed: int, process_index: int, process_count: int,
                   on_bad_record: str) -> grain.IterDataset:
  shards = record_readers.list_shards(spec.target, KEY)
  mine, keep = process_shards(shards, process_index, process_count)
  if keep[0] > 1 and all(record_readers.shard_format(s)[0] == '.txt' for s in shards):
    raise DataError(f'{KEY}: {spec}: {len(shards)} .txt files (one document each) cannot be '
                    f'shared by {process_count} processes; give at least one file per process')
  seed = source_seed(seed, spec)
  order = (grain.MapDataset.range(len(mine)).shuffle(seed=seed).repeat()
           .map(_OpenShard(mine, spec.option('field'), on_bad_record, keep)))
  dataset = grain.experimental.InterleaveIterDataset(
      order, cycle_length=min(spec.int_option('cycle_length'), len(mine)))
  dataset = _FoldMarkers(dataset, max_idle=IDLE_EPOCHS * len(mine) + 64, label=spec.name)
  window = spec.int_option('shuffle_window')
  if window > 1:
    dataset = grain.experimental.WindowShuffleIterDataset(dataset, window_size=window, seed=seed)
  return dataset


def source_dataset(spec: SourceSpec, data_config: Any, *, seed: int, process_index: int,
                   process_count: int, on_bad_record: str) -> grain.IterDataset:
  """This process's records of `spec`, `{'text': str, 'bad_records': int}`, endless, in an
  order fixed by (seed, spec.name, process_index, process_count) (module doc)."""
  _check_process(process_index, process_count)
  record_readers.check_policy(on_bad_record)
  if spec.kind == 'files':
    return _files_dataset(spec, seed=seed, process_index=process_index,
                          process_count=process_count, on_bad_record=on_bad_record)
  return _random_access_dataset(spec, data_config, seed=seed, process_index=process_index,
                                process_count=process_count, on_bad_record=on_bad_record)


def _probe_all(shards: Sequence[str], field: str) -> list[tuple[str, str]]:
  """(shard, reason) of each shard that probe_shard finds unreadable, probed in threads."""
  if not shards:
    return []
  workers = min(16, len(shards), (os.cpu_count() or 1) * 4)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    reasons = list(pool.map(lambda s: record_readers.probe_shard(s, field), shards))
  return [(s, r) for s, r in zip(shards, reasons) if r is not None]


def describe_source(spec: SourceSpec, data_config: Any, *, process_index: int, process_count: int,
                    on_bad_record: str) -> str:
  """A one-line start-up summary of `spec` on this process: what it is, how many shards or
  records, this process's share, and (files) the shards of this share that do not open.

  Probing reads a little of every shard of this process (in threads): the footer of a parquet
  file, the first 64 KiB of a compressed one, the first record of a .jsonl. Under
  `on_bad_record='error'` a bad shard stops here with a one-line DataError instead of hours
  into the run; under 'skip' the summary counts them."""
  _check_process(process_index, process_count)
  record_readers.check_policy(on_bad_record)
  head = f'{spec.name}@{spec.weight:g}'
  if spec.kind != 'files':
    records, label = random_access_records(spec, data_config)
    n = len(records)
    share = len(range(process_index, n, process_count))
    return (f'{head}: {label}, {n} records; process {process_index}/{process_count} reads {share} '
            'per epoch, reshuffled every epoch')
  shards = record_readers.list_shards(spec.target, KEY)
  mine, keep = process_shards(shards, process_index, process_count)
  kinds = Counter(''.join(record_readers.shard_format(s)) for s in shards)
  formats = ', '.join(f'{count} {kind}' for kind, count in sorted(kinds.items()))
  if keep[0] == 1:
    share = f'process {process_index}/{process_count} reads {len(mine)} of them'
  else:
    share = (f'fewer shards than processes: process {process_index}/{process_count} reads all, '
             f'keeping every {keep[0]}th record from record {keep[1]}')
  bad = _probe_all(mine, spec.option('field'))
  if bad and on_bad_record == 'error':
    shard, reason = bad[0]
    raise DataError(f"{KEY}: {shard}: {reason} (data.on_bad_record='skip' skips it)")
  found = (f'; {len(bad)} of its shards look bad (skipped when read), first {bad[0][0]}: '
           f'{bad[0][1]}' if bad else '')
  return f'{head}: files({spec.target}): {len(shards)} shards ({formats}); {share}{found}'
