"""launch/ scripts and packaging for a launch.

Print-only mode (DRY_RUN=1): `gcloud`, `srun`, `sbatch` and `tar` on PATH are stand-ins that record
any call, so a script that executed a command instead of printing it fails the test. Every gcloud
command a script prints or runs is checked against the documented flags of its subcommand
(DOCUMENTED_FLAGS). The recreate loop of `tpu_pod.sh up` runs for real against a scripted gcloud
that plays a preemption. The wheel is built from a copy of the sources and must carry configs/.
"""
import glob
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_POD = os.path.join(REPO, 'launch', 'tpu_pod.sh')
TPU_WORKER = os.path.join(REPO, 'launch', 'tpu_worker.sh')
SLURM_GPU = os.path.join(REPO, 'launch', 'slurm_gpu.sbatch')
RUN_ARGS = ['--config=configs/nano12b.py', '--workdir=/mnt/shared/runs/n12',
            '--config.mesh.fsdp=8', '--config.data.files=/data/a b*.jsonl']

# The flags of each gcloud subcommand the scripts use, from its SYNOPSIS in the gcloud reference
# (read 2025; pages "Last updated 2025-05-07"):
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/describe
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/delete
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/list
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/ssh
#   https://cloud.google.com/sdk/gcloud/reference/compute/tpus/tpu-vm/scp
# plus the GCLOUD_WIDE_FLAGs every command takes (https://cloud.google.com/sdk/gcloud/reference).
GCLOUD_WIDE_FLAGS = {
    '--account', '--billing-project', '--configuration', '--flags-file', '--flatten', '--format',
    '--help', '--project', '--quiet', '--verbosity', '--version', '--access-token-file',
    '--impersonate-service-account', '--log-http', '--trace-token', '--no-user-output-enabled'}
DOCUMENTED_FLAGS = {
    ('queued-resources', 'create'): {
        '--zone', '--runtime-version', '--accelerator-type', '--topology', '--type', '--node-id',
        '--node-count', '--node-prefix', '--async', '--boot-disk', '--data-disk', '--description',
        '--guaranteed', '--internal-ips', '--labels', '--metadata', '--metadata-from-file',
        '--network', '--range', '--reserved', '--scopes', '--service-account',
        '--shielded-secure-boot', '--spot', '--subnetwork', '--tags', '--valid-after-duration',
        '--valid-after-time', '--valid-until-duration', '--valid-until-time',
        '--reservation-host-folder', '--reservation-host-organization',
        '--reservation-host-project'},
    ('queued-resources', 'describe'): {'--zone'},
    ('queued-resources', 'delete'): {'--zone', '--async', '--force'},
    ('queued-resources', 'list'): {'--zone', '--filter', '--limit', '--page-size', '--sort-by',
                                   '--uri'},
    ('tpu-vm', 'ssh'): {
        '--dry-run', '--force-key-file-overwrite', '--internal-ip', '--plain', '--ssh-flag',
        '--ssh-key-file', '--strict-host-key-checking', '--worker', '--zone', '--command',
        '--output-directory', '--ssh-key-expiration', '--ssh-key-expire-after'},
    ('tpu-vm', 'scp'): {
        '--compress', '--dry-run', '--force-key-file-overwrite', '--internal-ip', '--plain',
        '--recurse', '--scp-flag', '--ssh-key-file', '--strict-host-key-checking', '--worker',
        '--zone', '--ssh-key-expiration', '--ssh-key-expire-after'},
}
# What each synopsis requires: create (QUEUED_RESOURCE --runtime-version (--accelerator-type | ...)
# (--node-id | ...)); describe/delete (QUEUED_RESOURCE); ssh ([USER@]TPU); scp (SRC... DEST).
REQUIRED = {('queued-resources', 'create'): {'--runtime-version', '--accelerator-type',
                                             '--node-id'}}
POSITIONALS = {('queued-resources', 'create'): 1, ('queued-resources', 'describe'): 1,
               ('queued-resources', 'delete'): 1, ('queued-resources', 'list'): 0,
               ('tpu-vm', 'ssh'): 1, ('tpu-vm', 'scp'): 2}


