"""Checkpoints are verified on restore (train/checkpointing.py, train/state_checksum.py).

The checksum: equal to a plain-numpy evaluation of its formula, changed by any flipped bit, the
same for every sharding (a subprocess with 8 CPU devices). The checkpointer: steps 10, 20, 30 are
saved, step 30 is damaged in one way (its `_METADATA` removed, a data file truncated or emptied,
64 bytes of array payload flipped, its JSON record removed); the restore warns naming step 30,
moves it under damaged/ and returns step 20 as saved; saving step 30 again and keep-N pruning
still work. All steps damaged, a changed shape, and checkpoints in the layout of before the
record are covered too.
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from rlp_jax.errors import CheckpointError
from rlp_jax.train.checkpointing import Checkpointer
from rlp_jax.train.state import create_train_state
from rlp_jax.train.state_checksum import MULTIPLIER, state_checksums
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# The checksum.


def reference_checksum(array) -> int:
  """The formula of state_checksum.py in plain numpy (uint64 products taken mod 2^32)."""
  array = np.ascontiguousarray(np.asarray(array))
  if array.dtype == np.bool_:
    words = array.astype(np.uint64).reshape(-1)
  else:
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[array.dtype.itemsize]
    words = array.reshape(-1).view(width).astype(np.uint64)  # 64-bit: low half first
  index = np.arange(words.size, dtype=np.uint64)
  multiplier = ((index * MULTIPLIER + 1) % 2**32) | 1
  return int(((words * multiplier) % 2**32).sum() % 2**32)


def sample_leaves(seed=0):
  rng = np.random.default_rng(seed)
  return {
      'bf16': jnp.asarray(rng.normal(size=(5, 7)), jnp.bfloat16),
      'f16': jnp.asarray(rng.normal(size=(6,)), jnp.float16),
      'f32': jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32),
      'i32': jnp.asarray(rng.integers(-2**31, 2**31, size=(9,)), jnp.int32),
      'u32': jnp.asarray(rng.integers(0, 2**32, size=(3, 3), dtype=np.uint64), jnp.uint32),
      'i8': jnp.asarray(rng.integers(-128, 128, size=(4, 4)), jnp.int8),
      'u8': jnp.asarray(rng.integers(0, 256, size=(10,)), jnp.uint8),
      'bool': jnp.asarray(rng.random((3, 4)) < 0.5),
      'scalar': jnp.asarray(7, jnp.int32),
      'empty': jnp.zeros((0, 3), jnp.float32),
      'nested': {'list': [jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)]},
  }


def test_checksum_equals_the_plain_numpy_formula():
  leaves = sample_leaves()
  sums = state_checksums(leaves)
  expected = {jax.tree_util.keystr(path, simple=True, separator='/'): reference_checksum(leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(leaves)}
  assert sums == expected
  assert set(sums) >= {'bf16', 'nested/list/0', 'empty'} and sums['empty'] == 0


def test_any_flipped_bit_changes_the_checksum():
  rng = np.random.default_rng(1)
  leaves = sample_leaves()
  before = state_checksums(leaves)
  for name in ('bf16', 'f16', 'f32', 'i32', 'u32', 'i8', 'u8', 'bool', 'scalar'):
    original = np.asarray(leaves[name])
    for _ in range(4):
      flipped = original.copy().reshape(-1)
      i = rng.integers(flipped.size)
      if flipped.dtype == np.bool_:
        flipped[i] = ~flipped[i]
      else:
        raw = flipped.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[flipped.dtype.itemsize])
        raw[i] ^= raw.dtype.type(1) << raw.dtype.type(rng.integers(raw.dtype.itemsize * 8))
      changed = dict(leaves, **{name: jnp.asarray(flipped.reshape(original.shape))})
      after = state_checksums(changed)
      assert after[name] != before[name], (name, i)
      assert {k: v for k, v in after.items() if k != name} == {
          k: v for k, v in before.items() if k != name}
  swapped = np.asarray(leaves['f32']).copy()
  swapped[[0, 1]] = swapped[[1, 0]]  # the same values at other positions
  assert state_checksums({'f32': jnp.asarray(swapped)})['f32'] != before['f32']


SHARDING_SCRIPT = r'''
import json
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from rlp_jax.train.state_checksum import state_checksums

assert jax.device_count() == 8, jax.devices()
rng = np.random.default_rng(0)
values = {'f32': rng.normal(size=(16, 24)).astype(np.float32),
          'bf16': rng.normal(size=(8, 32)).astype(jnp.bfloat16),
          'i8': rng.integers(-128, 128, size=(8, 4, 6)).astype(np.int8),
          'i64': rng.integers(-2**62, 2**62, size=(8, 4)),
          'f64': rng.normal(size=(8, 8))}
devices = np.array(jax.devices())
layouts = {
    'one device': lambda a: jax.device_put(a, jax.devices()[3]),
    'replicated': lambda a: jax.device_put(a, NamedSharding(Mesh(devices, ('x',)), P())),
    'rows over 8': lambda a: jax.device_put(a, NamedSharding(Mesh(devices, ('x',)), P('x'))),
    '2x4 mesh': lambda a: jax.device_put(a, NamedSharding(Mesh(devices.reshape(2, 4), ('x', 'y')),
                                                          P('x', 'y'))),
    '4x2 mesh, transposed': lambda a: jax.device_put(
        a, NamedSharding(Mesh(devices.reshape(4, 2), ('x', 'y')), P('y', 'x'))),
}
for name, place in layouts.items():
  tree = {key: place(jnp.asarray(value)) for key, value in values.items()}
  assert tree['i64'].dtype == jnp.int64 and tree['f64'].dtype == jnp.float64
  print(json.dumps({'layout': name, 'checksums': state_checksums(tree),
                    'shards': len(tree['f32'].sharding.device_set)}))
'''


@pytest.mark.subprocess
def test_checksum_is_the_same_for_every_sharding_and_matches_numpy_for_64_bit():
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='8', JAX_PLATFORMS='cpu', JAX_ENABLE_X64='1',
             TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=REPO)
  result = subprocess.run([sys.executable, '-c', SHARDING_SCRIPT], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
  assert [row['shards'] for row in rows] == [1, 8, 8, 8, 8]
  rng = np.random.default_rng(0)  # the subprocess's values, drawn in the same order
  values = {'f32': rng.normal(size=(16, 24)).astype(np.float32),
            'bf16': rng.normal(size=(8, 32)).astype(jnp.bfloat16),
            'i8': rng.integers(-128, 128, size=(8, 4, 6)).astype(np.int8),
            'i64': rng.integers(-2**62, 2**62, size=(8, 4)),
            'f64': rng.normal(size=(8, 8))}
  expected = {key: reference_checksum(value) for key, value in values.items()}
  for row in rows:
    assert row['checksums'] == expected, row['layout']


# ---------------------------------------------------------------------------------------------
# The checkpointer.


def make_state(step, kernel_shape=(64, 64)):
  """A small TrainState whose values differ per step; the kernel is the largest array."""
  rng = np.random.default_rng(step)
  params = {'embed': jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
            'layer': {'kernel': jnp.asarray(rng.normal(size=kernel_shape), jnp.float32),
                      'scale': jnp.asarray(rng.normal(size=(8,)), jnp.bfloat16)}}
  state = create_train_state(params, optax.adam(1e-3), seed=step)
  return state.replace(step=jnp.asarray(step, jnp.int32),
                       data_position=jnp.asarray(step * 2, jnp.int32))


def abstract(state):
  return jax.eval_shape(lambda: state)


def assert_states_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def save_steps(directory, steps=(10, 20, 30), keep=3):
  states = {step: make_state(step) for step in steps}
  checkpointer = Checkpointer(directory, every=10, keep=keep)
  for step, state in states.items():
    assert checkpointer.maybe_save(step, state, record={'run': 'r1', 'step': step})
  checkpointer.close()
  return states


def payload_file(step_dir):
  """The largest array data file of the step (ocdbt keeps the arrays' bytes under d/)."""
  files = glob.glob(os.path.join(step_dir, 'default', 'ocdbt.process_*', 'd', '*'))
  assert files, os.listdir(os.path.join(step_dir, 'default'))
  return max(files, key=os.path.getsize)


def flip_bytes(path, count=64):
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  start = len(data) // 2
  for i in range(start, start + count):
    data[i] ^= 0xFF
  with open(path, 'wb') as f:
    f.write(bytes(data))


def damage(step_dir, how):
  if how == 'metadata_removed':
    os.remove(os.path.join(step_dir, 'default', '_METADATA'))
  elif how == 'data_file_truncated':
    path = payload_file(step_dir)
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)
  elif how == 'data_file_emptied':
    open(payload_file(step_dir), 'wb').close()
  elif how == '64_bytes_flipped':
    flip_bytes(payload_file(step_dir))
  elif how == 'record_removed':
    os.remove(os.path.join(step_dir, 'record', 'metadata'))
  elif how == 'record_item_removed':
    shutil.rmtree(os.path.join(step_dir, 'record'))
  else:
    raise ValueError(how)


