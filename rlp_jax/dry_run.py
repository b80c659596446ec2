"""Memory planning: compile the train step ahead of time for the configured mesh and report the
per-device bytes, without allocating the model (`python -m rlp_jax.main --dry_run`).

Everything is abstract: the train state is `jax.eval_shape` of its creation, carried as
ShapeDtypeStructs with the shardings the run would use; `jit(...).lower(...).compile()` then runs
XLA's partitioner and buffer assignment for the mesh. Two kinds of numbers come out:
  from shapes and shardings (exact on any backend): θ, φ, optimizer state, batch, rollout buffers;
  from the compiled step (`compiled.memory_analysis()`): arguments, outputs, aliased (donated)
  bytes, temporaries. These come from the XLA *CPU* compiler on simulated devices, with its
  memory-minimising scheduler (MEMORY_SCHEDULER_FLAG): fusion and scheduling differ on TPU/GPU,
  so take temporaries as an estimate, not a measurement.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from rlp_jax.config import validate_config
from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.parallel.mesh import MESH_AXES, make_mesh
from rlp_jax.parallel.batch_sharding import (batch_sharding, check_batch_divides,
                                             resolve_batch_size)
from rlp_jax.train.state_sharding import param_shardings, state_shardings
from rlp_jax.train.optimizer import make_optimizer
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.train.rlp_step import make_rlp_step
from rlp_jax.train.state import TrainState, create_train_state
from rlp_jax.train.ntp_step import make_ntp_step

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
  """A machine the dry run checks a config against: how many JAX devices, HBM usable on each."""
  name: str
  devices: int
  usable_gib: float
  why: str


# HBM per device as the vendors state it (decimal GB), less what the runtime keeps back.
TARGETS = {target.name: target for target in (
    Target('8xH100', 8, 0.92 * 79.6, '8 H100 80 GB (79.6 GiB as the driver reports) × 0.92, the '
           'XLA_PYTHON_CLIENT_MEM_FRACTION launch/slurm_gpu.sbatch sets'),
    Target('v5p-64', 32, 95e9 / GIB, '32 chips (v5p counts TensorCores; one JAX device per chip) '
           'of 95 GB HBM2e'),
    Target('v6e-64', 64, 32e9 / GIB, '64 chips of 32 GB HBM'),
)}


def target_named(name: str) -> Target:
  if name not in TARGETS:
    raise ConfigError(f'--dry_run_target must be one of {sorted(TARGETS)}, got {name!r}')
  return TARGETS[name]


def fit_line(plan: 'MemoryPlan', target: Target) -> str:
  """One line: whether the estimated peak per device fits the target's usable HBM."""
  peak = plan.peak_estimate / GIB
  verdict = 'fits' if peak <= target.usable_gib else 'does NOT fit'
  return (f'{target.name}: {verdict}: peak ≈ {peak:.2f} GiB of {target.usable_gib:.1f} GiB usable '
          f'per device ({target.why})')


def simulated_device_count(mesh_config: ml_collections.ConfigDict, requested: int | None) -> int:
  """--dry_run_devices, else the product of the mesh sizes (which then must not hold a −1)."""
  if requested is not None:
    if requested < 1:
      raise ConfigError(f'--dry_run_devices must be >= 1, got {requested}')
    return requested
  sizes = [mesh_config[axis] for axis in MESH_AXES]
  if -1 in sizes:
    raise ConfigError(f'--dry_run needs --dry_run_devices=N when a mesh axis is -1 (mesh '
                      f'{dict(zip(MESH_AXES, sizes))})')
  return math.prod(sizes)


# XLA CPU's default scheduler orders work for thread concurrency, not memory: it runs the
# recomputed forward of a rematerialised layer as early as the original one, so remat saves
# nothing, and it roughly doubles the temporaries of a plain step. TPU and GPU schedule under a
# memory limit (and apply remat after scheduling); the memory-minimising CPU scheduler is the
# closer estimate of what they keep live.
MEMORY_SCHEDULER_FLAG = '--xla_cpu_enable_concurrency_optimized_scheduler=false'


def use_memory_minimising_scheduler() -> None:
  """Adds MEMORY_SCHEDULER_FLAG to XLA_FLAGS; like the device count, before the backend starts."""
  flags = os.environ.get('XLA_FLAGS', '')
  if MEMORY_SCHEDULER_FLAG not in flags.split():
    os.environ['XLA_FLAGS'] = f'{flags} {MEMORY_SCHEDULER_FLAG}'.strip()


