"""The rows of docs/failure_modes.md added for config files, key relations, documents and workdirs:
each is one line naming the file, key or path, raised before anything is compiled."""
import contextlib
import os
import subprocess
import sys
import types

from absl import flags
import jax
from ml_collections import config_flags
import pytest

from rlp_jax import cli
from rlp_jax.config import base_config, validate_config
from rlp_jax.errors import ConfigError, WorkdirError
from rlp_jax.train import loop, startup_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def compile_events():
  """The JAX compile events (tracing, lowering, backend compile) recorded inside the block."""
  events = []

  def listener(event, duration, **kwargs):  # pylint: disable=unused-argument
    if event.startswith('/jax/core/compile/'):
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def assert_one_error_line(text, *needles):
  assert 'Traceback' not in text, text
  lines = [line for line in text.splitlines() if line.strip()]
  assert len(lines) == 1, text
  assert lines[0].startswith('rlp_jax: error:'), lines
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])


def load_config_file(path, capsys):
  """What `python -m rlp_jax.main --config=PATH` does with the file, in process: the CLI's flag
  parsing and config access on a fresh flag set; returns the exit status and stderr."""
  argv = ['rlp_jax', f'--config={path}']
  sys.modules.pop('config_config', None)  # config_flags loads every file as this module
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'config file', flag_values=flag_values,
                                           lock_config=True, sys_argv=argv)
  with compile_events() as events, pytest.raises(SystemExit) as exit_info:
    cli.config_from_flags(cli.flags_parser(argv, flag_values), holder)
  assert not events  # nothing was compiled
  return exit_info.value.code, capsys.readouterr().err


def write(path, text):
  path.write_text(text)
  return str(path)


# ---------------------------------------------------------------------------------------------
# Config files.

BASE = 'from rlp_jax.config import base_config\n'


@pytest.mark.parametrize('source, needles', [
    ('def get_config(:\n  return None\n', ('line 1', 'SyntaxError')),
    (BASE + 'def get_config():\n  c = base_config()\n    c.seed = 1\n  return c\n',
     ('line 4', 'IndentationError')),
], ids=['syntax', 'indentation'])
def test_config_file_syntax_error_names_file_and_line(tmp_path, capsys, source, needles):
  path = write(tmp_path / 'bad_syntax.py', source)
  code, err = load_config_file(path, capsys)
  assert code == 2
  assert_one_error_line(err, path, *needles)


@pytest.mark.parametrize('source, needles', [
    ('import no_such_module_xyz\n' + BASE + 'def get_config():\n  return base_config()\n',
     ('line 1', 'ModuleNotFoundError', 'no_such_module_xyz')),
    ('from rlp_jax.config import no_such_name\ndef get_config():\n  return None\n',
     ('line 1', 'ImportError', 'no_such_name')),
], ids=['module', 'name'])
def test_config_file_bad_import_names_file_and_line(tmp_path, capsys, source, needles):
  path = write(tmp_path / 'bad_import.py', source)
  code, err = load_config_file(path, capsys)
  assert code == 2
  assert_one_error_line(err, path, *needles)


def test_config_file_name_error_names_file_and_line(tmp_path, capsys):
  path = write(tmp_path / 'name_error.py',
               BASE + 'def get_config():\n  c = base_config()\n  c.seed = undefined_seed\n'
               '  return c\n')
  code, err = load_config_file(path, capsys)
  assert code == 2
  assert_one_error_line(err, path, 'line 4', 'NameError', 'undefined_seed')


@pytest.mark.parametrize('body, needles', [
    ('  open("/nonexistent_rlp_jax/x.txt")\n', ('line 3', 'FileNotFoundError')),
    ('  raise ValueError("bad sweep")\n', ('line 3', 'ValueError', 'bad sweep')),
    ('  return base_config()["nope"]\n', ('line 3', 'KeyError', 'nope')),
], ids=['os_error', 'value_error', 'key_error'])
def test_config_file_exception_in_get_config_names_file_and_line(tmp_path, capsys, body,
                                                                 needles):
  path = write(tmp_path / 'raises.py', BASE + 'def get_config():\n' + body)
  code, err = load_config_file(path, capsys)
  assert code == 2
  assert_one_error_line(err, path, *needles)


