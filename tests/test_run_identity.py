"""Run identity (rlp_jax/train/run_identity.py): what a checkpoint records, and the resume check.

The check_resume tests use an in-memory identity (a list of documents and a one-id-per-character
tokenizer); the data/tokenizer tests build a tiny `local_text` corpus and its sentencepiece
tokenizer under tmp_path.
"""
import json

import pytest

from rlp_jax.config import base_config
from rlp_jax.data import corpora
from rlp_jax.data.tokenizer import build_tokenizer, train_sentencepiece
from rlp_jax.errors import RunChangedError, UserInputError
from rlp_jax.models import registry
from rlp_jax.train import run_identity as ri
from tests import helpers

FLAG = '--config.train.allow_data_change=True'


class CharTokenizer:
  """One id per character (ids 5..68), with decode: the fallback description's case."""
  vocab_size, pad_id, bos_id, eos_id, think_start_id, think_end_id = 69, 0, 1, 2, 3, 4

  def __init__(self, offset=5):
    self.offset = offset

  def encode(self, text):
    return [self.offset + ord(c) % 64 for c in text]

  def decode(self, ids):
    return ''.join(chr(i - self.offset + 32) for i in ids if i >= self.offset)


def tiny_config(**model):
  config = base_config()
  config.model.update(dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=8), **model)
  return config


DOCUMENTS = ['First document. 1 + 2 = 3', 'Second one.\nTwo lines.', 'Third: <think> x </think>']


def identity(config=None, tokenizer=None, documents=DOCUMENTS):
  return ri.run_identity(config or tiny_config(), tokenizer or CharTokenizer(), documents)


def refusal(recorded, current, allow_data_change=False):
  with pytest.raises(RunChangedError) as error:
    ri.check_resume(recorded, current, allow_data_change)
  message = str(error.value)
  assert '\n' not in message and isinstance(error.value, UserInputError)
  return message


# ---------------------------------------------------------------------------------------------
# The record.


def test_identity_is_deterministic_and_round_trips_as_strict_json():
  first, second = identity(), identity()
  assert first == second
  text = json.dumps(first, allow_nan=False)  # strict JSON: model.mamba_dt_limit_max is inf
  assert json.loads(text) == first
  assert first['config']['model']['mamba_dt_limit_max'] == 'inf'
  assert first['config']['optimizer']['learning_rate'] == 3e-3
  assert first['model_shape']['keys']['model.hidden_size'] == 32
  assert 'model.rope_theta' not in first['model_shape']['keys']
  assert first['data']['num_documents'] == 3
  # A record restored from its JSON compares equal to the run that wrote it.
  assert ri.check_resume(json.loads(text), second, allow_data_change=False) == []


def test_model_shape_is_the_abstract_parameter_tree():
  config = helpers.dense_model_config()
  _, params = registry.abstract_params(config)
  shape = ri.model_shape(config)
  assert shape == ri.model_shape(config, params)
  assert shape['params']['token_embedding/embedding'] == [[97, 64], 'float32']


@pytest.mark.parametrize('family', ['dense', 'hybrid'])
def test_keys_not_listed_as_shape_keys_leave_the_parameters_alone(family):
  """NOT_SHAPE_KEYS is right: changing each of them leaves every parameter's shape and dtype."""
  make = helpers.dense_model_config if family == 'dense' else helpers.hybrid_model_config
  base = ri.model_shape(make())['params']
  changed = dict(init_from='/elsewhere', rope_theta=10.0, norm_eps=1e-3, compute_dtype='bfloat16',
                 init_std=0.5, remat_policy='none', scan_layers=True, mamba_chunk_size=4,
                 mamba_dt_limit_min=0.001,
                 mamba_dt_limit_max=5.0, logits_chunk_tokens=16)
  assert set(changed) == set(ri.NOT_SHAPE_KEYS)
  for key, value in changed.items():
    assert ri.model_shape(make(**{key: value}))['params'] == base, key


def test_a_tokenizer_without_decode_is_described_by_its_encoding():
  class EncodeOnly(CharTokenizer):
    decode = None
  assert ri.tokenizer_identity(EncodeOnly())['sha256'] != ri.tokenizer_identity(
      EncodeOnly(offset=6))['sha256']
  assert identity(tokenizer=EncodeOnly())['tokenizer']['kind'] == 'EncodeOnly'


# ---------------------------------------------------------------------------------------------
# Data and tokenizer of a real corpus.


def _local_text(tmp_path, lines):
  path = tmp_path / 'docs.jsonl'
  path.write_text(''.join(json.dumps({'text': line}) + '\n' for line in lines), encoding='utf-8')
  config = base_config()
  config.data.update(corpus='local_text', files=str(path), data_dir=str(tmp_path / 'data'))
  config.tokenizer.vocab_size = 64
  return config, path


LINES = [f'Problem {i}: {i} + {2 * i} = {3 * i}. The answer is {3 * i}.' for i in range(20)]
NEW_LINES = [f'Entirely different vocabulary: zebra quartz jumping {i} wolves.' for i in range(20)]


def _identity_of(config):
  documents = corpora.load_documents(config.data)
  tokenizer = build_tokenizer(config.tokenizer, config.data)
  return ri.run_identity(config, tokenizer, documents), tokenizer