DAMAGES = ['metadata_removed', 'data_file_truncated', 'data_file_emptied', '64_bytes_flipped',
           'record_removed', 'record_item_removed']


@pytest.mark.parametrize('how', DAMAGES)
def test_a_damaged_latest_step_falls_back_to_the_newest_intact_one(tmp_path, capsys, how):
  directory = str(tmp_path / 'checkpoints')
  states = save_steps(directory)
  damage(os.path.join(directory, '30'), how)
  capsys.readouterr()

  checkpointer = Checkpointer(directory, every=10, keep=3)
  state, step, record = checkpointer.restore_latest(abstract(states[30]))
  out = capsys.readouterr().out
  assert step == 20 and record == {'run': 'r1', 'step': 20}
  assert_states_equal(state, states[20])
  warnings = [line for line in out.splitlines() if 'damaged' in line]
  assert len(warnings) == 1, out
  assert warnings[0].startswith('[rlp_jax] warning: checkpoint step 30 is damaged (')
  assert f'moved it to {os.path.join(directory, "damaged", "30")}' in warnings[0]
  assert warnings[0].endswith('falling back to step 20')
  if how == '64_bytes_flipped':
    assert 'checksum of ' in warnings[0]
  assert os.path.isdir(os.path.join(directory, 'damaged', '30'))
  assert not os.path.exists(os.path.join(directory, '30'))
  assert checkpointer.all_steps() == [10, 20]

  # Step 30 can be saved again, and keep-N pruning counts only the live steps.
  assert checkpointer.maybe_save(30, states[30], record={'run': 'r1', 'step': 30})
  assert checkpointer.maybe_save(40, make_state(40))
  checkpointer.close()
  assert sorted(int(name) for name in os.listdir(directory) if name.isdigit()) == [20, 30, 40]
  reopened = Checkpointer(directory, every=10, keep=3)
  state, step, record = reopened.restore_latest(abstract(states[30]))
  assert step == 40 and record is None
  assert_states_equal(state, make_state(40))
  assert_states_equal(reopened.restore(abstract(states[30]), 30), states[30])
  reopened.close()
  assert os.path.isdir(os.path.join(directory, 'damaged', '30'))


