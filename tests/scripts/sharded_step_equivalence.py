"""Run under JAX_NUM_CPU_DEVICES=8: one RLP rollout + update on several meshes vs one device.

Prints one JSON line per mesh with the max relative differences and the per-device parameter
shard shapes; tests/test_sharding.py asserts on them.
"""
import json
import sys

import jax
import numpy as np

from rlp_jax.config import base_config
from rlp_jax.models import registry
from rlp_jax.parallel.mesh import make_mesh
from rlp_jax.parallel.batch_sharding import batch_sharding, put_batch
from rlp_jax.train.state_sharding import create_sharded_state
from rlp_jax.train.optimizer import make_optimizer
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.train.rlp_step import make_rlp_step

# The first mesh is the reference. Pure data parallelism (8, 1, 1) replicates every parameter
# whatever the family, so the dense model alone runs it; the hybrid's data axis is exercised with
# fsdp and tensor (data = 2).
MESHES = {'dense': [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)],
          'hybrid': [(1, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]}


def config_for(family):
  config = base_config()
  config.model.update(dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4,
                           num_kv_heads=2, head_dim=8, init_std=0.2))
  if family == 'hybrid':
    config.model.update(dict(family='hybrid', layer_pattern='M*-', num_layers=3,
                             mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=8,
                             mamba_n_groups=2, mamba_chunk_size=8))
  else:
    config.model.num_layers = 2
  config.rlp.update(dict(positions_per_document=2, thoughts_per_position=2, max_thought_tokens=4,
                         min_context=2, updates_per_rollout=2))
  config.data.batch_size = 8
  # Adam divides by sqrt(v) + eps: with the default eps 1e-8 a near-zero gradient entry (dead
  # squared-ReLU units) turns reduction-order rounding into an O(lr) difference in its update.
  # A larger eps keeps the comparison of updated parameters about the sharding, not that chaos.
  config.optimizer.eps = 1e-4
  return config


def run(config, mesh_shape):
  config.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), mesh_shape)))
  devices = jax.devices()[:int(np.prod(mesh_shape))]
  mesh = make_mesh(config.mesh, devices)
  tx, schedule = make_optimizer(config.optimizer, 10)
  state, shardings = create_sharded_state(config.model, tx, config.seed, True, mesh,
                                          config.mesh.rules)
  graphdef, _ = registry.abstract_params(config.model)
  special = SpecialTokens(think_start_id=3, think_end_id=4, pad_id=0)
  rollout_fn, update_fn = make_rlp_step(graphdef, config.model, config.rlp, special, tx,
                                        schedule, shardings, config.mesh.rules)
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, 64, size=(8, 16)).astype(np.int32)
  mask = np.arange(16)[None, :] < rng.integers(6, 17, size=(8, 1))
  batch = put_batch({'tokens': np.where(mask, tokens, 0).astype(np.int32), 'mask': mask},
                    batch_sharding(mesh, config.mesh.rules))
  state, rollout = rollout_fn(state, batch)
  thought_tokens = np.asarray(rollout.sequences.tokens)
  metrics = []
  for _ in range(config.rlp.updates_per_rollout):
    state, m = update_fn(state, batch, rollout)
    metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
  shard_shapes = jax.tree.map(lambda x: list(x.addressable_shards[0].data.shape), state.params)
  return (thought_tokens, metrics, jax.device_get(state.params), shard_shapes,
          rollout_fn._cache_size(), update_fn._cache_size())  # pylint: disable=protected-access


def max_rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def main(family):
  reference = None
  for shape in MESHES[family]:
    tokens, metrics, params, shard_shapes, n_rollout, n_update = run(config_for(family), shape)
    if reference is None:
      reference = (tokens, metrics, params)
    ref_tokens, ref_metrics, ref_params = reference
    leaves = zip(jax.tree.leaves(params), jax.tree.leaves(ref_params))
    print(json.dumps({
        'mesh': shape,
        'same_thought_tokens': bool(np.array_equal(tokens, ref_tokens)),
        'loss_rel': max(max_rel(m['total_loss'], r['total_loss'])
                        for m, r in zip(metrics, ref_metrics)),
        'grad_norm_rel': max(max_rel(m['grad_norm'], r['grad_norm'])
                             for m, r in zip(metrics, ref_metrics)),
        'params_rel': max(max_rel(a, b) for a, b in leaves),
        'shard_shapes': shard_shapes,
        'compiles': [n_rollout, n_update],
    }, default=str))


if __name__ == '__main__':
  main(sys.argv[1])