def check_gcloud(argv):
  """Asserts that a gcloud command line uses only the documented flags of its subcommand (given as
  --flag=value or a bare boolean flag, as the scripts write them); returns (subcommand, flags,
  positionals)."""
  assert argv[:3] == ['gcloud', 'compute', 'tpus'], argv
  subcommand = tuple(argv[3:5])
  assert subcommand in DOCUMENTED_FLAGS, f'undocumented subcommand {subcommand}: {argv}'
  flags, positionals = {}, []
  for word in argv[5:]:
    if word.startswith('--'):
      name, _, value = word.partition('=')
      assert name in DOCUMENTED_FLAGS[subcommand] | GCLOUD_WIDE_FLAGS, (
          f'{name} is not a documented flag of gcloud compute tpus {" ".join(subcommand)}: {argv}')
      assert name not in flags, f'{name} given twice: {argv}'
      flags[name] = value
    else:
      positionals.append(word)
  assert len(positionals) == POSITIONALS[subcommand], argv
  assert REQUIRED.get(subcommand, set()) <= set(flags), argv
  if subcommand[0] == 'tpu-vm' or subcommand[1] != 'list':
    assert '--zone' in flags, argv
  return subcommand, flags, positionals


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
  commands = [shlex.split(line) for line in result.stdout.splitlines()]
  for command in commands:
    if command[0] == 'gcloud':
      check_gcloud(command)
  return commands


def remote(command):
  """The shell command of `gcloud ... ssh --command=...`."""
  return command[-1].removeprefix('--command=')


def worker_call(remote_command):
  """The words after `bash launch/tpu_worker.sh` in a remote command, and the settings before."""
  words = shlex.split(remote_command)
  at = words.index('launch/tpu_worker.sh')
  settings = dict(w.split('=', 1) for w in words[:at] if '=' in w and not w.startswith('-'))
  return words[at + 1:], settings


def test_tpu_pod_creates_a_queued_resource_spot_or_not(fake_path):
  create, wait = print_only(fake_path, TPU_POD, 'create', TPU_NAME='pod1', ZONE='us-east5-a',
                            ACCELERATOR='v5p-64', PROJECT='proj', SPOT='1')
  assert create == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'pod1-qr',
                    '--zone=us-east5-a', '--project=proj', '--node-id=pod1',
                    '--accelerator-type=v5p-64', '--runtime-version=v2-alpha-tpuv5', '--spot']
  assert wait[3:6] == ['queued-resources', 'describe', 'pod1-qr']
  assert '--format=value(state.state)' in wait
  on_demand, _ = print_only(fake_path, TPU_POD, 'create', TPU_NAME='pod1', SPOT='0')
  assert '--spot' not in on_demand
  [delete] = print_only(fake_path, TPU_POD, 'delete', TPU_NAME='pod1')
  assert delete[3:6] == ['queued-resources', 'delete', 'pod1-qr']
  assert '--force' in delete and '--quiet' in delete  # the slice goes with its request
  [status] = print_only(fake_path, TPU_POD, 'status', TPU_NAME='pod1')
  assert status[3:6] == ['queued-resources', 'describe', 'pod1-qr']
  [listing] = print_only(fake_path, TPU_POD, 'list', ZONE='europe-west4-b')
  assert listing[3:5] == ['queued-resources', 'list'] and '--zone=europe-west4-b' in listing


def test_tpu_pod_install_copies_the_tree_and_sets_up_a_venv_on_every_worker(fake_path):
  pack, copy, install = print_only(fake_path, TPU_POD, 'install', TPU_NAME='pod1')
  assert pack[:3] == ['tar', 'czf', '/tmp/rlp_jax_src.tar.gz'] and pack[-3:] == ['-C', REPO, '.']
  assert '--exclude=.git' in pack
  assert copy[3:5] == ['tpu-vm', 'scp']
  assert copy[5:7] == ['/tmp/rlp_jax_src.tar.gz', 'pod1:rlp_jax_src.tar.gz']
  assert '--worker=all' in copy
  assert install[3:6] == ['tpu-vm', 'ssh', 'pod1'] and '--worker=all' in install
  args, settings = worker_call(remote(install))
  assert args == ['setup'] and settings['VENV'] == '~/rlp_jax_venv'
  assert settings['PYTHON'] == 'python3.11'


