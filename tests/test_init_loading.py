"""`model.init_from` builds the train state from the checkpoint's arrays: no random state first.

θ is read directly in its sharding (Hugging Face safetensors slice by slice, or an orbax restore
with the target shardings), φ (a copy) and the optimizer state (zeros) are created from it by one
jit; `registry.init_params` is made to raise throughout. The 8-device and 2-process checks run in
fresh interpreters started on this file (`python -m tests.test_init_loading MODE ...`), which
print one JSON line of results for the test to check.

  exact slices     every layout (Same, LinearKernel, ConvKernel, Flattened, fused) reads exactly
                   the elements of a slice, for random slices (in process, no devices)
  8 devices        loaded θ = the files' tensors (read independently with safetensors.numpy),
                   φ = θ, optimizer state zeros, the shardings of a random state; peak live bytes
                   during and after loading ≤ 1.1 × (θ + φ + optimizer state)
  train()          a run from a Hugging Face directory never calls the random init
  2 processes      each process reads exactly the elements its devices hold
"""
from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlp_jax.config import base_config
from rlp_jax.interop import hf_checkpoint
from rlp_jax.interop.checkpoint_init import load_init_params
from rlp_jax.interop.param_slices import flat_runs, read_block, hf_axis_groups
from rlp_jax.interop.safetensors_io import SafetensorsReader, write_safetensors
from rlp_jax.models import registry
from rlp_jax.models.hf_names.tensor_map import (ConvKernel, Flattened, LinearKernel, Same,
                                                get_at)
from rlp_jax.train.state import create_train_state
from rlp_jax.train.state_sharding import create_sharded_state, param_shardings, state_shardings
from tests import helpers

REPO = helpers.REPO
PEAK_BOUND = 1.1  # peak live bytes while and after loading ÷ (θ + φ + optimizer state)


# ---------------------------------------------------------------------------------------------
# Shared by the test process and the subprocesses.


def tiny_config(family: str) -> Any:
  """The interop tests' tiny models with a vocabulary the tensor axis divides (96)."""
  make = helpers.dense_model_config if family == 'dense' else helpers.hybrid_model_config
  return make(vocab_size=96)


def write_hf_dir(directory: str, config: Any, values: str = 'random', seed: int = 0) -> None:
  """A Hugging Face directory (config.json + safetensors, sharded with an index) of `config`:
  'random' weights, or 'ids' (each tensor np.arange over its elements, so a value names the
  element it came from)."""
  hf = hf_checkpoint.hf_names_of(config)
  _, abstract = registry.abstract_params(config)
  mappings = hf.mappings(config)
  rng = np.random.default_rng(seed)
  tensors = {}
  for m in mappings:
    shape = m.hf_shape(abstract)
    size = int(np.prod(shape))
    tensors[m.hf_name] = (np.arange(size, dtype=np.float32) if values == 'ids'
                          else rng.normal(0.0, 0.2, size).astype(np.float32)).reshape(shape)
  write_safetensors(directory, [(m.hf_name, tensors[m.hf_name].shape, np.float32)
                                for m in mappings], tensors.__getitem__, 20_000)
  with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(hf.hf_config(config, 'float32'), f)


def file_params(directory: str, config: Any) -> dict:
  """θ from the directory's files, independently: safetensors.numpy + the layouts' to_params."""
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  tensors = {}
  for name in os.listdir(directory):
    if name.endswith('.safetensors'):
      tensors.update(load_file(os.path.join(directory, name)))
  _, abstract = registry.abstract_params(config)
  params = {}
  for m in hf_checkpoint.hf_names_of(config).mappings(config):
    for path, array in m.to_params(tensors[m.hf_name], abstract):
      params[path] = np.asarray(array, get_at(abstract, path).dtype)
  return params


