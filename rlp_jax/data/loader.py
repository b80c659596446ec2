"""The training data pipeline: Grain datasets from the configured sources to this process's rows.

Per process (each reads only its share: rlp_jax/data/source_datasets.py):

```
data.sources ─ each source: records {'text', 'bad_records'}, shuffled by seed, endless
   │  + the source's index                                  (source_datasets.source_dataset)
   ├─ IterDataset.mix(weights)         one stream, each source drawn in proportion to its weight
   ├─ chunks of data.tokenize_chunk    → batched tokenization (tokenizer.encode_batch) and
   │                                     windows of data.seq_len every data.window_stride tokens
   ├─ data.packing: first-fit packing of windows into rows, with segment ids
   │  else:        one window per row, right-padded
   ├─ batch of this process's rows      {'tokens', 'mask'} (+ 'segment_ids' when packed) + counts
   ├─ data.workers > 0: worker processes (mp_prefetch), each reading a disjoint part of the
   │  shards / records
   └─ a background thread keeps data.prefetch batches ready (ThreadPrefetchIterDataset)
```

Everything is a Grain dataset, so the iterator's position is a small JSON state
(`iterator.get_state()`) that the checkpoint stores per process (train/checkpointing.py): a resumed
run continues at the exact next record on every process. The state is valid for the same config
and the same number of processes and workers; `data_state_key` names what it depends on.

A row is `[bos] + tokens + [eos]` of a document, or a window of one: a document longer than
`data.seq_len` is split into windows starting every `data.window_stride` tokens (the last one
reaching the end), so nothing is thrown away. Packed rows carry `segment_ids`, numbering the
documents of a row from 1 (0 on padding); unpacked rows hold one document each and carry none. Positions restart at each document start and
attention, the Mamba scan and RLP's scored positions stay inside one document (docs/models.md,
"Packed rows").
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import hashlib
import json
import time
from typing import Any

import numpy as np

from rlp_jax.data.source_spec import configured_sources
from rlp_jax.errors import ConfigError

STATS_KEYS = ('source_counts', 'bad_records')  # per-batch counts, not model inputs
# First-fit packing fills this many rows at once (at least a batch): more bins, fuller rows
# (tests/test_data_loader.py measures the fill), at the cost of holding their windows back.
PACKING_BINS = 64


def windows(ids: Sequence[int], seq_len: int, stride: int) -> list[Sequence[int]]:
  """Windows of `seq_len` tokens starting every `stride` tokens; the last one reaches the end of
  `ids` (it may be shorter than `seq_len`). A window of fewer than 2 tokens predicts nothing and is
  left out, except when it is the whole document."""
  if len(ids) <= seq_len:
    return [ids]
  out, start = [], 0
  while True:
    out.append(ids[start:start + seq_len])
    if start + seq_len >= len(ids):
      return out
    start += stride
    if len(ids) - start < 2:
      return out


@dataclasses.dataclass(frozen=True)
class RowSpec:
  """How documents become rows: `seq_len` tokens, windows every `stride`, bos/eos/pad ids."""
  seq_len: int
  stride: int
  bos_id: int
  eos_id: int
  pad_id: int


class TokenizeChunk:
  """A chunk of records → their windows, tokenized in one `encode_batch` call (Grain FlatMap).

  Each window is {'tokens': int32[n], 'doc_source': int32[n], 'bad_records': int32[n]}:
  `doc_source` is the source's index + 1 on the window's first token (0 elsewhere) and
  `bad_records` the records its reader skipped before this one, on the first window's first
  token, so that both survive packing and a batch's counts are sums over its rows."""

  max_fan_out = 1 << 30  # a chunk of long documents yields many windows; Grain needs a bound

  def __init__(self, tokenizer: Any, rows: RowSpec):
    self._tokenizer = tokenizer
    self._rows = rows

  def flat_map(self, chunk: Sequence[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
    rows, tokenizer = self._rows, self._tokenizer
    texts = [record['text'] for record in chunk]
    encode_batch = getattr(tokenizer, 'encode_batch', None)
    encoded = encode_batch(texts) if encode_batch else [tokenizer.encode(t) for t in texts]
    out = []
    for record, ids in zip(chunk, encoded):
      full = np.asarray([rows.bos_id] + list(ids) + [rows.eos_id], np.int32)
      bad = int(record.get('bad_records', 0))
      for window in windows(full, rows.seq_len, rows.stride):
        doc_source = np.zeros(len(window), np.int32)
        doc_source[0] = int(record['source']) + 1
        bad_records = np.zeros(len(window), np.int32)
        bad_records[0], bad = bad, 0
        out.append({'tokens': np.asarray(window, np.int32), 'doc_source': doc_source,
                    'bad_records': bad_records})
    return out


class PadRow:
  """One window per row: right-padded to seq_len; segment id 1 on its tokens."""

  def __init__(self, rows: RowSpec):
    self._rows = rows

  def __call__(self, window: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    length, n = self._rows.seq_len, len(window['tokens'])
    out = {}
    for key, fill in (('tokens', self._rows.pad_id), ('doc_source', 0), ('bad_records', 0)):
      row = np.full(length, fill, np.int32)
      row[:n] = window[key]
      out[key] = row
    out['segment_ids'] = (np.arange(length) < n).astype(np.int32)
    return out


class PackedRow:
  """A first-fit packed row (Grain's `*_segment_ids`, `*_positions`) in this module's keys."""

  def __init__(self, rows: RowSpec):
    self._rows = rows

  def __call__(self, packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    segment_ids = np.asarray(packed['tokens_segment_ids'], np.int32)
    tokens = np.where(segment_ids > 0, packed['tokens'], self._rows.pad_id).astype(np.int32)
    return {'tokens': tokens, 'segment_ids': segment_ids,
            'doc_source': np.asarray(packed['doc_source'], np.int32),
            'bad_records': np.asarray(packed['bad_records'], np.int32)}


class FinishBatch:
  """Stacked rows → {'tokens', 'mask'} (+ 'segment_ids' when packed) and the batch's counts:
  documents (or windows) drawn per source, `source_counts` int64[S], and records skipped,
  `bad_records`. Unpacked rows carry no segment ids: one document per row is what the models do
  without them, on the code path (and with the numbers) they had before packing existed."""

  def __init__(self, num_sources: int, packed: bool):
    self._num_sources = num_sources
    self._packed = packed

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    segment_ids = batch['segment_ids']
    sources = batch['doc_source'][batch['doc_source'] > 0] - 1
    out = {'tokens': batch['tokens'], 'mask': segment_ids > 0,
           'source_counts': np.bincount(sources, minlength=self._num_sources).astype(np.int64),
           'bad_records': np.asarray(batch['bad_records'].sum(), np.int64)}
    if self._packed:
      out['segment_ids'] = segment_ids
    return out


def _with_source(index: int):
  def add(record: dict[str, Any]) -> dict[str, Any]:
    return dict(record, source=index)
  return add


def _as_list(records: Sequence[Any]) -> list[Any]:
  return list(records)


@dataclasses.dataclass
class DataPipeline:
  """This process's batches: `dataset` (a Grain IterDataset) and what it was built from."""
  dataset: Any
  source_names: tuple[str, ...]
  weights: tuple[float, ...]
  state_key: str
  descriptions: tuple[str, ...]


def data_state_key(data_config: Any, seed: int, process_count: int, local_rows: int) -> str:
  """What an iterator state depends on: a saved state restores only into a pipeline with the
  same key (the same sources, seed, row shape, packing, workers and processes)."""
  keys = ('sources', 'corpus', 'files', 'text_field', 'num_documents', 'corpus_seed',
          'worked_fraction', 'seq_len', 'window_stride', 'packing', 'workers', 'tokenize_chunk',
          'on_bad_record')
  described = {key: data_config.get(key) for key in keys}
  described.update(seed=seed, process_count=process_count, local_rows=local_rows)
  return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def build_pipeline(data_config: Any, tokenizer: Any, *, seed: int, process_index: int,
                   process_count: int, local_rows: int) -> DataPipeline:
  """The Grain dataset of this process's batches of `local_rows` rows (module doc)."""
  import grain  # pylint: disable=import-outside-toplevel  # the loader's only heavy import
  from rlp_jax.data import source_datasets  # pylint: disable=import-outside-toplevel
  if local_rows < 1:
    raise ConfigError(f'this process holds no rows of the batch ({local_rows})')
  specs = configured_sources(data_config)
  seq_len = data_config.seq_len
  stride = data_config.window_stride or seq_len
  if stride > seq_len:
    raise ConfigError(f'config key `data.window_stride` ({stride}) is larger than data.seq_len '
                      f'({seq_len}): the tokens between windows would never be read')
  rows = RowSpec(seq_len, stride, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
  streams, descriptions = {}, []
  for index, spec in enumerate(specs):
    records = source_datasets.source_dataset(
        spec, data_config, seed=seed, process_index=process_index, process_count=process_count,
        on_bad_record=data_config.on_bad_record)
    streams[spec.name] = records.map(_with_source(index))
    descriptions.append(source_datasets.describe_source(
        spec, data_config, process_index=process_index, process_count=process_count,
        on_bad_record=data_config.on_bad_record))
  names = tuple(spec.name for spec in specs)
  weights = tuple(float(spec.weight) for spec in specs)
  if len(streams) == 1:
    dataset = next(iter(streams.values()))
  else:
    dataset = grain.IterDataset.mix(streams, dict(zip(names, weights)))
  dataset = dataset.batch(data_config.tokenize_chunk, batch_fn=_as_list)
  dataset = grain.experimental.FlatMapIterDataset(dataset, TokenizeChunk(tokenizer, rows))
  if data_config.packing:
    dataset = grain.experimental.FirstFitPackIterDataset(
        dataset, length_struct={'tokens': seq_len, 'doc_source': seq_len, 'bad_records': seq_len},
        num_packing_bins=max(local_rows, PACKING_BINS), seed=seed, shuffle_bins=True)
    dataset = dataset.map(PackedRow(rows))
  else:
    dataset = dataset.map(PadRow(rows))
  dataset = dataset.batch(local_rows, drop_remainder=True).map(
      FinishBatch(len(specs), bool(data_config.packing)))
  if data_config.workers > 0:
    _default_flags_if_unparsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=data_config.workers, per_worker_buffer_size=max(1, data_config.prefetch)),
        worker_init_fn=die_with_parent)
  if data_config.prefetch > 0:
    dataset = grain.experimental.ThreadPrefetchIterDataset(
        dataset, prefetch_buffer_size=data_config.prefetch)
  return DataPipeline(dataset, names, weights,
                      data_state_key(data_config, seed, process_count, local_rows),
                      tuple(descriptions))


def die_with_parent(worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: the worker exits within a second of the training process's death,
  however it dies. Without this a `kill -9` of the trainer (an out-of-memory kill, a scheduler's)
  leaves the workers running, holding their memory, forever (seen with Grain 0.2.18). A daemon
  thread watches the parent pid (prctl's PR_SET_PDEATHSIG would fire when the *thread* that
  started the worker ends, which in Grain is not the process's end)."""
  del worker_index, worker_count
  import os  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  parent = os.getppid()

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)  # pylint: disable=protected-access  # reparented: the trainer is gone

  threading.Thread(target=watch, name='rlp_jax-parent-watch', daemon=True).start()


def _default_flags_if_unparsed() -> None:
  """Grain's worker processes read Grain's absl flags. Under `python -m rlp_jax.main` absl has
  parsed them; from a notebook, a test or another program nobody has, and reading one raises:
  their defaults are what such a caller means."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class DataIterator:
  """This process's batches in order, the time spent waiting for each, and the counts so far.

  `next_batch()` returns (model inputs, stats): stats holds `data_wait_s` (seconds the caller
  was blocked on the pipeline for this batch), the batch's documents per source and the records
  skipped. `get_state()` / `set_state()` are the Grain iterator's (JSON), with the totals."""

  def __init__(self, pipeline: DataPipeline):
    self.pipeline = pipeline
    self._iterator = iter(pipeline.dataset)
    self.total_source_counts = np.zeros(len(pipeline.source_names), np.int64)
    self.total_bad_records = 0

  def next_batch(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    start = time.perf_counter()
    batch = next(self._iterator)
    waited = time.perf_counter() - start
    counts = np.asarray(batch.pop('source_counts'), np.int64)
    bad = int(batch.pop('bad_records'))
    self.total_source_counts += counts
    self.total_bad_records += bad
    stats = {'data_wait_s': waited, 'data/bad_records': float(self.total_bad_records)}
    total = max(1, int(self.total_source_counts.sum()))
    if len(counts) > 1:  # realised mixture proportions over the run so far
      for name, count in zip(self.pipeline.source_names, self.total_source_counts):
        stats[f'data/proportion/{name}'] = float(count) / total
    return batch, stats

  def get_state(self) -> dict[str, Any]:
    return {'key': self.pipeline.state_key, 'grain': self._iterator.get_state(),
            'source_counts': self.total_source_counts.tolist(),
            'bad_records': self.total_bad_records}

  def set_state(self, state: dict[str, Any]) -> None:
    self._iterator.set_state(state['grain'])
    self.total_source_counts = np.asarray(state['source_counts'], np.int64)
    self.total_bad_records = int(state['bad_records'])

  def close(self) -> None:
    close = getattr(self._iterator, 'close', None)
    if close is not None:
      close()

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    while True:
      yield self.next_batch()[0]


def training_corpus(data_config: Any) -> Sequence[str] | None:
  """The embedded corpus's train documents when a source reads them (built under the data dir on
  first use: call on process 0 first), else None: file and TFDS sources are streamed, never
  converted. Every `files` source's globs are listed here, so that a missing corpus is the first
  thing a run reports (one line naming the key the user set: data.sources, or the older
  data.files)."""
  from rlp_jax.data.record_readers import list_shards  # pylint: disable=import-outside-toplevel
  specs = configured_sources(data_config)
  for spec in specs:
    if spec.kind == 'files':
      list_shards(spec.target, 'data.sources' if data_config.sources else 'data.files')
  if not any(spec.kind == 'embedded' for spec in specs):
    return None
  from rlp_jax.data.corpora import load_documents  # pylint: disable=import-outside-toplevel
  from rlp_jax.data.source_datasets import embedded_config  # pylint: disable=import-outside-toplevel
  return load_documents(embedded_config(data_config))


class _SourceListing:
  """What the run identity hashes for the training data: the embedded documents (when read), then
  one line per shard of every other source (its path, size and modification time, or the TFDS
  dataset's name, split and size), so a changed corpus is noticed without reading it."""

  def __init__(self, data_config: Any, documents: Sequence[str] | None):
    self._data_config = data_config
    self._documents = documents
    specs = configured_sources(data_config)
    self.description = '; '.join(f'{spec.kind}({spec.target})@{spec.weight:g}'
                                 if spec.target else f'{spec.kind}@{spec.weight:g}'
                                 for spec in specs)
    self._specs = specs

  def __iter__(self) -> Iterator[str]:
    from rlp_jax import paths  # pylint: disable=import-outside-toplevel
    from rlp_jax.data import record_readers  # pylint: disable=import-outside-toplevel
    for spec in self._specs:
      yield f'source {spec.kind} {spec.target} {dict(spec.options)} weight {spec.weight!r}'
      if spec.kind == 'embedded':
        yield from self._documents or ()
      elif spec.kind == 'files':
        for path in record_readers.list_shards(spec.target, 'data.sources'):
          size, mtime = paths.size_and_mtime(path)
          yield f'{path}\0{size}\0{mtime}'


def training_fingerprint_items(data_config: Any, documents: Sequence[str] | None) -> Any:
  """The strings `run_identity` hashes as the training data (`_SourceListing`). With only the
  embedded source this is its documents, as before sources existed."""
  specs = configured_sources(data_config)
  if documents is not None and all(spec.kind == 'embedded' for spec in specs):
    return documents
  return _SourceListing(data_config, documents)
