"""`model.init_from`: the weights a run starts from.

  ''                          random initialisation from `seed`
  a Hugging Face model dir    config.json + model.safetensors (or the sharded index), read lazily
  an rlp_jax checkpoint dir   a `Checkpointer` directory (numbered step subdirectories) or a
                              workdir holding one under checkpoints/: θ (`params`) of the latest
                              step only; optimizer state, teacher and step start fresh

Either may be local or a URL (gs://bucket/model, ...: rlp_jax.paths); every file is read through
etils.epath (safetensors at a URL with ranged reads of each slice, orbax through its own gs://
support).

With `shardings` (train(): those of the state), θ is created directly in them: each process reads
only the slices its devices hold (safetensors slices; orbax restores into the target shardings).
train/state_sharding.create_sharded_state(params=θ) then adds φ and the optimizer state; nothing
is initialised randomly first.
"""
from __future__ import annotations

from typing import Any

import jax
from flax import nnx
import orbax.checkpoint as ocp

from rlp_jax import paths
from rlp_jax.errors import DataError
from rlp_jax.interop import hf_checkpoint
from rlp_jax.models import registry
from rlp_jax.models.layer_stack import other_layout, relayout_arrays, to_layout, tree_is_scanned

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
  path = paths.resolve_str(init_from, 'model.init_from')
  try:
    found = paths.is_dir(path)
  except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
    raise DataError(f'model.init_from: cannot read {path}: {paths.reason(e)}') from None
  if not found:
    raise DataError(f'model.init_from: no such directory {path}')
  if hf_checkpoint.is_hf_checkpoint(path):
    return load_hf_params_in_layout(path, model_config, shardings), f'Hugging Face checkpoint {path}'
  checkpoint_dir = find_checkpoint_dir(path)
  if checkpoint_dir is None:
    raise DataError(f'model.init_from: {path} is neither a Hugging Face model directory '
                    '(config.json + model.safetensors or model.safetensors.index.json) nor an '
                    'rlp_jax checkpoint directory (numbered step subdirectories)')
  params, step = restore_checkpoint_params(checkpoint_dir, model_config, shardings)
  return params, f'rlp_jax checkpoint {checkpoint_dir} (θ of step {step})'


def _targets(model_config: Any, shardings: Params | None) -> Any:
  """The model's abstract θ as jax.ShapeDtypeStructs carrying `shardings` (default: device 0)."""
  _, abstract = registry.abstract_params(model_config)
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if shardings is None:
    shardings = jax.tree.map(lambda _: default, abstract)
  return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                  sharding=sharding),
                      abstract, shardings)


def _shardings(targets: Any) -> Any:
  return jax.tree.map(lambda leaf: leaf.sharding, targets)


def load_hf_params_in_layout(path: str, model_config: Any, shardings: Params | None = None,
                             ) -> Params:
  """θ from a Hugging Face directory (unrolled layers by nature) in the model's layer layout: with
  `model.scan_layers` read unrolled in the matching shardings (each process its slices), then
  stacked by one jit into `shardings` (peak: θ twice, before φ and the optimizer state exist)."""
  plan = registry.layer_plan(model_config)
  if not plan.scanned:
    return hf_checkpoint.load_hf_params(path, model_config, shardings)
  targets = _targets(model_config, shardings)
  unrolled = to_layout(targets, other_layout(plan))
  params = hf_checkpoint.load_hf_params(path, registry.with_layout(model_config, False),
                                        _shardings(unrolled))
  return relayout_arrays(params, plan, targets)


def _step_dirs(directory: str) -> list[int]:
  return sorted(int(child.name) for child in paths.as_path(directory).iterdir()
                if child.name.isdigit() and child.is_dir())


def find_checkpoint_dir(path: str) -> str | None:
  """`path` or `path`/checkpoints (local or URLs) when it holds numbered step subdirectories,
  else None."""
  for candidate in (path, paths.join(path, 'checkpoints')):
    if paths.is_dir(candidate) and _step_dirs(candidate):
      return candidate
  return None


def restore_checkpoint_params(checkpoint_dir: str, model_config: Any,
                              shardings: Params | None = None,
                              step: int | None = None) -> tuple[Params, int]:
  """(θ, step) of `step` (default: the latest) of a `Checkpointer` directory, cast to
  `model.param_dtype`; restored straight into `shardings` (each process reads its shards only),
  default: device 0."""
  plan = registry.layer_plan(model_config)
  targets = _targets(model_config, shardings)
  manager = ocp.CheckpointManager(checkpoint_dir,
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  steps = list(manager.all_steps())
  step = manager.latest_step() if step is None else step
  if step is None or step not in steps:
    manager.close()
    raise DataError(f'{checkpoint_dir} holds no finished checkpoint'
                    + (f' of step {step} (steps: {steps})' if step is not None else ''))
  try:
    stored_scanned = tree_is_scanned(_stored_tree(checkpoint_dir, step))
  except Exception:  # pylint: disable=broad-exception-caught  # the restore below reports it
    stored_scanned = None
  relayout = stored_scanned is not None and stored_scanned != plan.scanned
  read = to_layout(targets, other_layout(plan)) if relayout else targets
  restore_args = jax.tree.map(lambda leaf: ocp.ArrayRestoreArgs(
      dtype=leaf.dtype, sharding=leaf.sharding, global_shape=leaf.shape), read)
  try:
    restored = manager.restore(step, args=ocp.args.PyTreeRestore(
        item={'params': read}, restore_args={'params': restore_args}, partial_restore=True))
  except Exception as e:  # orbax raises assorted types for missing or mismatched arrays
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DataError(f'cannot restore params of step {step} from {checkpoint_dir} into the '
                    f'configured model ({first_line}); does the model config match the one the '
                    'checkpoint was trained with?') from e
  finally:
    manager.close()
  params = restored['params']
  if relayout:  # saved with the other `model.scan_layers`: into this model's layer layout
    params = relayout_arrays(params, plan, targets)
  return params, step


def _stored_tree(checkpoint_dir: str, step: int) -> Any:
  """The stored state's tree (metadata only) of `step` (its own handler: asking the manager for
  item metadata changes how it restores afterwards)."""
  step_dir = paths.as_path(checkpoint_dir) / str(step)
  item = step_dir / 'default' if (step_dir / 'default').exists() else step_dir
  return ocp.StandardCheckpointHandler().metadata(item).tree
