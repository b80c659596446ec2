"""Run identity: what a checkpoint depends on, and the check a resume makes against it.

`run_identity(config, tokenizer, documents)` is a JSON-serialisable dict stored with every
checkpoint (the checkpointer's `record`):

- `config`: the whole config as plain JSON (non-finite floats as the strings 'inf', '-inf');
- `model_shape`: `keys`, the `model.*` keys that can change a parameter's shape or dtype, and
  `params`, the abstract parameter tree `{path: [shape, dtype]}` (registry.abstract_params, no
  allocation), which decides;
- `tokenizer`: a sha256 of what defines the tokenizer (the sentencepiece model proto, the bytes of
  a tokenizer.json, or else the vocabulary as decoded) and its vocabulary size and special ids;
- `data`: a sha256 over the number of training documents and each one's text, with the count and
  the corpus keys for messages.

`check_resume(recorded, current, allow_data_change)` compares the record restored from a checkpoint
with the current run before the state is restored: a changed model shape or tokenizer is refused,
changed documents are refused unless `train.allow_data_change`, and other config changes come back
as notes. Refusals raise `RunChangedError` with one line naming what changed.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
import hashlib
import json
import math
from typing import Any

import jax

from rlp_jax import paths
from rlp_jax.data.hf_tokenizer import HFJsonTokenizer
from rlp_jax.data.tokenizer import SentencePieceTokenizer
from rlp_jax.errors import RunChangedError
from rlp_jax.models import registry
from rlp_jax.models.layer_stack import is_scanned_tree

RECORD_VERSION = 1
ALLOW_DATA_CHANGE_FLAG = '--config.train.allow_data_change=True'
# `model.*` keys that never change a parameter's shape or dtype; every other model key is listed
# under model_shape.keys (a new key counts as a shape key until it is named here).
NOT_SHAPE_KEYS = ('init_from', 'rope_theta', 'norm_eps', 'compute_dtype', 'init_std',
                  'remat_policy', 'scan_layers', 'mamba_chunk_size', 'mamba_dt_limit_min', 'mamba_dt_limit_max',
                  'logits_chunk_tokens')
# The `data.*` keys that choose the documents (recorded for messages; the hash decides).
CORPUS_KEYS = ('corpus', 'files', 'text_field', 'num_documents', 'corpus_seed',
               'worked_fraction')
# Encoded by a tokenizer that has no file to hash (with its decoded vocabulary, if it can decode).
_PROBE_TEXT = ('The quick brown fox jumps over the lazy dog. 0123456789 +-*/=()[]{}<>!?.,;:\'"\n'
               '<think> 12 + 30 = 42 </think> Answer: 42\t\u00e9\u00df\u4e2d\u6587 \U0001f600')
_SHOWN_KEYS = 3  # changed keys named in one message before "and N more"


def run_identity(config: Any, tokenizer: Any, documents: Iterable[str],
                 params: Any = None) -> dict[str, Any]:
  """The record of what a checkpoint of this run depends on (JSON-serialisable).

  `config` is the full ConfigDict, `tokenizer` the built tokenizer, `documents` the training
  documents (`load_documents(config.data)`, read once, streaming). `params` may pass the abstract
  parameters the caller already has (registry.abstract_params(config.model)[1]).
  """
  return {
      'version': RECORD_VERSION,
      'config': config_dict(config),
      'model_shape': model_shape(config.model, params),
      'tokenizer': tokenizer_identity(tokenizer),
      'data': data_fingerprint(documents, config.data),
  }


def _strict_json(value: Any) -> Any:
  """`value` with tuples as lists and non-finite floats as strings (strict JSON, RFC 8259)."""
  if isinstance(value, float) and not math.isfinite(value):
    return 'nan' if math.isnan(value) else ('inf' if value > 0 else '-inf')
  if isinstance(value, Mapping):
    return {str(k): _strict_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict_json(v) for v in value]
  return value


def config_dict(config: Any) -> dict[str, Any]:
  """The ConfigDict as a plain dict, as config.json writes it (`to_json_best_effort`)."""
  return _strict_json(json.loads(config.to_json_best_effort()))


def _path_name(path: tuple[Any, ...]) -> str:
  return '/'.join(str(getattr(entry, 'key', getattr(entry, 'idx', entry))) for entry in path)


def model_shape(model_config: Any, params: Any = None) -> dict[str, Any]:
  """{'keys': {'model.<key>': value}, 'params': {path: [shape, dtype]}} of the model config.

  `params` (abstract or real parameters of `model_config`) saves building the abstract tree. The
  tree is recorded in the unrolled layout (`model.scan_layers` changes no parameter: a checkpoint
  of either layout loads into the other).
  """
  if params is None or is_scanned_tree(params):
    _, params = registry.abstract_params(registry.with_layout(model_config, False))
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {
      'keys': _strict_json({f'model.{key}': value for key, value in model_config.items()
                            if key not in NOT_SHAPE_KEYS}),
      'params': {_path_name(path): [list(leaf.shape), str(leaf.dtype)] for path, leaf in leaves},
  }


def tokenizer_definition(tokenizer: Any) -> bytes:
  """The bytes that define the tokenizer: a sentencepiece model's serialized proto, the contents
  of a Hugging Face tokenizer.json, or else its vocabulary (each id decoded) and the ids of a
  fixed probe text, as JSON."""
  if isinstance(tokenizer, SentencePieceTokenizer):
    # The loaded model, whether it came from tokenizer.path, the training cache or memory.
    return tokenizer._sp.serialized_model_proto()  # pylint: disable=protected-access
  if isinstance(tokenizer, HFJsonTokenizer):
    return paths.read_bytes(tokenizer.path)  # local or a URL
  decode = getattr(tokenizer, 'decode', None)
  vocabulary = [decode([i]) for i in range(tokenizer.vocab_size)] if decode else None
  return json.dumps({'vocabulary': vocabulary, 'probe': list(tokenizer.encode(_PROBE_TEXT))},
                    ensure_ascii=False).encode('utf-8')


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
  """{'sha256', 'vocab_size', 'special_ids', 'kind', 'source'}: the hash covers the definition
  bytes, the vocabulary size and the special ids; kind (the class) and source (its file, if any)
  are for messages only."""
  special_ids = {name: int(getattr(tokenizer, f'{name}_id'))
                 for name in ('pad', 'bos', 'eos', 'think_start', 'think_end')}
  header = json.dumps({'vocab_size': int(tokenizer.vocab_size), 'special_ids': special_ids},
                      sort_keys=True)
  digest = hashlib.sha256(header.encode('utf-8') + b'\0')
  digest.update(tokenizer_definition(tokenizer))
  return {
      'sha256': digest.hexdigest(),
      'vocab_size': int(tokenizer.vocab_size),
      'special_ids': special_ids,
      'kind': type(tokenizer).__name__,
      'source': getattr(tokenizer, 'model_path', None) or getattr(tokenizer, 'path', None),
  }


def documents_sha256(documents: Iterable[str]) -> tuple[str, int]:
  """(sha256 over each document's UTF-8 length and text, then the count; the count), streaming."""
  digest = hashlib.sha256()
  count = 0
  for document in documents:
    text = document.encode('utf-8')
    digest.update(b'%d\0' % len(text))
    digest.update(text)
    count += 1
  digest.update(b'count %d' % count)
  return digest.hexdigest(), count


def data_fingerprint(documents: Iterable[str], data_config: Any) -> dict[str, Any]:
  """{'sha256', 'num_documents', 'description', 'corpus'}: the hash of the documents decides;
  the description (the dataset's name) and the corpus keys are for messages."""
  sha256, count = documents_sha256(documents)
  return {
      'sha256': sha256,
      'num_documents': count,
      'description': getattr(documents, 'description', None),
      'corpus': _strict_json({key: data_config[key] for key in CORPUS_KEYS if key in data_config}),
  }


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


_ABSENT = object()


def _changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """'key old -> new' for every key whose value differs (in the new mapping's order, then the
  keys only the old one has)."""
  changes = []
  for key in list(new) + [key for key in old if key not in new]:
    before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if before != after:
      changes.append(f'{key} {_show(before)} -> {_show(after)}')
  return changes


def _show(value: Any) -> str:
  return '(absent)' if value is _ABSENT else repr(value)


def _some(items: list[str]) -> str:
  shown = ', '.join(items[:_SHOWN_KEYS])
  return shown if len(items) <= _SHOWN_KEYS else f'{shown} and {len(items) - _SHOWN_KEYS} more'


def _model_shape_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
  """What changed in the model's parameters, or None. The parameter trees decide (when both are
  recorded); the message names the changed shape keys, else the first changed parameter."""
  key_changes = _changes(old.get('keys', {}), new.get('keys', {}))
  if 'params' in old and 'params' in new:
    param_changes = _changes(old['params'], new['params'])
    if not param_changes:
      return None
    return _some(key_changes) if key_changes else f'parameter {param_changes[0]}'
  return _some(key_changes) if key_changes else None


def _short(sha256: str) -> str:
  return sha256[:12]


def _tokenizer_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
  if old['sha256'] == new['sha256']:
    return None
  detail = f"sha256 {_short(old['sha256'])} -> {_short(new['sha256'])}"
  if old.get('vocab_size') != new.get('vocab_size'):
    detail += f", vocabulary {old.get('vocab_size')} -> {new.get('vocab_size')}"
  return f'the tokenizer changed ({detail})'


def _data_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
  if old['sha256'] == new['sha256']:
    return None
  before, after = old.get('num_documents'), new.get('num_documents')
  if before == after:
    detail = f'{after} documents, different text'
  else:
    detail = f'{before} -> {after} documents'
  if old.get('description') != new.get('description'):
    detail += f", {old.get('description')} -> {new.get('description')}"
  return f'the training documents changed ({detail})'


def _advice(shape_changed: bool, tokenizer_changed: bool, data_refused: bool,
            old_tokenizer: Mapping[str, Any], new_tokenizer: Mapping[str, Any]) -> str:
  """What to do about the refused changes, in one clause."""
  resume_on_data = f'resume on the new documents with {ALLOW_DATA_CHANGE_FLAG}'
  if not (shape_changed or tokenizer_changed):
    return f'{resume_on_data} (the tokenizer and model shape must stay), or use a new --workdir'
  reasons = []
  if shape_changed:
    reasons.append("the checkpoint's parameters do not fit the model")
  if tokenizer_changed:
    whose = 'its' if shape_changed else "the checkpoint's"
    reasons.append(f"{whose} embeddings index the old tokenizer's vocabulary")
  advice = f"use a new --workdir ({' and '.join(reasons)})"
  old_source = old_tokenizer.get('source')
  if tokenizer_changed and not shape_changed and old_source and (
      old_source != new_tokenizer.get('source')):
    advice += f", or keep the checkpoint's tokenizer with --config.tokenizer.path={old_source}"
    if data_refused:
      advice += f' and {resume_on_data}'
  return advice


def check_resume(recorded: Mapping[str, Any] | None, current: Mapping[str, Any],
                 allow_data_change: bool, checkpoint: str = 'the checkpoint') -> list[str]:
  """Compares a checkpoint's record with the current run's `run_identity`, before restoring.

  Returns notes on allowed differences (config keys, documents with `allow_data_change`, a
  checkpoint without a record). Raises RunChangedError, one line naming every refused change and
  what to do, when the model shape or the tokenizer changed, or the documents did without
  `allow_data_change`. `checkpoint` names the checkpoint in messages ('checkpoint 50 in DIR').
  """
  if recorded is None:
    return [f'{checkpoint} records no run identity (written before rlp_jax recorded one): the '
            'model shape, tokenizer and data are not checked']
  notes = [f'{checkpoint} records no {section}: not checked'
           for section in ('model_shape', 'tokenizer', 'data') if section not in recorded]
  changes = {}  # section -> what changed, for every section recorded
  if 'model_shape' in recorded:
    change = _model_shape_change(recorded['model_shape'], current['model_shape'])
    changes['model_shape'] = change and f'the model shape changed ({change})'
  if 'tokenizer' in recorded:
    changes['tokenizer'] = _tokenizer_change(recorded['tokenizer'], current['tokenizer'])
  if 'data' in recorded:
    changes['data'] = _data_change(recorded['data'], current['data'])
  if changes.get('data') and allow_data_change:
    notes.append(f"{changes.pop('data')} since {checkpoint}; resuming on the new documents as "
                 'train.allow_data_change allows')
  refused = [change for change in changes.values() if change]
  if refused:
    advice = _advice(bool(changes.get('model_shape')), bool(changes.get('tokenizer')),
                     bool(changes.get('data')), recorded.get('tokenizer', {}),
                     current['tokenizer'])
    message = f"cannot resume from {checkpoint}: {'; '.join(refused)}: {advice}"
    raise RunChangedError(' '.join(message.splitlines()))
  config_changes = _changes(_flatten(recorded.get('config', {})),
                            _flatten(current.get('config', {})))
  notes.extend(f'config changed since {checkpoint}: {change}' for change in config_changes)
  return notes
