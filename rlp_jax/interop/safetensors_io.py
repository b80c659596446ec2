"""Reading and writing Hugging Face safetensors checkpoints, one tensor at a time.

A checkpoint directory holds either one `model.safetensors` or shards named in
`model.safetensors.index.json` (`{"weight_map": {tensor name: shard file}}`). `SafetensorsReader`
opens every file lazily (`safe_open`) and reads a tensor, or one block of it (`read_slice`), only
when asked, so a large checkpoint is never held in memory twice and a process can read just the
slices its devices hold. `write_safetensors` writes tensors produced one at a time into a single
file or into shards of bounded size with the index transformers expects.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
import json
import math
import os
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from rlp_jax.errors import DataError

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'

_DTYPES = {
    'F64': np.dtype(np.float64), 'F32': np.dtype(np.float32), 'F16': np.dtype(np.float16),
    'BF16': np.dtype(ml_dtypes.bfloat16), 'I64': np.dtype(np.int64), 'I32': np.dtype(np.int32),
    'I16': np.dtype(np.int16), 'I8': np.dtype(np.int8), 'U8': np.dtype(np.uint8),
    'BOOL': np.dtype(np.bool_),
}


def has_safetensors(directory: str) -> bool:
  """Whether `directory` holds a single-file or an indexed (sharded) safetensors checkpoint."""
  return (os.path.isfile(os.path.join(directory, INDEX_FILE))
          or os.path.isfile(os.path.join(directory, SINGLE_FILE)))


class SafetensorsReader:
  """Lazy access to the tensors of a safetensors checkpoint directory (single file or sharded).

  Use as a context manager (or call `close`) to release the open files.
  """

  def __init__(self, directory: str):
    self.directory = os.path.abspath(os.path.expanduser(directory))
    if not os.path.isdir(self.directory):
      raise DataError(f'no such checkpoint directory {self.directory}')
    self._file_of = self._tensor_files()
    self._handles: dict[str, Any] = {}

  def _tensor_files(self) -> dict[str, str]:
    """Tensor name → absolute file path."""
    index_path = os.path.join(self.directory, INDEX_FILE)
    if os.path.isfile(index_path):
      try:
        with open(index_path, encoding='utf-8') as f:
          weight_map = json.load(f)['weight_map']
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f'cannot read the weight_map of {index_path}: {e}') from e
      files = {name: os.path.join(self.directory, file) for name, file in weight_map.items()}
      for path in sorted(set(files.values())):
        if not os.path.isfile(path):
          raise DataError(f'{index_path} names a shard that does not exist: {path}')
      return files
    single = os.path.join(self.directory, SINGLE_FILE)
    if not os.path.isfile(single):
      raise DataError(f'{self.directory} has neither {SINGLE_FILE} nor {INDEX_FILE}')
    with self._open_file(single) as handle:
      return {name: single for name in handle.keys()}

  @staticmethod
  def _open_file(path: str):
    try:
      return safe_open(path, framework='numpy')
    except Exception as e:  # safetensors raises its own error types
      raise DataError(f'cannot open safetensors file {path}: {e}') from e

  def _handle(self, path: str):
    if path not in self._handles:
      self._handles[path] = self._open_file(path).__enter__()
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
      return tuple(self._handle(path).get_slice(name).get_shape())
    except Exception as e:
      raise DataError(f'tensor {name} listed for {path} cannot be read there: {e}') from e

  def read(self, name: str) -> np.ndarray:
    """The tensor as a numpy array in its stored dtype (bf16 as ml_dtypes.bfloat16)."""
    path = self.file_of(name)
    try:
      return self._handle(path).get_tensor(name)
    except Exception as e:
      raise DataError(f'tensor {name} cannot be read from {path}: {e}') from e

  def read_slice(self, name: str, box: tuple[slice, ...]) -> np.ndarray:
    """The block `box` (one slice per axis) of the tensor, reading only its bytes
    (`safe_open(...).get_slice(name)[box]`)."""
    path = self.file_of(name)
    try:
      return self._handle(path).get_slice(name)[tuple(box)]
    except Exception as e:
      raise DataError(f'tensor {name} cannot be read from {path}: {e}') from e

  def close(self) -> None:
    for handle in self._handles.values():
      handle.__exit__(None, None, None)
    self._handles.clear()

  def __enter__(self) -> 'SafetensorsReader':
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


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
  shard is in memory. Returns the written file names.
  """
  specs = list(specs)
  expected = {name: (tuple(shape), np.dtype(dtype)) for name, shape, dtype in specs}
  sizes = [(name, math.prod(shape) * np.dtype(dtype).itemsize) for name, shape, dtype in specs]
  shards = _shard_plan(sizes, max_shard_bytes)
  os.makedirs(directory, exist_ok=True)
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
    save_file(tensors, os.path.join(directory, file), metadata={'format': 'pt'})
    del tensors
  if len(files) > 1:
    index = {'metadata': {'total_size': sum(size for _, size in sizes)}, 'weight_map': weight_map}
    with open(os.path.join(directory, INDEX_FILE), 'w', encoding='utf-8') as f:
      json.dump(index, f, indent=2)
  elif os.path.exists(os.path.join(directory, INDEX_FILE)):
    os.remove(os.path.join(directory, INDEX_FILE))  # a stale index would shadow the single file
  return files
