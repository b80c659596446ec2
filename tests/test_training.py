"""Next-token training: the loss falls, the step compiles once, and resuming is exact."""
import json
import os
import shutil

import numpy as np
import pytest

from rlp_jax.train.loop import train
from rlp_jax.train.metrics_writer import read_metrics
from tests import helpers


RLP_METRICS = (
    'reward_mean', 'reward_std', 'reward_positive_fraction', 's_pred_mean', 's_ema_mean',
    'thought_length_mean', 'thought_hit_limit_fraction', 'clip_fraction', 'approx_kl',
    'ntp_loss', 'policy_loss', 'kl_to_teacher', 'total_loss', 'grad_norm', 'learning_rate',
    'rollout_tokens_per_s', 'update_tokens_per_s', 'skipped_positions')


def losses(workdir):
  """Per step: the next-token loss, the policy loss and the reward (which depends on φ)."""
  return [(row['step'], row['ntp_loss'], row['policy_loss'], row['reward_mean'])
          for row in read_metrics(workdir)]


@pytest.mark.slow
def test_short_tiny_run_lowers_the_loss(small_config, tmp_path):
  small_config.train.num_steps = 40
  small_config.train.checkpoint_every = 40
  result = train(small_config, str(tmp_path))
  rows = read_metrics(str(tmp_path))
  assert [r['step'] for r in rows] == list(range(1, 41))
  values = np.array([r['ntp_loss'] for r in rows])
  assert np.all(np.isfinite(values))
  assert values[-5:].mean() < values[:5].mean() - 1.0, values
  for row in rows:  # every per-step metric (docs/objective.md, Metrics), every step, finite
    for name in RLP_METRICS:
      assert name in row and np.isfinite(row[name]), (row['step'], name)
  rewards = np.array([r['reward_mean'] for r in rows])
  assert np.any(rewards != 0.0)
  assert all(0.0 <= r['thought_hit_limit_fraction'] <= 1.0 for r in rows)
  assert int(result.state.step) == 40 and int(result.state.data_position) == 40
  assert os.listdir(result.tensorboard_dir), 'no TensorBoard event file written'
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(result.tensorboard_dir))
  assert os.path.isdir(os.path.join(result.checkpoint_dir, '40'))
  with open(os.path.join(str(tmp_path), 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['train']['num_steps'] == 40


@pytest.mark.slow
def test_interrupted_then_resumed_run_reproduces_the_loss_sequence(small_config, tmp_path):
  uninterrupted = str(tmp_path / 'uninterrupted')
  train(small_config, uninterrupted)
  expected = losses(uninterrupted)
  assert [row[0] for row in expected] == list(range(1, 9))

  resumed = str(tmp_path / 'resumed')
  first = train(small_config, resumed, stop_at_step=5)
  assert int(first.state.step) == 5
  assert losses(resumed) == expected[:5]
  second = train(small_config, resumed)
  assert second.first_step == 5
  assert int(second.state.data_position) == 8
  assert losses(resumed) == expected  # bit-exact, each step once


@pytest.mark.slow
def test_crash_after_checkpoint_replays_from_the_last_checkpoint(small_config, tmp_path):
  reference = str(tmp_path / 'reference')
  train(small_config, reference)
  expected = losses(reference)

  crashed = str(tmp_path / 'crashed')
  train(small_config, crashed, stop_at_step=6)  # checkpoints at 4 and 6, metrics to 6
  shutil.rmtree(os.path.join(crashed, 'checkpoints', '6'))  # as if killed before saving step 6
  result = train(small_config, crashed)
  assert result.first_step == 4
  assert losses(crashed) == expected


def _record_compiled(monkeypatch, name):
  import rlp_jax.train.loop as loop  # pylint: disable=import-outside-toplevel
  made = []
  original = getattr(loop, name)

  def recording(*args, **kwargs):
    result = original(*args, **kwargs)
    made.append(result)
    return result

  monkeypatch.setattr(loop, name, recording)
  return made


@pytest.mark.slow
def test_rlp_rollout_and_update_compile_once(small_config, tmp_path, monkeypatch):
  made = _record_compiled(monkeypatch, 'make_rlp_step')
  small_config.train.num_steps = 5
  small_config.rlp.updates_per_rollout = 2
  result = train(small_config, str(tmp_path))
  assert len(made) == 1
  rollout_fn, update_fn = made[0]
  assert rollout_fn._cache_size() == 1  # pylint: disable=protected-access
  assert update_fn._cache_size() == 1  # pylint: disable=protected-access
  assert int(result.state.step) == 10 and int(result.state.data_position) == 5
  rows = read_metrics(str(tmp_path))
  # The second update of each rollout sees θ ≠ θ_old: the ratio moves away from 1.
  assert all(row['approx_kl'] > 0 and row['ratio_max'] > 1.0 for row in rows)


@pytest.mark.slow
def test_resume_counts_loop_steps_when_a_rollout_has_several_updates(small_config, tmp_path):
  """Checkpoints are named by loop step (batches); with 2 updates per rollout `state.step` is
  twice that, and a resume must continue at the checkpoint's loop step, not at `state.step`."""
  small_config.rlp.updates_per_rollout = 2
  small_config.train.checkpoint_every = 1
  small_config.train.num_steps = 1
  train(small_config, str(tmp_path))
  small_config.train.num_steps = 2
  result = train(small_config, str(tmp_path))
  assert result.first_step == 1
  assert int(result.state.step) == 4 and int(result.state.data_position) == 2
  assert [row['step'] for row in read_metrics(str(tmp_path))] == [1, 2]


@pytest.mark.slow
def test_a_short_run_of_the_shipped_tiny_config(shared_data_dir, tmp_path):
  config = helpers.load_config('tiny')
  config.data.data_dir = shared_data_dir
  config.data.num_documents = 600  # a smaller corpus; model and objective as shipped
  config.train.num_steps = 3
  config.train.progress_bar = False
  train(config, str(tmp_path))
  rows = read_metrics(str(tmp_path))
  assert [row['step'] for row in rows] == [1, 2, 3]
  for row in rows:
    for name in RLP_METRICS:
      assert np.isfinite(row[name]), (row['step'], name)


def test_next_token_step_compiles_once(small_config, tmp_path, monkeypatch):
  made = _record_compiled(monkeypatch, 'make_ntp_step')
  small_config.rlp.enabled = False
  small_config.train.num_steps = 6
  result = train(small_config, str(tmp_path))
  assert len(made) == 1
  assert made[0]._cache_size() == 1  # pylint: disable=protected-access
  assert result.state.teacher_params is None
  assert int(result.state.data_position) == 6


@pytest.mark.slow
def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_resumes(small_config, tmp_path,
                                                                     monkeypatch):
  from rlp_jax.train.stop_request import RunStopped  # pylint: disable=import-outside-toplevel
  small_config.train.num_steps = 5
  reference = str(tmp_path / 'reference')
  train(small_config, reference)
  # As if the user pressed Ctrl-C once step 2 had been logged (train/signal_points.py).
  monkeypatch.setenv('RLP_JAX_SIGNAL_AT', 'after_save_check@2:SIGINT')
  interrupted = str(tmp_path / 'interrupted')
  with pytest.raises(RunStopped, match='stopped by SIGINT at step 2: checkpoint 2 saved') as stop:
    train(small_config, interrupted)
  assert stop.value.exit_status == 130
  assert sorted(os.listdir(os.path.join(interrupted, 'checkpoints'))) == ['2']
  monkeypatch.delenv('RLP_JAX_SIGNAL_AT')
  assert train(small_config, interrupted).first_step == 2
  assert losses(interrupted) == losses(reference)


HYBRID_MODEL = dict(family='hybrid', layer_pattern='M*-M', num_layers=4, mamba_num_heads=4,
                    mamba_head_dim=16, ssm_state_size=16, mamba_n_groups=2, mamba_conv_kernel=4,
                    mamba_chunk_size=16)


@pytest.mark.parametrize('family', ['dense', 'hybrid'])
@pytest.mark.slow
def test_shared_prefix_mode_trains_like_the_naive_mode(small_config, tmp_path, family):
  if family == 'hybrid':
    small_config.model.update(HYBRID_MODEL)
  small_config.train.num_steps = 3
  rows = {}
  for mode in ('naive', 'shared'):
    small_config.rlp.prefix_mode = mode
    train(small_config, str(tmp_path / mode))
    rows[mode] = read_metrics(str(tmp_path / mode))
  for naive, shared in zip(rows['naive'], rows['shared']):
    for name in ('ntp_loss', 'reward_mean', 's_pred_mean', 'thought_length_mean', 'total_loss'):
      np.testing.assert_allclose(shared[name], naive[name], rtol=1e-4, atol=1e-5, err_msg=name)
