"""A Hugging Face `tokenizer.json` (the `tokenizers` library) behind the rlp_jax Tokenizer protocol.

Special ids:
- `<think>` / `</think>` must be in the vocabulary (Qwen3 has them as added tokens 151667/151668)
  and each must encode, as text, to that single id; otherwise DataError naming them.
- pad / bos / eos come from `tokenizer_config.json` next to tokenizer.json (`pad_token`,
  `bos_token`, `eos_token`, a string or `{"content": ...}`). A key that is absent (or no such
  file) falls back to the first known spelling present in the vocabulary: eos `<|endoftext|>`,
  `</s>`, `<eos>`, `<|end_of_text|>`; bos `<s>`, `<bos>`, `<|begin_of_text|>`,
  `<|startoftext|>`; pad `<pad>`, `[PAD]`, `<|pad|>`.
- No bos (Qwen3: `"bos_token": null`) → bos = eos, so a document row reads
  `<|endoftext|> text <|endoftext|>`, the separator Qwen pretraining uses between documents.
  No pad → pad = eos (padding is masked everywhere, so sharing the id is harmless). No eos →
  DataError: documents need an end.
"""
from __future__ import annotations

from collections.abc import Sequence
import json
import os
from typing import Any

from tokenizers import Tokenizer as RustTokenizer

from rlp_jax import paths
from rlp_jax.data.special_tokens import THINK_END, THINK_START
from rlp_jax.errors import DataError

TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
_FALLBACKS = {
    'eos': ('<|endoftext|>', '</s>', '<eos>', '<|end_of_text|>'),
    'bos': ('<s>', '<bos>', '<|begin_of_text|>', '<|startoftext|>'),
    'pad': ('<pad>', '[PAD]', '<|pad|>'),
}


def resolve_tokenizer_file(path: str) -> str:
  """`path` itself if it is a file, else `path`/tokenizer.json (local or a URL); DataError naming
  it if missing."""
  path = paths.resolve_str(path, 'tokenizer.path')
  candidate = paths.join(path, TOKENIZER_FILE) if paths.is_dir(path) else path
  if not paths.is_file(candidate):
    raise DataError(f'tokenizer.path: no such file {candidate}')
  return candidate


def _token_text(value: Any) -> str | None:
  if isinstance(value, dict):
    return value.get('content')
  return value


class HFJsonTokenizer:
  """A tokenizer.json with `<think>` / `</think>` single ids and pad/bos/eos (see module doc)."""

  def __init__(self, path: str):
    self.path = resolve_tokenizer_file(path)
    try:
      self._tokenizer = RustTokenizer.from_str(paths.read_text(self.path))
    except Exception as e:  # tokenizers raises a plain Exception on bad files
      raise DataError(f'tokenizer.path: cannot load {self.path}: {e}') from e
    self._think_start_id = self._single_id(THINK_START)
    self._think_end_id = self._single_id(THINK_END)
    specials = self._configured_specials()
    self._eos_id = self._special_id('eos', specials)
    if self._eos_id is None:
      raise DataError(f'tokenizer.path: {self.path} has no eos token (set eos_token in '
                      f'{TOKENIZER_CONFIG_FILE} or add one of {list(_FALLBACKS["eos"])})')
    bos_id = self._special_id('bos', specials)
    pad_id = self._special_id('pad', specials)
    self._bos_id = self._eos_id if bos_id is None else bos_id
    self._pad_id = self._eos_id if pad_id is None else pad_id
    self._dropped = {self._pad_id, self._bos_id, self._eos_id}
    added = self._tokenizer.get_added_tokens_decoder()
    self._vocab_size = max([self._tokenizer.get_vocab_size(with_added_tokens=True)]
                           + [i + 1 for i in added])

  def _single_id(self, token: str) -> int:
    token_id = self._tokenizer.token_to_id(token)
    if token_id is None:
      raise DataError(f'tokenizer.path: {self.path} has no {token} token in its vocabulary '
                      f'(RLP needs {THINK_START} and {THINK_END})')
    if self.encode(token) != [token_id]:
      raise DataError(f'tokenizer.path: in {self.path} the text {token} does not encode to its '
                      f'single id {token_id}; add it as an added (special) token')
    return token_id

  def _configured_specials(self) -> dict[str, Any]:
    """The pad/bos/eos entries of tokenizer_config.json (absent keys stay absent)."""
    config_path = paths.join(os.fspath(paths.as_path(self.path).parent), TOKENIZER_CONFIG_FILE)
    if not paths.is_file(config_path):
      return {}
    try:
      config = json.loads(paths.read_text(config_path))
    except (OSError, ValueError) as e:
      raise DataError(f'tokenizer.path: cannot read {config_path}: {e}') from e
    return {name: (_token_text(config[f'{name}_token']), config_path)
            for name in ('pad', 'bos', 'eos') if f'{name}_token' in config}

  def _special_id(self, name: str, specials: dict[str, Any]) -> int | None:
    if name in specials:
      token, config_path = specials[name]
      if token is None:
        return None
      token_id = self._tokenizer.token_to_id(token)
      if token_id is None:
        raise DataError(f'tokenizer.path: {name}_token {token!r} of {config_path} is not in the '
                        f'vocabulary of {self.path}')
      return token_id
    for token in _FALLBACKS[name]:
      token_id = self._tokenizer.token_to_id(token)
      if token_id is not None:
        return token_id
    return None

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def bos_id(self) -> int:
    return self._bos_id

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def think_start_id(self) -> int:
    return self._think_start_id

  @property
  def think_end_id(self) -> int:
    return self._think_end_id

  def token_id(self, token: str) -> int | None:
    """The id of a vocabulary or added token, None if absent."""
    return self._tokenizer.token_to_id(token)

  def token_text(self, token_id: int) -> str | None:
    """The vocabulary or added token of an id, None if absent."""
    return self._tokenizer.id_to_token(token_id)

  def encode(self, text: str) -> list[int]:
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of each text in one call (the tokenizers library's parallel batch encoder)."""
    return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    kept = [int(i) for i in ids if int(i) not in self._dropped]
    return self._tokenizer.decode(kept, skip_special_tokens=False)

  def __repr__(self) -> str:
    return f'HFJsonTokenizer({self.path!r}, vocab_size={self.vocab_size})'