def test_flipped_payload_bytes_pass_orbax_and_are_caught_by_the_checksum(tmp_path, capsys):
  """The flipped bytes are array payload that orbax reads without complaint (so they are the
  checksum's catch, not orbax's): a plain orbax restore of the damaged step succeeds with other
  values than were saved."""
  directory = str(tmp_path / 'checkpoints')
  states = save_steps(directory)
  flip_bytes(payload_file(os.path.join(directory, '30')))
  manager = ocp.CheckpointManager(directory)
  try:
    unverified = manager.restore(30, args=ocp.args.StandardRestore(
        jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract(states[30]))))
  finally:
    manager.close()
  changed = [name for name, a, b in zip(
      state_checksums(states[30]), jax.tree.leaves(unverified), jax.tree.leaves(states[30]))
             if not np.array_equal(np.asarray(a), np.asarray(b))]
  assert changed, 'the flipped bytes did not reach the array values'
  capsys.readouterr()

  _, step, _ = Checkpointer(directory, every=10, keep=3).restore_latest(abstract(states[30]))
  out = capsys.readouterr().out
  assert step == 20
  assert f'checkpoint step 30 is damaged (checksum of {changed[0]} differs)' in out


def test_all_steps_damaged_is_one_line_naming_them(tmp_path, capsys):
  directory = str(tmp_path / 'checkpoints')
  states = save_steps(directory)
  damage(os.path.join(directory, '30'), '64_bytes_flipped')
  damage(os.path.join(directory, '20'), 'data_file_truncated')
  damage(os.path.join(directory, '10'), 'metadata_removed')
  checkpointer = Checkpointer(directory, every=10, keep=3)
  with pytest.raises(CheckpointError) as raised:
    checkpointer.restore_latest(abstract(states[30]))
  message = str(raised.value)
  assert '\n' not in message
  assert 'no intact checkpoint' in message and 'steps 30, 20, 10 are damaged' in message
  assert 'step 30: checksum of ' in message and 'step 10: cannot read its metadata' in message
  # Nothing is moved when there is nothing to fall back to (the error may not be the files').
  assert 'damaged' not in capsys.readouterr().out
  assert not os.path.exists(os.path.join(directory, 'damaged'))
  assert checkpointer.all_steps() == [10, 20, 30]


