"""Two processes on localhost (jax.distributed over gloo, 2 CPU devices each) run the real CLI.

The run is stopped after its first RLP step by a SIGTERM to process 1 alone (both processes agree
on the step and checkpoint it), then a second invocation of both processes restores the checkpoint
and takes steps 2 and 3. Its metrics must equal a single process with 4 devices on the same
mesh (data=2, fsdp=2: each process holds half of the batch rows and half of every parameter, so
every step needs cross-process collectives), and only process 0 may print and write metrics.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]  # three CLI runs, two of them 2 processes

# A constant learning rate keeps the schedule independent of train.num_steps, so a run of 2 steps
# resumed to 3 follows the same schedule as a run of 3.
OVERRIDES = {
    'data.num_documents': 200, 'data.seq_len': 48, 'data.batch_size': 8,
    'tokenizer.vocab_size': 256, 'model.vocab_size': 256, 'model.hidden_size': 32,
    'model.intermediate_size': 64, 'model.num_layers': 2, 'model.num_heads': 4,
    'model.num_kv_heads': 2, 'model.head_dim': 8, 'rlp.max_thought_tokens': 6,
    'rlp.positions_per_document': 1, 'rlp.thoughts_per_position': 2, 'optimizer.schedule':
    'constant', 'optimizer.warmup_steps': 0, 'train.checkpoint_every': 2,
    'train.progress_bar': False, 'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 1,
}
COMPARED = ('total_loss', 'ntp_loss', 'policy_loss', 'reward_mean', 's_pred_mean', 's_ema_mean',
            'grad_norm', 'thought_length_mean')


def command(workdir, data_dir, num_steps, *extra):
  overrides = dict(OVERRIDES, **{'data.data_dir': data_dir, 'train.num_steps': num_steps})
  return ([sys.executable, '-m', 'rlp_jax.main', f'--workdir={workdir}']
          + [f'--config.{key}={value}' for key, value in overrides.items()] + list(extra))


def environment(num_devices):
  return dict(os.environ, JAX_NUM_CPU_DEVICES=str(num_devices), JAX_PLATFORMS='cpu',
              TF_CPP_MIN_LOG_LEVEL='2')


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, data_dir, num_steps, signal_process_1=None):
  """Both processes of the job; `signal_process_1` (e.g. 'after_save_check@1:SIGTERM') makes only
  process 1 receive a signal at that moment (train/signal_points.py)."""
  port = free_port()
  env_1 = dict(environment(2), **({'RLP_JAX_SIGNAL_AT': signal_process_1}
                                  if signal_process_1 else {}))
  processes = [subprocess.Popen(
      command(workdir, data_dir, num_steps, f'--coordinator_address=localhost:{port}',
              '--num_processes=2', f'--process_id={i}'),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=env_1 if i == 1 else environment(2)) for i in range(2)]
  return helpers.wait_for_processes(processes, timeout=300)


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def test_two_processes_checkpoint_resume_and_match_one_process(tmp_path):
  data_dir = str(tmp_path / 'data')
  reference_dir, multi_dir = str(tmp_path / 'one_process'), str(tmp_path / 'two_processes')
  # One process, 4 devices, 3 steps (it also builds the corpus and tokenizer the others read).
  single = subprocess.run(command(reference_dir, data_dir, 3), capture_output=True, text=True,
                          env=environment(4), timeout=300)
  assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]
  assert 'process 0/1: 4 local cpu devices, 4 in all' in single.stdout + single.stderr

  # The first job is stopped by a SIGTERM that only process 1 receives, after step 1: both
  # processes must agree to stop there, save step 1 together and exit 0.
  first = run_two_processes(multi_dir, data_dir, 3, signal_process_1='after_save_check@1:SIGTERM')
  second = run_two_processes(multi_dir, data_dir, 3)

  for i, output in enumerate(first):
    assert output.count(f'process {i}/2: 2 local cpu devices, 4 in all') == 1, output[-3000:]
  assert 'stopped by SIGTERM at step 1: checkpoint 1 saved' in first[0], first[0][-3000:]
  assert 'stopped by' not in first[1]  # only process 0 prints
  assert 'resumed from' in second[0] and 'at step 1' in second[0], second[0][-3000:]
  assert '[rlp_jax] done at step 3' in second[0]
  assert 'done at step' not in second[1] and 'metrics:' not in second[1]  # only process 0 prints
  checkpoints = sorted(os.listdir(os.path.join(multi_dir, 'checkpoints')))
  assert checkpoints == ['1', '2', '3'], checkpoints

  reference, multi = read_metrics(reference_dir), read_metrics(multi_dir)
  assert [row['step'] for row in multi] == [1, 2, 3]  # each step once: only process 0 writes
  for expected, got in zip(reference, multi):
    assert expected['thought_tokens'] == got['thought_tokens'], (expected, got)
    for name in COMPARED:
      np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6,
                                 err_msg=f'{name} at step {got["step"]}')
