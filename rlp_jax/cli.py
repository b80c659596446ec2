"""What the command-line entry points share (`rlp_jax.main`, `rlp_jax.eval`): the default config
file, one-line errors with exit status 2, and absl flag parsing that reports config-file and
override errors on one line (a config file that does not load names the file and the line:
docs/failure_modes.md)."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Any

from absl import flags
from absl import logging as absl_logging
import ml_collections

from rlp_jax.errors import UserInputError

CONFIG_FILE_FLAG = 'config'

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _configs_dir() -> str:
  """The config files shipped with rlp_jax: `rlp_jax/configs/` in an installed wheel (pyproject.toml
  maps the repository's top-level configs/ there), else the checkout's `configs/` (a checkout or an
  editable install)."""
  installed = os.path.join(_PACKAGE_DIR, 'configs')
  if os.path.isfile(os.path.join(installed, 'tiny.py')):
    return installed
  return os.path.join(os.path.dirname(_PACKAGE_DIR), 'configs')


CONFIGS_DIR = _configs_dir()
DEFAULT_CONFIG = os.path.join(CONFIGS_DIR, 'tiny.py')


def fail(message: str) -> None:
  print(f'rlp_jax: error: {message}', file=sys.stderr)
  sys.exit(2)


def config_from_flags(argv: list[str], config_flag: Any) -> Any:
  """The config of `--config` (with its overrides), or one line and exit status 2 for stray
  positional arguments or a config file that fails to load (it is loaded lazily, on first
  access)."""
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]} (use --config.key=value for overrides)')
  path = _parsed_config_path(config_flag)
  try:
    config = config_flag.value
    getattr(config, 'keys', None)  # a file that failed with an OSError raises it on any access
    if not isinstance(config, ml_collections.ConfigDict):
      fail(f'config file {path}: get_config() returned {type(config).__name__}, not a '
           'ConfigDict (a missing `return`?)')
  except Exception as error:  # pylint: disable=broad-except
    fail(config_file_error(error, path) or one_line(error))
  return config


def _parsed_config_path(config_flag: Any) -> str:
  """The file `--config` named (without a `:argument`), or '' before parsing."""
  try:
    flag_values = getattr(config_flag, '_flagvalues', flags.FLAGS)  # a FlagHolder's own
    return str(flag_values[config_flag.name].config_filename).split(':', 1)[0]
  except Exception:  # pylint: disable=broad-except
    return ''


def config_file_path(argv: list[str]) -> str:
  """The config file of `--config` in argv (without a `:argument`), or ''."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg == f'--{CONFIG_FILE_FLAG}' or arg.startswith(f'--{CONFIG_FILE_FLAG}='):
      path = arg.partition('=')[2] or (argv[i + 1] if i + 1 < len(argv) else '')
      return path.split(':', 1)[0]  # config_flags allows `file.py:argument`
  return ''


def config_file_error(error: BaseException, path: str) -> str | None:
  """One line for an error raised while loading the config file `path` (a syntax error, a failed
  import, a NameError or any exception raised by its code, a missing `get_config`), naming the file
  and the line; None when the error did not come from loading that file."""
  if not path:
    return None
  where = f'config file {path}'
  for exc in _exception_chain(error):
    if isinstance(exc, SyntaxError) and exc.filename and _same_file(exc.filename, path):
      return f'{where}, line {exc.lineno}: {type(exc).__name__}: {exc.msg}'
    if (isinstance(exc, AttributeError) and getattr(exc, 'name', None) == 'get_config'
        and _same_file(getattr(getattr(exc, 'obj', None), '__file__', None) or '', path)):
      return f'{where} defines no get_config() function'
    line = _line_in_file(exc, path)
    if line is not None and isinstance(exc, UserInputError):
      return f'{where}, line {line}: {exc}'
    if line is not None:
      message = str(exc).strip().splitlines()
      return (f'{where}, line {line}: {type(exc).__name__}' +
              (f': {message[0]}' if message else ''))
  return None


def _exception_chain(error: BaseException) -> list[BaseException]:
  """`error` and the exceptions it was raised from or during (innermost last)."""
  chain: list[BaseException] = []
  while error is not None and error not in chain:
    chain.append(error)
    error = error.__cause__ or error.__context__
  return chain


def _same_file(a: str, b: str) -> bool:
  return bool(a) and os.path.realpath(a) == os.path.realpath(b)


def _line_in_file(error: BaseException, path: str) -> int | None:
  """The line of `path` in `error`'s traceback that is nearest the raise, if any."""
  line = None
  traceback = error.__traceback__
  while traceback is not None:
    if _same_file(traceback.tb_frame.f_code.co_filename, path):
      line = traceback.tb_lineno
    traceback = traceback.tb_next
  return line


def packaged_config(path: str) -> str | None:
  """The shipped copy of `configs/NAME.py` (CONFIGS_DIR) for a relative `path` of that form that
  does not exist from the working directory (an installed rlp_jax run outside a checkout), or
  None."""
  parts = os.path.normpath(path).split(os.sep)
  if os.path.isabs(path) or len(parts) != 2 or parts[0] != 'configs' or os.path.exists(path):
    return None
  shipped = os.path.join(CONFIGS_DIR, parts[1])
  return shipped if os.path.isfile(shipped) else None


def with_default_config(argv: list[str]) -> list[str]:
  """Adds `--config=<shipped configs>/tiny.py` when no config file is named, and points a
  `--config=configs/NAME.py` that the working directory lacks at the shipped copy."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg == f'--{CONFIG_FILE_FLAG}' or arg.startswith(f'--{CONFIG_FILE_FLAG}='):
      path = config_file_path(argv)
      shipped = packaged_config(path)
      if shipped is not None:
        argv = list(argv)
        if arg == f'--{CONFIG_FILE_FLAG}' and i + 1 < len(argv):
          argv[i + 1] = shipped + argv[i + 1][len(path):]  # keeps a `:argument`
        else:
          argv[i] = f'--{CONFIG_FILE_FLAG}=' + shipped + arg.partition('=')[2][len(path):]
        path = shipped
      if not os.path.isfile(path):
        fail(f'config file not found: {path!r}')
      return argv
  return argv[:1] + [f'--{CONFIG_FILE_FLAG}={DEFAULT_CONFIG}'] + argv[1:]


def one_line(error: BaseException) -> str:
  """The first informative line of a flag-parsing error, with unknown keys named plainly."""
  text = str(error).strip()
  if isinstance(error, (KeyError, AttributeError)):
    first = text.strip('"\'').replace('\\n', '\n').splitlines()[0].strip('"\'\\')
    hint = re.search(r'Did you mean "([^"]+)"', text)
    return f'unknown config key `{first}` in an override' + (
        f' (did you mean `{hint.group(1)}`?)' if hint else '')
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  detail = next((line for line in lines if 'Errno' in line or 'Error' in line), '')
  return ' '.join(part for part in (lines[0] if lines else repr(error), detail) if part)


def flags_parser(argv: list[str], flag_values: flags.FlagValues | None = None) -> list[str]:
  """absl's flag parsing (of `flag_values`, default the global flags), with config-file and
  override errors reported on one line."""
  argv = with_default_config(argv)
  try:
    with _without_returned_none_warning():  # reported as our one line instead
      return (flags.FLAGS if flag_values is None else flag_values)(argv)
  except Exception as error:  # pylint: disable=broad-except
    message = config_file_error(error, config_file_path(argv))
    if message:
      fail(message)
    if isinstance(error, UserInputError):
      fail(str(error))
    if isinstance(error, (flags.Error, KeyError, AttributeError, OSError, TypeError, ValueError)):
      fail(one_line(error))
    raise
  return []


class _ReturnedNoneFilter(logging.Filter):
  """Drops config_flags' warning that get_config() returned None (config_from_flags reports it)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'get_config() returned None' not in record.getMessage()


@contextlib.contextmanager
def _without_returned_none_warning():
  logger = absl_logging.get_absl_logger()
  quiet = _ReturnedNoneFilter()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)
