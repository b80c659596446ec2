"""`python -m rlp_jax.main --dry_run`: the step compiled for a mesh of simulated devices, with
per-device bytes, and no model allocated."""
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time

import jax
import pytest

from rlp_jax.config import base_config
from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.dry_run import simulated_device_count

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(*overrides):
  """Runs the CLI in a fresh process; returns (the plan's JSON, stdout, an upper bound of its peak
  resident memory in bytes: the largest of all children of this test process so far)."""
  result = subprocess.run(
      [sys.executable, '-m', 'rlp_jax.main', '--config=configs/tiny.py', '--dry_run',
       *overrides], cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  assert result.returncode == 0, result.stderr[-3000:]
  rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
  [line] = [l for l in result.stdout.splitlines() if l.startswith('memory plan (json): ')]
  return json.loads(line.split(': ', 1)[1]), result.stdout, rss


@pytest.mark.subprocess
@pytest.mark.slow
def test_dry_run_reports_exact_state_bytes_and_compiled_memory():
  plan, text, _ = dry_run('--dry_run_devices=8', '--config.mesh.data=1', '--config.mesh.fsdp=8',
                          '--config.mesh.tensor=1')
  assert plan['mesh'] == {'data': 1, 'fsdp': 8, 'tensor': 1} and plan['num_devices'] == 8
  # Worked out independently of the rules engine: with the default rules and mesh (1, 8, 1) a
  # parameter is split 8 ways exactly when it has an `embed` axis (hidden 128 divides by 8).
  model = base_config().model
  axes = jax.tree.leaves(registry.param_logical_axes(model), is_leaf=lambda x: isinstance(x, tuple))
  shapes = jax.tree.leaves(registry.abstract_params(model)[1])
  expected = sum(math.prod(s.shape) * 4 // (8 if 'embed' in a else 1) for a, s in zip(axes, shapes))
  state = plan['state_bytes']
  assert state['params'] == expected and state['teacher'] == expected
  assert 2 * expected <= state['optimizer'] <= 2 * expected + 64  # Adam's two moments + counts
  assert state['batch'] == 8 * 96 * (4 + 1) // 8  # int32 tokens + bool mask, rows split 8 ways
  for name in ('rollout', 'update'):
    compiled = plan['compiled'][name]
    assert compiled['temporaries'] > 0 and compiled['arguments'] >= state['params']
    assert compiled['aliased'] > 0.99 * (3 * expected)  # the donated state is updated in place
  assert 'θ (params)' in text and 'peak per device' in text


@pytest.mark.subprocess
@pytest.mark.slow
def test_dry_run_never_allocates_the_model():
  # 4.3 billion parameters: θ + φ + Adam would be 69 GB, more than this machine has.
  plan, _, rss = dry_run('--dry_run_devices=8', '--config.mesh.data=1', '--config.mesh.fsdp=8',
                         '--config.mesh.tensor=1', '--config.model.vocab_size=1048576',
                         '--config.model.hidden_size=4096', '--config.model.num_layers=1',
                         '--config.model.intermediate_size=512', '--config.data.seq_len=16',
                         '--config.rlp.min_context=4', '--config.rlp.max_thought_tokens=2')
  assert plan['num_params'] > 4.2e9
  total_state = 8 * sum(plan['state_bytes'][k] for k in ('params', 'teacher', 'optimizer'))
  assert total_state > 60e9
  assert rss < 6e9, f'the dry run used {rss / 1e9:.1f} GB'


def test_dry_run_device_count():
  mesh = base_config().mesh
  mesh.update(dict(data=2, fsdp=4, tensor=1))
  assert simulated_device_count(mesh, None) == 8
  assert simulated_device_count(mesh, 16) == 16
  mesh.data = -1
  with pytest.raises(ConfigError, match='--dry_run_devices'):
    simulated_device_count(mesh, None)


def test_dry_run_target_names_its_devices_and_says_whether_it_fits():
  from rlp_jax import dry_run as planning
  assert {name: t.devices for name, t in planning.TARGETS.items()} == {
      '8xH100': 8, 'v5p-64': 32, 'v6e-64': 64}
  with pytest.raises(ConfigError, match='--dry_run_target must be one of'):
    planning.target_named('v4-8')
  step = planning.CompiledMemory(arguments=6 * 2**30, outputs=6 * 2**30, aliased=6 * 2**30,
                                 temporaries=4 * 2**30, code=0, compile_seconds=1.0)
  plan = planning.MemoryPlan(mesh={'data': 8}, num_devices=8, num_params=1,
                             state_bytes={'params': 6 * 2**30}, compiled={'update': step})
  small = planning.Target('small', 8, 5.0, 'a test machine')
  large = planning.Target('large', 8, 50.0, 'a test machine')
  assert planning.fit_line(plan, small).startswith('small: does NOT fit: peak ≈ 10.00 GiB of 5.0')
  assert planning.fit_line(plan, large).startswith('large: fits: peak ≈ 10.00 GiB of 50.0')
  assert planning.plan_as_dict(plan, small)['fits'] is False


@pytest.mark.subprocess
def test_a_signal_ends_a_dry_run_at_once_with_one_line():
  """A dry run has no step to stop at: SIGTERM exits at once (status 0) instead of compiling on."""
  process = subprocess.Popen(
      [sys.executable, '-m', 'rlp_jax.main', '--config=configs/tiny.py', '--dry_run',
       '--dry_run_target=8xH100', '--config.model.num_layers=64'], cwd=REPO,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  time.sleep(8)  # inside the imports or the compile
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=30)
  assert process.returncode == 0, output
  assert 'SIGTERM: dry run stopped; nothing to save' in output
  assert 'Traceback' not in output
