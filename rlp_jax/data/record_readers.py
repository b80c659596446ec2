"""Reading one shard of text records, checkpointably: the leaves of the Grain data loader.

A shard is one file, local or at a URL (all I/O goes through rlp_jax.paths):

- `.txt` (optionally `.gz` / `.zst`): the whole file is one document;
- `.jsonl` (optionally `.gz` / `.zst`): each line is one document, the string under `field`;
  blank lines are not records;
- `.parquet`: each row is one document, the string (or UTF-8 binary) column `field`, read one
  row group at a time with pyarrow.

`ShardDataset(path, ...)` is a Grain `IterDataset` over the records of one shard, yielding
`{'text': str, 'bad_records': int}`: `bad_records` counts the records skipped since the previous
element, so a consumer that sums it counts every skipped record once. Its iterator's state is a
small JSON dict that restores at the exact next record (`ShardIterator.get_state`).

Bad input is never a traceback. With `on_bad_record='error'` it is a one-line `DataError` naming
the file and line (`data.sources: gs://b/x.jsonl:17: invalid JSON (Expecting value)`); with
`'skip'` the record is skipped and counted. Bad records: invalid JSON, a missing or non-string
field, bytes that are not UTF-8, an empty document (nothing left after strip), and a shard that
cannot be read at all (cannot be opened, a corrupt gzip/zstd stream, not parquet, no such
column), which counts as one bad record and ends the shard.
"""
from __future__ import annotations

import gzip
import io
import json
from typing import Any

import grain

from rlp_jax import paths
from rlp_jax.data.source_spec import BAD_RECORD_POLICIES
from rlp_jax.errors import ConfigError, DataError

TEXT_KINDS = ('.txt', '.jsonl')
COMPRESSIONS = ('.gz', '.zst')
SUFFIXES = tuple(kind + c for kind in TEXT_KINDS for c in ('',) + COMPRESSIONS) + ('.parquet',)
WHAT = 'data.sources'
_CHUNK = 1 << 20
_PROBE_BYTES = 1 << 16


def shard_format(path: str) -> tuple[str, str]:
  """(kind, compression) of a shard path: kind `.txt`, `.jsonl` or `.parquet`, compression ''
  or `.gz` / `.zst`; a DataError for any other suffix."""
  for suffix in SUFFIXES:
    if path.endswith(suffix):
      for compression in COMPRESSIONS:
        if suffix.endswith(compression):
          return suffix[:-len(compression)], compression
      return suffix, ''
  raise DataError(f"{WHAT}: {path}: unknown suffix; use one of {', '.join(SUFFIXES)}")


def list_shards(patterns: str, what: str = WHAT) -> list[str]:
  """The files that comma-separated paths/globs `patterns` match (local or URLs), sorted and
  de-duplicated; a one-line DataError naming `what` when a pattern matches nothing, or matches a
  directory or a file of an unknown suffix.

  A directory is only looked for among paths of an unknown suffix, so listing costs one
  listing per pattern even for thousands of shards on an object store."""
  parts = [p.strip() for p in patterns.split(',') if p.strip()]
  if not parts:
    raise ConfigError(f'{what}: no path or glob given')
  found: set[str] = set()
  for pattern in parts:
    matches = paths.glob_files(pattern, what)
    for path in matches:
      if not path.endswith(SUFFIXES):
        if paths.is_dir(path):
          raise DataError(f'{what}: {path} is a directory; use a glob such as {path}/*.jsonl')
        raise DataError(f"{what}: {path}: unknown suffix; use one of {', '.join(SUFFIXES)}")
      found.add(path)
  return sorted(found)


class _Bad(Exception):
  """Something unreadable: `where` (the file, and line or row) and `why`, one line each."""

  def __init__(self, where: str, why: str):
    super().__init__(f'{where}: {why}')
    self.where, self.why = where, why


class _BadRecord(_Bad):
  """One record that is not a document."""


class _BadShard(_Bad):
  """A shard that cannot be read on."""


def _why(error: BaseException) -> str:
  """A one-line reason for a stream error."""
  text = str(error).strip().splitlines()
  return text[0].strip() if text else type(error).__name__


