"""Tokenizers: the protocol the rest of rlp_jax uses, and its SentencePiece implementation.

Every tokenizer has single ids for `<think>` and `</think>` (the thought delimiters of RLP) and
explicit pad/bos/eos ids. Both implementations also have `encode_batch(texts)`, which the data
loader's workers call on chunks of documents (data/loader.py falls back to `encode` per text for a
tokenizer without it), and pickle (the workers are separate processes). `build_tokenizer` loads a model file, or trains one on the configured
corpus at first use and caches it under `<data_dir>/tokenizers/`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
import io
from typing import Any, Protocol, runtime_checkable

import sentencepiece as spm

from rlp_jax import paths
from rlp_jax.data.special_tokens import NEWLINE, THINK_END, THINK_START
from rlp_jax.errors import ConfigError, DataError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
TOKENIZER_KINDS = ('sentencepiece', 'hf_json')
# Byte fallback needs 256 byte pieces; smaller vocabularies train without it (unseen characters
# then decode as unk).
BYTE_FALLBACK_MIN_VOCAB = 384
# Lines longer than this are cut into chunks for training (sentencepiece skips long sentences).
_MAX_TRAINING_CHARS = 1000
_MAX_TRAINING_SENTENCES = 2_000_000
# Part of cached model names: bump when the training settings change.
TRAINING_RECIPE = 1


@runtime_checkable
class Tokenizer(Protocol):
  """What the framework needs from a tokenizer (SentencePiece now, HF tokenizer.json later)."""

  @property
  def vocab_size(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  @property
  def bos_id(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def think_start_id(self) -> int: ...

  @property
  def think_end_id(self) -> int: ...

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; think ids render as <think> / </think>, pad/bos/eos are dropped."""


class SentencePieceTokenizer:
  """A SentencePiece model with <think> / </think> user-defined symbols and pad/bos/eos ids."""

  def __init__(self, model_path: str | None = None, *, model_proto: bytes | None = None):
    """`model_path` (local or a URL, read through rlp_jax.paths) or the model's bytes."""
    where = model_path or '<in-memory model>'
    self._sp = spm.SentencePieceProcessor()
    try:
      if model_proto is None:
        model_proto = paths.read_bytes(model_path)
      self._sp.load_from_serialized_proto(model_proto)
    except (OSError, RuntimeError) as e:
      raise DataError(f'tokenizer.path: cannot load sentencepiece model {where}: {e}') from e
    self.model_path = model_path
    self._think_start_id = self._piece_id(THINK_START, where)
    self._think_end_id = self._piece_id(THINK_END, where)
    for name in ('pad', 'bos', 'eos'):
      if getattr(self._sp, f'{name}_id')() < 0:
        raise DataError(f'tokenizer.path: sentencepiece model {where} has no {name} id')
    self._dropped = {self.pad_id, self.bos_id, self.eos_id}

  def _piece_id(self, piece: str, where: str) -> int:
    piece_id = self._sp.piece_to_id(piece)
    if piece_id == self._sp.unk_id() or self._sp.id_to_piece(piece_id) != piece:
      raise DataError(f'tokenizer.path: sentencepiece model {where} has no {piece} symbol')
    return piece_id

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._sp.pad_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def think_start_id(self) -> int:
    return self._think_start_id

  @property
  def think_end_id(self) -> int:
    return self._think_end_id

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text in one call (sentencepiece's batch encoder, in C++)."""
    return self._sp.encode(list(texts), out_type=int)

  def __getstate__(self) -> dict:
    """Pickled as the model's bytes (the data loader's worker processes rebuild it)."""
    return {'model_path': self.model_path, 'proto': self._sp.serialized_model_proto()}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state['model_path'], model_proto=state['proto'])

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if int(i) not in self._dropped])

  def __repr__(self) -> str:
    return f'SentencePieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size})'


def _training_sentences(documents: Iterable[str]) -> Iterator[str]:
  """Non-empty lines of the documents, cut to sentencepiece's sentence length limit."""
  count = 0
  for document in documents:
    for line in document.splitlines():
      for start in range(0, len(line), _MAX_TRAINING_CHARS):
        if count == _MAX_TRAINING_SENTENCES:
          return
        count += 1
        yield line[start:start + _MAX_TRAINING_CHARS]


