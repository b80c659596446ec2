"""TFDS builders for the corpora (array_record files, read without TensorFlow).

`ReasoningCorpus` holds the embedded generated reasoning documents; `LocalText` the user's own
.txt / .jsonl files, local or at URLs (`data.files=gs://bucket/texts/*.jsonl`; listed and read
through rlp_jax.paths). A builder config name carries the dataset identity (document count and seed,
or a hash of the resolved files with their sizes and mtimes), so a changed input builds a new
dataset next to the old one instead of reusing it. Bump `VERSION` when the generator changes.

Only this module imports tensorflow_datasets; the rest of the package imports it lazily. The entry
point `load_documents` lives in `rlp_jax.data.corpora` (importable without TFDS).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import dataclasses
import hashlib
import json
import logging

import tensorflow_datasets as tfds

from rlp_jax import paths
from rlp_jax.data import reasoning_corpus
from rlp_jax.errors import ConfigError, DataError

FILE_FORMAT = 'array_record'
VALIDATION_FRACTION = 0.02
LOCAL_TEXT_SUFFIXES = ('.txt', '.jsonl')


class _QuietCustomConfigs(logging.Filter):
  """Drops TFDS's warning for every dynamically created builder config (they all are)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Using custom data configuration')


logging.getLogger('absl').addFilter(_QuietCustomConfigs())


def validation_size(num_documents: int) -> int:
  """How many of the last documents form the validation split (at least one)."""
  return max(1, round(VALIDATION_FRACTION * num_documents))


@dataclasses.dataclass(eq=False)
class ReasoningCorpusConfig(tfds.core.BuilderConfig):
  """Which generated documents: 0..num_documents-1 of the corpus with `seed`."""
  num_documents: int = 1000
  seed: int = 0
  worked_fraction: float = reasoning_corpus.WORKED_FRACTION


class ReasoningCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Generated reasoning documents; the last ~2% form the validation split."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Arithmetic, word problems, comparisons and small algebra.',
                   '1.1.0': 'Worked steps are a <think> ... </think> thought before the answer.'}

  def __init__(self, *, num_documents: int | None = None, seed: int | None = None,
               config: ReasoningCorpusConfig | None = None, **kwargs):
    if config is None:
      config = reasoning_corpus_config(num_documents or 0, seed or 0)
    kwargs.setdefault('file_format', FILE_FORMAT)
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Seeded reasoning-flavoured English documents.',
        features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    n = self.builder_config.num_documents
    n_train = n - validation_size(n)
    return {'train': self._generate_examples(0, n_train),
            'validation': self._generate_examples(n_train, n)}

  def _generate_examples(self, start: int, stop: int):
    seed = self.builder_config.seed
    for index in range(start, stop):
      yield index, {'text': reasoning_corpus.reasoning_document(
          index, seed, self.builder_config.worked_fraction)}


def reasoning_corpus_config(num_documents: int, seed: int,
                            worked_fraction: float = reasoning_corpus.WORKED_FRACTION,
                            ) -> ReasoningCorpusConfig:
  """The builder config for `num_documents` documents with `seed` (checked); a worked fraction
  other than the default is part of the name (the default keeps the name it always had)."""
  if not isinstance(num_documents, int) or num_documents < 2:
    raise ConfigError(f'data.num_documents must be an int >= 2, got {num_documents!r}')
  if not isinstance(seed, int) or seed < 0:
    raise ConfigError(f'data.corpus_seed must be an int >= 0, got {seed!r}')
  if not 0.0 <= worked_fraction <= 1.0:
    raise ConfigError(f'data.worked_fraction must be in [0, 1], got {worked_fraction!r}')
  name = f'n{num_documents}_s{seed}'
  if worked_fraction != reasoning_corpus.WORKED_FRACTION:
    name += f'_w{worked_fraction:g}'
  return ReasoningCorpusConfig(name=name, worked_fraction=float(worked_fraction),
                               num_documents=num_documents,
                               seed=seed)


@dataclasses.dataclass(eq=False)
class LocalTextConfig(tfds.core.BuilderConfig):
  """The user's files (resolved, in order) and the jsonl field that holds the text."""
  files: tuple[str, ...] = ()
  text_field: str = 'text'


