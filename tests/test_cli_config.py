"""Start-up validation: bad config input stops with one line naming the key or path."""
import os
import subprocess
import sys

import pytest

from rlp_jax.config import base_config, validate_config
from rlp_jax.errors import ConfigError
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, '-m', 'rlp_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def assert_one_line_error(result, *needles):
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('rlp_jax: error:'), lines
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])


SLOW = pytest.mark.slow  # a fresh interpreter each; two of the eight stay in the quick loop


@pytest.mark.parametrize('override, needles', [
    ('--config.train.num_stepz=3', ('num_stepz',)),
    pytest.param('--config.model.nonexistent=3', ('nonexistent',), marks=SLOW),
    pytest.param('--config.train.num_steps=abc', ('config.train.num_steps',), marks=SLOW),
    pytest.param('--config.train.num_steps=1.5', ('config.train.num_steps',), marks=SLOW),
    ('--config.model.hidden_size=0', ('model.hidden_size', '> 0')),
    pytest.param('--config.data.batch_size=-4', ('data.batch_size', '>= 1 or -1'), marks=SLOW),
    pytest.param('--config.data.corpus=wiki', ('data.corpus',), marks=SLOW),
    pytest.param('--config.model.num_kv_heads=3', ('model.num_kv_heads',), marks=SLOW),
])
@pytest.mark.subprocess
def test_bad_override_is_one_line_naming_the_key(override, needles, tmp_path):
  assert_one_line_error(run_cli(override, f'--workdir={tmp_path}'), *needles)


@pytest.mark.subprocess
def test_missing_config_file_names_the_path(tmp_path):
  missing = str(tmp_path / 'nope.py')
  assert_one_line_error(run_cli(f'--config={missing}', f'--workdir={tmp_path}'), missing)


@pytest.mark.subprocess
def test_missing_workdir_is_reported(tmp_path):
  assert_one_line_error(run_cli(), '--workdir')


@pytest.mark.subprocess
def test_url_workdir_is_accepted_and_an_unusable_one_is_one_line(tmp_path):
  """A gs:// workdir goes to the bucket (tests/test_url_paths.py runs a whole one); here no
  backend can reach it (no network, no gcsfs): one line naming the workdir, and nothing written
  under the working directory (no local ./gs:/bucket/run)."""
  env_args = ('--config.train.num_steps=1',)
  result = run_cli('--workdir=gs://bucket/run', *env_args, cwd=str(tmp_path))
  assert_one_line_error(result, '--workdir gs://bucket/run is not usable')
  assert not os.listdir(tmp_path)
  result = run_cli('--workdir=nosuchscheme://bucket/run', *env_args, cwd=str(tmp_path))
  assert_one_line_error(result, 'nosuchscheme://bucket/run', 'unknown URL scheme')
  assert not os.listdir(tmp_path)


@pytest.mark.subprocess
def test_wrong_type_in_config_file_names_the_key(tmp_path):
  config_file = tmp_path / 'typo_config.py'
  config_file.write_text(
      'from rlp_jax.config import base_config\n'
      'def get_config():\n'
      '  c = base_config()\n'
      "  c.train.num_steps = '10'\n"
      '  return c\n')
  assert_one_line_error(run_cli(f'--config={config_file}', f'--workdir={tmp_path}'),
                        'train.num_steps', 'int')


@pytest.mark.subprocess
def test_unknown_key_in_config_file_names_the_key(tmp_path):
  config_file = tmp_path / 'extra_config.py'
  config_file.write_text(
      'from rlp_jax.config import base_config\n'
      'def get_config():\n'
      '  c = base_config()\n'
      '  c.train.num_epochs = 3\n'
      '  return c\n')
  assert_one_line_error(run_cli(f'--config={config_file}', f'--workdir={tmp_path}'),
                        'train.num_epochs')


@pytest.mark.subprocess
def test_missing_data_file_names_the_path(tmp_path):
  missing = str(tmp_path / 'corpus' / 'missing.jsonl')
  result = run_cli('--config.data.corpus=local_text', f'--config.data.files={missing}',
                   f'--config.data.data_dir={tmp_path / "data"}', f'--workdir={tmp_path / "w"}')
  assert_one_line_error(result, missing)


def test_validate_config_accepts_shipped_configs():
  names = helpers.shipped_config_names()
  assert 'tiny' in names
  for name in names:
    validate_config(helpers.load_config(name))


def test_validate_config_rejects_vocab_smaller_than_tokenizer():
  config = base_config()
  config.model.vocab_size = config.tokenizer.vocab_size - 1
  with pytest.raises(ConfigError, match='model.vocab_size'):
    validate_config(config)