def test_worker_setup_checks_python_3_11_and_installs_the_tpu_extra_into_the_venv(fake_path):
  commands = print_only(fake_path, TPU_WORKER, 'setup', VENV='/home/u/venv', PYTHON='python3.11')
  src = REPO
  checks = [c for c in commands
            if len(c) == 3 and c[1] == '-c' and 'version_info >= (3, 11)' in c[2]]
  assert [c[0] for c in checks] == ['python3.11', '/home/u/venv/bin/python']
  assert ['python3.11', '-m', 'venv', '/home/u/venv'] in commands
  installs = [c for c in commands if c[1:4] == ['-m', 'pip', 'install']]
  assert all(c[0] == '/home/u/venv/bin/python' for c in installs)  # into the venv only
  assert installs[-1][-1] == f'{src}[tpu]'
  assert commands.index(checks[0]) < commands.index(['python3.11', '-m', 'venv', '/home/u/venv'])


def pyproject():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)['project']


def test_accelerator_extras_pin_the_jax_the_tests_run_with():
  project = pyproject()
  [jax_requirement] = [r for r in project['dependencies'] if r.startswith('jax>=')]
  tested = importlib.metadata.version('jax')
  lower = tuple(int(p) for p in jax_requirement.removeprefix('jax>=').split('.'))
  assert tuple(int(p) for p in tested.split('.')[:len(lower)]) >= lower
  extras = project['optional-dependencies']
  assert extras['tpu'] == [f'jax[tpu]=={tested}']
  assert extras['cuda'] == [f'jax[cuda12]=={tested}']


def test_tpu_pod_runs_the_same_command_on_all_workers(fake_path):
  [run] = print_only(fake_path, TPU_POD, 'run', *RUN_ARGS, TPU_NAME='pod1')
  assert run[3:6] == ['tpu-vm', 'ssh', 'pod1'] and '--worker=all' in run
  args, settings = worker_call(remote(run))
  assert args == ['start', *RUN_ARGS]  # arguments survive the quoting
  assert settings['LOG'] == '~/rlp_jax.log'
  with open(TPU_WORKER, encoding='utf-8') as f:  # `start` detaches `train` (ssh returns)
    assert 'nohup bash "$SRC/launch/tpu_worker.sh" train "$@" > "$LOG" 2>&1 < /dev/null &' in f.read()


def test_tpu_pod_refuses_a_url_workdir_and_a_missing_one(fake_path):
  for args in (['--config=configs/tiny.py'], ['--workdir=gs://bucket/run']):
    result = subprocess.run(['bash', TPU_POD, 'run', *args], capture_output=True, text=True,
                            env=dict(os.environ, PATH=fake_path[1], DRY_RUN='1'), check=False)
    assert result.returncode == 2 and '--workdir' in result.stderr and not result.stdout


def test_tpu_pod_mounts_shared_storage_and_sets_its_permissions(fake_path):
  [mount] = print_only(fake_path, TPU_POD, 'mount', TPU_NAME='pod1',
                       NFS_SHARE='10.0.0.2:/share', SHARED_MOUNT='/mnt/shared')
  assert '--worker=all' in mount
  args, settings = worker_call(remote(mount))
  assert args == ['mount'] and settings['NFS_SHARE'] == '10.0.0.2:/share'
  # What the worker runs (its `mountpoint` check finds nothing mounted at a fresh path).
  shared = str(fake_path[0] / 'shared')
  nfs = print_only(fake_path, TPU_WORKER, 'mount', NFS_SHARE='10.0.0.2:/share',
                   SHARED_MOUNT=shared)
  assert ['sudo', 'mount', '-t', 'nfs', '-o', 'rw,hard,noatime', '10.0.0.2:/share', shared] in nfs
  assert ['sudo', 'chmod', '0777', shared] in nfs
  gcs = print_only(fake_path, TPU_WORKER, 'mount', GCS_BUCKET='my-bucket', SHARED_MOUNT=shared)
  [fuse] = [c for c in gcs if c[0] == 'gcsfuse']
  assert fuse[-2:] == ['my-bucket', shared] and '--dir-mode=777' in fuse
  assert any(c[:2] == ['sudo', 'chown'] for c in gcs)
  with open(TPU_WORKER, encoding='utf-8') as f:
    assert 'umask 000' in f.read()  # the run's files are writable by the other workers' users