def test_appended_documents_change_the_data_but_not_a_tokenizer_file(tmp_path):
  config, path = _local_text(tmp_path, LINES)
  tokenizer_file = train_sentencepiece(LINES, 64, str(tmp_path / 'fixed')).model_path
  config.tokenizer.path = tokenizer_file
  before, _ = _identity_of(config)
  with open(path, 'a', encoding='utf-8') as f:
    f.write(json.dumps({'text': 'One more document, appended.'}) + '\n')
  after, _ = _identity_of(config)
  assert after['tokenizer'] == before['tokenizer']
  assert after['data']['sha256'] != before['data']['sha256']
  assert after['data']['num_documents'] == before['data']['num_documents'] + 1
  message = refusal(before, after)
  assert 'training documents changed' in message and FLAG in message
  assert 'tokenizer changed' not in message
  notes = ri.check_resume(before, after, allow_data_change=True)
  assert any('training documents changed' in note for note in notes), notes


def test_a_retrained_tokenizer_changes_the_tokenizer_and_names_the_old_file(tmp_path):
  """The user's case: documents appended to a local_text file retrain the cached tokenizer."""
  config, path = _local_text(tmp_path, LINES)
  before, old_tokenizer = _identity_of(config)
  path.write_text(path.read_text(encoding='utf-8')
                  + ''.join(json.dumps({'text': line}) + '\n' for line in NEW_LINES),
                  encoding='utf-8')
  after, new_tokenizer = _identity_of(config)
  assert new_tokenizer.model_path != old_tokenizer.model_path  # a new cache entry
  assert after['tokenizer']['sha256'] != before['tokenizer']['sha256']
  message = refusal(before, after, allow_data_change=True)
  assert 'the tokenizer changed' in message and 'new --workdir' in message
  assert 'training documents' not in message  # allowed
  assert f'--config.tokenizer.path={old_tokenizer.model_path}' in message
  message = refusal(before, after)
  assert 'the tokenizer changed' in message and 'training documents changed' in message
  assert f'--config.tokenizer.path={old_tokenizer.model_path} and ' in message and FLAG in message
  # Keeping the checkpoint's tokenizer file, as the message says, resumes on the new documents.
  config.tokenizer.path = old_tokenizer.model_path
  kept, _ = _identity_of(config)
  assert kept['tokenizer']['sha256'] == before['tokenizer']['sha256']
  notes = ri.check_resume(before, kept, allow_data_change=True)
  assert any('training documents changed' in note for note in notes), notes
  assert any('tokenizer.path' in note for note in notes), notes


# ---------------------------------------------------------------------------------------------
# check_resume.


def test_the_same_run_resumes_without_notes():
  assert ri.check_resume(identity(), identity(), allow_data_change=False) == []


def test_a_changed_learning_rate_is_a_note():
  config = tiny_config()
  config.optimizer.learning_rate = 1e-3
  notes = ri.check_resume(identity(), identity(config), allow_data_change=False)
  assert notes == ['config changed since the checkpoint: optimizer.learning_rate 0.003 -> 0.001']


def test_a_changed_hidden_size_is_refused_naming_the_key():
  message = refusal(identity(), identity(tiny_config(hidden_size=64)))
  assert 'model shape changed' in message and 'model.hidden_size 32 -> 64' in message
  assert 'new --workdir' in message


def test_model_keys_that_keep_the_parameters_are_notes():
  # rope_theta is no shape key; mamba_num_heads is one, but a dense model has no Mamba2 layers.
  notes = ri.check_resume(identity(), identity(tiny_config(rope_theta=10.0, mamba_num_heads=8)),
                          allow_data_change=False)
  assert [note.split(': ')[1] for note in notes] == ['model.rope_theta 1000000.0 -> 10.0',
                                                      'model.mamba_num_heads 0 -> 8']


def test_a_changed_parameter_dtype_or_tying_is_refused():
  assert 'model.param_dtype' in refusal(identity(), identity(tiny_config(param_dtype='bfloat16')))
  assert 'model.tie_embeddings' in refusal(identity(),
                                           identity(tiny_config(tie_embeddings=False)))


def test_a_changed_parameter_tree_under_the_same_keys_names_the_parameter():
  recorded = identity()
  leaf = sorted(recorded['model_shape']['params'])[0]
  recorded['model_shape']['params'][leaf] = [[1, 2], 'float32']
  message = refusal(recorded, identity())
  assert f'parameter {leaf} [[1, 2], ' in message


def test_a_changed_tokenizer_is_refused_even_with_allow_data_change():
  message = refusal(identity(), identity(tokenizer=CharTokenizer(offset=6)),
                    allow_data_change=True)
  assert 'the tokenizer changed' in message and 'new --workdir' in message


def test_changed_documents_are_refused_unless_allowed():
  current = identity(documents=DOCUMENTS + ['A fourth document.'])
  message = refusal(identity(), current)
  assert 'training documents changed' in message and '3 -> 4 documents' in message
  assert FLAG in message
  edited = identity(documents=DOCUMENTS[:2] + ['Third, edited.'])
  assert '3 documents, different text' in refusal(identity(), edited)
  notes = ri.check_resume(identity(), current, allow_data_change=True)
  assert len(notes) == 1 and 'train.allow_data_change' in notes[0]


def test_several_refused_changes_are_one_line():
  message = refusal(identity(), identity(tiny_config(num_layers=3), CharTokenizer(offset=6),
                                         DOCUMENTS[:1]))
  assert message.count('; ') == 2, message
  assert ('model.num_layers' in message and 'tokenizer changed' in message
          and 'documents changed' in message)


def test_a_checkpoint_without_a_record_is_a_note():
  notes = ri.check_resume(None, identity(), allow_data_change=False)
  assert len(notes) == 1 and 'records no run identity' in notes[0]
