"""Two processes on localhost (jax.distributed over gloo, 2 CPU devices each) run the real CLI.

The data is a mixture of the embedded corpus and jsonl shards (each process reads its own half),
split into windows and packed: each process's loader state is saved with the checkpoint and must
resume at the exact record. A job of both processes is stopped after its first RLP step by a
SIGTERM to process 1 alone: both processes agree on the step, save it together, exit 0, and
process 0 prints one line saying where to resume. A second invocation of both processes restores
that checkpoint and is killed (SIGKILL to both, as when a slice is lost) right after step 2; a
third resumes from the latest complete checkpoint and takes the job to step 3. Its metrics must
equal, bitwise, those of an uninterrupted job of the same two processes and the
same config, and so must the final checkpoint's state (the checksum of every array, recorded with
the checkpoint). The mesh is data=2, fsdp=2: each process holds half of the batch rows and half of
every parameter, so every step needs cross-process collectives. Only process 0 may print the
outcome and write metrics.

The four invocations compile the same programs, so they share one persistent compilation cache
(JAX writes it from process 0 only): the first compiles, the others load the executables. What the
test checks happens after the compile, and a loaded executable is the compiled one.
"""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]  # four CLI jobs of 2 processes

# A constant learning rate keeps the schedule independent of train.num_steps (both jobs use 3).
# One layer: what is compared does not depend on depth, and every job compiles the whole step.
OVERRIDES = {
    'data.num_documents': 200, 'data.seq_len': 48, 'data.batch_size': 8,
    'tokenizer.vocab_size': 256, 'model.vocab_size': 256, 'model.hidden_size': 32,
    'model.intermediate_size': 64, 'model.num_layers': 1, 'model.num_heads': 4,
    'model.num_kv_heads': 2, 'model.head_dim': 8, 'rlp.max_thought_tokens': 6,
    'rlp.positions_per_document': 1, 'rlp.thoughts_per_position': 2, 'optimizer.schedule':
    'constant', 'optimizer.warmup_steps': 0, 'train.checkpoint_every': 2,
    'train.progress_bar': False, 'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 1,
}
# Wall-clock measures (train/loop.py: throughputs, the step's time and its wait for data): the only
# metrics that may differ between two runs of the same steps. Every other key must be equal,
# bitwise; the data metrics among them (data/bad_records) show the loader resumed exactly.
TIMING_KEYS = ('rollout_tokens_per_s', 'update_tokens_per_s', 'step_s', 'data_wait_s')


def write_shards(directory):
  """4 jsonl shards (2 per process), documents of 3 to 80 words: some span several windows."""
  pattern = os.path.join(directory, '*.jsonl')
  if os.path.isdir(directory):  # written once: a rewrite would change the files' mtimes, which
    return pattern              # the run identity records (a resume would see new data)
  rng = np.random.default_rng(0)
  os.makedirs(directory)
  for shard in range(4):
    with open(os.path.join(directory, f'web-{shard}.jsonl'), 'w', encoding='utf-8') as f:
      for i in range(30):
        words = ' '.join(str(int(x)) for x in rng.integers(0, 50, int(rng.integers(3, 80))))
        f.write(json.dumps({'text': f'shard {shard} doc {i}: {words}.'}) + '\n')
  return pattern


def command(workdir, data_dir, num_steps, *extra):
  # The data: the embedded corpus mixed with jsonl shards each process reads its half of,
  # windows and packing (data/loader.py): each process's loader state must resume exactly.
  overrides = dict(OVERRIDES, **{
      'data.data_dir': data_dir, 'train.num_steps': num_steps, 'data.packing': True,
      'data.sources': f'embedded@1; files({write_shards(os.path.join(data_dir, "web"))})@1'})
  return ([sys.executable, '-m', 'rlp_jax.main', f'--workdir={workdir}']
          + [f'--config.{key}={value}' for key, value in overrides.items()] + list(extra))


COMPILATION_CACHE = {}  # the test's cache directory, set by the `compilation_cache` fixture


