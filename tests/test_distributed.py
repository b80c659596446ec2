"""Multi-host start-up: flags, SLURM and Cloud TPU map to jax.distributed.initialize arguments.

Only the mapping is tested here (nothing starts); tests/test_multiprocess.py starts real processes.
"""
import subprocess
import sys

import pytest

from rlp_jax.errors import UserInputError
from rlp_jax.parallel.distributed import first_slurm_host, plan_startup, running_on_cloud_tpu

SLURM_TWO_NODES = {  # srun --nodes=2 --ntasks-per-node=1 inside job 4242, on the second node
    'SLURM_JOB_ID': '4242', 'SLURM_STEP_NODELIST': 'gpu[003-004]', 'SLURM_NTASKS': '2',
    'SLURM_STEP_NUM_TASKS': '2', 'SLURM_PROCID': '1', 'SLURM_LOCALID': '0',
    'SLURM_STEP_NUM_NODES': '2', 'CUDA_VISIBLE_DEVICES': '0,1,2,3,4,5,6,7',
}


def plan(env, **flags):
  return plan_startup(env=env, on_cloud_tpu=flags.pop('on_cloud_tpu', False), **flags)


def test_no_cluster_means_one_process_and_nothing_to_start():
  startup = plan({})
  assert startup.source == 'single' and startup.initialize_args is None
  assert not startup.multi_process


def test_explicit_flags_win_over_the_environment():
  startup = plan(SLURM_TWO_NODES, coordinator_address='10.0.0.1:1234', num_processes=4,
                 process_id=3, on_cloud_tpu=True)
  assert startup.source == 'flags'
  assert startup.initialize_args == {'coordinator_address': '10.0.0.1:1234', 'num_processes': 4,
                                     'process_id': 3}


@pytest.mark.parametrize('flags, needle', [
    ({'coordinator_address': 'h:1'}, '--num_processes, --process_id must be given'),
    ({'num_processes': 2, 'process_id': 0}, '--coordinator_address must be given'),
    ({'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 2}, 'process_id < num'),
    ({'coordinator_address': 'nohost', 'num_processes': 2, 'process_id': 0}, 'host:port'),
])
def test_incomplete_or_bad_flags_name_the_flag(flags, needle):
  with pytest.raises(UserInputError, match=needle):
    plan({}, **flags)


def test_slurm_one_task_per_node_sees_all_its_gpus():
  startup = plan(SLURM_TWO_NODES)
  assert startup.source == 'slurm'
  # jax's own port rule: job id mod 4096 in the top 4096 ports.
  assert startup.initialize_args == {'coordinator_address': f'gpu003:{4242 % 4096 + 61440}',
                                     'num_processes': 2, 'process_id': 1}


def test_slurm_one_task_per_gpu_gets_its_local_gpu():
  env = dict(SLURM_TWO_NODES, SLURM_NTASKS='16', SLURM_STEP_NUM_TASKS='16', SLURM_PROCID='13',
             SLURM_LOCALID='5', RLP_JAX_COORDINATOR_PORT='7777')
  args = plan(env).initialize_args
  assert args == {'coordinator_address': 'gpu003:7777', 'num_processes': 16, 'process_id': 13,
                  'local_device_ids': [5]}
  # SLURM already bound one GPU to the task (--gpus-per-task=1): it is local device 0, no ids.
  bound = plan(dict(env, CUDA_VISIBLE_DEVICES='5')).initialize_args
  assert 'local_device_ids' not in bound


def test_slurm_batch_script_or_single_task_is_one_process():
  batch_script = {k: v for k, v in SLURM_TWO_NODES.items() if k != 'SLURM_STEP_NODELIST'}
  assert plan(batch_script).source == 'single'  # not inside srun: do not wait for peers
  single_task = dict(SLURM_TWO_NODES, SLURM_NTASKS='1', SLURM_STEP_NUM_TASKS='1', SLURM_PROCID='0')
  assert plan(single_task).source == 'single'


def test_cloud_tpu_initializes_with_no_arguments():
  startup = plan({}, on_cloud_tpu=True)
  assert startup.source == 'cloud_tpu' and startup.initialize_args == {}
  assert plan(SLURM_TWO_NODES, on_cloud_tpu=True).source == 'slurm'


def test_distributed_off_skips_detection():
  assert plan(SLURM_TWO_NODES, mode='off').source == 'off'
  with pytest.raises(UserInputError, match='--distributed'):
    plan({}, mode='maybe')


@pytest.mark.parametrize('node_list, host', [
    ('node001', 'node001'), ('node001,host2', 'node001'), ('node[001-015],host2', 'node001'),
    ('node[007,009-015]', 'node007'), ('a-b-c[10-11]', 'a-b-c10'),
])
def test_first_slurm_host(node_list, host):
  assert first_slurm_host(node_list) == host


def fake_pci_device(root, name, vendor, device):
  path = root / name
  path.mkdir()
  (path / 'vendor').write_text(vendor + '\n')
  (path / 'device').write_text(device + '\n')


def test_cloud_tpu_probe(tmp_path):
  fake_pci_device(tmp_path, '0000:00:04.0', '0x1ae0', '0x0042')  # gVNIC: Google, but no TPU
  assert not running_on_cloud_tpu({}, str(tmp_path), libtpu_installed=True)
  assert running_on_cloud_tpu({'TPU_WORKER_HOSTNAMES': 'a,b'}, str(tmp_path),
                              libtpu_installed=True)
  fake_pci_device(tmp_path, '0000:00:05.0', '0x1ae0', '0x0062')  # a TPU v5p chip
  assert running_on_cloud_tpu({}, str(tmp_path), libtpu_installed=True)
  assert not running_on_cloud_tpu({}, str(tmp_path), libtpu_installed=False)


@pytest.mark.subprocess
def test_cli_reports_incomplete_flags_on_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'rlp_jax.main', f'--workdir={tmp_path}',
       '--coordinator_address=localhost:1234'], capture_output=True, text=True, timeout=120,
      check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == ('rlp_jax: error: --num_processes, --process_id must be given '
                                   'with --coordinator_address')