def test_tpu_pod_logs_and_stop(fake_path):
  [logs] = print_only(fake_path, TPU_POD, 'logs', TPU_NAME='pod1')
  assert '--worker=0' in logs and 'tail -n +1 -F ~/rlp_jax.log' in logs[-1]
  [other] = print_only(fake_path, TPU_POD, 'logs', TPU_NAME='pod1', WORKER='3')
  assert '--worker=3' in other
  [stop] = print_only(fake_path, TPU_POD, 'stop', TPU_NAME='pod1')
  assert '--worker=all' in stop and worker_call(remote(stop))[0] == ['stop']


def test_tpu_pod_up_prints_one_pass_of_its_loop(fake_path):
  commands = print_only(fake_path, TPU_POD, 'up', *RUN_ARGS, TPU_NAME='pod1', SPOT='1')
  steps = [c[3:5] if c[0] == 'gcloud' else c[:1] for c in commands]
  assert steps == [['queued-resources', 'describe'], ['queued-resources', 'create'],
                   ['queued-resources', 'describe'], ['tar'], ['tpu-vm', 'scp'],
                   ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh'], ['tpu-vm', 'ssh'],
                   ['queued-resources', 'describe'], ['tpu-vm', 'ssh']]
  assert '--spot' in commands[1]


def test_tpu_pod_rejects_unknown_actions(fake_path):
  result = subprocess.run(['bash', TPU_POD, 'launch-missiles'], capture_output=True, text=True,
                          env=dict(os.environ, PATH=fake_path[1], DRY_RUN='1'), check=False)
  assert result.returncode == 2 and 'launch/tpu_pod.sh create' in result.stdout


FAKE_GCLOUD = r'''#!{python}
"""Records its argv; answers `describe` and worker 0's status from a script of answers."""
import json, sys
root = {root!r}
with open(root + '/calls.jsonl', 'a') as f:
  f.write(json.dumps(sys.argv[1:]) + '\n')
script = json.load(open(root + '/script.json'))
args = sys.argv[1:]
def next_answer(key, default):
  answers = script[key]
  answer = answers.pop(0) if answers else default
  json.dump(script, open(root + '/script.json', 'w'))
  return answer
if args[2:4] == ['queued-resources', 'describe']:
  state = next_answer('states', 'ACTIVE')
  if state is None:
    sys.exit('ERROR: (gcloud.compute.tpus.queued-resources.describe) NOT_FOUND')
  print(state)
elif args[2:4] == ['tpu-vm', 'ssh'] and 'tpu_worker.sh status' in args[-1]:
  print(next_answer('statuses', 'done'))
'''


@pytest.mark.subprocess
def test_tpu_pod_up_recreates_a_preempted_slice_and_reruns_the_same_command(tmp_path):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'gcloud').write_text(FAKE_GCLOUD.format(python=sys.executable, root=str(tmp_path)))
  (bin_dir / 'tar').write_text('#!/bin/sh\nexit 0\n')
  for tool in bin_dir.iterdir():
    tool.chmod(0o755)
  # None: no such queued resource yet. The run is SIGTERMed (`exit 0`: it saved a checkpoint) as
  # its spot slice is preempted; the slice is SUSPENDED, deleted and requested again; the same
  # command reruns on the new slice, resumes from the shared workdir and finishes.
  (tmp_path / 'script.json').write_text(json.dumps({
      'states': [None, 'WAITING_FOR_RESOURCES', 'ACTIVE',  # create, wait
                 'ACTIVE', 'ACTIVE', 'ACTIVE', 'SUSPENDING',  # watch; grace after `exit 0`
                 'SUSPENDED',  # the loop's check before recreating
                 'PROVISIONING', 'ACTIVE',  # create, wait
                 'ACTIVE'],  # watch
      'statuses': ['running', 'exit 0', 'running', 'done']}))
  result = subprocess.run(
      ['bash', TPU_POD, 'up', *RUN_ARGS], capture_output=True, text=True, timeout=60,
      env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", TPU_NAME='pod1', SPOT='1',
               POLL_SECONDS='0', GRACE_POLLS='3', STREAM_LOGS='0'), check=False)
  assert result.returncode == 0, result.stderr
  assert 'preempted' in result.stderr and 'the run is done' in result.stderr
  calls = [json.loads(line) for line in (tmp_path / 'calls.jsonl').read_text().splitlines()]
  for call in calls:
    check_gcloud(['gcloud', *call])
  verbs = [call[2:4] for call in calls]
  creates = [c for c in calls if c[2:4] == ['queued-resources', 'create']]
  deletes = [c for c in calls if c[2:4] == ['queued-resources', 'delete']]
  assert len(creates) == 2 and creates[0] == creates[1] and '--spot' in creates[0]
  assert len(deletes) == 1 and '--force' in deletes[0]
  assert verbs.index(['queued-resources', 'delete']) < len(verbs) - verbs[::-1].index(
      ['queued-resources', 'create']) - 1
  ssh = [remote(c) for c in calls if c[2:4] == ['tpu-vm', 'ssh']]
  setups = [s for s in ssh if 'tpu_worker.sh setup' in s]
  mounts = [s for s in ssh if 'tpu_worker.sh mount' in s]
  trains = [s for s in ssh if 'tpu_worker.sh start' in s]
  assert len(setups) == len(mounts) == 2  # a new slice is bare
  assert len(trains) == 2 and trains[0] == trains[1]  # the same command: it resumes by itself
  assert worker_call(trains[0])[0] == ['start', *RUN_ARGS]


