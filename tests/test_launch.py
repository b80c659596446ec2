"""launch/ scripts in print-only mode (DRY_RUN=1): the commands they would run, and nothing run.

`gcloud`, `srun`, `sbatch` and `tar` on PATH are stand-ins that record any call, so a script that
executed a command instead of printing it fails the test.
"""
import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_POD = os.path.join(REPO, 'launch', 'tpu_pod.sh')
SLURM_GPU = os.path.join(REPO, 'launch', 'slurm_gpu.sbatch')
RUN_ARGS = ['--config=configs/nano12b.py', '--workdir=/mnt/shared/runs/n12',
            '--config.mesh.fsdp=8', '--config.data.files=/data/a b*.jsonl']


@pytest.fixture
def fake_path(tmp_path):
  """A PATH whose gcloud/srun/sbatch/tar only record that they were called."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name in ('gcloud', 'srun', 'sbatch', 'tar'):
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\necho {name} >> {tmp_path}/called\nexit 1\n')
    tool.chmod(0o755)
  return tmp_path, f"{bin_dir}:{os.environ['PATH']}"


def print_only(fake_path, script, *args, **env):
  tmp_path, path = fake_path
  result = subprocess.run(['bash', script, *args], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, PATH=path, DRY_RUN='1', **env), check=False)
  assert result.returncode == 0, result.stderr
  assert not (tmp_path / 'called').exists(), (tmp_path / 'called').read_text()
  return [shlex.split(line) for line in result.stdout.splitlines()]


def test_tpu_pod_create_and_delete(fake_path):
  [create] = print_only(fake_path, TPU_POD, 'create', TPU_NAME='pod1', ZONE='us-east5-a',
                        ACCELERATOR='v5p-64', PROJECT='proj', SPOT='1')
  assert create == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'pod1', '--zone=us-east5-a',
                    '--project=proj', '--accelerator-type=v5p-64',
                    '--version=v2-alpha-tpuv5', '--spot']
  [delete] = print_only(fake_path, TPU_POD, 'delete', TPU_NAME='pod1')
  assert delete[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'pod1']
  assert '--quiet' in delete


def test_tpu_pod_install_copies_the_tree_and_installs_on_every_worker(fake_path):
  pack, copy, install = print_only(fake_path, TPU_POD, 'install', TPU_NAME='pod1')
  assert pack[:3] == ['tar', 'czf', '/tmp/rlp_jax_src.tar.gz'] and pack[-3:] == ['-C', REPO, '.']
  assert '--exclude=.git' in pack
  assert copy[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']
  assert copy[5:7] == ['/tmp/rlp_jax_src.tar.gz', 'pod1:rlp_jax_src.tar.gz']
  assert '--worker=all' in copy
  assert install[4:6] == ['ssh', 'pod1'] and '--worker=all' in install
  remote = install[-1].removeprefix('--command=')
  assert "pip install -U 'jax[tpu]'" in remote and 'pip install -e .' in remote


def test_tpu_pod_runs_the_same_command_on_all_workers(fake_path):
  [run] = print_only(fake_path, TPU_POD, 'run', *RUN_ARGS, TPU_NAME='pod1')
  assert run[4:6] == ['ssh', 'pod1'] and '--worker=all' in run
  remote = shlex.split(run[-1].removeprefix('--command='))
  start = remote.index('rlp_jax.main') + 1
  assert remote[start:start + len(RUN_ARGS)] == RUN_ARGS  # arguments survive the quoting
  assert remote[:3] == ['cd', '~/rlp_jax', '&&'] and 'nohup' in remote


def test_tpu_pod_logs_and_stop(fake_path):
  [logs] = print_only(fake_path, TPU_POD, 'logs', TPU_NAME='pod1')
  assert '--worker=0' in logs and 'tail -n +1 -F ~/rlp_jax.log' in logs[-1]
  [other] = print_only(fake_path, TPU_POD, 'logs', TPU_NAME='pod1', WORKER='3')
  assert '--worker=3' in other
  [stop] = print_only(fake_path, TPU_POD, 'stop', TPU_NAME='pod1')
  assert '--worker=all' in stop and 'kill $(cat ~/rlp_jax.pid)' in stop[-1]


def test_tpu_pod_rejects_unknown_actions(fake_path):
  result = subprocess.run(['bash', TPU_POD, 'launch-missiles'], capture_output=True, text=True,
                          env=dict(os.environ, PATH=fake_path[1], DRY_RUN='1'), check=False)
  assert result.returncode == 2 and 'launch/tpu_pod.sh create' in result.stdout


def test_slurm_script_prints_one_srun_per_node(fake_path):
  note, srun = print_only(fake_path, SLURM_GPU, *RUN_ARGS, SLURM_JOB_NUM_NODES='4')
  assert 'nodes: 4' in ' '.join(note)
  assert srun == ['srun', '--kill-on-bad-exit=1', '--ntasks-per-node=1', 'python', '-m',
                  'rlp_jax.main', *RUN_ARGS]
  with open(SLURM_GPU, encoding='utf-8') as f:
    directives = [line.split()[1] for line in f if line.startswith('#SBATCH')]
  assert '--ntasks-per-node=1' in directives and '--gpus-per-node=8' in directives
