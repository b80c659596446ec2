"""Command line: `python -m rlp_jax.main --config=configs/tiny.py [--config.a.b=v ...] --workdir=DIR`.

Bad input (unknown key, wrong type, bad value, missing file) stops with one line naming the key or
path and exit status 2, without a traceback.

Several hosts run the same command; each joins the job before JAX starts (parallel/distributed.py:
explicit --coordinator_address/--num_processes/--process_id, else SLURM, else Cloud TPU detection).
`--dry_run [--dry_run_devices=N]` compiles the step for the configured mesh on N simulated CPU
devices without allocating the model and prints per-device memory (rlp_jax/dry_run.py).
"""
from __future__ import annotations

import os
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

from rlp_jax.cli import config_from_flags, fail, flags_parser
from rlp_jax.errors import ConfigError, UserInputError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file (default: configs/tiny.py, shipped with rlp_jax; a '
    'relative configs/NAME.py that the working directory lacks is read from the shipped copy); '
    'override keys with --config.a.b=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for metrics, event files and '
                               'checkpoints, local or a URL (gs://bucket/run); rerunning on the '
                               'same workdir resumes. On several hosts it must be one directory '
                               'all of them share.')
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
_DRY_RUN_TARGET = flags.DEFINE_string('dry_run_target', None, 'With --dry_run: simulate this '
                                      "machine's devices and say whether the step fits its "
                                      'memory: 8xH100, v5p-64 or v6e-64 (rlp_jax/dry_run.py).')


def main(argv: list[str]) -> None:
  # Installed first: a signal at any later moment (even while JAX compiles) ends the run at a
  # step boundary with a checkpoint and one line (train/stop_request.py).
  from rlp_jax.train.stop_request import RunStopped, StopRequest  # pylint: disable=import-outside-toplevel
  with StopRequest(uninstall=False) as stop:
    try:
      _main(argv, stop)
    except RunStopped as stopped:
      from rlp_jax.parallel.distributed import is_primary_process  # pylint: disable=import-outside-toplevel
      if is_primary_process():
        print(f'[rlp_jax] {stopped.message}', flush=True)
      sys.stderr.flush()
      # Checkpoints and metrics are closed; skipping the interpreter's teardown (which resets the
      # signal handlers and tears down the JAX runtime) keeps a second signal from killing it.
      os._exit(stopped.exit_status)  # pylint: disable=protected-access


def _main(argv: list[str], stop) -> None:
  config = config_from_flags(argv, _CONFIG)
  if not _WORKDIR.value and not _DRY_RUN.value:
    fail('--workdir is required (where metrics, event files and checkpoints go)')
  from rlp_jax.config import validate_config  # pylint: disable=import-outside-toplevel
  try:
    validate_config(config)
    if _DRY_RUN.value:
      stop.nothing_to_save = 'dry run'  # no step boundary to stop at: a signal exits at once
      _dry_run(config)
      return
    from rlp_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
    distributed.initialize(distributed.plan_startup(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value))
    stop.reinstall()  # jax.distributed's preemption notifier took SIGTERM
    from rlp_jax.train.loop import train  # pylint: disable=import-outside-toplevel
    train(config, _WORKDIR.value, stop=stop)
  except UserInputError as error:
    fail(str(error))
  except KeyboardInterrupt:
    sys.exit(130)


def _dry_run(config) -> None:
  """Simulates the devices (before the JAX backend starts), then plans the memory."""
  from rlp_jax import dry_run  # pylint: disable=import-outside-toplevel
  target = None
  if _DRY_RUN_TARGET.value:
    target = dry_run.target_named(_DRY_RUN_TARGET.value)
    if _DRY_RUN_DEVICES.value not in (None, target.devices):
      raise ConfigError(f'--dry_run_devices={_DRY_RUN_DEVICES.value} contradicts '
                        f'--dry_run_target={target.name} ({target.devices} devices)')
    num_devices = target.devices
  else:
    num_devices = dry_run.simulated_device_count(config.mesh, _DRY_RUN_DEVICES.value)
  dry_run.simulate_cpu_devices(num_devices)
  for line in dry_run.format_report(dry_run.plan_memory(config), target):
    print(line)


def run() -> None:
  logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every save at INFO
  app.run(main, flags_parser=flags_parser)


if __name__ == '__main__':
  run()