def _utf8(raw: bytes, where: str, first_line: int | None = None) -> str:
  """`raw` decoded as strict UTF-8, else a _BadRecord at `where`, with the line of the first bad
  byte appended when `raw` starts at line `first_line`."""
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError as e:
    newline = b'\n'
    if first_line is not None:
      where = f'{where}:{first_line + raw.count(newline, 0, e.start)}'
    column = e.start - raw.rfind(newline, 0, e.start)
    raise _BadRecord(where, f'not UTF-8 (byte 0x{raw[e.start]:02x} at column {column})') from None


class _ZstdRaw(io.RawIOBase):
  """A zstd stream decompressed frame after frame, that reports a truncated last frame (the
  `zstandard` stream reader silently returns what it has)."""

  def __init__(self, raw: Any):
    import zstandard  # pylint: disable=import-outside-toplevel
    self._raw, self._zstd = raw, zstandard
    self._decompressor = zstandard.ZstdDecompressor().decompressobj()
    self._in_frame, self._pending = False, b''

  def readable(self) -> bool:
    return True

  def readinto(self, buffer: Any) -> int:
    while not self._pending:
      data = self._raw.read(_CHUNK)
      if not data:
        if self._in_frame:
          raise EOFError('the zstd stream ends inside a frame (truncated file)')
        return 0
      while data:
        self._in_frame = True
        out = self._decompressor.decompress(data)
        self._pending += out
        data = b''
        if self._decompressor.eof:
          data = self._decompressor.unused_data
          self._decompressor = self._zstd.ZstdDecompressor().decompressobj()
          self._in_frame = False
    n = min(len(buffer), len(self._pending))
    buffer[:n] = self._pending[:n]
    self._pending = self._pending[n:]
    return n

  def close(self) -> None:
    self._raw.close()
    super().close()


def _open_stream(path: str, compression: str, offset: int) -> Any:
  """`path` opened for reading bytes, decompressed, at byte `offset` of its contents (a seek
  when uncompressed, else decompressed and dropped)."""
  raw = paths.as_path(path).open('rb')
  try:
    if not compression:
      if offset:
        raw.seek(offset)
      return raw
    if compression == '.gz':
      stream = gzip.GzipFile(fileobj=raw, mode='rb')
    else:
      stream = io.BufferedReader(_ZstdRaw(raw), _CHUNK)
    left = offset
    while left > 0:
      data = stream.read(min(left, _CHUNK))
      if not data:
        raise EOFError(f'the file is shorter than the saved position {offset} (changed?)')
      left -= len(data)
    return stream
  except BaseException:
    raw.close()
    raise


_STREAM_NAMES = {'': 'file', '.gz': 'gzip stream', '.zst': 'zstd stream'}


class _TextReader:
  """The records of a `.txt` or `.jsonl` shard (maybe compressed), by line; position = (next
  line index, byte offset into the decompressed contents)."""

  def __init__(self, path: str, kind: str, compression: str, field: str):
    self.path, self._kind, self._compression, self._field = path, kind, compression, field
    self._stream: Any = None
    self.record, self.offset = 0, 0

  def state(self) -> dict[str, int]:
    return {'record': self.record, 'offset': self.offset}

  def restore(self, state: dict[str, Any]) -> None:
    self.close()
    self.record, self.offset = int(state['record']), int(state['offset'])

  def close(self) -> None:
    if self._stream is not None:
      stream, self._stream = self._stream, None
      try:
        stream.close()
      except Exception:  # pylint: disable=broad-exception-caught  # closing a broken stream
        pass

  def _open(self) -> None:
    try:
      self._stream = _open_stream(self.path, self._compression, self.offset)
    except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
      where = self.path if not self.offset else f'{self.path}:{self.record + 1}'
      verb = 'cannot open' if not self.offset else 'cannot reopen at the saved position'
      raise _BadShard(where, f'{verb} ({paths.reason(e)})') from None

  def next_raw(self) -> tuple[int, bytes] | None:
    """(record index, raw bytes) of the next record, None at the end."""
    if self._kind == '.txt' and self.record > 0:
      return None
    if self._stream is None:
      self._open()
    try:
      raw = self._stream.read() if self._kind == '.txt' else self._stream.readline()
    except Exception as e:  # pylint: disable=broad-exception-caught  # zlib, zstd, I/O errors
      where = self.path if self._kind == '.txt' else f'{self.path}:{self.record + 1}'
      name = _STREAM_NAMES[self._compression]
      raise _BadShard(where, f'corrupt or unreadable {name} ({_why(e)})') from None
    if not raw and self._kind == '.jsonl':
      return None
    index = self.record
    self.record += 1
    self.offset += len(raw)
    return index, raw

  def parse(self, index: int, raw: bytes) -> str | None:
    """The document of a raw record; None for a blank line; a _BadRecord otherwise."""
    if self._kind == '.txt':
      text = _utf8(raw, self.path, 1)
      if not text.strip():
        raise _BadRecord(self.path, 'empty document')
      return text
    where = f'{self.path}:{index + 1}'
    if not raw.strip():
      return None
    line = _utf8(raw, self.path, index + 1)
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise _BadRecord(where, f'invalid JSON ({e.msg})') from None
    return _document(record, self._field, where)


