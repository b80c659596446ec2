"""Sharded RLP steps on 8 simulated CPU devices equal the single-device run.

The meshes (data, fsdp, tensor) = (8,1,1) (dense only: pure data parallelism replicates every
parameter whatever the family), (2,4,1), (2,2,2), (1,2,4) run one rollout and two updates in a
subprocess (the device count must be set before JAX starts); the same keys must give
the same thought tokens, and losses and updated parameters must match one device.
"""
import json
import os
import subprocess
import sys

import pytest

from rlp_jax.config import base_config
from rlp_jax.errors import ConfigError
from rlp_jax.parallel.mesh import mesh_shape

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'scripts',
                      'sharded_step_equivalence.py')


def run_meshes(family):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='8', TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, SCRIPT, family], capture_output=True, text=True,
                          env=env, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
  return {tuple(row['mesh']): row for row in rows}


# Per-device shapes worked out by hand from the default rules: embed→fsdp, vocab/heads/kv_heads/
# mlp/mamba_heads/mamba_groups→tensor, a dimension its axes don't divide stays whole.
# Model: vocab 64, hidden 32, 4 q heads, 2 kv heads, head_dim 8, mlp 64.
DENSE_SHARDS = {
    (8, 1, 1): {'q': [32, 4, 8], 'k': [32, 2, 8], 'embedding': [64, 32], 'gate': [32, 64]},
    (2, 4, 1): {'q': [8, 4, 8], 'k': [8, 2, 8], 'embedding': [64, 8], 'gate': [8, 64]},
    (2, 2, 2): {'q': [16, 2, 8], 'k': [16, 1, 8], 'embedding': [32, 16], 'gate': [16, 32]},
    (1, 2, 4): {'q': [16, 1, 8], 'k': [16, 2, 8], 'embedding': [16, 16], 'gate': [16, 16]},
}


@pytest.mark.subprocess
@pytest.mark.slow
def test_dense_sharded_steps_equal_one_device():
  rows = run_meshes('dense')
  for mesh, expected in DENSE_SHARDS.items():
    row = rows[mesh]
    assert row['same_thought_tokens'], mesh
    assert row['loss_rel'] <= 1e-5 and row['grad_norm_rel'] <= 1e-5, row
    assert row['params_rel'] <= 1e-5, (mesh, row['params_rel'])
    assert row['compiles'] == [1, 1], mesh
    layer = row['shard_shapes']['layers']['0']
    assert layer['attention']['q_proj']['kernel'] == expected['q'], mesh
    assert layer['attention']['k_proj']['kernel'] == expected['k'], mesh
    assert layer['mlp']['gate_proj']['kernel'] == expected['gate'], mesh
    assert row['shard_shapes']['token_embedding']['embedding'] == expected['embedding'], mesh


# Hybrid 'M*-': Mamba 4 heads × 8, 2 groups, state 8.
HYBRID_SHARDS = {
    (2, 4, 1): {'z': [8, 4, 8], 'b': [8, 2, 8], 'a_log': [4]},
    (2, 2, 2): {'z': [16, 2, 8], 'b': [16, 1, 8], 'a_log': [2]},
    (1, 2, 4): {'z': [16, 1, 8], 'b': [16, 2, 8], 'a_log': [1]},
}


@pytest.mark.subprocess
@pytest.mark.slow
def test_hybrid_sharded_steps_equal_one_device():
  rows = run_meshes('hybrid')
  for mesh, expected in HYBRID_SHARDS.items():
    row = rows[mesh]
    assert row['same_thought_tokens'], mesh
    assert row['loss_rel'] <= 1e-5 and row['params_rel'] <= 1e-5, row
    assert row['compiles'] == [1, 1], mesh
    mixer = row['shard_shapes']['layers']['0']['mixer']
    assert mixer['z_proj']['kernel'] == expected['z'], mesh
    assert mixer['b_proj']['kernel'] == expected['b'], mesh
    assert mixer['A_log'] == expected['a_log'], mesh


def test_mesh_shape_fills_and_rejects():
  assert mesh_shape({'data': -1, 'fsdp': 2, 'tensor': 2}, 8) == (2, 2, 2)
  assert mesh_shape({'data': 1, 'fsdp': -1, 'tensor': 4}, 8) == (1, 2, 4)
  with pytest.raises(ConfigError, match='does not divide'):
    mesh_shape({'data': -1, 'fsdp': 3, 'tensor': 1}, 8)
  with pytest.raises(ConfigError, match='needs 4 devices'):
    mesh_shape({'data': 2, 'fsdp': 2, 'tensor': 1}, 8)
  with pytest.raises(ConfigError, match='at most one'):
    mesh_shape({'data': -1, 'fsdp': -1, 'tensor': 1}, 8)


def test_every_logical_axis_of_every_family_has_a_rule():
  from rlp_jax.models import registry  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  config = base_config()
  ruled = {name for name, _ in config.mesh.rules}
  for family in ('dense', 'hybrid'):
    model = config.model.copy_and_resolve_references()
    if family == 'hybrid':
      model.update(dict(family='hybrid', layer_pattern='M*-', num_layers=3, mamba_num_heads=4,
                        mamba_head_dim=8, ssm_state_size=8, mamba_n_groups=2))
    axes = registry.param_logical_axes(model)
    names = {n for leaf in jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
             for n in leaf}
    assert names <= ruled, names - ruled
