"""Each config key is declared once (rlp_jax/config/keys.py): base_config, validation and the key
table of docs/configuration.md all follow the declaration."""
import pathlib

import ml_collections
import pytest

from rlp_jax.config import base_config, validate_config
from rlp_jax.config.keys import KEYS, KEYS_BY_NAME, SECTIONS
from rlp_jax.config.markdown import DOCS_PATH, generated_block, render_markdown
from rlp_jax.data.corpora import CORPORA
from rlp_jax.data.tokenizer import TOKENIZER_KINDS
from rlp_jax.errors import ConfigError
from rlp_jax.models.layers import DTYPES, REMAT_POLICIES
from rlp_jax.models.registry import FAMILIES
from rlp_jax.objective.advantage import ADVANTAGE_ESTIMATORS
from rlp_jax.rollout.positions import POSITION_RULES
from rlp_jax.rollout.prefix_strategies import PREFIX_STRATEGIES

REPO = pathlib.Path(__file__).resolve().parents[1]


def _flat(tree: dict, prefix: str = '') -> dict:
  """Dotted name → value of `config.to_dict()`."""
  flat = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{name}.'))
    else:
      flat[f'{prefix}{name}'] = value
  return flat


def _with(name: str, value) -> ml_collections.ConfigDict:
  config = base_config()
  section, _, leaf = name.rpartition('.')
  (config[section] if section else config)[leaf] = value
  return config


def _one_line_error(config: ml_collections.ConfigDict) -> str:
  with pytest.raises(ConfigError) as error:
    validate_config(config)
  message = str(error.value)
  assert '\n' not in message, message
  return message


def test_docs_table_matches_the_declaration():
  assert DOCS_PATH == REPO / 'docs' / 'configuration.md'
  documented = generated_block(DOCS_PATH.read_text(encoding='utf-8'))
  assert documented == render_markdown(), (
      'docs/configuration.md differs from rlp_jax/config/keys.py; regenerate it with '
      '`python -m rlp_jax.config --update-docs`')


def test_every_declared_key_is_in_the_docs_table():
  table = render_markdown()
  for key in KEYS:
    assert f'| `{key.name}` |' in table, key.name


def test_base_config_is_the_declaration():
  flat = _flat(base_config().to_dict())
  assert sorted(flat) == sorted(key.name for key in KEYS)
  for key in KEYS:
    assert type(flat[key.name]) is key.type, key.name  # pylint: disable=unidiomatic-typecheck
    assert flat[key.name] == key.default, key.name
  assert set(base_config()) == {key.section or key.name for key in KEYS}
  assert set(SECTIONS) == {key.section for key in KEYS}
  validate_config(base_config())


def test_declarations_are_one_line_and_grouped_in_known_sections():
  assert len(KEYS_BY_NAME) == len(KEYS)
  for key in KEYS:
    assert key.doc.strip() and '\n' not in key.doc, key.name
    assert key.section in SECTIONS, key.name


def test_choices_are_the_implementations_tables():
  assert KEYS_BY_NAME['model.remat_policy'].choices is REMAT_POLICIES
  assert KEYS_BY_NAME['model.param_dtype'].choices is DTYPES
  assert KEYS_BY_NAME['model.compute_dtype'].choices is DTYPES
  assert KEYS_BY_NAME['data.corpus'].choices is CORPORA
  assert KEYS_BY_NAME['tokenizer.kind'].choices is TOKENIZER_KINDS
  assert KEYS_BY_NAME['rlp.advantage_estimator'].choices is ADVANTAGE_ESTIMATORS
  assert KEYS_BY_NAME['model.family'].choices is FAMILIES
  assert KEYS_BY_NAME['rlp.position_rule'].choices is POSITION_RULES
  assert KEYS_BY_NAME['rlp.prefix_mode'].choices is PREFIX_STRATEGIES


def test_a_registered_advantage_estimator_becomes_a_valid_choice():
  config = _with('rlp.advantage_estimator', 'test_only_estimator')
  assert 'rlp.advantage_estimator' in _one_line_error(config)
  ADVANTAGE_ESTIMATORS['test_only_estimator'] = lambda rewards: rewards
  try:
    validate_config(config)
  finally:
    del ADVANTAGE_ESTIMATORS['test_only_estimator']


@pytest.mark.parametrize('name', [key.name for key in KEYS if key.choices is not None])
def test_value_outside_the_choices_is_rejected_naming_the_key(name):
  message = _one_line_error(_with(name, 'not_a_choice'))
  assert f'`{name}`' in message and 'must be one of' in message, message
  assert "'not_a_choice'" in message, message


def _outside_values(key):
  """Values of the key's type just outside its bounds (below low, above high)."""
  bounds = key.bounds
  values = []
  if bounds.low is not None:
    below = bounds.low if bounds.low_open else bounds.low - 1
    if below == bounds.or_value:
      below -= 1
    values.append(key.type(below))
  if bounds.high is not None:
    values.append(key.type(bounds.high if bounds.high_open else bounds.high + 1))
  return values


@pytest.mark.parametrize('name', [key.name for key in KEYS if key.bounds is not None])
def test_value_out_of_range_is_rejected_naming_the_key(name):
  key = KEYS_BY_NAME[name]
  values = _outside_values(key)
  assert values
  for value in values:
    message = _one_line_error(_with(name, value))
    assert f'config key `{name}` must be {key.bounds.describe()}, got {value!r}' == message
  if key.type is float:
    assert f'`{name}`' in _one_line_error(_with(name, float('nan')))


@pytest.mark.parametrize('name', [key.name for key in KEYS])
def test_value_of_the_wrong_type_is_rejected_naming_the_key(name):
  key = KEYS_BY_NAME[name]
  wrong = 3 if key.type is str else 'text'
  message = _one_line_error(_with(name, wrong))
  assert f'config key `{name}` must be of type {key.type.__name__}' in message, message


def test_unknown_and_missing_keys_are_rejected_naming_the_key():
  config = base_config()
  config.train.num_epochs = 3
  assert '`train.num_epochs`' in _one_line_error(config)
  config = base_config()
  del config.rlp['kl_weight']
  assert '`rlp.kl_weight`' in _one_line_error(config)


def test_an_int_is_a_valid_float():
  validate_config(_with('optimizer.learning_rate', 1))