def train_sentencepiece_proto(documents: Iterable[str], vocab_size: int,
                              model_type: str = 'bpe') -> bytes:
  """A serialized SentencePiece model trained on `documents` (deterministic for the same input).

  From BYTE_FALLBACK_MIN_VOCAB pieces on, byte fallback makes every text round-trip. `vocab_size`
  is an upper bound (a small corpus may give fewer pieces). Digits are split one per token and a
  newline is its own symbol.
  """
  spm.set_random_generator_seed(0)
  byte_fallback = vocab_size >= BYTE_FALLBACK_MIN_VOCAB
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=_training_sentences(documents), model_writer=writer,
        vocab_size=vocab_size, hard_vocab_limit=False, model_type=model_type,
        character_coverage=1.0, byte_fallback=byte_fallback, split_digits=True,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        user_defined_symbols=[THINK_START, THINK_END, NEWLINE],
        normalization_rule_name='identity', remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=1, minloglevel=2)
  except RuntimeError as e:
    raise ConfigError(f'tokenizer.vocab_size={vocab_size}: sentencepiece training failed: '
                      f'{str(e).splitlines()[0]}') from e
  return writer.getvalue()


def train_sentencepiece(documents: Iterable[str], vocab_size: int, model_prefix: str,
                        model_type: str = 'bpe') -> SentencePieceTokenizer:
  """Trains on `documents`, writes `<model_prefix>.model` atomically and loads it."""
  path = model_prefix + '.model'
  proto = train_sentencepiece_proto(documents, vocab_size, model_type)
  paths.write_atomically(path, proto)  # local or a URL data dir
  return SentencePieceTokenizer(path, model_proto=proto)


def cached_tokenizer_path(tokenizer_config: Any, data_config: Any) -> str:
  """Where the tokenizer trained on the configured corpus is cached."""
  from rlp_jax.data import corpora  # pylint: disable=import-outside-toplevel
  identity = corpora.corpus_identity(data_config)
  name = f'sp{TRAINING_RECIPE}_bpe_v{tokenizer_config.vocab_size}_{identity}'
  return paths.join(corpora.resolve_data_dir(data_config), 'tokenizers', name)


def sentencepiece_model_path(tokenizer_config: Any, data_config: Any) -> str:
  """The run's sentencepiece model: `tokenizer.path` (DataError when it is not a file), else where
  the one trained on the configured corpus is cached (`cached_tokenizer_path` + '.model', which
  may not exist yet)."""
  path = getattr(tokenizer_config, 'path', '')
  if not path:
    return cached_tokenizer_path(tokenizer_config, data_config) + '.model'
  path = paths.resolve_str(path, 'tokenizer.path')
  if not paths.is_file(path):
    raise DataError(f'tokenizer.path: no such file {path}')
  return path


def build_tokenizer(tokenizer_config: Any, data_config: Any, base_model: str = '') -> Tokenizer:
  """Loads tokenizer.path, or trains on the corpus's train split at first use and caches it.

  kind 'hf_json': path is a Hugging Face tokenizer.json or a directory holding one (see
  hf_tokenizer.py); nothing is trained. An empty path reads the one of `base_model` (the
  run's `model.init_from` directory).
  """
  kind = getattr(tokenizer_config, 'kind', 'sentencepiece')
  if kind not in TOKENIZER_KINDS:
    raise ConfigError(f"tokenizer.kind must be one of {', '.join(TOKENIZER_KINDS)}, got {kind!r}")
  path = getattr(tokenizer_config, 'path', '')
  if kind == 'hf_json':
    path = path or base_model
    if not path:
      raise ConfigError("config key `tokenizer.path` must name a tokenizer.json (or a directory "
                        "holding one) when `tokenizer.kind` is 'hf_json' and `model.init_from` "
                        "is ''")
    from rlp_jax.data import hf_tokenizer  # pylint: disable=import-outside-toplevel
    return hf_tokenizer.HFJsonTokenizer(path)
  if path:
    return SentencePieceTokenizer(sentencepiece_model_path(tokenizer_config, data_config))
  vocab_size = getattr(tokenizer_config, 'vocab_size', None)
  if not isinstance(vocab_size, int) or vocab_size < 1:
    raise ConfigError(f'tokenizer.vocab_size must be an int > 0, got {vocab_size!r}')
  model_path = sentencepiece_model_path(tokenizer_config, data_config)
  if paths.is_file(model_path):
    return SentencePieceTokenizer(model_path)
  from rlp_jax.data import corpora  # pylint: disable=import-outside-toplevel
  return train_sentencepiece(corpora.load_documents(data_config, 'train'), vocab_size,
                             cached_tokenizer_path(tokenizer_config, data_config))