def _document(record: Any, field: str, where: str) -> str:
  """The text under `field` of a decoded record, checked."""
  if not isinstance(record, dict):
    raise _BadRecord(where, f'not a JSON object ({type(record).__name__})')
  if field not in record or record[field] is None:
    raise _BadRecord(where, f'no field {field!r}')
  text = record[field]
  if isinstance(text, bytes):
    text = _utf8(text, where)
  if not isinstance(text, str):
    raise _BadRecord(where, f'field {field!r} is not a string ({type(text).__name__})')
  if not text.strip():
    raise _BadRecord(where, 'empty document')
  return text


def _parquet_file(path: str, field: str) -> tuple[Any, Any]:
  """(open file object, pyarrow ParquetFile) of `path`, the column `field` checked."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  try:
    handle = paths.as_path(path).open('rb')
  except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
    raise _BadShard(path, f'cannot open ({paths.reason(e)})') from None
  try:
    parquet = pq.ParquetFile(handle)
    names = parquet.schema_arrow.names
    if field not in names:
      raise _BadShard(path, f"no column {field!r} (columns: {', '.join(names)})")
    return handle, parquet
  except _BadShard:
    handle.close()
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught  # pyarrow's and I/O errors
    handle.close()
    raise _BadShard(path, f'cannot read as parquet ({_why(e)})') from None


class _ParquetReader:
  """The rows of a `.parquet` shard, one row group in memory; position = (row group, row)."""

  def __init__(self, path: str, field: str):
    self.path, self._field = path, field
    self._handle: Any = None
    self._parquet: Any = None
    self._starts: list[int] = []
    self._rows: list[Any] | None = None
    self.row_group, self.row = 0, 0

  def state(self) -> dict[str, int]:
    return {'row_group': self.row_group, 'row': self.row}

  def restore(self, state: dict[str, Any]) -> None:
    self.close()
    self.row_group, self.row = int(state['row_group']), int(state['row'])

  def close(self) -> None:
    self._rows, self._parquet = None, None
    if self._handle is not None:
      handle, self._handle = self._handle, None
      try:
        handle.close()
      except Exception:  # pylint: disable=broad-exception-caught  # closing a broken stream
        pass

  def next_raw(self) -> tuple[int, Any] | None:
    if self._parquet is None:
      self._handle, self._parquet = _parquet_file(self.path, self._field)
      metadata = self._parquet.metadata
      self._starts = [0]
      for group in range(metadata.num_row_groups):
        self._starts.append(self._starts[-1] + metadata.row_group(group).num_rows)
    while self.row_group < self._parquet.num_row_groups:
      if self._rows is None:
        try:
          table = self._parquet.read_row_group(self.row_group, columns=[self._field])
          self._rows = table.column(0).to_pylist()
        except Exception as e:  # pylint: disable=broad-exception-caught  # pyarrow's errors
          raise _BadShard(f'{self.path}: row group {self.row_group}',
                        f'unreadable ({_why(e)})') from None
      if self.row < len(self._rows):
        index = self._starts[self.row_group] + self.row
        value = self._rows[self.row]
        self.row += 1
        return index, value
      self.row_group, self.row, self._rows = self.row_group + 1, 0, None
    return None

  def parse(self, index: int, value: Any) -> str:
    return _document({self._field: value}, self._field, f'{self.path}: row {index + 1}')


def _reader(path: str, field: str) -> _TextReader | _ParquetReader:
  kind, compression = shard_format(path)
  if kind == '.parquet':
    return _ParquetReader(path, field)
  return _TextReader(path, kind, compression, field)


def check_policy(on_bad_record: str) -> None:
  """A ConfigError naming data.on_bad_record unless it is a known policy."""
  if on_bad_record not in BAD_RECORD_POLICIES:
    raise ConfigError(f"data.on_bad_record must be one of {', '.join(BAD_RECORD_POLICIES)}, "
                      f'got {on_bad_record!r}')


class ShardDataset(grain.IterDataset):
  """The records of one shard in file order, as `{'text': str, 'bad_records': int}`.

  `keep=(count, index)` keeps only the records whose index in the shard (line, row) is
  `index` modulo `count` (the others are not even parsed): how several processes share a shard.
  With `end_marker`, the shard's last element is `{'text': None, 'bad_records': n}`, carrying
  the records skipped after the last document (else they go uncounted) and telling the consumer
  that a shard ended; source_datasets.py consumes these markers."""

  def __init__(self, path: str, *, field: str = 'text', on_bad_record: str = 'error',
               keep: tuple[int, int] = (1, 0), end_marker: bool = False):
    super().__init__()
    check_policy(on_bad_record)
    shard_format(path)
    self.path, self.field, self.on_bad_record = path, field, on_bad_record
    self.keep, self.end_marker = (int(keep[0]), int(keep[1])), end_marker

  def __iter__(self) -> ShardIterator:
    return ShardIterator(self)

  def __str__(self) -> str:
    return f'ShardDataset({self.path})'


class ShardIterator(grain.DatasetIterator):
  """The iterator of a ShardDataset. The file is opened on the first `next`, not before.

  State (JSON): text shards `{'record': next line index, 'offset': bytes read (of the
  decompressed contents), 'done': 0|1}`; parquet `{'row_group', 'row', 'done'}`. A restored
  iterator seeks to `offset` (uncompressed) or decompresses and drops `offset` bytes."""

  def __init__(self, shard: ShardDataset):
    super().__init__()
    self._shard = shard
    self._reader = _reader(shard.path, shard.field)
    self._done = False

  def _count(self, message: str) -> int:
    if self._shard.on_bad_record == 'error':
      self._reader.close()
      raise DataError(f'{WHAT}: {message}')
    return 1

  def __next__(self) -> dict[str, Any]:
    if self._done:
      raise StopIteration
    count, keep = self._shard.keep
    bad = 0
    while True:
      try:
        raw = self._reader.next_raw()
      except _BadShard as e:
        bad += self._count(str(e))
        raw = None
      if raw is None:
        self._done = True
        self._reader.close()
        if self._shard.end_marker:
          return {'text': None, 'bad_records': bad}
        raise StopIteration
      index, payload = raw
      if index % count != keep:
        continue
      try:
        text = self._reader.parse(index, payload)
      except _BadRecord as e:
        bad += self._count(str(e))
        continue
      if text is not None:
        return {'text': text, 'bad_records': bad}

  def get_state(self) -> dict[str, int]:
    return {**self._reader.state(), 'done': int(self._done)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._reader.restore(state)
    self._done = bool(state['done'])

  def close(self) -> None:
    self._reader.close()

  def __str__(self) -> str:
    return f'ShardIterator({self._shard.path})'


def probe_shard(path: str, field: str = 'text') -> str | None:
  """Why the shard `path` cannot be read (one line), or None when it looks fine. Cheap: parquet
  reads the footer and checks the column; a compressed file decodes its first 64 KiB; a .jsonl
  file parses its first non-blank line and checks the field."""
  try:
    kind, compression = shard_format(path)
  except DataError as e:
    return str(e).split(': ', 2)[-1]
  try:
    if kind == '.parquet':
      handle, _ = _parquet_file(path, field)
      handle.close()
      return None
    if kind == '.txt':
      with _open_stream(path, compression, 0) as stream:
        stream.read(_PROBE_BYTES)
      return None
    reader = _TextReader(path, kind, compression, field)
    try:
      while (raw := reader.next_raw()) is not None:
        if reader.parse(*raw) is not None:
          break
    finally:
      reader.close()
    return None
  except _BadShard as e:
    return e.why
  except _BadRecord as e:
    return f'first record: {e.why}'
  except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
    return f'cannot read ({paths.reason(e)})'