def test_two_damaged_steps_are_both_moved_and_named(tmp_path, capsys):
  directory = str(tmp_path / 'checkpoints')
  states = save_steps(directory)
  damage(os.path.join(directory, '30'), 'record_removed')
  damage(os.path.join(directory, '20'), '64_bytes_flipped')
  capsys.readouterr()
  checkpointer = Checkpointer(directory, every=10, keep=3)
  state, step, record = checkpointer.restore_latest(abstract(states[30]))
  assert step == 10 and record == {'run': 'r1', 'step': 10}
  assert_states_equal(state, states[10])
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2
  assert 'step 30 is damaged' in lines[0] and lines[0].endswith('falling back to step 20')
  assert 'step 20 is damaged (checksum of' in lines[1]
  assert lines[1].endswith('falling back to step 10')
  assert sorted(os.listdir(os.path.join(directory, 'damaged'))) == ['20', '30']
  assert checkpointer.all_steps() == [10]


def test_a_changed_shape_is_an_error_naming_the_leaf_and_the_checkpoint_stays(tmp_path, capsys):
  directory = str(tmp_path / 'checkpoints')
  save_steps(directory)
  before = sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, _, names in os.walk(directory) for name in names)
  capsys.readouterr()
  checkpointer = Checkpointer(directory, every=10, keep=3)
  with pytest.raises(CheckpointError) as raised:
    checkpointer.restore_latest(abstract(make_state(0, kernel_shape=(64, 96))))
  message = str(raised.value)
  assert '\n' not in message
  assert 'checkpoint step 30' in message and 'params/layer/kernel' in message
  assert '(64, 64) float32' in message and '(64, 96) float32' in message
  assert 'model shape changed' in message
  assert 'damaged' not in capsys.readouterr().out
  after = sorted(os.path.relpath(os.path.join(root, name), directory)
                 for root, _, names in os.walk(directory) for name in names)
  assert after == before and checkpointer.all_steps() == [10, 20, 30]


