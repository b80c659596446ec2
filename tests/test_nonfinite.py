"""Non-finite steps are skipped inside the jitted step and stop the run after
`train.max_nonfinite_steps` in a row; non-finite config values are rejected; metrics.jsonl is
repaired by writing a new file and renaming it."""
import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from rlp_jax.config import base_config, validate_config
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.errors import ConfigError, DataError, NonFiniteError
from rlp_jax.models import registry
from rlp_jax.train import metrics_writer
from rlp_jax.train.checkpointing import Checkpointer
from rlp_jax.train.loop import train
from rlp_jax.train.metrics_writer import MetricsWriter, read_metrics
from rlp_jax.train.ntp_step import make_ntp_step
from rlp_jax.train.optimizer import make_optimizer
from rlp_jax.train.rlp_step import make_rlp_step
from rlp_jax.train.state import create_train_state
from tests import helpers

SPECIAL = SpecialTokens(think_start_id=helpers.THINK_START, think_end_id=helpers.THINK_END,
                        pad_id=helpers.PAD)


def _optimizer(learning_rate: float = 1e-2):
  opt = base_config().optimizer
  opt.learning_rate = learning_rate  # NaN / inf here bypass validation on purpose
  opt.warmup_steps = 0
  return make_optimizer(opt, num_steps=10)


def _host(tree):
  """A host copy (the step donates its input state)."""
  return jax.tree.map(np.array, jax.device_get(tree))


def _assert_bitwise_equal(actual, expected):
  leaves_a, tree_a = jax.tree.flatten(_host(actual))
  leaves_e, tree_e = jax.tree.flatten(expected)
  assert tree_a == tree_e
  for a, e in zip(leaves_a, leaves_e):
    assert a.dtype == e.dtype and a.tobytes() == e.tobytes()


def _poison(params):
  """θ with one NaN in its first leaf."""
  leaves, tree = jax.tree.flatten(params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
  return jax.tree.unflatten(tree, leaves)


def _assert_skipped(before, after, metrics, count, steps=None):
  for field in ('params', 'opt_state', 'teacher_params'):
    _assert_bitwise_equal(getattr(after, field), getattr(before, field))
  assert float(metrics['nonfinite_step']) == 1.0
  assert int(after.nonfinite_steps) == count == float(metrics['nonfinite_steps'])
  assert int(after.step) == int(before.step) + (count if steps is None else steps)


def _ntp_setup(learning_rate=1e-2):
  graphdef, params = registry.init_params(helpers.rollout_model_config(), seed=0)
  tx, schedule = _optimizer(learning_rate)
  step = make_ntp_step(graphdef, tx, schedule)
  return step, create_train_state(params, tx, seed=0)


@pytest.mark.parametrize('where', ['params', pytest.param('learning_rate', marks=pytest.mark.slow)])
def test_next_token_step_skips_a_nan_and_counts_it(where):
  step, state = _ntp_setup(math.nan if where == 'learning_rate' else 1e-2)
  if where == 'params':
    state = state.replace(params=_poison(state.params))
  batch = helpers.rollout_documents([12, 9, 4])
  before = _host(state)
  state, metrics = step(state, batch)
  _assert_skipped(before, state, metrics, count=1)
  state, metrics = step(state, batch)  # still non-finite: skipped again, counted again
  _assert_skipped(before, state, metrics, count=2)


def test_next_token_step_applies_a_finite_update():
  step, state = _ntp_setup()
  before = _host(state)
  state, metrics = step(state, helpers.rollout_documents([12, 9, 4]))
  assert float(metrics['nonfinite_step']) == 0.0 and int(state.nonfinite_steps) == 0
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(_host(state.params)),
                                                     jax.tree.leaves(before.params))]
  assert all(moved)