@pytest.fixture(autouse=True)
def compilation_cache(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('jax_compilation_cache'))
  COMPILATION_CACHE.update(JAX_COMPILATION_CACHE_DIR=directory,
                           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  yield
  COMPILATION_CACHE.clear()


def environment(num_devices):
  return dict(os.environ, JAX_NUM_CPU_DEVICES=str(num_devices), JAX_PLATFORMS='cpu',
              TF_CPP_MIN_LOG_LEVEL='2', **COMPILATION_CACHE)


def free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_two_processes(workdir, data_dir, num_steps, signal_process_1=None, kill_both_at=None):
  """Both processes of the job; `signal_process_1` (e.g. 'after_save_check@1:SIGTERM') makes only
  process 1 receive a signal at that moment (train/signal_points.py); `kill_both_at` (a point,
  e.g. 'after_save_check@2') makes both processes SIGKILL themselves there, as a slice lost at
  once would: the job must end with both killed."""
  port = free_port()
  envs = [environment(2), dict(environment(2), **({'RLP_JAX_SIGNAL_AT': signal_process_1}
                                                  if signal_process_1 else {}))]
  if kill_both_at:
    envs = [dict(env, RLP_JAX_SIGNAL_AT=f'{kill_both_at}:SIGKILL') for env in envs]
  processes = [subprocess.Popen(
      command(workdir, data_dir, num_steps, f'--coordinator_address=localhost:{port}',
              '--num_processes=2', f'--process_id={i}'),
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=envs[i])
      for i in range(2)]
  if not kill_both_at:
    return helpers.wait_for_processes(processes, timeout=300)
  try:
    outputs = [process.communicate(timeout=300)[0] for process in processes]
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, output in zip(processes, outputs):
    assert process.returncode == -signal.SIGKILL, output[-3000:]
  return outputs


def read_metrics(workdir):
  """The rows of metrics.jsonl as parsed JSON: floats are read back exactly as written (repr)."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def state_checksums(workdir, step):
  """The checksum of every array of checkpoint `step`, as recorded at its save
  (train/checkpointing.py: computed on the devices from the state that was saved)."""
  with open(os.path.join(workdir, 'checkpoints', str(step), 'record', 'metadata'),
            encoding='utf-8') as f:
    return json.load(f)['checksums']


def test_sigterm_to_one_process_stops_both_and_the_resume_matches_an_uninterrupted_run_bitwise(
    tmp_path):
  data_dir = str(tmp_path / 'data')
  reference_dir, resumed_dir = str(tmp_path / 'uninterrupted'), str(tmp_path / 'resumed')
  # The uninterrupted job, 3 steps (process 0 also builds the corpus and tokenizer the others read).
  reference = run_two_processes(reference_dir, data_dir, 3)
  for i, output in enumerate(reference):
    assert output.count(f'process {i}/2: 2 local cpu devices, 4 in all') == 1, output[-3000:]
  assert '[rlp_jax] done at step 3' in reference[0], reference[0][-3000:]

  # The same job stopped by a SIGTERM that only process 1 receives, after step 1: both processes
  # must agree to stop there, save step 1 together and exit 0 (wait_for_processes checks the exit
  # status), and process 0 alone prints one line saying where to resume.
  first = run_two_processes(resumed_dir, data_dir, 3, signal_process_1='after_save_check@1:SIGTERM')
  stopped = [line for line in first[0].splitlines() if 'stopped by' in line]
  assert stopped == ['[rlp_jax] stopped by SIGTERM at step 1: checkpoint 1 saved; rerun the same '
                     'command to resume'], first[0][-3000:]
  assert 'stopped by' not in first[1]  # only process 0 prints
  assert sorted(os.listdir(os.path.join(resumed_dir, 'checkpoints'))) == ['1']

  # Resumed, then both processes killed (kill -9) right after step 2's checkpoint decision: its
  # asynchronous save may or may not be complete, so the next resume starts at step 2 or 1.
  run_two_processes(resumed_dir, data_dir, 3, kill_both_at='after_save_check@2')
  second = run_two_processes(resumed_dir, data_dir, 3)
  assert 'resumed from' in second[0], second[0][-3000:]
  assert '[rlp_jax] done at step 3' in second[0]
  assert 'done at step' not in second[1] and 'metrics:' not in second[1]  # only process 0 prints
  checkpoints = sorted(os.listdir(os.path.join(resumed_dir, 'checkpoints')))
  assert checkpoints == ['1', '2', '3'], checkpoints

  expected, got = read_metrics(reference_dir), read_metrics(resumed_dir)
  assert [row['step'] for row in expected] == [1, 2, 3]
  assert [row['step'] for row in got] == [1, 2, 3]  # each step once: only process 0 writes
  for want, have in zip(expected, got):
    assert set(want) == set(have), (set(want) ^ set(have))
    assert all(key in want for key in TIMING_KEYS), sorted(want)
    differing = {key: (want[key], have[key]) for key in want
                 if key not in TIMING_KEYS and want[key] != have[key]}
    assert not differing, f'step {want["step"]}: {differing}'
  # The state itself: every array of the final checkpoint, bitwise (θ, φ, optimizer moments, step
  # counters, data position, RNG key).
  assert state_checksums(resumed_dir, 3) == state_checksums(reference_dir, 3)