class LocalText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The user's text: a .txt file is one document, a .jsonl line is one document."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'One document per .txt file or per .jsonl line.'}

  def __init__(self, *, files: Sequence[str] | str | None = None, text_field: str = 'text',
               config: LocalTextConfig | None = None, **kwargs):
    if config is None:
      config = local_text_config(files or (), text_field)
    kwargs.setdefault('file_format', FILE_FORMAT)
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description='Documents from local .txt / .jsonl files.',
        features=tfds.features.FeaturesDict({'text': tfds.features.Text()}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    files, field = self.builder_config.files, self.builder_config.text_field
    n = sum(1 for _ in local_documents(files, field))
    if n < 2:
      raise DataError(f'data.files: need at least 2 non-empty documents, found {n} in '
                      f"{', '.join(files)}")
    n_train = n - validation_size(n)
    return {'train': self._generate_examples(0, n_train),
            'validation': self._generate_examples(n_train, n)}

  def _generate_examples(self, start: int, stop: int):
    files, field = self.builder_config.files, self.builder_config.text_field
    for index, text in enumerate(local_documents(files, field)):
      if index >= stop:
        break
      if index >= start:
        yield index, {'text': text}


def resolve_files(patterns: Sequence[str] | str) -> list[str]:
  """Expands comma-separated paths/globs (local or URLs) into a de-duplicated list of .txt/.jsonl
  files: absolute local paths or URLs."""
  if isinstance(patterns, str):
    patterns = patterns.split(',')
  patterns = [p.strip() for p in patterns if p.strip()]
  if not patterns:
    raise ConfigError('data.files is empty; give comma-separated .txt/.jsonl paths or globs')
  files: list[str] = []
  for pattern in patterns:
    for path in paths.glob_files(pattern, 'data.files'):
      if paths.is_dir(path):
        raise DataError(f'data.files: {path} is a directory; use a glob such as {path}/*.txt')
      if not path.endswith(LOCAL_TEXT_SUFFIXES):
        raise DataError(f'data.files: {path} is neither .txt nor .jsonl')
      if path not in files:
        files.append(path)
  return files


def local_text_config(patterns: Sequence[str] | str, text_field: str = 'text') -> LocalTextConfig:
  """The builder config for the files that `patterns` match now (identity hashes their stats)."""
  if not text_field:
    raise ConfigError('data.text_field is empty')
  files = resolve_files(patterns)
  digest = hashlib.sha256(text_field.encode())
  for path in files:
    size, mtime = paths.size_and_mtime(path)
    digest.update(f'\0{path}\0{size}\0{mtime}'.encode())
  return LocalTextConfig(name=f'files_{digest.hexdigest()[:16]}', files=tuple(files),
                         text_field=text_field)


def _read_text(path: str) -> str:
  try:
    with paths.read_utf8(path) as f:
      return f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'data.files: cannot read {path} as UTF-8 text: {e}') from e


def _jsonl_texts(path: str, text_field: str) -> Iterator[str]:
  try:
    with paths.read_utf8(path) as f:
      for line_number, line in enumerate(f, start=1):
        if line.strip():
          yield _jsonl_text(line, f'{path}:{line_number}', text_field)
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'data.files: cannot read {path} as UTF-8 text: {e}') from e


def _jsonl_text(line: str, where: str, text_field: str) -> str:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise DataError(f'data.files: {where} is not valid JSON: {e}') from e
  if not isinstance(record, dict) or text_field not in record:
    raise DataError(f'data.files: {where} has no field {text_field!r} (data.text_field)')
  text = record[text_field]
  if not isinstance(text, str):
    raise DataError(f'data.files: {where} field {text_field!r} is not a string')
  return text


def local_documents(files: Sequence[str], text_field: str = 'text') -> Iterator[str]:
  """The non-empty documents of `files`, in order."""
  for path in files:
    texts = _jsonl_texts(path, text_field) if path.endswith('.jsonl') else [_read_text(path)]
    for text in texts:
      if text:
        yield text