@pytest.mark.slow
def test_rlp_update_skips_a_nan_keeping_theta_phi_and_the_optimizer_state():
  """NaN in the rollout, in θ and in the learning rate (a hyperparameter in the optimizer state,
  so that one compiled update serves all three) each skip the update."""
  model = helpers.rollout_model_config()
  rlp = helpers.rollout_rlp_config(prefix_mode='naive', kl_weight=0.1)
  graphdef, params = registry.init_params(model, seed=0)
  tx = optax.inject_hyperparams(optax.adamw)(learning_rate=1e-2)
  rollout, update = make_rlp_step(graphdef, model, rlp, SPECIAL, tx, lambda count: 1e-2)
  state = create_train_state(params, tx, seed=0, with_teacher=True)
  batch = helpers.rollout_documents([12, 9, 4])
  skipped = 0
  for where in ('rollout', 'params', 'learning_rate', None):
    state, rollout_data = rollout(state, batch)
    start = jax.tree.map(jnp.copy, (state.params, state.opt_state))  # kept types: no recompile
    if where == 'rollout':
      rollout_data = dataclasses.replace(
          rollout_data, old_log_probs=jnp.full_like(rollout_data.old_log_probs, jnp.nan))
    elif where == 'params':
      state = state.replace(params=_poison(state.params))
    elif where == 'learning_rate':
      hyperparams = dict(state.opt_state.hyperparams, learning_rate=jnp.full_like(
          state.opt_state.hyperparams['learning_rate'], jnp.inf))
      state = state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))
    before = _host(state)
    state, metrics = update(state, batch, rollout_data)
    if where is None:  # a finite update moves θ and φ
      assert float(metrics['nonfinite_step']) == 0.0 and int(state.nonfinite_steps) == skipped
      for field in ('params', 'teacher_params'):
        assert all(not np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(_host(getattr(state, field))), jax.tree.leaves(getattr(before, field))))
      continue
    skipped += 1
    _assert_skipped(before, state, metrics, count=skipped, steps=1)
    state = state.replace(params=start[0], opt_state=start[1])  # undo the injection
  assert update._cache_size() == 1  # pylint: disable=protected-access


def _nan_updates_after(finite_updates: int) -> optax.GradientTransformation:
  """Multiplies the updates by NaN from its `finite_updates`-th call on; its count lives in the
  optimizer state, which a skipped step keeps, so once there every later update is NaN too."""

  def init(params):
    del params
    return jnp.zeros((), jnp.int32)

  def update(updates, count, params=None):
    del params
    scale = jnp.where(count >= finite_updates, jnp.nan, 1.0)
    return jax.tree.map(lambda u: u * scale, updates), count + 1

  return optax.GradientTransformation(init, update)


def _checkpoint(workdir, step):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  try:
    return manager.restore(step, args=ocp.args.StandardRestore())
  finally:
    manager.close()


@pytest.mark.slow
def test_the_run_stops_after_max_nonfinite_steps_with_the_last_finite_checkpoint(
    small_config, tmp_path, monkeypatch):
  import rlp_jax.train.loop as loop  # pylint: disable=import-outside-toplevel
  original = loop.make_optimizer

  def diverging(opt, num_steps):
    tx, schedule = original(opt, num_steps)
    return optax.chain(tx, _nan_updates_after(3)), schedule

  monkeypatch.setattr(loop, 'make_optimizer', diverging)
  small_config.rlp.enabled = False
  small_config.train.num_steps = 20
  small_config.train.checkpoint_every = 2
  small_config.train.max_nonfinite_steps = 3
  workdir = str(tmp_path)
  with pytest.raises(NonFiniteError) as raised:
    train(small_config, workdir)
  message = str(raised.value)
  assert '\n' not in message and '`train.max_nonfinite_steps`' in message
  assert 'stopped at step 6' in message
  # Steps 4, 5, 6 were skipped: the run stopped at 6 and saved the state of step 3 there.
  steps = sorted(int(name) for name in os.listdir(os.path.join(workdir, 'checkpoints')))
  assert steps[-1] == 6
  latest, at_4 = _checkpoint(workdir, 6), _checkpoint(workdir, 4)
  for leaf in jax.tree.leaves(latest['params']) + jax.tree.leaves(latest['opt_state']):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  _assert_bitwise_equal(latest['params'], _host(at_4['params']))
  assert int(latest['nonfinite_steps']) == 3 and int(latest['step']) == 6
  rows = read_metrics(workdir)
  assert [row['step'] for row in rows] == [1, 2, 3, 4, 5, 6]
  assert [row['nonfinite_step'] for row in rows] == [0, 0, 0, 1, 1, 1]
  assert [row['nonfinite_steps'] for row in rows] == [0, 0, 0, 1, 2, 3]


@pytest.mark.parametrize('name, value', [('optimizer.learning_rate', math.inf),
                                         ('optimizer.learning_rate', math.nan),
                                         ('optimizer.b1', math.nan),
                                         ('rlp.kl_weight', math.inf),
                                         ('model.mamba_dt_limit_max', -math.inf),
                                         ('model.mamba_dt_limit_max', math.nan)])
def test_non_finite_config_values_are_rejected_naming_the_key(name, value):
  config = base_config()
  section, leaf = name.split('.')
  config[section][leaf] = value
  with pytest.raises(ConfigError) as raised:
    validate_config(config)
  message = str(raised.value)
  assert f'`{name}`' in message and 'finite' in message and '\n' not in message


def test_infinity_where_declared_as_no_limit_is_accepted():
  config = base_config()
  config.model.mamba_dt_limit_max = math.inf
  validate_config(config)