def save_checkpoint(directory: str, config: Any, params: dict) -> None:
  """An rlp_jax checkpoint directory (train's Checkpointer) holding θ = `params` at step 3."""
  from rlp_jax.models.hf_names.tensor_map import set_at  # pylint: disable=import-outside-toplevel
  from rlp_jax.train.checkpointing import Checkpointer  # pylint: disable=import-outside-toplevel
  tree: dict = {}
  for path, array in params.items():
    set_at(tree, path, jnp.asarray(array))
  _, abstract = registry.abstract_params(config)
  tree = jax.tree.map(lambda _, x: x, abstract, tree)  # the model's key order
  checkpointer = Checkpointer(directory, every=1, keep=2)
  state = create_train_state(tree, optax.adamw(1e-3), seed=0, with_teacher=True)
  checkpointer.maybe_save(3, state.replace(step=jnp.asarray(3, jnp.int32)), force=True)
  checkpointer.close()


class NoRandomInit(Exception):
  """registry.init_params was called while loading."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
  raise NoRandomInit('registry.init_params called while loading from a checkpoint')


def forbid_random_init() -> Any:
  """Makes `registry.init_params` raise; returns the original."""
  original = registry.init_params
  registry.init_params = _refuse
  return original


def live_bytes() -> int:
  """Bytes of every live jax.Array (global sizes: a replicated array counts once)."""
  return sum(x.nbytes for x in jax.live_arrays() if not x.is_deleted())


def state_bytes(state: Any) -> int:
  return sum(x.nbytes for x in jax.tree.leaves((state.params, state.teacher_params,
                                                state.opt_state)))


class ReadLog:
  """Wraps SafetensorsReader.read_slice: what each read asked for, and live bytes before it."""

  def __init__(self):
    self.reads: list[tuple[str, tuple[tuple[int, int], ...]]] = []
    self.live: list[int] = []
    self._original = SafetensorsReader.read_slice
    log = self

    def read_slice(reader, name, box):
      log.live.append(live_bytes())
      block = log._original(reader, name, box)
      log.reads.append((name, tuple((s.start, s.stop) for s in box)))
      return block
    SafetensorsReader.read_slice = read_slice

  def close(self) -> None:
    SafetensorsReader.read_slice = self._original


def mesh_and_rules(fsdp: int, tensor: int, inner: bool = False) -> tuple[Any, Any]:
  from rlp_jax.parallel.mesh import make_mesh  # pylint: disable=import-outside-toplevel
  mesh_config = base_config().mesh
  mesh_config.data, mesh_config.fsdp, mesh_config.tensor = 1, fsdp, tensor
  rules = tuple(mesh_config.rules)
  if inner:  # split the inner axes of the HF layouts: a slice is several runs per HF row
    moved = {'heads': None, 'kv_heads': None, 'head_dim': 'tensor', 'mamba_heads': None,
             'mamba_head_dim': 'tensor', 'mamba_groups': None, 'ssm_state': 'tensor'}
    rules = tuple((name, moved.get(name, axes)) for name, axes in rules)
  return make_mesh(mesh_config), rules


def load_state(config: Any, mesh: Any, rules: Any, with_teacher: bool = True) -> tuple[Any, Any]:
  """What train() does with model.init_from: the abstract state, θ in its shardings, the state."""
  tx = optax.adamw(1e-3)
  abstract, shardings = create_sharded_state(config, tx, 0, with_teacher, mesh, rules)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  params, _ = load_init_params(config.init_from, config, shardings.params)
  after_params = live_bytes()
  state, _ = create_sharded_state(config, tx, 0, with_teacher, mesh, rules, params=params)
  del params
  return state, shardings, after_params


# ---------------------------------------------------------------------------------------------
# The subprocesses.


def _check_state(state: Any, shardings: Any, expected: dict, reference: Any) -> list[str]:
  """How a loaded state differs from the files' θ, φ = θ, zero moments and `reference`'s layout."""
  problems = []
  for path, want in expected.items():
    for tree, label in ((state.params, 'θ'), (state.teacher_params, 'φ')):
      got = get_at(tree, path)
      if got.dtype != want.dtype or not np.array_equal(np.asarray(got), want):
        problems.append(f'{label} {path} differs from the file')
  for leaf in jax.tree.leaves(state.opt_state):
    if np.any(np.asarray(leaf) != 0):
      problems.append(f'optimizer state leaf {leaf.shape} is not zero')
  for (path, leaf), sharding, ref in zip(jax.tree_util.tree_leaves_with_path(state),
                                         jax.tree.leaves(shardings), jax.tree.leaves(reference)):
    if not (leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
            and leaf.sharding.is_equivalent_to(ref, leaf.ndim)):
      problems.append(f'{jax.tree_util.keystr(path)} is laid out as {leaf.sharding.spec}, '
                      f'a random state as {ref.spec}')
  return problems


def run_eight_devices(directory: str) -> dict:
  """8 CPU devices: load each case, check it, measure live bytes; the old path as a control."""
  results: dict = {'devices': jax.device_count(), 'cases': {}}
  cases = [('dense', 'hf', False), ('hybrid', 'hf', False), ('dense', 'hf', True),
           ('hybrid', 'hf', True), ('dense', 'orbax', False), ('hybrid', 'orbax', False)]
  prepared = {}
  for family in ('dense', 'hybrid'):
    config = tiny_config(family)
    hf_dir = os.path.join(directory, f'{family}_hf')
    write_hf_dir(hf_dir, config, seed=1 if family == 'dense' else 2)
    expected = file_params(hf_dir, config)
    run_dir = os.path.join(directory, f'{family}_run', 'checkpoints')
    save_checkpoint(run_dir, config, expected)
    prepared[family] = (config, hf_dir, os.path.dirname(run_dir), expected)

  # The control: what train() did before (a random state, then θ loaded and φ copied into it).
  config, hf_dir, _, _ = prepared['dense']
  mesh, rules = mesh_and_rules(4, 2)
  gc.collect()
  base = live_bytes()
  log = ReadLog()
  state, shardings = create_sharded_state(config, optax.adamw(1e-3), 0, True, mesh, rules)
  params, _ = load_init_params(hf_dir, config, shardings.params)
  teacher = jax.tree.map(jnp.copy, params)
  peak = max(max(log.live), live_bytes()) - base
  state = state.replace(params=params, teacher_params=teacher)
  del params, teacher
  gc.collect()
  log.close()
  total = state_bytes(state)
  results['old_path'] = {'state_bytes': total, 'peak_ratio': peak / total,
                         'after_ratio': (live_bytes() - base) / total}
  old_shardings = [(x.sharding, x.ndim) for x in jax.tree.leaves(state)]
  del state
  gc.collect()

  references = {family_inner: _random_shardings(prepared[family_inner[0]][0],
                                                *mesh_and_rules(4, 2, family_inner[1]))
                for family_inner in {(family, inner) for family, _, inner in cases}}
  # ... which are the layouts of the random state the old path made (the control).
  results['old_path']['same_layout'] = all(
      sharding.is_equivalent_to(reference, ndim) for (sharding, ndim), reference in
      zip(old_shardings, jax.tree.leaves(references['dense', False])))
  gc.collect()
  original = forbid_random_init()
  try:
    for family, kind, inner in cases:
      config, hf_dir, run_dir, expected = prepared[family]
      config = config.copy_and_resolve_references()
      config.init_from = hf_dir if kind == 'hf' else run_dir
      mesh, rules = mesh_and_rules(4, 2, inner)
      reference = references[family, inner]
      gc.collect()
      base = live_bytes()
      log = ReadLog()
      try:
        state, shardings, after_params = load_state(config, mesh, rules)
      finally:
        log.close()
      gc.collect()
      total = state_bytes(state)
      after = live_bytes() - base
      peak = max([after, after_params - base] + [x - base for x in log.live])
      results['cases'][f'{family}/{kind}' + ('/inner' if inner else '')] = {
          'state_bytes': total, 'peak_ratio': peak / total, 'after_ratio': after / total,
          'reads': len(log.reads),
          'most_reads_of_a_tensor': max(
              [sum(1 for name, _ in log.reads if name == n) for n, _ in log.reads] or [0]),
          'problems': _check_state(state, shardings, expected, reference)}
      del state, shardings
      gc.collect()
  finally:
    registry.init_params = original
  return results


def _random_shardings(config: Any, mesh: Any, rules: Any) -> Any:
  """The shardings create_sharded_state gives a random state (init_from unset), from shapes alone
  (compiling the random init on 8 devices takes seconds; the control compares one real one)."""
  tx = optax.adamw(1e-3)
  _, abstract = registry.abstract_params(config)
  shapes = jax.eval_shape(lambda p: create_train_state(p, tx, 0, with_teacher=True), abstract)
  return state_shardings(shapes, param_shardings(config, mesh, rules), tx, mesh)


def run_two_processes(coordinator: str, process_id: int, directory: str) -> dict:
  """One of two processes (2 CPU devices each, mesh fsdp 2 × tensor 2): loads the 'ids' files
  and the checkpoint made from them; reports what it read against what its devices hold."""
  jax.distributed.initialize(coordinator, 2, process_id)
  original = forbid_random_init()
  results: dict = {'process': jax.process_index(), 'local_devices': jax.local_device_count()}
  try:
    for family in ('dense', 'hybrid'):
      config = tiny_config(family)
      hf = hf_checkpoint.hf_names_of(config)
      _, abstract = registry.abstract_params(config)
      hf_dir = os.path.join(directory, f'{family}_hf')
      config.init_from = hf_dir
      mesh, rules = mesh_and_rules(2, 2)
      log = ReadLog()
      try:
        state, _, _ = load_state(config, mesh, rules)
      finally:
        log.close()
      expected = file_params(hf_dir, config)
      read_ids: dict[str, list] = {}
      element_reads = 0
      file_elements = 0
      for name, bounds in log.reads:
        size = int(np.prod([stop - start for start, stop in bounds]))
        element_reads += size
        read_ids.setdefault(name, []).append((bounds, size))
      wrong_values, wrong_reads, held_elements = [], [], 0
      for m in hf.mappings(config):
        shape = m.hf_shape(abstract)
        file_elements += int(np.prod(shape))
        ids = np.arange(int(np.prod(shape))).reshape(shape)
        got = set()
        for bounds, _ in read_ids.get(m.hf_name, []):
          got.update(ids[tuple(slice(a, b) for a, b in bounds)].ravel().tolist())
        held = set()
        for path in m.param_paths:
          leaf = get_at(state.params, path)
          for shard in leaf.addressable_shards:
            values = np.asarray(shard.data)
            if not np.array_equal(values, expected[path][shard.index]):
              wrong_values.append(f'{m.hf_name} shard {shard.index}')
            held.update(values.astype(np.int64).ravel().tolist())
        held_elements += len(held)
        if got != held:
          wrong_reads.append(f'{m.hf_name}: read {len(got - held)} elements not held, '
                             f'missed {len(held - got)}')
      results[family] = {'element_reads': element_reads, 'held_elements': held_elements,
                         'file_elements': file_elements, 'wrong_reads': wrong_reads,
                         'wrong_values': wrong_values}

      # The orbax checkpoint of the same θ: each process's shards equal the files'.
      config.init_from = os.path.join(directory, f'{family}_run')
      state, _, _ = load_state(config, mesh, rules)
      results[family]['orbax_wrong'] = [
          jax.tree_util.keystr(path) for path, leaf in
          jax.tree_util.tree_leaves_with_path(state.params)
          if not all(np.array_equal(np.asarray(s.data), _expected_at(expected, path)[s.index])
                     for s in leaf.addressable_shards)]
  finally:
    registry.init_params = original
  return results


def _expected_at(expected: dict, key_path: Any) -> np.ndarray:
  return expected[tuple(getattr(k, 'key', getattr(k, 'idx', None)) for k in key_path)]


# ---------------------------------------------------------------------------------------------
# The tests.


def _layouts() -> list[tuple[Any, tuple[int, ...]]]:
  return [(Same(), (6, 5)), (Same(), (7,)), (LinearKernel(1), (6, 4, 3)),
          (LinearKernel(2), (4, 3, 10)), (LinearKernel(1), (5, 8)),
          (ConvKernel(), (4, 6, 2)), (ConvKernel(), (3, 9)), (Flattened(), (4, 6)),
          (Flattened(), (3, 2, 5))]


@pytest.mark.parametrize('layout,shape', _layouts())
def test_every_layout_reads_exactly_the_elements_of_a_slice(layout, shape):
  """Random slices of the parameter: the block equals the layout's own conversion of the whole
  tensor, sliced; the reads cover exactly the slice's elements, none twice."""
  rng = np.random.default_rng(sum(shape))
  hf_shape = layout.hf_shape(shape)
  ids = np.arange(int(np.prod(hf_shape))).reshape(hf_shape)
  whole = layout.to_param(ids, shape)
  groups = hf_axis_groups(layout, len(shape))
  for _ in range(40):
    bounds = []
    for size in shape:
      start = int(rng.integers(0, size))
      bounds.append((start, int(rng.integers(start + 1, size + 1))))
    reads = []

    def read_box(box):
      reads.append(box)
      return ids[box]
    block = read_block(read_box, groups, shape, tuple(bounds))
    want = whole[tuple(slice(a, b) for a, b in bounds)]
    np.testing.assert_array_equal(block, want)
    read = np.concatenate([ids[box].ravel() for box in reads])
    assert sorted(read.tolist()) == sorted(want.ravel().tolist())  # exactly, none twice


