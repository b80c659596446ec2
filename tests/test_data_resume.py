"""kill -9 in the middle of a run, then the same command again: the resumed run trains on exactly
the batches of an uninterrupted run (the data loader's state is in each checkpoint).

The data is the harder case of the loader (rlp_jax/data/loader.py): a mixture of jsonl shards (one
gzipped, documents longer than a row, so windows) and the embedded corpus, packed, read by 2
worker processes. The run is the command line on one process, next-token steps of a one-layer
model (the data path is what is tested; tests/test_multiprocess.py does the same with 2
processes). Compared: every metric of every step except the wall-clock ones (the losses differ
if a single token of a batch differs), and every array of the final checkpoint.

The three runs of the kill -9 test compile the same programs, so they share one persistent
compilation cache: the first compiles, the others load the executables (the kill comes after
every compile, and a loaded executable is the compiled one).
"""
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ('rollout_tokens_per_s', 'update_tokens_per_s', 'step_s', 'data_wait_s')

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def write_shards(directory):
  rng = np.random.default_rng(0)
  os.makedirs(directory)
  for shard in range(3):
    lines = [json.dumps({'text': f'shard {shard} doc {i}: ' + ' '.join(
        str(int(x)) for x in rng.integers(0, 100, int(rng.integers(2, 60)))) + '.'})
             for i in range(40)]
    data = ''.join(line + '\n' for line in lines).encode()
    name = os.path.join(directory, f'web-{shard}.jsonl')
    if shard == 2:
      with gzip.open(name + '.gz', 'wb') as f:
        f.write(data)
    else:
      with open(name, 'wb') as f:
        f.write(data)
  return os.path.join(directory, 'web-*')


def command(workdir, data_dir, shards):
  overrides = {
      'data.data_dir': data_dir, 'data.num_documents': 200, 'data.seq_len': 32,
      'data.batch_size': 4, 'data.sources': f'files({shards})@2; embedded@1',
      'data.packing': True, 'data.window_stride': 24, 'data.workers': 2,
      'data.tokenize_chunk': 16, 'tokenizer.vocab_size': 256, 'model.vocab_size': 256,
      'model.hidden_size': 32, 'model.intermediate_size': 64, 'model.num_layers': 1,
      'model.num_heads': 4, 'model.num_kv_heads': 2, 'model.head_dim': 8, 'rlp.enabled': False,
      'optimizer.schedule': 'constant', 'optimizer.warmup_steps': 0, 'train.num_steps': 8,
      'train.checkpoint_every': 2, 'train.progress_bar': False}
  return ([sys.executable, '-m', 'rlp_jax.main', f'--workdir={workdir}']
          + [f'--config.{key}={value}' for key, value in overrides.items()])


def run(workdir, data_dir, shards, signal_at=None, cache=None):
  """(exit status, output, whether processes of the run outlived it by 10 s: its loader workers
  must not). The run is a session of its own, so that its workers can be found and, if a test
  fails, killed. `cache`: a persistent compilation cache directory."""
  env = {key: value for key, value in os.environ.items() if key != 'RLP_JAX_SIGNAL_AT'}
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  if signal_at:
    env['RLP_JAX_SIGNAL_AT'] = signal_at
  log = f'{workdir}.log'
  with open(log, 'w', encoding='utf-8') as out:
    process = subprocess.Popen(command(workdir, data_dir, shards), stdout=out,
                               stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                               start_new_session=True)
    try:
      status = process.wait(timeout=600)
      deadline = time.monotonic() + 10
      while group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
      outlived = group_alive(process.pid)
    finally:
      if group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
  with open(log, encoding='utf-8') as f:
    return status, f.read(), outlived


def group_alive(group):
  try:
    os.killpg(group, 0)
    return True
  except ProcessLookupError:
    return False


def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def checksums(workdir, step):
  with open(os.path.join(workdir, 'checkpoints', str(step), 'record', 'metadata'),
            encoding='utf-8') as f:
    return json.load(f)['checksums']


def test_kill_9_then_resume_trains_on_the_batches_of_an_uninterrupted_run(tmp_path,
                                                                         shared_data_dir):
  shards = write_shards(str(tmp_path / 'corpus'))
  reference_dir, killed_dir = str(tmp_path / 'uninterrupted'), str(tmp_path / 'killed')
  cache = str(tmp_path / 'jax_compilation_cache')
  status, output, _ = run(reference_dir, shared_data_dir, shards, cache=cache)
  assert status == 0, output[-3000:]

  # SIGKILL right after step 5's checkpoint decision: step 4's save may or may not be complete
  # (asynchronous), so the resume starts from step 4 or step 2; either way it must replay the
  # same batches. The loader's worker processes must not outlive the killed run.
  status, output, outlived = run(killed_dir, shared_data_dir, shards,
                                 signal_at='after_save_check@5:SIGKILL', cache=cache)
  assert status == -signal.SIGKILL, output[-3000:]
  assert not outlived, 'the loader workers outlived the killed run'
  status, output, _ = run(killed_dir, shared_data_dir, shards, cache=cache)
  assert status == 0, output[-3000:]
  assert 'resumed from' in output and 'done at step 8' in output, output[-3000:]

  expected, got = read_metrics(reference_dir), read_metrics(killed_dir)
  assert [row['step'] for row in got] == [row['step'] for row in expected] == list(range(1, 9))
  for want, have in zip(expected, got):
    assert set(want) == set(have), set(want) ^ set(have)
    differing = {key: (want[key], have[key]) for key in want
                 if key not in TIMING_KEYS and want[key] != have[key]}
    assert not differing, f'step {want["step"]}: {differing}'
  assert 'data/proportion/files0' in expected[-1]
  assert checksums(killed_dir, 8) == checksums(reference_dir, 8)


def test_a_resume_on_another_number_of_processes_stops_or_restarts_the_data_order(
    small_config, tmp_path, capsys):
  """A checkpoint written by a job of 2 processes (its data item holds process_0-of-2.json and
  process_1-of-2.json), resumed by 1: one line naming both counts and the key; with
  data.on_process_count_change=restart the run goes on, the data order restarted."""
  from rlp_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from rlp_jax.train.loop import train  # pylint: disable=import-outside-toplevel
  small_config.rlp.enabled = False
  small_config.model.num_layers = 1
  small_config.train.num_steps = 2
  small_config.train.checkpoint_every = 2
  workdir = tmp_path / 'run'
  train(small_config, str(workdir))
  data_item = workdir / 'checkpoints' / '2' / 'data'
  state = (data_item / 'process_0-of-1.json').read_text()
  (data_item / 'process_0-of-1.json').unlink()
  for process in range(2):  # what a 2-process job writes
    (data_item / f'process_{process}-of-2.json').write_text(state)
  small_config.train.num_steps = 3
  with pytest.raises(ConfigError) as error:
    train(small_config, str(workdir))
  message = str(error.value)
  assert '\n' not in message
  assert 'data loader state of 2 processes and this job has 1' in message, message
  assert '--config.data.on_process_count_change=restart' in message, message
  small_config.data.on_process_count_change = 'restart'
  capsys.readouterr()
  result = train(small_config, str(workdir))
  assert result.first_step == 2
  assert 'the data order restarts' in capsys.readouterr().out
