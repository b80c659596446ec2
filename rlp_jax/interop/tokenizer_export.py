"""The tokenizer of an exported run, as files transformers' AutoTokenizer loads.

  'hf_json'        tokenizer.json (`tokenizer.path`, or the `model.init_from` directory's) copied
                   with the files beside it that AutoTokenizer reads (tokenizer_config.json,
                   special_tokens_map.json, chat_template.jinja); without a tokenizer_config.json
                   one is written naming the pad/bos/eos tokens rlp_jax uses.
  'sentencepiece'  tokenizer.json converted from the model (interop/sentencepiece_json.py: the same
                   ids for every text, `<think>`/`</think>` single ids, bos added in front) +
                   tokenizer_config.json + the model itself as tokenizer.model. The model is
                   `tokenizer.path`, or the one trained on the run's corpus and cached under its
                   data dir (never trained here: a missing one is a one-line error).

`tokenizer_files` reads (and converts) them without writing anything, so an export can fail
before it writes; it returns them with the config.json special-token ids.
"""
from __future__ import annotations

import json
from typing import Any

from rlp_jax import paths
from rlp_jax.data import hf_tokenizer
from rlp_jax.data.tokenizer import SentencePieceTokenizer, sentencepiece_model_path
from rlp_jax.errors import DataError
from rlp_jax.interop.sentencepiece_json import tokenizer_from_sentencepiece

TOKENIZER_JSON = hf_tokenizer.TOKENIZER_FILE
TOKENIZER_CONFIG = hf_tokenizer.TOKENIZER_CONFIG_FILE
SENTENCEPIECE_FILE = 'tokenizer.model'
# Files next to a tokenizer.json that AutoTokenizer reads, copied when present.
_SIDE_FILES = (TOKENIZER_CONFIG, 'special_tokens_map.json', 'chat_template.jinja')


Files = dict[str, bytes]  # file name → contents


def tokenizer_files(tokenizer_config: Any, data_config: Any,
                    base_model: str) -> tuple[dict[str, int], Files]:
  """The run's tokenizer as Hugging Face files: ({pad,bos,eos}_token_id, {name: contents})."""
  if tokenizer_config.kind == 'hf_json':
    return _tokenizer_json_files(tokenizer_config.path or base_model)
  return _sentencepiece_files(_sentencepiece_path(tokenizer_config, data_config))


def _special_ids(tokenizer: Any) -> dict[str, int]:
  return {'pad_token_id': tokenizer.pad_id, 'bos_token_id': tokenizer.bos_id,
          'eos_token_id': tokenizer.eos_id}


def _tokenizer_json_files(path: str) -> tuple[dict[str, int], Files]:
  if not path:
    raise DataError("tokenizer.path: the run's 'hf_json' tokenizer has no path and no "
                    'model.init_from to read it from')
  tokenizer = hf_tokenizer.HFJsonTokenizer(path)
  source_dir = paths.as_path(tokenizer.path).parent
  files = {TOKENIZER_JSON: paths.read_bytes(tokenizer.path)}
  for name in _SIDE_FILES:
    source = paths.join(source_dir, name)
    if paths.is_file(source):
      files[name] = paths.read_bytes(source)
  if TOKENIZER_CONFIG not in files:
    token = tokenizer.token_text
    files[TOKENIZER_CONFIG] = _json_bytes({
        'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': token(tokenizer.bos_id),
        'eos_token': token(tokenizer.eos_id), 'pad_token': token(tokenizer.pad_id),
        'clean_up_tokenization_spaces': False})
  return _special_ids(tokenizer), files


def _sentencepiece_path(tokenizer_config: Any, data_config: Any) -> str:
  path = sentencepiece_model_path(tokenizer_config, data_config)
  if not paths.is_file(path):  # the cached one (a missing tokenizer.path is an error above)
    raise DataError(f"the run's sentencepiece model is not at {path} (where training cached it "
                    'under data.data_dir); the export never trains one')
  return path


def _sentencepiece_files(path: str) -> tuple[dict[str, int], Files]:
  proto = paths.read_bytes(path)
  ours = SentencePieceTokenizer(path, model_proto=proto)
  converted = tokenizer_from_sentencepiece(proto, path)
  token = converted.id_to_token
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': token(ours.bos_id),
            'eos_token': token(ours.eos_id), 'pad_token': token(ours.pad_id),
            'unk_token': converted.model.unk_token,
            # sentencepiece reads no control symbol out of text ('<s>' is text, as in rlp_jax)
            'split_special_tokens': True,
            'clean_up_tokenization_spaces': False}
  return _special_ids(ours), {TOKENIZER_JSON: converted.to_str(pretty=True).encode(),
                              TOKENIZER_CONFIG: _json_bytes(config),
                              SENTENCEPIECE_FILE: proto}


def _json_bytes(value: dict[str, Any]) -> bytes:
  return json.dumps(value, indent=2, ensure_ascii=False).encode()
