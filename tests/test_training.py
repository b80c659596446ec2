"""Next-token training: the loss falls, the step compiles once, and resuming is exact."""
import json
import os
import shutil

import numpy as np

from rlp_jax.train.loop import train
from rlp_jax.train.metrics_writer import read_metrics


def losses(workdir):
  return [(row['step'], row['ntp_loss']) for row in read_metrics(workdir)]


def test_short_tiny_run_lowers_the_loss(small_config, tmp_path):
  small_config.train.num_steps = 40
  small_config.train.checkpoint_every = 40
  result = train(small_config, str(tmp_path))
  rows = read_metrics(str(tmp_path))
  assert [r['step'] for r in rows] == list(range(1, 41))
  values = np.array([r['ntp_loss'] for r in rows])
  assert np.all(np.isfinite(values))
  assert values[-5:].mean() < values[:5].mean() - 1.0, values
  for name in ('ntp_loss', 'grad_norm', 'learning_rate', 'update_tokens_per_s'):
    assert name in rows[-1]
  assert int(result.state.step) == 40 and int(result.state.data_position) == 40
  assert os.listdir(result.tensorboard_dir), 'no TensorBoard event file written'
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(result.tensorboard_dir))
  assert os.path.isdir(os.path.join(result.checkpoint_dir, '40'))
  with open(os.path.join(str(tmp_path), 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['train']['num_steps'] == 40


def test_interrupted_then_resumed_run_reproduces_the_loss_sequence(small_config, tmp_path):
  uninterrupted = str(tmp_path / 'uninterrupted')
  train(small_config, uninterrupted)
  expected = losses(uninterrupted)
  assert [s for s, _ in expected] == list(range(1, 9))

  resumed = str(tmp_path / 'resumed')
  first = train(small_config, resumed, stop_at_step=5)
  assert int(first.state.step) == 5
  assert losses(resumed) == expected[:5]
  second = train(small_config, resumed)
  assert second.first_step == 5
  assert int(second.state.data_position) == 8
  assert losses(resumed) == expected  # bit-exact, each step once


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


def test_train_step_compiles_once(small_config, tmp_path, monkeypatch):
  import rlp_jax.train.loop as loop  # pylint: disable=import-outside-toplevel
  compiled = []
  original = loop.make_train_step

  def recording_make_train_step(*args, **kwargs):
    step_fn = original(*args, **kwargs)
    compiled.append(step_fn)
    return step_fn

  monkeypatch.setattr(loop, 'make_train_step', recording_make_train_step)
  small_config.train.num_steps = 6
  train(small_config, str(tmp_path))
  assert len(compiled) == 1
  assert compiled[0]._cache_size() == 1  # pylint: disable=protected-access
