"""Reading and writing Hugging Face safetensors checkpoints, one tensor at a time.

A checkpoint directory (local or a URL such as gs://bucket/model, through rlp_jax.paths) holds
either one `model.safetensors` or shards named in `model.safetensors.index.json`
(`{"weight_map": {tensor name: shard file}}`). `SafetensorsReader` opens every file lazily and
reads a tensor, or one block of it (`read_slice`), only when asked, so a large checkpoint is never
held in memory twice and a process can read just the slices its devices hold:

- a local file through the safetensors library (`safe_open`, memory-mapped);
- a file at a URL with seek/read on an epath file handle (`UrlSafetensorsFile`): the 8-byte
  little-endian header length and the JSON header (dtype, shape, data_offsets per tensor) once,
  then for a block only the byte ranges it covers in the row-major data: one range per run of
  contiguous elements, in file order (one range when the block splits only the first axis, whole
  rows when it takes whole trailing axes). Nothing else of the file is asked for. gcsfs and s3fs
  file handles read a block (about 5 MB) ahead, so a block of a tensor that splits every row (many
  small ranges close together) costs a few requests, not one per row, and may fetch up to one
  read-ahead block past what it needs.

`write_safetensors` writes tensors produced one at a time into a single file or into shards of
bounded size with the index transformers expects; at a URL each file is serialised in memory
(`safetensors.numpy.save`) and written as one object. The weight files of an earlier export in
the same directory (`model.safetensors`, `model-NNNNN-of-NNNNN.safetensors`, the index; no other
file) are removed first: transformers prefers a single file to an index, so one left beside new
shards would be what it loads.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
import json
import math
import re
import struct
import threading
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save, save_file

from rlp_jax import paths
from rlp_jax.errors import DataError
from rlp_jax.interop.param_slices import flat_runs

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
# The names transformers gives the weight files of a checkpoint (what a re-export replaces).
_WEIGHT_FILE = re.compile(r'^model(-\d{5}-of-\d{5})?\.safetensors$'
                          r'|^model\.safetensors\.index\.json$')

_DTYPES = {
    'F64': np.dtype(np.float64), 'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
    'BF16': np.dtype(ml_dtypes.bfloat16), 'I64': np.dtype(np.int64), 'I32': np.dtype(np.int32),
    'I16': np.dtype(np.int16), 'I8': np.dtype(np.int8), 'U8': np.dtype(np.uint8),
    'BOOL': np.dtype(np.bool_),
}


def has_safetensors(directory: str) -> bool:
  """Whether `directory` holds a single-file or an indexed (sharded) safetensors checkpoint."""
  return (paths.is_file(paths.join(directory, INDEX_FILE))
          or paths.is_file(paths.join(directory, SINGLE_FILE)))


class SafetensorsReader:
  """Lazy access to the tensors of a safetensors checkpoint directory (single file or sharded),
  local or at a URL.

  Use as a context manager (or call `close`) to release the open files.
  """

  def __init__(self, directory: str):
    self.directory = paths.resolve_str(directory, 'safetensors directory')
    if not paths.is_dir(self.directory):
      raise DataError(f'no such checkpoint directory {self.directory}')
    self._handles: dict[str, Any] = {}
    self._file_of = self._tensor_files()

  def _tensor_files(self) -> dict[str, str]:
    """Tensor name → file path (absolute, or a URL)."""
    index_path = paths.join(self.directory, INDEX_FILE)
    if paths.is_file(index_path):
      try:
        weight_map = json.loads(paths.read_bytes(index_path))['weight_map']
        files = {name: paths.join(self.directory, file) for name, file in weight_map.items()}
      except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f'cannot read the weight_map of {index_path}: {e}') from e
      for path in sorted(set(files.values())):
        if not paths.is_file(path):
          raise DataError(f'{index_path} names a shard that does not exist: {path}')
      return files
    single = paths.join(self.directory, SINGLE_FILE)
    if not paths.is_file(single):
      raise DataError(f'{self.directory} has neither {SINGLE_FILE} nor {INDEX_FILE}')
    return {name: single for name in self._handle(single).names()}

  def _handle(self, path: str) -> 'LocalSafetensorsFile | UrlSafetensorsFile':
    if path not in self._handles:
      opener = UrlSafetensorsFile if paths.is_url(path) else LocalSafetensorsFile
      self._handles[path] = opener(path)
    return self._handles[path]

  def names(self) -> list[str]:
    return sorted(self._file_of)

  def __contains__(self, name: str) -> bool:
    return name in self._file_of

  def file_of(self, name: str) -> str:
    """The file holding tensor `name`; DataError naming the tensor and directory if absent."""
    if name not in self._file_of:
      raise DataError(f'tensor {name} is missing from the checkpoint in {self.directory}')
    return self._file_of[name]

  def shape(self, name: str) -> tuple[int, ...]:
    """Shape from the file header, without reading the data."""
    path = self.file_of(name)
    try:
      return self._handle(path).shape(name)
    except DataError:
      raise
    except Exception as e:
      raise DataError(f'tensor {name} listed for {path} cannot be read there: {e}') from e

  def read(self, name: str) -> np.ndarray:
    """The tensor as a numpy array in its stored dtype (bf16 as ml_dtypes.bfloat16)."""
    path = self.file_of(name)
    try:
      return self._handle(path).read(name)
    except DataError:
      raise
    except Exception as e:
      raise DataError(f'tensor {name} cannot be read from {path}: {e}') from e

  def read_slice(self, name: str, box: tuple[slice, ...]) -> np.ndarray:
    """The block `box` (one slice of step 1 per axis) of the tensor, reading only its bytes."""
    path = self.file_of(name)
    try:
      return self._handle(path).read_box(name, tuple(box))
    except DataError:
      raise
    except Exception as e:
      raise DataError(f'tensor {name} cannot be read from {path}: {e}') from e

  def close(self) -> None:
    for handle in self._handles.values():
      handle.close()
    self._handles.clear()

  def __enter__(self) -> 'SafetensorsReader':
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class LocalSafetensorsFile:
  """A local safetensors file through the safetensors library (memory-mapped)."""

  def __init__(self, path: str):
    try:
      self._handle = safe_open(path, framework='numpy').__enter__()
    except Exception as e:  # safetensors raises its own error types
      raise DataError(f'cannot open safetensors file {path}: {e}') from e

  def names(self) -> list[str]:
    return list(self._handle.keys())

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle.get_slice(name).get_shape())

  def read(self, name: str) -> np.ndarray:
    return self._handle.get_tensor(name)

  def read_box(self, name: str, box: tuple[slice, ...]) -> np.ndarray:
    return self._handle.get_slice(name)[box]

  def close(self) -> None:
    self._handle.__exit__(None, None, None)


class UrlSafetensorsFile:
  """A safetensors file at a URL, read with seek/read on one epath file handle: the header when
  opened, then only the bytes of each block asked for (see the module docstring)."""

  def __init__(self, path: str):
    self.path = path
    self._lock = threading.Lock()  # one handle: seek + read must not interleave
    try:
      self._file = paths.as_path(path).open('rb')
    except Exception as e:  # any backend's error
      raise DataError(f'cannot open safetensors file {path}: {paths.reason(e)}') from e
    try:
      self._entries, self._data_start = self._read_header()
    except BaseException:
      self._file.close()
      raise

  def _read_header(self) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...], int]], int]:
    """{name: (dtype, shape, first byte of its data in the file)}, and where the data starts."""
    (length,) = struct.unpack('<Q', self._read_at(0, 8, 'the header length'))
    if length > _MAX_HEADER_BYTES:
      raise DataError(f'cannot open safetensors file {self.path}: a header of {length} bytes '
                      'is not a safetensors header')
    try:
      header = json.loads(self._read_at(8, length, 'the header'))
    except ValueError as e:
      raise DataError(f'cannot open safetensors file {self.path}: its header is not JSON '
                      f'({e})') from e
    data_start = 8 + length
    entries = {}
    for name, entry in header.items():
      if name == '__metadata__':
        continue
      try:
        dtype, shape = entry['dtype'], tuple(int(n) for n in entry['shape'])
        begin, end = (int(n) for n in entry['data_offsets'])
      except (KeyError, TypeError, ValueError) as e:
        raise DataError(f'{self.path}: the header entry of tensor {name} is malformed') from e
      if dtype not in _DTYPES:
        raise DataError(f'{self.path}: tensor {name} has dtype {dtype}, which rlp_jax does not '
                        f'read (known: {", ".join(_DTYPES)})')
      if end - begin != math.prod(shape) * _DTYPES[dtype].itemsize:
        raise DataError(f'{self.path}: tensor {name} has data_offsets {[begin, end]}, which do '
                        f'not fit its shape {list(shape)} and dtype {dtype}')
      entries[name] = (_DTYPES[dtype], shape, data_start + begin)
    return entries, data_start

  def _read_at(self, offset: int, size: int, what: str) -> bytes:
    with self._lock:
      self._file.seek(offset)
      chunks, left = [], size
      while left > 0:
        chunk = self._file.read(left)
        if not chunk:
          raise DataError(f'{self.path} ends before {what} (wanted bytes {offset}..'
                          f'{offset + size}): a truncated safetensors file')
        chunks.append(chunk)
        left -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b''.join(chunks)

  def _entry(self, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    if name not in self._entries:
      raise DataError(f'tensor {name} is not in {self.path}')
    return self._entries[name]

  def names(self) -> list[str]:
    return list(self._entries)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._entry(name)[1]

  def read(self, name: str) -> np.ndarray:
    return self.read_box(name, tuple(slice(None) for _ in self.shape(name)))

  def read_box(self, name: str, box: tuple[slice, ...]) -> np.ndarray:
    dtype, shape, start = self._entry(name)
    if len(box) != len(shape):
      raise ValueError(f'a box of {len(box)} axes for tensor {name} of shape {list(shape)}')
    bounds = []
    for item, size in zip(box, shape):
      begin, end, step = item.indices(size)
      if step != 1:
        raise ValueError(f'box {box} of tensor {name}: only slices of step 1 are read')
      bounds.append((begin, max(begin, end)))
    runs = flat_runs(shape, tuple(bounds))
    size = dtype.itemsize
    ranges = [(start + first * size, start + last * size) for first, last in runs]
    block = np.empty(sum(last - first for first, last in ranges), np.uint8)
    filled = 0
    for first, last in ranges:
      block[filled:filled + last - first] = np.frombuffer(
          self._read_at(first, last - first, f'the data of tensor {name}'), np.uint8)
      filled += last - first
    return block.view(dtype).reshape([end - begin for begin, end in bounds])

  def close(self) -> None:
    self._file.close()


def _shard_plan(sizes: list[tuple[str, int]], max_shard_bytes: int | None) -> list[list[str]]:
  """Tensor names grouped into consecutive shards of at most `max_shard_bytes` (one tensor larger
  than the bound gets a shard of its own)."""
  shards: list[list[str]] = [[]]
  filled = 0
  for name, size in sizes:
    if max_shard_bytes is not None and shards[-1] and filled + size > max_shard_bytes:
      shards.append([])
      filled = 0
    shards[-1].append(name)
    filled += size
  return shards


def write_safetensors(directory: str, specs: Iterable[tuple[str, tuple[int, ...], Any]],
                      produce: Callable[[str], np.ndarray],
                      max_shard_bytes: int | None = None) -> list[str]:
  """Writes tensors into `directory`: one `model.safetensors`, or shards plus the index.

  `specs` gives (name, shape, numpy dtype) for every tensor, in file order, so the shard layout is
  known before any data is produced; `produce(name)` returns one tensor at a time, so at most one
  shard is in memory (at a URL twice: its tensors and its serialised bytes). `directory` is local
  or a URL. Returns the names of the written weight files (the index left out).
  """
  specs = list(specs)
  expected = {name: (tuple(shape), np.dtype(dtype)) for name, shape, dtype in specs}
  sizes = [(name, math.prod(shape) * np.dtype(dtype).itemsize) for name, shape, dtype in specs]
  shards = _shard_plan(sizes, max_shard_bytes)
  url = paths.is_url(directory)
  paths.makedirs(directory)
  remove_weight_files(directory)
  if len(shards) == 1:
    files = [SINGLE_FILE]
  else:
    files = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
  weight_map = {}
  for file, names in zip(files, shards):
    tensors = {}
    for name in names:
      array = np.ascontiguousarray(produce(name))
      if (array.shape, array.dtype) != expected[name]:
        raise ValueError(f'{name}: produced {array.shape} {array.dtype}, planned {expected[name]}')
      tensors[name] = array
      weight_map[name] = file
    target = paths.join(directory, file)
    if url:  # one object, written whole
      paths.write_bytes(target, save(tensors, metadata={'format': 'pt'}))
    else:
      save_file(tensors, target, metadata={'format': 'pt'})
    del tensors
  if len(files) > 1:  # last: a directory whose export stopped early has no index to load
    index = {'metadata': {'total_size': sum(size for _, size in sizes)}, 'weight_map': weight_map}
    paths.write_atomically(paths.join(directory, INDEX_FILE), json.dumps(index, indent=2))
  return files


def remove_weight_files(directory: str) -> list[str]:
  """Removes the safetensors weight files (single file, shards, index) in `directory`, and only
  those; returns their names."""
  names = sorted(path.name for path in paths.as_path(directory).iterdir()
                 if _WEIGHT_FILE.match(path.name))
  for name in names:
    paths.remove(paths.join(directory, name))
  return names