@pytest.mark.subprocess
def test_worker_train_records_how_the_run_ended(tmp_path):
  """`tpu_worker.sh train` with a stand-in venv python: done (the run's last line), exit 0 (a
  signal's stop), exit N."""
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  python = venv / 'bin' / 'python'
  log = tmp_path / 'log'
  env = dict(os.environ, VENV=str(venv), LOG=str(log), STATE_FILE=str(tmp_path / 'state'),
             PID_FILE=str(tmp_path / 'pid'))
  for body, state in (('echo "[rlp_jax] done at step 3."', 'done'),
                      ('echo "[rlp_jax] stopped by SIGTERM at step 2"', 'exit 0'),
                      ('exit 3', 'exit 3')):
    python.write_text(f'#!/bin/sh\n{body}\n')
    python.chmod(0o755)
    with open(log, 'w', encoding='utf-8') as out:
      subprocess.run(['bash', TPU_WORKER, 'train', '--workdir=/x'], stdout=out,
                     stderr=subprocess.STDOUT, env=env, timeout=30, check=False)
    status = subprocess.run(['bash', TPU_WORKER, 'status'], capture_output=True, text=True,
                            env=env, timeout=30, check=True)
    assert status.stdout.strip() == state
  # `start` detaches it: `running` at once, then how it ended.
  python.write_text('#!/bin/sh\nsleep 1\necho "[rlp_jax] done at step 3."\n')
  subprocess.run(['bash', TPU_WORKER, 'start', '--workdir=/x'], env=env, timeout=30, check=True,
                 capture_output=True)
  states = []
  for _ in range(100):
    states.append(subprocess.run(['bash', TPU_WORKER, 'status'], capture_output=True, text=True,
                                 env=env, timeout=30, check=True).stdout.strip())
    if states[-1] != 'running':
      break
    time.sleep(0.1)
  assert states[0] == 'running' and states[-1] == 'done', states


def test_slurm_script_prints_one_srun_per_node(fake_path):
  note, srun = print_only(fake_path, SLURM_GPU, *RUN_ARGS, SLURM_JOB_NUM_NODES='4')
  assert 'nodes: 4' in ' '.join(note)
  assert srun == ['srun', '--kill-on-bad-exit=1', '--ntasks-per-node=1', 'python', '-m',
                  'rlp_jax.main', *RUN_ARGS]
  with open(SLURM_GPU, encoding='utf-8') as f:
    directives = [line.split()[1] for line in f if line.startswith('#SBATCH')]
  assert '--ntasks-per-node=1' in directives and '--gpus-per-node=8' in directives


def test_slurm_script_installs_jax_cuda12_into_a_python_3_11_venv(fake_path, tmp_path):
  venv = str(tmp_path / 'venv')  # does not exist yet: created and installed
  commands = print_only(fake_path, SLURM_GPU, *RUN_ARGS, VENV=venv, REPO='/shared/rlp_jax')
  assert commands[0][:2] == ['python', '-c'] and 'version_info >= (3, 11)' in commands[0][2]
  assert ['python', '-m', 'venv', venv] in commands
  assert [f'{venv}/bin/python', '-m', 'pip', 'install', '/shared/rlp_jax[cuda]'] in commands
  assert ['source', f'{venv}/bin/activate'] in commands
  assert commands[-1][0] == 'srun'
  assert pyproject()['optional-dependencies']['cuda'][0].startswith('jax[cuda12]==')