# metrics.jsonl ------------------------------------------------------------------------------


def _write_rows(path, steps, tail=''):
  with open(path, 'w', encoding='utf-8') as f:
    for step in steps:
      f.write(json.dumps({'step': step, 'loss': float(step)}) + '\n')
    f.write(tail)


def test_resume_drops_a_torn_last_line_and_the_rows_after_the_restored_step(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  _write_rows(path, range(1, 7), tail='{"step": 7, "lo')  # cut off by a power failure
  inode = os.stat(path).st_ino
  writer = MetricsWriter(str(tmp_path), resume_step=4)
  assert os.stat(path).st_ino != inode  # a new file renamed over the old one
  assert [row['step'] for row in read_metrics(str(tmp_path))] == [1, 2, 3, 4]
  writer.write(5, {'loss': 5.5})
  writer.close()
  assert [row['step'] for row in read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5]
  assert not [name for name in os.listdir(tmp_path) if name.endswith('.tmp')]


def test_a_torn_last_line_after_the_restored_step_and_without_newline(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  _write_rows(path, [1, 2], tail='{"step": 3, "loss": 3.0}')  # whole row, newline lost
  MetricsWriter(str(tmp_path), resume_step=3).close()
  with open(path, encoding='utf-8') as f:
    assert f.read().count('\n') == 3
  assert [row['step'] for row in read_metrics(str(tmp_path))] == [1, 2, 3]


def test_the_live_file_is_never_opened_for_writing(tmp_path, monkeypatch):
  path = str(tmp_path / 'metrics.jsonl')
  _write_rows(path, range(1, 6))
  opened = []
  real_open = open

  def recording_open(file, mode='r', *args, **kwargs):
    opened.append((os.path.abspath(str(file)), mode))
    return real_open(file, mode, *args, **kwargs)

  monkeypatch.setattr('builtins.open', recording_open)
  MetricsWriter(str(tmp_path), resume_step=3).close()
  monkeypatch.undo()
  assert not [mode for file, mode in opened if file == path and ('w' in mode or '+' in mode)]
  assert [row['step'] for row in read_metrics(str(tmp_path))] == [1, 2, 3]


def test_a_failed_repair_leaves_the_old_file_whole(tmp_path, monkeypatch):
  path = tmp_path / 'metrics.jsonl'
  _write_rows(path, range(1, 6))
  original = path.read_bytes()

  def failing_fsync(fd):
    raise OSError('disk full')

  monkeypatch.setattr(metrics_writer.os, 'fsync', failing_fsync)
  with pytest.raises(OSError, match='disk full'):
    MetricsWriter(str(tmp_path), resume_step=2)
  assert path.read_bytes() == original
  assert os.listdir(tmp_path) == ['metrics.jsonl']


def test_a_damaged_line_before_the_last_is_one_line_naming_the_file(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  _write_rows(path, [1], tail='{"step": 2, "lo\n' + json.dumps({'step': 3}) + '\n')
  with pytest.raises(DataError) as raised:
    MetricsWriter(str(tmp_path), resume_step=3)
  assert 'metrics.jsonl: line 2' in str(raised.value) and '\n' not in str(raised.value)


def test_non_finite_values_are_written_as_json_null(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(1, {'ntp_loss': float('nan'), 'grad_norm': float('inf'), 'nonfinite_step': 1.0})
  writer.close()
  with open(tmp_path / 'metrics.jsonl', encoding='utf-8') as f:
    line = f.read()
  row = json.loads(line, parse_constant=lambda name: pytest.fail(f'not strict JSON: {name}'))
  assert row == {'step': 1, 'ntp_loss': None, 'grad_norm': None, 'nonfinite_step': 1.0}


def test_a_checkpoint_from_before_the_nonfinite_count_resumes_with_count_zero(tmp_path):
  """A state saved without `nonfinite_steps` (checkpoints written before the count existed)
  restores into today's state with the count 0 and everything else as saved."""
  params = {'w': jnp.arange(6.0).reshape(2, 3)}
  state = create_train_state(params, optax.adam(1e-3), seed=0, with_teacher=True)
  old = state.replace(nonfinite_steps=None, step=jnp.asarray(5, jnp.int32),
                      params={'w': params['w'] + 1.0})
  checkpointer = Checkpointer(str(tmp_path), every=1, keep=3)
  checkpointer.maybe_save(5, old)
  checkpointer.close()
  restored = Checkpointer(str(tmp_path), every=1, keep=3).restore(jax.eval_shape(lambda: state))
  assert int(restored.step) == 5 and int(restored.nonfinite_steps) == 0
  np.testing.assert_array_equal(np.asarray(restored.params['w']), np.asarray(old.params['w']))
