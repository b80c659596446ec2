"""The configured corpus as a random-access sequence of document strings.

`load_documents(data_config)` builds the corpus's TFDS dataset under the data directory on first
use and reads it back (array_record, no TensorFlow) afterwards. tensorflow_datasets is imported only
when a corpus is actually built or read. `data_config` is a config's `data` section with every key
declared (e.g. `base_config().data`); nothing here fills in defaults.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import hashlib
import os
from typing import Any, overload

from rlp_jax import paths
from rlp_jax.errors import ConfigError

CORPORA = ('reasoning', 'local_text')
SPLITS = ('train', 'validation')
DATA_DIR_ENV = 'RLP_JAX_DATA_DIR'
DEFAULT_DATA_DIR = os.path.join('~', '.cache', 'rlp_jax', 'data')
# array_record reads and writes local files only: a URL data dir's corpora are built or read in a
# local staging directory (one per URL) and copied to / from the URL whole.
STAGING_DIR_ENV = 'RLP_JAX_STAGING_DIR'
DEFAULT_STAGING_DIR = os.path.join('~', '.cache', 'rlp_jax', 'staged')


def resolve_data_dir(data_config: Any) -> str:
  """data.data_dir, else $RLP_JAX_DATA_DIR, else ~/.cache/rlp_jax/data (local: absolute; a URL
  such as gs://bucket/data: as given)."""
  data_dir = data_config.data_dir or os.environ.get(DATA_DIR_ENV, '')
  return paths.resolve_str(data_dir or DEFAULT_DATA_DIR, 'data.data_dir')


def local_data_dir(data_dir: str) -> str:
  """Where TFDS builds and reads the corpora of `data_dir`: itself when local, else its staging
  directory ($RLP_JAX_STAGING_DIR or ~/.cache/rlp_jax/staged, one subdirectory per URL)."""
  if not paths.is_url(data_dir):
    return data_dir
  root = os.path.abspath(os.path.expanduser(os.environ.get(STAGING_DIR_ENV)
                                            or DEFAULT_STAGING_DIR))
  return os.path.join(root, hashlib.sha256(data_dir.encode()).hexdigest()[:16])


def corpus_builder(data_config: Any):
  """The TFDS builder of the configured corpus (nothing is built yet)."""
  from rlp_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  corpus = data_config.corpus
  data_dir = local_data_dir(resolve_data_dir(data_config))
  if corpus == 'reasoning':
    config = tfds_builders.reasoning_corpus_config(
        data_config.num_documents, data_config.corpus_seed, data_config.worked_fraction)
    return tfds_builders.ReasoningCorpus(config=config, data_dir=data_dir)
  if corpus == 'local_text':
    config = tfds_builders.local_text_config(data_config.files, data_config.text_field)
    return tfds_builders.LocalText(config=config, data_dir=data_dir)
  raise ConfigError(f"data.corpus must be one of {', '.join(CORPORA)}, got {corpus!r}")


def corpus_identity(data_config: Any) -> str:
  """A short name that changes whenever the corpus contents would (e.g. for cache names)."""
  builder = corpus_builder(data_config)
  return f'{builder.name}-{builder.builder_config.name}-{builder.version}'


def _text(record: dict[str, Any]) -> str:
  text = record['text']
  return text.decode('utf-8') if isinstance(text, bytes) else str(text)


class TextSource(Sequence[str]):
  """Random access to the documents of one split, decoded to str."""

  def __init__(self, data_source: Any, description: str):
    self._data_source = data_source
    self.description = description

  def __len__(self) -> int:
    return len(self._data_source)

  @overload
  def __getitem__(self, index: int) -> str: ...

  @overload
  def __getitem__(self, index: slice) -> list[str]: ...

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    n = len(self)
    if not -n <= index < n:
      raise IndexError(f'document {index} out of range for {self.description} ({n} documents)')
    return _text(self._data_source[index % n])

  def __iter__(self) -> Iterator[str]:
    """All documents in order, read in chunks (much faster than one by one)."""
    n, chunk = len(self), 1024
    for start in range(0, n, chunk):
      for record in self._data_source.__getitems__(range(start, min(start + chunk, n))):
        yield _text(record)

  def __repr__(self) -> str:
    return f'TextSource({self.description}, {len(self)} documents)'


def load_documents(data_config: Any, split: str = 'train') -> Sequence[str]:
  """The documents of `split` of the configured corpus, built under the data dir on first use."""
  if split not in SPLITS:
    raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
  builder = corpus_builder(data_config)
  data_dir = resolve_data_dir(data_config)
  if paths.is_url(data_dir):
    builder = _staged(data_config, builder, data_dir)
  elif not builder.is_prepared():
    builder.download_and_prepare()
  return TextSource(builder.as_data_source(split=split),
                    f'{builder.name}/{builder.builder_config.name}[{split}]')


def _staged(data_config: Any, builder: Any, data_dir: str) -> Any:
  """The builder of a URL data dir, prepared in its staging directory: copied down from the URL
  when it is there, else built and copied up (whole files, `dataset_info.json` last, so a copy
  cut off is not taken for a prepared corpus)."""
  relative = os.path.relpath(os.fspath(builder.data_dir), local_data_dir(data_dir))
  remote = paths.join(data_dir, relative)
  if builder.is_prepared():
    return builder
  if paths.exists(paths.join(remote, 'dataset_info.json')):
    _copy_dataset(remote, os.fspath(builder.data_dir))
    return corpus_builder(data_config)  # reads the copied dataset_info.json
  builder.download_and_prepare()
  _copy_dataset(os.fspath(builder.data_dir), remote)
  return builder


def _copy_dataset(source: str, destination: str) -> None:
  """Copies a prepared TFDS dataset directory, its dataset_info.json last."""
  info = 'dataset_info.json'
  paths.makedirs(destination)
  for child in paths.as_path(source).iterdir():
    if child.name == info:
      continue
    target = paths.as_path(paths.join(destination, child.name))
    if child.is_dir():
      paths.copy_tree(child, target)
    else:
      target.write_bytes(child.read_bytes())
  paths.write_atomically(paths.join(destination, info), paths.read_bytes(paths.join(source, info)))
