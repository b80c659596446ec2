"""What the command-line entry points share (`rlp_jax.main`, `rlp_jax.eval`): the default config
file, one-line errors with exit status 2, and absl flag parsing that reports config-file and
override errors on one line."""
from __future__ import annotations

import os
import re
import sys
from typing import Any

from absl import flags

from rlp_jax.errors import UserInputError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              'configs', 'tiny.py')


def fail(message: str) -> None:
  print(f'rlp_jax: error: {message}', file=sys.stderr)
  sys.exit(2)


def config_from_flags(argv: list[str], config_flag: Any) -> Any:
  """The config of `--config` (with its overrides), or one line and exit status 2 for stray
  positional arguments or a config file that fails to load (it is loaded lazily, on first
  access)."""
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]} (use --config.key=value for overrides)')
  try:
    config = config_flag.value
    config.keys()
  except Exception as error:  # pylint: disable=broad-except
    fail(one_line(error))
  return config


def with_default_config(argv: list[str]) -> list[str]:
  """Adds `--config=configs/tiny.py` when no config file is named."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg == '--config' or arg.startswith('--config='):
      path = arg.partition('=')[2] or (argv[i + 1] if i + 1 < len(argv) else '')
      path = path.split(':', 1)[0]  # config_flags allows `file.py:argument`
      if not os.path.isfile(path):
        fail(f'config file not found: {path!r}')
      return argv
  return argv[:1] + [f'--config={DEFAULT_CONFIG}'] + argv[1:]


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


def flags_parser(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config-file and override errors reported on one line."""
  try:
    return flags.FLAGS(with_default_config(argv))
  except UserInputError as error:
    fail(str(error))
  except (flags.Error, KeyError, AttributeError, OSError, TypeError, ValueError) as error:
    fail(one_line(error))
  return []