def simulate_cpu_devices(num_devices: int) -> None:
  """Makes JAX start with `num_devices` CPU devices scheduled for memory (see
  MEMORY_SCHEDULER_FLAG); must run before any backend use."""
  use_memory_minimising_scheduler()
  try:
    jax.config.update('jax_platforms', 'cpu')
    jax.config.update('jax_num_cpu_devices', num_devices)
  except RuntimeError as error:  # the backend already started in this process
    raise RuntimeError('simulate_cpu_devices must run before JAX starts its backend (run the dry '
                       'run in a fresh process)') from error


@dataclasses.dataclass
class CompiledMemory:
  """Per-device bytes of one compiled function (XLA's memory_analysis)."""
  arguments: int
  outputs: int
  aliased: int  # output bytes that reuse donated argument buffers
  temporaries: int
  code: int
  compile_seconds: float

  @property
  def peak_estimate(self) -> int:
    """Live at once at worst: arguments, outputs not written in place, and temporaries."""
    return self.arguments + self.outputs - self.aliased + self.temporaries


@dataclasses.dataclass
class MemoryPlan:
  mesh: dict[str, int]
  num_devices: int
  num_params: int
  state_bytes: dict[str, int]  # per device: params, teacher, optimizer, batch, rollout
  compiled: dict[str, CompiledMemory]  # 'rollout', 'update' (RLP) or 'train_step'

  @property
  def peak_estimate(self) -> int:
    return max((c.peak_estimate for c in self.compiled.values()), default=0)


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (or arrays)."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def _with_shardings(shapes: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, shardings)


def abstract_batch(config: Any, mesh: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """The batch a step receives, as sharded ShapeDtypeStructs (nothing allocated)."""
  documents = batch_sharding(mesh, config.mesh.rules)
  shape = (config.data.batch_size, config.data.seq_len)
  batch = {'tokens': jax.ShapeDtypeStruct(shape, jnp.int32, sharding=documents),
           'mask': jax.ShapeDtypeStruct(shape, jnp.bool_, sharding=documents)}
  if config.data.packing:  # packed rows carry segment ids (data/loader.py)
    batch['segment_ids'] = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=documents)
  return batch


def abstract_state(config: ml_collections.ConfigDict, tx, mesh) -> tuple[TrainState, TrainState]:
  """(the train state as sharded ShapeDtypeStructs, its shardings); nothing is allocated."""
  use_rlp = config.rlp.enabled
  shapes = jax.eval_shape(lambda: create_train_state(
      registry.init_params(config.model, config.seed)[1], tx, config.seed, with_teacher=use_rlp))
  shardings = state_shardings(shapes, param_shardings(config.model, mesh, config.mesh.rules), tx,
                              mesh)
  return _with_shardings(shapes, shardings), shardings


def _compile(fn, *args) -> tuple[Any, CompiledMemory]:
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  return compiled, CompiledMemory(
      arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
      aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
      code=stats.generated_code_size_in_bytes, compile_seconds=seconds)


