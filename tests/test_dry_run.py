"""`python -m rlp_jax.main --dry_run`: the step compiled for a mesh of simulated devices, with
per-device bytes, and no model allocated."""
import json
import math
import os
import resource
import subprocess
import sys

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