def test_a_checkpoint_of_the_old_layout_restores_unverified_with_a_warning(tmp_path, capsys):
  """Written as before the record existed (StandardSave as the only item), here also without the
  `nonfinite_steps` count: it restores with a warning, record None and the count 0."""
  directory = str(tmp_path / 'checkpoints')
  state = make_state(20)
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True))
  manager.save(20, args=ocp.args.StandardSave(state.replace(nonfinite_steps=None)), force=True)
  manager.wait_until_finished()
  manager.close()
  capsys.readouterr()
  checkpointer = Checkpointer(directory, every=10, keep=3)
  restored, step, record = checkpointer.restore_latest(abstract(state))
  out = capsys.readouterr().out
  assert step == 20 and record is None
  assert_states_equal(restored, state)
  assert int(restored.nonfinite_steps) == 0
  assert ('[rlp_jax] warning: checkpoint step 20 was written without checksums (by an older '
          'rlp_jax); restored it unverified') in out
  # New saves go next to it in the new layout.
  assert checkpointer.maybe_save(30, make_state(30), record={'run': 'r2'})
  checkpointer.close()
  _, step, record = Checkpointer(directory, every=10, keep=3).restore_latest(abstract(state))
  assert step == 30 and record == {'run': 'r2'}


def test_no_checkpoint_restores_none_and_save_keeps_its_rules(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  checkpointer = Checkpointer(directory, every=10, keep=2)
  state = make_state(10)
  assert checkpointer.restore_latest(abstract(state)) is None
  assert not checkpointer.maybe_save(5, state)  # not a multiple of `every`
  assert checkpointer.maybe_save(5, state, force=True)
  assert not checkpointer.maybe_save(5, state, force=True)  # already there
  with pytest.raises(TypeError, match='not JSON-serialisable'):
    checkpointer.maybe_save(10, state, record={'bad': object()})
  assert checkpointer.maybe_save(10, state, record={'config': {'lr': 1e-3}, 'tokens': [1, 2]})
  assert checkpointer.maybe_save(20, state)
  checkpointer.close()
  assert sorted(name for name in os.listdir(directory)) == ['10', '20']
  # A plain orbax reader (rlp_jax.eval, model.init_from, older tools) still finds the state.
  manager = ocp.CheckpointManager(directory)
  try:
    plain = manager.restore(10, args=ocp.args.StandardRestore())
  finally:
    manager.close()
  np.testing.assert_array_equal(np.asarray(plain['params']['layer']['kernel']),
                                np.asarray(state.params['layer']['kernel']))
  _, step, record = Checkpointer(directory, every=10, keep=2).restore_latest(abstract(state))
  assert step == 20 and record is None


def test_the_temp_directory_of_a_killed_save_is_removed_at_the_next_start(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  save_steps(directory, steps=(10,))
  leftover = os.path.join(directory, '20.orbax-checkpoint-tmp-1700000000000000')
  os.makedirs(os.path.join(leftover, 'default'))
  with open(os.path.join(leftover, 'default', 'partial'), 'wb') as f:
    f.write(b'x' * 100)
  checkpointer = Checkpointer(directory, every=10, keep=3)
  assert not os.path.exists(leftover)
  assert checkpointer.all_steps() == [10]
  checkpointer.close()


def test_check_record_sees_the_record_before_the_arrays_and_may_refuse(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  states = save_steps(directory)
  damage(os.path.join(directory, '30'), 'data_file_truncated')
  seen = []
  checkpointer = Checkpointer(directory, every=10, keep=3)
  _, step, _ = checkpointer.restore_latest(abstract(states[30]),
                                           check_record=lambda record, s: seen.append((s, record)))
  assert step == 20
  assert seen == [(30, {'run': 'r1', 'step': 30}), (20, {'run': 'r1', 'step': 20})]

  class Refused(Exception):
    pass

  def refuse(record, step):
    raise Refused(f'run changed at {step}: {record}')

  with pytest.raises(Refused, match='run changed at 20'):
    checkpointer.restore_latest(abstract(make_state(0, kernel_shape=(64, 96))), check_record=refuse)
  assert checkpointer.all_steps() == [10, 20]  # refused, not damaged: nothing moved


TWO_PROCESS_SCRIPT = r'''
import glob, json, os, sys
import jax
jax.distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.experimental import multihost_utils
from rlp_jax.train.checkpointing import Checkpointer
from rlp_jax.train.state import create_train_state

directory, how = sys.argv[3], sys.argv[4]
mesh = Mesh(np.array(jax.devices()).reshape(4), ('fsdp',))
sharded, replicated = NamedSharding(mesh, P('fsdp')), NamedSharding(mesh, P())

def make_state(step):
  values = np.random.default_rng(step).normal(size=(64, 32)).astype(np.float32)
  kernel = jax.make_array_from_callback(values.shape, sharded, lambda index: values[index])
  state = create_train_state({'kernel': kernel}, optax.adam(1e-3), seed=step)
  return jax.device_put(state.replace(step=jnp.asarray(step, jnp.int32)),
                        jax.tree.map(lambda x: sharded if x.ndim == 2 else replicated, state))

checkpointer = Checkpointer(directory, every=10, keep=3)
for step in (10, 20):
  checkpointer.maybe_save(step, make_state(step), record={'step': step})
checkpointer.close()
multihost_utils.sync_global_devices('saved')
if jax.process_index() == 0:  # damage what process 1 wrote (and only process 1 reads back)
  files = glob.glob(os.path.join(directory, '20', 'default', 'ocdbt.process_1', 'd', '*'))
  path = max(files, key=os.path.getsize)
  data = bytearray(open(path, 'rb').read())
  if how == 'truncated':
    data = data[:len(data) // 2]
  else:
    for i in range(len(data) // 2, len(data) // 2 + 64):
      data[i] ^= 0xFF
  open(path, 'wb').write(bytes(data))
multihost_utils.sync_global_devices('damaged')
checkpointer = Checkpointer(directory, every=10, keep=3)
state, step, record = checkpointer.restore_latest(jax.eval_shape(lambda: make_state(0)))
expected = make_state(10)
same = all(np.array_equal(np.asarray(a.addressable_data(0)), np.asarray(b.addressable_data(0)))
           for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected)))
print(json.dumps({'process': jax.process_index(), 'step': step, 'record': record, 'same': same,
                  'steps': checkpointer.all_steps(),
                  'damaged': sorted(os.listdir(os.path.join(directory, 'damaged')))}), flush=True)
checkpointer.close()
'''


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize('how', ['truncated', 'flipped'])
def test_two_processes_agree_when_only_one_reads_the_damage(tmp_path, how):
  """Process 1's shard file of step 20 is damaged: truncated, only process 1's read fails (the
  processes gather their outcomes); flipped, process 1's read fails or the global checksum
  differs on both. Both fall back to step 10, process 0 moves step 20 aside and warns once."""
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='2', JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=REPO)
  directory = str(tmp_path / 'checkpoints')
  processes = [subprocess.Popen(
      [sys.executable, '-c', TWO_PROCESS_SCRIPT, f'localhost:{port}', str(i), directory, how],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
               for i in range(2)]
  outputs = helpers.wait_for_processes(processes, timeout=240)
  rows = [json.loads(line) for output in outputs for line in output.splitlines()
          if line.startswith('{')]
  assert [row['process'] for row in rows] == [0, 1]
  for row in rows:
    assert row == dict(row, step=10, record={'step': 10}, same=True, steps=[10], damaged=['20'])
  warnings = [line for line in outputs[0].splitlines() if 'is damaged' in line]
  assert len(warnings) == 1 and 'checkpoint step 20 is damaged' in warnings[0]
  # Truncated: only process 1's read fails. Flipped: whether zstd notices the flipped bytes
  # depends on the compressed stream (the values' low bits differ between CPU code paths, e.g.
  # --xla_cpu_max_isa=SSE4_2), so either process 1's read fails or the global checksum differs;
  # that the checksum alone catches a flip orbax reads back is
  # test_flipped_payload_bytes_pass_orbax_and_are_caught_by_the_checksum.
  detectors = ['on process 1: reading it failed']
  if how == 'flipped':
    detectors.append('checksum of params/kernel differs')
  assert any(detector in warnings[0] for detector in detectors), warnings[0]
  assert not any('is damaged' in line for line in outputs[1].splitlines())
