"""Multi-host start-up: find out from flags or the environment how this process joins the job, and
call `jax.distributed.initialize` before anything touches a JAX backend.

Sources, first match wins:
  flags      --coordinator_address, --num_processes, --process_id (all three)
  slurm      inside `srun` with more than one task: SLURM_* variables (one process per task)
  cloud_tpu  on a Cloud TPU VM (libtpu installed and a TPU attached): `initialize()` with no
             arguments, which reads the pod's workers from the TPU metadata
  single     none of the above: nothing to do (one process sees all local devices)

`plan_startup` only reads its inputs (unit-testable without starting anything); `initialize`
acts on its answer.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
from typing import Any, Mapping

from rlp_jax.errors import UserInputError

# TPU PCI device ids as in jax's own detection (v3, v4, v5p, v5e, v6e, 7x and one unnamed); the
# vendor 0x1ae0 is Google, which gVNIC network cards share, hence the device check.
_GOOGLE_PCI_VENDOR = '0x1ae0'
_TPU_PCI_DEVICES = ('0x0027', '0x0056', '0x005e', '0x0062', '0x0063', '0x006f', '0x0076')
_TPU_ENV_HINTS = ('TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES', 'TPU_ACCELERATOR_TYPE')


@dataclasses.dataclass(frozen=True)
class Startup:
  """How this process starts: `source` names where the answer came from; `initialize_args` are
  the keyword arguments of jax.distributed.initialize (None: do not call it)."""
  source: str  # 'flags' | 'slurm' | 'cloud_tpu' | 'single' | 'off'
  initialize_args: dict[str, Any] | None

  @property
  def multi_process(self) -> bool:
    return self.initialize_args is not None


def plan_startup(coordinator_address: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None, mode: str = 'auto',
                 env: Mapping[str, str] | None = None, on_cloud_tpu: bool | None = None) -> Startup:
  """The start-up of this process from the flags, then SLURM, then Cloud TPU detection.

  `mode` 'off' skips detection (one process); `on_cloud_tpu` overrides the hardware probe.
  """
  env = os.environ if env is None else env
  if mode not in ('auto', 'off'):
    raise UserInputError(f"--distributed must be 'auto' or 'off', got {mode!r}")
  explicit = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
              'process_id': process_id}
  given = {name: value for name, value in explicit.items() if value is not None}
  if given:
    missing = sorted(set(explicit) - set(given))
    if missing:
      raise UserInputError(f"--{', --'.join(missing)} must be given with --{', --'.join(given)}")
    _check_process(num_processes, process_id, '--num_processes/--process_id')
    if not re.fullmatch(r'\S+:\d+', coordinator_address):
      raise UserInputError(f'--coordinator_address must be host:port, got {coordinator_address!r}')
    return Startup('flags', dict(explicit))
  if mode == 'off':
    return Startup('off', None)
  slurm = slurm_initialize_args(env)
  if slurm is not None:
    return Startup('slurm', slurm)
  if on_cloud_tpu if on_cloud_tpu is not None else running_on_cloud_tpu(env):
    return Startup('cloud_tpu', {})
  return Startup('single', None)


def slurm_initialize_args(env: Mapping[str, str]) -> dict[str, Any] | None:
  """jax.distributed.initialize arguments inside an `srun` step of more than one task, else None.

  The coordinator is the step's first node; its port is $RLP_JAX_COORDINATOR_PORT (or
  $JAX_COORDINATOR_PORT), else derived from the job id as jax does. With several tasks on a node
  each task gets one GPU (local_device_ids = [SLURM_LOCALID]) unless SLURM already narrowed
  CUDA_VISIBLE_DEVICES to one device; with one task per node it sees all of the node's GPUs.
  """
  if 'SLURM_JOB_ID' not in env or 'SLURM_STEP_NODELIST' not in env:
    return None  # not in a job, or in the batch script itself rather than an srun step
  num_processes = int(env.get('SLURM_STEP_NUM_TASKS', env.get('SLURM_NTASKS', '1')))
  if num_processes <= 1:
    return None
  process_id = int(env['SLURM_PROCID'])
  _check_process(num_processes, process_id, 'SLURM_NTASKS/SLURM_PROCID')
  port = env.get('RLP_JAX_COORDINATOR_PORT') or env.get('JAX_COORDINATOR_PORT') or str(
      int(env['SLURM_JOB_ID']) % 2**12 + (65535 - 2**12 + 1))
  args: dict[str, Any] = {
      'coordinator_address': f"{first_slurm_host(env['SLURM_STEP_NODELIST'])}:{port}",
      'num_processes': num_processes,
      'process_id': process_id,
  }
  num_nodes = int(env.get('SLURM_STEP_NUM_NODES', env.get('SLURM_NNODES', '1')))
  visible = [d for d in env.get('CUDA_VISIBLE_DEVICES', '').split(',') if d]
  if num_processes > num_nodes and len(visible) != 1 and 'SLURM_LOCALID' in env:
    args['local_device_ids'] = [int(env['SLURM_LOCALID'])]
  return args


def first_slurm_host(node_list: str) -> str:
  """The first host of a SLURM node list: 'gpu[003-004,9],cpu1' -> 'gpu003'."""
  match = re.match(r'([^,\[]+)(?:\[([^\],\-]+))?', node_list.strip())
  if not match:
    raise UserInputError(f'cannot read the SLURM node list {node_list!r}')
  return match.group(1) + (match.group(2) or '')


def running_on_cloud_tpu(env: Mapping[str, str] | None = None,
                         pci_root: str = '/sys/bus/pci/devices',
                         libtpu_installed: bool | None = None) -> bool:
  """A Cloud TPU VM (or GKE TPU node): libtpu is installed and a TPU chip or the TPU runtime's
  environment is present."""
  env = os.environ if env is None else env
  if libtpu_installed is None:
    libtpu_installed = importlib.util.find_spec('libtpu') is not None
  if not libtpu_installed:
    return False
  return any(name in env for name in _TPU_ENV_HINTS) or _tpu_pci_device_present(pci_root)


def _tpu_pci_device_present(pci_root: str) -> bool:
  for vendor_path in glob.glob(os.path.join(pci_root, '*', 'vendor')):
    try:
      with open(vendor_path, encoding='ascii') as f:
        vendor = f.read().strip()
      with open(os.path.join(os.path.dirname(vendor_path), 'device'), encoding='ascii') as f:
        device = f.read().strip()
    except OSError:
      continue
    if vendor == _GOOGLE_PCI_VENDOR and device in _TPU_PCI_DEVICES:
      return True
  return False


def _check_process(num_processes: int, process_id: int, names: str) -> None:
  if num_processes < 1 or not 0 <= process_id < num_processes:
    raise UserInputError(f'{names}: need 0 <= process_id < num_processes, got process_id '
                         f'{process_id} of {num_processes}')


def initialize(startup: Startup) -> None:
  """Joins the distributed job (a no-op for a single process). Call before any JAX backend use."""
  if not startup.multi_process:
    return
  import jax  # pylint: disable=import-outside-toplevel
  jax.distributed.initialize(**startup.initialize_args)


def describe_process() -> str:
  """One line for this host's log: process index, local and global device counts, platform."""
  import jax  # pylint: disable=import-outside-toplevel
  local = jax.local_devices()
  return (f'process {jax.process_index()}/{jax.process_count()}: {len(local)} local '
          f'{local[0].platform} devices, {jax.device_count()} in all')


def is_primary_process() -> bool:
  """True on process 0, the one that prints and writes metrics."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.process_index() == 0


def say(message: str) -> None:
  """Prints `[rlp_jax] message` on process 0 only (every process runs the same loop), above any
  progress bar."""
  if is_primary_process():
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    tqdm.write(f'[rlp_jax] {message}')