def test_config_file_without_get_config_is_not_an_unknown_key(tmp_path, capsys):
  path = write(tmp_path / 'no_get_config.py', BASE + 'def config():\n  return base_config()\n')
  code, err = load_config_file(path, capsys)
  assert code == 2
  assert_one_error_line(err, path, 'no get_config()')
  assert 'unknown config key' not in err


def test_config_file_whose_get_config_returns_none(tmp_path, capsys):
  path = write(tmp_path / 'returns_none.py', 'def get_config():\n  base = 1\n')
  code, err = load_config_file(path, capsys)
  assert code == 2
  assert_one_error_line(err, path, 'NoneType', 'return')


def test_a_good_config_file_still_loads(capsys):
  argv = ['rlp_jax', f'--config={cli.DEFAULT_CONFIG}', '--config.train.num_steps=3']
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'config file', flag_values=flag_values,
                                           lock_config=True, sys_argv=argv)
  config = cli.config_from_flags(cli.flags_parser(argv, flag_values), holder)
  assert config.train.num_steps == 3
  assert not capsys.readouterr().err


@pytest.mark.subprocess
def test_cli_syntax_error_in_config_file_is_one_line(tmp_path):
  path = write(tmp_path / 'bad_syntax.py', 'def get_config(:\n  return None\n')
  result = subprocess.run([sys.executable, '-m', 'rlp_jax.main', f'--config={path}',
                           f'--workdir={tmp_path / "w"}'], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  assert_one_error_line(result.stderr, path, 'line 1', 'SyntaxError')
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.subprocess
def test_eval_cli_gets_the_same_config_file_handling(tmp_path):
  path = write(tmp_path / 'no_get_config.py', BASE + 'def config():\n  return base_config()\n')
  result = subprocess.run([sys.executable, '-m', 'rlp_jax.eval', f'--config={path}',
                           f'--workdir={tmp_path}'], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 2, result.stderr
  assert_one_error_line(result.stderr, path, 'no get_config()')


# ---------------------------------------------------------------------------------------------
# Relations between keys.


@pytest.mark.parametrize('seq_len, min_context, positions', [(16, 8, 9), (16, 8, 17), (8, 2, 7)])
def test_more_positions_than_a_row_can_score_is_rejected(seq_len, min_context, positions):
  config = base_config()
  config.data.seq_len, config.rlp.min_context = seq_len, min_context
  config.rlp.positions_per_document = positions
  with pytest.raises(ConfigError, match=r'rlp.positions_per_document.*data.seq_len.*'
                     r'rlp.min_context') as error:
    validate_config(config)
  assert '\n' not in str(error.value)
  config.rlp.positions_per_document = seq_len - min_context  # every allowed position: fine
  validate_config(config)


def test_min_context_not_below_seq_len_is_rejected():
  config = base_config()
  config.data.seq_len = config.rlp.min_context = 16
  with pytest.raises(ConfigError, match='rlp.min_context.*data.seq_len'):
    validate_config(config)


# ---------------------------------------------------------------------------------------------
# Documents and workdirs, met by train() before it compiles anything.


class CharTokenizer:
  """One id per character (ids 4..): enough for the start-up checks."""
  vocab_size, pad_id, bos_id, eos_id, think_start_id, think_end_id = 64, 0, 1, 2, 3, 4

  def encode(self, text):
    return [5 + ord(c) % 50 for c in text]


def train_until_error(monkeypatch, tmp_path, documents, workdir=None, before_compile=True,
                      **rlp):
  """train() on `documents` (a fake corpus and tokenizer); returns the error it raised, after
  checking that nothing was traced or compiled before it (unless `before_compile` is False)."""
  monkeypatch.setattr(loop, 'training_corpus', lambda data: documents)
  monkeypatch.setattr(loop, 'build_tokenizer', lambda *args, **kwargs: CharTokenizer())
  config = base_config()
  config.data.batch_size = 4
  config.train.progress_bar = False
  config.rlp.update(rlp)
  with compile_events() as events, pytest.raises(Exception) as error:
    loop.train(config, str(workdir or tmp_path / 'run'))
  assert not events or not before_compile, events  # raised before anything was traced
  assert '\n' not in str(error.value)
  return error.value


def test_fewer_documents_than_the_batch_is_one_line(monkeypatch, tmp_path):
  error = train_until_error(monkeypatch, tmp_path, ['a long enough document'] * 3)
  assert isinstance(error, ConfigError)
  assert 'data.batch_size' in str(error) and '(4)' in str(error) and '3 documents' in str(error)


def test_every_document_shorter_than_min_context_is_one_line(monkeypatch, tmp_path):
  error = train_until_error(monkeypatch, tmp_path, ['short'] * 6, min_context=8)
  assert isinstance(error, ConfigError)
  assert 'rlp.min_context' in str(error) and '(8)' in str(error)


def test_one_long_enough_document_passes_the_document_checks(monkeypatch, tmp_path):
  """'short' gives bos + 5 + eos = 7 tokens: min_context 6 leaves one scorable position."""
  monkeypatch.setattr(loop, 'create_sharded_state', _stop_here)
  error = train_until_error(monkeypatch, tmp_path, ['short'] * 6, before_compile=False,
                            min_context=6)
  assert isinstance(error, _Reached)


def test_short_documents_are_fine_without_rlp(monkeypatch, tmp_path):
  monkeypatch.setattr(loop, 'create_sharded_state', _stop_here)
  error = train_until_error(monkeypatch, tmp_path, ['short'] * 6, before_compile=False,
                            enabled=False, min_context=8)
  assert isinstance(error, _Reached)


class _Reached(Exception):
  """train() got past the start-up checks to building the state."""


def _stop_here(*args, **kwargs):
  raise _Reached('reached create_sharded_state')


def test_workdir_that_is_a_file_is_one_line(monkeypatch, tmp_path):
  workdir = tmp_path / 'a_file'
  workdir.write_text('not a directory')
  error = train_until_error(monkeypatch, tmp_path, ['a document'] * 8, workdir=workdir)
  assert isinstance(error, WorkdirError)
  assert str(workdir) in str(error) and 'is a file' in str(error)


def test_workdir_under_a_file_is_one_line(monkeypatch, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  error = train_until_error(monkeypatch, tmp_path, ['a document'] * 8,
                            workdir=blocker / 'run' / 'deeper')
  assert isinstance(error, WorkdirError)
  assert str(blocker / 'run' / 'deeper') in str(error) and f'{blocker} is a file' in str(error)


def test_workdir_that_is_not_writable_is_one_line(monkeypatch, tmp_path):
  read_only = tmp_path / 'read_only'
  read_only.mkdir()
  read_only.chmod(0o500)
  if os.access(read_only, os.W_OK):  # root writes anyway: the probe file fails as it would
    def refuse(**kwargs):
      raise PermissionError(13, 'Permission denied', kwargs.get('dir'))
    monkeypatch.setattr(startup_checks, 'tempfile', types.SimpleNamespace(
        NamedTemporaryFile=refuse))
  try:
    error = train_until_error(monkeypatch, tmp_path, ['a document'] * 8,
                              workdir=read_only / 'run')
  finally:
    read_only.chmod(0o700)
  assert isinstance(error, WorkdirError)
  assert str(read_only) in str(error) and 'Permission denied' in str(error)


@pytest.mark.subprocess
def test_cli_workdir_that_is_a_file_is_one_line(tmp_path):
  workdir = tmp_path / 'a_file'
  workdir.write_text('not a directory')
  result = subprocess.run([sys.executable, '-m', 'rlp_jax.main', f'--workdir={workdir}'],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  assert_one_error_line(result.stderr, str(workdir), 'is a file')
