"""`model.init_from`: the weights a run starts from.

  ''                          random initialisation from `seed`
  a Hugging Face model dir    config.json + model.safetensors (or the sharded index), read lazily
  an rlp_jax checkpoint dir   a `Checkpointer` directory (numbered step subdirectories) or a
                              workdir holding one under checkpoints/: θ (`params`) of the latest
                              step only; optimizer state, teacher and step start fresh

With `shardings` (train(): those of the state), θ is created directly in them: each process reads
only the slices its devices hold (safetensors slices; orbax restores into the target shardings).
train/state_sharding.create_sharded_state(params=θ) then adds φ and the optimizer state; nothing
is initialised randomly first.
"""
from __future__ import annotations

import os
from typing import Any

import jax
from flax import nnx
import orbax.checkpoint as ocp

from rlp_jax.errors import DataError
from rlp_jax.interop import hf_checkpoint
from rlp_jax.models import registry

Params = dict[str, Any]


def initial_params(model_config: Any, seed: int, shardings: Params | None = None,
                   ) -> tuple[nnx.GraphDef, Params, str]:
  """(graphdef, params, a one-line description of where the weights came from)."""
  init_from = model_config.init_from
  if not init_from:
    graphdef, params = registry.init_params(model_config, seed)
    return graphdef, params, f'random weights (seed {seed}; model.init_from is not set)'
  graphdef, _ = registry.abstract_params(model_config)  # no random init when loading
  params, source = load_init_params(init_from, model_config, shardings)
  return graphdef, params, source


def load_init_params(init_from: str, model_config: Any, shardings: Params | None = None,
                     ) -> tuple[Params, str]:
  """Params of `model_config` from a HF model dir or an rlp_jax checkpoint dir, and a description.

  `shardings` (a pytree like the params): each parameter is created in its sharding, this process
  reading only its devices' slices; default: whole, on the default device. DataError naming the
  path when it is missing or is neither kind of directory.
  """
  path = os.path.abspath(os.path.expanduser(init_from))
  if not os.path.isdir(path):
    raise DataError(f'model.init_from: no such directory {path}')
  if hf_checkpoint.is_hf_checkpoint(path):
    params = hf_checkpoint.load_hf_params(path, model_config, shardings)
    return params, f'Hugging Face checkpoint {path}'
  checkpoint_dir = find_checkpoint_dir(path)
  if checkpoint_dir is None:
    raise DataError(f'model.init_from: {path} is neither a Hugging Face model directory '
                    '(config.json + model.safetensors or model.safetensors.index.json) nor an '
                    'rlp_jax checkpoint directory (numbered step subdirectories)')
  params, step = restore_checkpoint_params(checkpoint_dir, model_config, shardings)
  return params, f'rlp_jax checkpoint {checkpoint_dir} (θ of step {step})'


def _step_dirs(directory: str) -> list[int]:
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def find_checkpoint_dir(path: str) -> str | None:
  """`path` or `path`/checkpoints when it holds numbered step subdirectories, else None."""
  for candidate in (path, os.path.join(path, 'checkpoints')):
    if os.path.isdir(candidate) and _step_dirs(candidate):
      return candidate
  return None


def restore_checkpoint_params(checkpoint_dir: str, model_config: Any,
                              shardings: Params | None = None,
                              step: int | None = None) -> tuple[Params, int]:
  """(θ, step) of `step` (default: the latest) of a `Checkpointer` directory, cast to
  `model.param_dtype`; restored straight into `shardings` (each process reads its shards only),
  default: device 0."""
  _, abstract = registry.abstract_params(model_config)
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if shardings is None:
    shardings = jax.tree.map(lambda _: default, abstract)
  restore_args = jax.tree.map(lambda leaf, sharding: ocp.ArrayRestoreArgs(
      dtype=leaf.dtype, sharding=sharding, global_shape=leaf.shape), abstract, shardings)
  manager = ocp.CheckpointManager(checkpoint_dir,
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = list(manager.all_steps())
  step = manager.latest_step() if step is None else step
  if step is None or step not in steps:
    manager.close()
    raise DataError(f'{checkpoint_dir} holds no finished checkpoint'
                    + (f' of step {step} (steps: {steps})' if step is not None else ''))
  try:
    restored = manager.restore(step, args=ocp.args.PyTreeRestore(
        item={'params': abstract}, restore_args={'params': restore_args}, partial_restore=True))
  except Exception as e:  # orbax raises assorted types for missing or mismatched arrays
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f'cannot restore params of step {step} from {checkpoint_dir} into the '
                    f'configured model ({first_line}); does the model config match the one the '
                    'checkpoint was trained with?') from e
  finally:
    manager.close()
  return restored['params'], step