def plan_memory(config: ml_collections.ConfigDict, compile_steps: bool = True) -> MemoryPlan:
  """Compiles the configured step for the mesh over all (simulated) devices; see module doc.

  `compile_steps=False` gives only the numbers from shapes and shardings (fast at any size)."""
  validate_config(config)
  mesh = make_mesh(config.mesh)
  config.data.batch_size = resolve_batch_size(config.data.batch_size, mesh, config.mesh.rules)
  check_batch_divides(config.data.batch_size, mesh, config.mesh.rules)
  use_rlp = config.rlp.enabled
  updates = config.rlp.updates_per_rollout if use_rlp else 1
  tx, schedule = make_optimizer(config.optimizer, config.train.num_steps * updates)
  state, state_sharding = abstract_state(config, tx, mesh)
  batch = abstract_batch(config, mesh)
  graphdef, _ = registry.abstract_params(config.model)
  sizes = {'params': per_device_bytes(state.params)}
  if use_rlp:
    sizes['teacher'] = per_device_bytes(state.teacher_params)
  sizes.update(optimizer=per_device_bytes(state.opt_state), batch=per_device_bytes(batch))
  compiled: dict[str, CompiledMemory] = {}
  if not compile_steps:
    return MemoryPlan(mesh=dict(zip(MESH_AXES, mesh.devices.shape)), num_devices=mesh.size,
                      num_params=registry.count_params(config.model), state_bytes=sizes,
                      compiled=compiled)
  with jax.set_mesh(mesh):
    if use_rlp:
      # Token ids only need to lie in the vocabulary: shapes do not depend on them.
      special = SpecialTokens(think_start_id=1, think_end_id=2, pad_id=0)
      rollout_fn, update_fn = make_rlp_step(graphdef, config.model, config.rlp, special, tx,
                                            schedule, state_sharding, config.mesh.rules)
      rollout_exe, compiled['rollout'] = _compile(rollout_fn, state, batch)
      rollout = _with_shardings(jax.eval_shape(rollout_fn, state, batch)[1],
                                rollout_exe.output_shardings[1])
      sizes['rollout'] = per_device_bytes(rollout)
      _, compiled['update'] = _compile(update_fn, state, batch, rollout)
    else:
      _, compiled['train_step'] = _compile(
          make_ntp_step(graphdef, tx, schedule, state_sharding, config.mesh.rules,
                        config.model.logits_chunk_tokens), state, batch)
  return MemoryPlan(mesh=dict(zip(MESH_AXES, mesh.devices.shape)), num_devices=mesh.size,
                    num_params=registry.count_params(config.model), state_bytes=sizes,
                    compiled=compiled)


def _gib(num_bytes: int) -> str:
  if num_bytes < GIB:
    return f'{num_bytes / 2**20:9.2f} MiB'
  return f'{num_bytes / GIB:9.2f} GiB'


def format_report(plan: MemoryPlan, target: Target | None = None) -> list[str]:
  """The dry run's printout: per-device bytes, whether it fits `target`, then one JSON line with
  every number."""
  mesh = ' '.join(f'{axis}={size}' for axis, size in plan.mesh.items())
  labels = {'params': 'θ (params)', 'teacher': 'φ (EMA teacher)', 'optimizer': 'optimizer state',
            'batch': 'batch', 'rollout': 'rollout buffers'}
  lines = [f'dry run: {plan.num_params:,} parameters on mesh {mesh} '
           f'({plan.num_devices} simulated devices); bytes per device',
           'from shapes and shardings:']
  lines += [f'  {labels[name]:<18}{_gib(size)}' for name, size in plan.state_bytes.items()]
  state_total = sum(plan.state_bytes.get(k, 0) for k in ('params', 'teacher', 'optimizer'))
  label = 'θ + φ + optimizer' if 'teacher' in plan.state_bytes else 'θ + optimizer'
  lines.append(f'  {label:<18}{_gib(state_total)}')
  lines.append('compiled (XLA CPU buffer assignment; temporaries differ on TPU/GPU):')
  for name, memory in plan.compiled.items():
    lines.append(f'  {name:<10} arguments{_gib(memory.arguments)}  temporaries'
                 f'{_gib(memory.temporaries)}  outputs{_gib(memory.outputs)} (in place'
                 f'{_gib(memory.aliased)})  peak ≈{_gib(memory.peak_estimate)}  '
                 f'[compiled in {memory.compile_seconds:.1f} s]')
  lines.append(f'peak per device ≈ {_gib(plan.peak_estimate).strip()}')
  if target is not None:
    lines.append(fit_line(plan, target))
  lines.append('memory plan (json): ' + json.dumps(plan_as_dict(plan, target)))
  return lines


def plan_as_dict(plan: MemoryPlan, target: Target | None = None) -> dict[str, Any]:
  fit = {} if target is None else {
      'target': target.name, 'usable_bytes': int(target.usable_gib * GIB),
      'fits': plan.peak_estimate <= target.usable_gib * GIB}
  return {**fit, 'mesh': plan.mesh, 'num_devices': plan.num_devices, 'num_params': plan.num_params,
          'state_bytes': plan.state_bytes, 'peak_estimate': plan.peak_estimate,
          'compiled': {name: dict(dataclasses.asdict(memory), peak_estimate=memory.peak_estimate)
                       for name, memory in plan.compiled.items()}}