def test_a_slice_of_the_leading_axis_is_one_read():
  """The sharding rules split a group's first axis (heads, not head_dim): one contiguous run."""
  assert flat_runs((4, 16), ((1, 3), (0, 16))) == [(16, 48)]
  assert flat_runs((4, 16), ((0, 4), (8, 16))) == [(8, 16), (24, 32), (40, 48), (56, 64)]
  assert flat_runs((), ()) == [(0, 1)]


def _python(args: list[str], env: dict, timeout: int) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-m', 'tests.test_init_loading', *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=REPO)


def _result(output: str) -> dict:
  lines = [line for line in output.splitlines() if line.startswith('{')]
  assert lines, output[-4000:]
  return json.loads(lines[-1])


@pytest.mark.subprocess
def test_loaded_state_on_eight_devices_is_the_files_and_fits_in_the_state(tmp_path):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='8', JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=REPO)
  process = _python(['eight', str(tmp_path)], env, 300)
  output = process.communicate(timeout=300)[0]
  assert process.returncode == 0, output[-4000:]
  results = _result(output)
  assert results['devices'] == 8
  old = results['old_path']
  print(f"before (random state, then θ loaded and φ copied): peak {old['peak_ratio']:.3f}, "
        f"after {old['after_ratio']:.3f} × (θ + φ + optimizer state = {old['state_bytes']} B)")
  assert old['peak_ratio'] > 1.4  # the measurement sees the random state the old path made
  assert old['same_layout']  # the reference layouts are those of a random state
  for case, row in results['cases'].items():
    print(f"{case}: peak {row['peak_ratio']:.3f}, after {row['after_ratio']:.3f} × "
          f"{row['state_bytes']} B, {row['reads']} slice reads")
    assert row['problems'] == [], (case, row['problems'][:5])
    assert row['peak_ratio'] <= PEAK_BOUND, (case, row)
    assert row['after_ratio'] <= PEAK_BOUND, (case, row)
    assert ('orbax' in case) == (row['reads'] == 0)
  # A dense tensor has one parameter: at most 8 distinct slices, one read each, unless the layout
  # splits a group's inner axis (head_dim), when a slice is several runs.
  assert results['cases']['dense/hf']['most_reads_of_a_tensor'] <= 8
  assert results['cases']['dense/hf/inner']['most_reads_of_a_tensor'] > 8


