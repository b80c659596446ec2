"""Command line: `python -m rlp_jax.main --config=configs/tiny.py [--config.a.b=v ...] --workdir=DIR`.

Bad input (unknown key, wrong type, bad value, missing file) stops with one line naming the key or
path and exit status 2, without a traceback.

Several hosts run the same command; each joins the job before JAX starts (parallel/distributed.py:
explicit --coordinator_address/--num_processes/--process_id, else SLURM, else Cloud TPU detection).
`--dry_run [--dry_run_devices=N]` compiles the step for the configured mesh on N simulated CPU
devices without allocating the model and prints per-device memory (parallel/memory_plan.py).
"""
from __future__ import annotations

import os
import re
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from rlp_jax.errors import UserInputError

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'configs', 'tiny.py')

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file (default: configs/tiny.py); override keys with '
    '--config.a.b=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for metrics, event files and '
                               'checkpoints; rerunning on the same workdir resumes. On several '
                               'hosts it must be one directory all of them share.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for a '
                                   'multi-process run started by hand (with --num_processes and '
                                   '--process_id); SLURM and Cloud TPU need none of these.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes-1.')
_DISTRIBUTED = flags.DEFINE_enum('distributed', 'auto', ['auto', 'off'], "'auto': join a "
                                 "multi-process job from the flags, SLURM or Cloud TPU; 'off': "
                                 'one process.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Compile the step ahead of time for the configured '
                             'mesh on simulated CPU devices and print per-device memory; trains '
                             'nothing and allocates no model.')
_DRY_RUN_DEVICES = flags.DEFINE_integer('dry_run_devices', None, 'Simulated devices for '
                                        '--dry_run (default: the mesh sizes multiplied, when none '
                                        'is -1).')


def fail(message: str) -> None:
  print(f'rlp_jax: error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]} (use --config.key=value for overrides)')
  if not _WORKDIR.value and not _DRY_RUN.value:
    fail('--workdir is required (where metrics, event files and checkpoints go)')
  if _WORKDIR.value and '://' in _WORKDIR.value:
    fail(f'--workdir {_WORKDIR.value!r}: URL workdirs (gs://, s3://) are not supported; mount the '
         'bucket or a shared filesystem on every host (gcsfuse, Filestore/NFS) and pass its local '
         'path (docs/launch.md)')
  try:
    config = _CONFIG.value  # loaded lazily: a broken config file fails on first access
    config.keys()
  except Exception as error:  # pylint: disable=broad-except
    fail(_one_line(error))
  from rlp_jax.config_schema import validate_config  # pylint: disable=import-outside-toplevel
  try:
    validate_config(config)
    if _DRY_RUN.value:
      _dry_run(config)
      return
    from rlp_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
    distributed.initialize(distributed.plan_startup(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value))
    from rlp_jax.train.loop import train  # pylint: disable=import-outside-toplevel
    train(config, _WORKDIR.value)
  except UserInputError as error:
    fail(str(error))
  except KeyboardInterrupt:
    sys.exit(130)


def _dry_run(config) -> None:
  """Simulates the devices (before the JAX backend starts), then plans the memory."""
  from rlp_jax.parallel import memory_plan  # pylint: disable=import-outside-toplevel
  num_devices = memory_plan.simulated_device_count(config.mesh, _DRY_RUN_DEVICES.value)
  memory_plan.simulate_cpu_devices(num_devices)
  for line in memory_plan.format_report(memory_plan.plan_memory(config)):
    print(line)


def _with_default_config(argv: list[str]) -> list[str]:
  """Adds `--config=configs/tiny.py` when no config file is named."""
  for i, arg in enumerate(argv[1:], start=1):
    if arg == '--config' or arg.startswith('--config='):
      path = arg.partition('=')[2] or (argv[i + 1] if i + 1 < len(argv) else '')
      path = path.split(':', 1)[0]  # config_flags allows `file.py:argument`
      if not os.path.isfile(path):
        fail(f'config file not found: {path!r}')
      return argv
  return argv[:1] + [f'--config={_DEFAULT_CONFIG}'] + argv[1:]


def _one_line(error: BaseException) -> str:
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


def _flags_parser(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config-file and override errors reported on one line."""
  try:
    return flags.FLAGS(_with_default_config(argv))
  except UserInputError as error:
    fail(str(error))
  except (flags.Error, KeyError, AttributeError, OSError, TypeError, ValueError) as error:
    fail(_one_line(error))
  return []


def run() -> None:
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every save at INFO
  app.run(main, flags_parser=_flags_parser)


if __name__ == '__main__':
  run()
