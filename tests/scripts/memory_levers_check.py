"""Run in a fresh process: 8 simulated CPU devices (scheduled as by `--dry_run`), mesh data=1
fsdp=8 tensor=1 for the activation layout, one device for remat.

Prints one JSON line for tests/test_memory.py:
  {family: {with_layout: spec of the residual stream, without_layout: ...},
   rollout_temporaries: {with: bytes, without: bytes},
   ntp_grad_temporaries: {none: bytes, block: bytes}}
"""
import json

from rlp_jax import dry_run

dry_run.simulate_cpu_devices(8)

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rlp_jax.config import base_config  # noqa: E402
from rlp_jax.models import registry  # noqa: E402
from rlp_jax.parallel.activation_sharding import activation_layout  # noqa: E402
from rlp_jax.dry_run import abstract_batch, abstract_state  # noqa: E402
from rlp_jax.parallel.mesh import make_mesh  # noqa: E402
from rlp_jax.parallel.batch_sharding import batch_sharding
from rlp_jax.train.state_sharding import param_shardings
from rlp_jax.objective import next_token_loss  # noqa: E402
from rlp_jax.train.optimizer import make_optimizer  # noqa: E402
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.train.rlp_step import make_rlp_step
from rlp_jax.models.registry import document_positions  # noqa: E402


def config_for(family):
  config = base_config()
  config.mesh.update(dict(data=1, fsdp=8, tensor=1))
  config.model.update(dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4,
                           num_kv_heads=2, head_dim=8))
  if family == 'hybrid':
    config.model.update(dict(family='hybrid', layer_pattern='M*-', num_layers=3,
                             mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=8,
                             mamba_n_groups=2, mamba_chunk_size=8))
  return config


def residual_spec(config, mesh, use_layout):
  """The PartitionSpec XLA gives the residual stream (an unconstrained output) of one forward."""
  graphdef, shapes = registry.abstract_params(config.model)
  shardings = param_shardings(config.model, mesh, config.mesh.rules)
  params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)
  tokens = jax.ShapeDtypeStruct((8, 16), jnp.int32, sharding=batch_sharding(mesh,
                                                                            config.mesh.rules))

  def hidden(params, tokens):
    with activation_layout(mesh if use_layout else None, config.mesh.rules):
      return registry.forward_hidden(graphdef, params, tokens, tokens)[0]
  compiled = jax.jit(hidden).lower(params, tokens).compile()
  spec = tuple(compiled.output_shardings.spec) + (None,) * 3
  return [None if axis is None else (axis if isinstance(axis, str) else list(axis))
          for axis in spec[:3]]


def rollout_temporaries(config, mesh, use_layout):
  config.data.batch_size = 16
  config.data.seq_len = 96
  tx, schedule = make_optimizer(config.optimizer, 10)
  state, state_sharding = abstract_state(config, tx, mesh)
  batch = abstract_batch(config, mesh)
  graphdef, _ = registry.abstract_params(config.model)
  rollout_fn, _ = make_rlp_step(graphdef, config.model, config.rlp,
                                SpecialTokens(think_start_id=1, think_end_id=2, pad_id=0), tx,
                                schedule, state_sharding,
                                config.mesh.rules if use_layout else None)
  compiled = rollout_fn.lower(state, batch).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def ntp_grad_temporaries(remat):
  """Temporaries of the next-token gradient of an 8-layer dense model on 8 × 256 tokens."""
  config = config_for('dense')
  config.model.update(dict(num_layers=8, remat_policy=remat))
  graphdef, params = registry.abstract_params(config.model)
  tokens = jax.ShapeDtypeStruct((8, 256), jnp.int32)
  mask = jax.ShapeDtypeStruct((8, 256), jnp.bool_)

  def grads(params, tokens, mask):
    def loss_fn(params):
      logits, _ = registry.forward(graphdef, params, tokens, document_positions(tokens), mask)
      return next_token_loss(logits, tokens, mask)[0]
    return jax.grad(loss_fn)(params)
  compiled = jax.jit(grads).lower(params, tokens, mask).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main():
  report = {}
  for family in ('dense', 'hybrid'):
    config = config_for(family)
    mesh = make_mesh(config.mesh)
    report[family] = {'with_layout': residual_spec(config, mesh, True),
                      'without_layout': residual_spec(config, mesh, False)}
  config = base_config()  # the tiny default model
  config.mesh.update(dict(data=1, fsdp=8, tensor=1))
  mesh = make_mesh(config.mesh)
  report['rollout_temporaries'] = {'with': rollout_temporaries(config, mesh, True),
                                   'without': rollout_temporaries(config, mesh, False)}
  report['ntp_grad_temporaries'] = {remat: ntp_grad_temporaries(remat)
                                    for remat in ('none', 'full')}
  print(json.dumps(report))


if __name__ == '__main__':
  main()