@pytest.mark.slow
def test_train_from_a_hugging_face_directory_never_initialises_randomly(small_config, tmp_path,
                                                                        capsys, monkeypatch):
  """train() itself: the random init raises, the run starts and takes its step; live bytes at
  every slice read and after the state is built stay within the bound. Resumed (same workdir),
  it restores its checkpoint into the abstract state and reads nothing of model.init_from."""
  from rlp_jax.train import loop  # pylint: disable=import-outside-toplevel
  config = small_config
  config.rlp.enabled = False
  config.train.num_steps = 1
  config.model.param_dtype = 'float32'
  write_hf_dir(str(tmp_path / 'hf'), config.model)
  config.model.init_from = str(tmp_path / 'hf')
  gc.collect()
  base = live_bytes()
  measured = []
  real = loop.create_sharded_state

  def create_and_measure(*args, **kwargs):
    state, shardings = real(*args, **kwargs)
    if kwargs.get('params') is not None:
      gc.collect()
      measured.append((live_bytes() - base, state_bytes(state)))
    return state, shardings
  monkeypatch.setattr(loop, 'create_sharded_state', create_and_measure)
  monkeypatch.setattr(registry, 'init_params', _refuse)
  log = ReadLog()
  try:
    loop.train(config, str(tmp_path / 'run'))
  finally:
    log.close()
  assert 'starting from Hugging Face checkpoint' in capsys.readouterr().out
  (after, total), = measured
  peak = max([after] + [x - base for x in log.live])
  print(f'train(): peak {peak / total:.3f}, after {after / total:.3f} × {total} B')
  assert peak <= PEAK_BOUND * total and after <= PEAK_BOUND * total

  config.train.num_steps = 2
  log = ReadLog()
  try:
    result = loop.train(config, str(tmp_path / 'run'))
  finally:
    log.close()
  assert 'resumed from' in capsys.readouterr().out and result.first_step == 1
  assert log.reads == [] and len(measured) == 1


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_processes_each_read_only_their_slices(tmp_path):
  for family in ('dense', 'hybrid'):
    config = tiny_config(family)
    write_hf_dir(str(tmp_path / f'{family}_hf'), config, values='ids')
    save_checkpoint(str(tmp_path / f'{family}_run' / 'checkpoints'), config,
                    file_params(str(tmp_path / f'{family}_hf'), config))
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='2', JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=REPO)
  processes = [_python(['two', f'localhost:{port}', str(i), str(tmp_path)], env, 300)
               for i in range(2)]
  outputs = helpers.wait_for_processes(processes, timeout=300)
  rows = [_result(output) for output in outputs]
  assert [row['process'] for row in rows] == [0, 1]
  for row in rows:
    for family in ('dense', 'hybrid'):
      result = row[family]
      print(f"process {row['process']} {family}: read {result['element_reads']} elements, its "
            f"devices hold {result['held_elements']} distinct, the files have "
            f"{result['file_elements']}")
      assert result['wrong_values'] == [] and result['orbax_wrong'] == []
      assert result['wrong_reads'] == []  # exactly the elements its devices hold
      assert result['element_reads'] == result['held_elements']  # each once
      assert result['element_reads'] < 0.75 * result['file_elements']


def _main(argv: list[str]) -> None:
  mode = argv[0]
  if mode == 'eight':
    results = run_eight_devices(argv[1])
  elif mode == 'two':
    results = run_two_processes(argv[1], int(argv[2]), argv[3])
  else:
    raise SystemExit(f'unknown mode {mode}')
  print(json.dumps(results), flush=True)


if __name__ == '__main__':
  _main(sys.argv[1:])