# Packaging: configs/ inside the wheel, the default config found from an installed copy.


def test_pyproject_lists_every_package_under_rlp_jax():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    setuptools = tomllib.load(f)['tool']['setuptools']
  found = {os.path.relpath(os.path.dirname(p), REPO).replace(os.sep, '.')
           for p in glob.glob(os.path.join(REPO, 'rlp_jax', '**', '__init__.py'), recursive=True)}
  assert set(setuptools['packages']) == found | {'rlp_jax.configs'}
  assert setuptools['package-dir'] == {'rlp_jax.configs': 'configs'}


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  """A wheel built (offline, without build isolation) from a copy of the sources, so nothing is
  written into the checkout."""
  root = tmp_path_factory.mktemp('wheel')
  src = root / 'src'
  src.mkdir()
  for name in ('pyproject.toml', 'setup.cfg', 'README.md'):
    shutil.copy(os.path.join(REPO, name), src / name)
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc')
  for name in ('rlp_jax', 'configs'):
    shutil.copytree(os.path.join(REPO, name), src / name, ignore=ignore)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                  '-q', '-w', str(root / 'dist'), str(src)], check=True, timeout=120,
                 capture_output=True)
  [path] = glob.glob(str(root / 'dist' / '*.whl'))
  return path


@pytest.mark.subprocess
def test_the_wheel_carries_the_configs(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  shipped = {os.path.basename(n) for n in names if n.startswith('rlp_jax/configs/')}
  assert shipped == set(os.listdir(os.path.join(REPO, 'configs'))) - {'__pycache__'}
  assert not any(n.startswith('configs/') for n in names)  # no top-level `configs` package
  metadata = zipfile.ZipFile(wheel).read(
      next(n for n in names if n.endswith('.dist-info/METADATA'))).decode()
  assert 'Provides-Extra: tpu' in metadata and 'Provides-Extra: cuda' in metadata


LOAD_CONFIGS = '''
import os, sys
from absl import flags
from ml_collections import config_flags
import rlp_jax
from rlp_jax import cli
from rlp_jax.config import validate_config
assert rlp_jax.__file__.startswith(sys.argv[1]), rlp_jax.__file__
assert not os.path.isdir('configs')
for argv in (['prog'], ['prog', '--config=configs/tiny.py'],
             ['prog', '--config', 'configs/nano12b.py']):
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'config', flag_values=values)
  cli.flags_parser(argv, values)
  config = cli.config_from_flags(['prog'], holder)
  validate_config(config)
  print(values['config'].config_filename)
'''


@pytest.mark.subprocess
def test_an_installed_wheel_loads_the_default_and_named_configs_outside_a_checkout(
    wheel, tmp_path):
  site = tmp_path / 'site'
  zipfile.ZipFile(wheel).extractall(site)
  cwd = tmp_path / 'elsewhere'  # no configs/ here
  cwd.mkdir()
  result = subprocess.run([sys.executable, '-c', LOAD_CONFIGS, str(site)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr
  packaged = os.path.join(str(site), 'rlp_jax', 'configs')
  assert result.stdout.split() == [os.path.join(packaged, 'tiny.py'),
                                   os.path.join(packaged, 'tiny.py'),
                                   os.path.join(packaged, 'nano12b.py')]


def test_a_checkout_resolves_configs_to_its_own_directory(tmp_path, monkeypatch):
  from rlp_jax import cli  # pylint: disable=import-outside-toplevel
  assert cli.DEFAULT_CONFIG == os.path.join(REPO, 'configs', 'tiny.py')
  monkeypatch.chdir(tmp_path)
  assert cli.with_default_config(['p', '--config=configs/tiny.py:arg']) == [
      'p', f"--config={os.path.join(REPO, 'configs', 'tiny.py')}:arg"]
  (tmp_path / 'configs').mkdir()
  (tmp_path / 'configs' / 'tiny.py').write_text('')  # a local file of that name wins
  assert cli.with_default_config(['p', '--config=configs/tiny.py']) == [
      'p', '--config=configs/tiny.py']
