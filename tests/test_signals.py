"""SIGTERM / SIGINT at each moment of a run of `python -m rlp_jax.main` (train/stop_request.py).

Each test runs the command line in a subprocess and delivers the signal at one moment: from
outside, at a line the run prints (start-up) or a second after it (while the first step
compiles), or from inside at a named point of the loop (`RLP_JAX_SIGNAL_AT`, train/
signal_points.py). Every case must end with exit status 0 (SIGTERM) or 130 (SIGINT), one final
line saying which checkpoint is the latest, no traceback, and checkpoints that are all complete.

The runs signalled at a named point of the loop (`run_to_signal_point`) are next-token runs of one
config (tiny.py cut to 1 layer: nothing they check depends on depth), so they compile the same
programs: they share one persistent compilation cache (`compilation_cache`) and only the first of
them compiles. What they test happens after the compile (at step boundaries and saves), so a
cached executable changes nothing they check. The other tests use no cache: the first-compile
tests interrupt the compile itself.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATUS = {'SIGTERM': 0, 'SIGINT': 130}
CACHE_VARIABLES = ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS',
                   'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES')

pytestmark = pytest.mark.subprocess


@pytest.fixture(scope='module')
def compilation_cache(tmp_path_factory):
  """A JAX persistent compilation cache directory for this module's signal-point runs."""
  return str(tmp_path_factory.mktemp('jax_compilation_cache'))


def command(workdir, data_dir, rlp=False, num_steps=6, num_layers=None):
  """configs/tiny.py (4 layers) on 64 documents; `num_layers` changes the depth."""
  return [sys.executable, '-u', '-m', 'rlp_jax.main', f'--config={ROOT}/configs/tiny.py',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          '--config.data.num_documents=64', f'--config.train.num_steps={num_steps}',
          '--config.train.checkpoint_every=2', '--config.train.progress_bar=False',
          f'--config.rlp.enabled={rlp}'] + (
              [f'--config.model.num_layers={num_layers}'] if num_layers else [])


def run(tmp_path, shared_data_dir, signal_at=None, after_line=None, delay=0.0, name='SIGTERM',
        count=1, rlp=False, num_steps=6, workdir='run', cache=None, num_layers=None):
  """Runs the command line; returns (status, printed lines, seconds from the last signal sent to
  the exit). `signal_at`: POINT@STEP (the run signals itself); `after_line`: a text the run
  prints, after which (plus `delay` seconds) the test sends `count` signals 0.3 s apart;
  `cache`: a persistent compilation cache directory (None: none, whatever the environment says);
  `num_layers`: the model's depth (None: tiny.py's 4)."""
  env = dict(os.environ)
  for variable in ('RLP_JAX_SIGNAL_AT',) + CACHE_VARIABLES:
    env.pop(variable, None)
  if cache:
    env.update(zip(CACHE_VARIABLES, (cache, '0', '0')))  # every program, however small
  if signal_at:
    env['RLP_JAX_SIGNAL_AT'] = f'{signal_at}:{name}' + (f'x{count}' if count > 1 else '')
  process = subprocess.Popen(command(tmp_path / workdir, shared_data_dir, rlp, num_steps,
                                     num_layers),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env, cwd=ROOT)
  lines, sent = [], None
  for line in process.stdout:
    lines.append(line.rstrip('\n'))
    if after_line and sent is None and after_line in line:
      time.sleep(delay)
      for i in range(count):
        if i:
          time.sleep(0.3)
        process.send_signal(getattr(signal, name))
      sent = time.monotonic()
  status = process.wait(timeout=300)
  return status, lines, (time.monotonic() - sent) if sent else None


def run_to_signal_point(tmp_path, shared_data_dir, compilation_cache, signal_at, name='SIGTERM',
                        count=1):
  """A next-token run (1 layer, the shared compilation cache) that sends itself `count` signals
  `name` at `signal_at` (POINT@STEP, train/signal_points.py)."""
  return run(tmp_path, shared_data_dir, signal_at=signal_at, name=name, count=count,
             cache=compilation_cache, num_layers=1)


def checkpoint_steps(workdir):
  """The step directories; every entry must be a complete step (no orbax temp dir)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  entries = sorted(os.listdir(directory))
  assert all(entry.isdigit() for entry in entries), entries  # a temp dir has a suffix
  for entry in entries:  # orbax writes the commit marker last, when the step is complete
    assert os.path.exists(os.path.join(directory, entry, '_CHECKPOINT_METADATA')), entry
  return [int(entry) for entry in entries]


def assert_clean_end(status, lines, name, *needles):
  text = '\n'.join(lines)
  assert status == STATUS[name], text
  assert 'Traceback' not in text and 'Segmentation' not in text, text
  last = [line for line in lines if line.startswith('[rlp_jax]')][-1]
  for needle in needles:
    assert needle in last, text


def test_signal_during_start_up_stops_before_any_step_without_a_checkpoint(
    tmp_path, shared_data_dir):
  name = 'SIGINT'
  status, lines, _ = run(tmp_path, shared_data_dir, after_line='process 0/1', name=name)
  assert_clean_end(status, lines, name, f'stopped by {name} during start-up',
                   'no checkpoint was written')
  assert checkpoint_steps(tmp_path / 'run') == []


def test_second_signal_during_the_first_compile_exits_at_once(tmp_path, shared_data_dir):
  # tiny.py's full depth: its RLP step compiles far longer than the 5 s allowed for the exit.
  status, lines, seconds = run(tmp_path, shared_data_dir, after_line='parameters;', delay=1.0,
                               name='SIGINT', count=2, rlp=True)
  assert_clean_end(status, lines, 'SIGINT', 'SIGINT again: exited at once',
                   'no checkpoint was written')
  assert seconds < 5, seconds  # the RLP step's compile takes longer: it was not waited for
  assert checkpoint_steps(tmp_path / 'run') == []


def test_signal_during_the_first_compile_saves_after_the_first_step(tmp_path, shared_data_dir):
  # One layer: the RLP step still compiles for many seconds after the signal (sent 1 s after the
  # line), and the test waits for that compile, the step and the save.
  status, lines, _ = run(tmp_path, shared_data_dir, after_line='parameters;', delay=1.0,
                         name='SIGTERM', rlp=True, num_layers=1)
  assert_clean_end(status, lines, 'SIGTERM', 'stopped by SIGTERM at step 1',
                   'checkpoint 1 saved')
  assert checkpoint_steps(tmp_path / 'run') == [1]


def test_signal_between_the_save_check_and_the_next_step_saves_that_step(
    tmp_path, shared_data_dir, compilation_cache):
  # Step 3 is not a checkpoint step (every 2): the stop must save it, and say so. (That a stop
  # resumes bitwise is tests/test_training.py's Ctrl-C test.)
  status, lines, _ = run_to_signal_point(tmp_path, shared_data_dir, compilation_cache,
                                         'after_save_check@3')
  assert_clean_end(status, lines, 'SIGTERM', 'stopped by SIGTERM at step 3',
                   'checkpoint 3 saved')
  assert checkpoint_steps(tmp_path / 'run') == [2, 3]


def test_two_signals_between_the_save_check_and_the_next_step_exit_without_saving(
    tmp_path, shared_data_dir, compilation_cache):
  status, lines, _ = run_to_signal_point(tmp_path, shared_data_dir, compilation_cache,
                                         'after_save_check@3', name='SIGINT', count=2)
  assert_clean_end(status, lines, 'SIGINT', 'SIGINT again: exited at once',
                   'the latest complete checkpoint is step 2')
  assert not any('checkpoint 3 saved' in line for line in lines)
  assert checkpoint_steps(tmp_path / 'run') == [2]


def test_signal_during_a_save_stops_at_that_step(tmp_path, shared_data_dir, compilation_cache):
  status, lines, _ = run_to_signal_point(tmp_path, shared_data_dir, compilation_cache,
                                         'during_save@2')
  assert_clean_end(status, lines, 'SIGTERM', 'stopped by SIGTERM at step 2',
                   'checkpoint 2 saved')
  assert checkpoint_steps(tmp_path / 'run') == [2]


def test_two_signals_during_a_save_exit_once_it_is_complete(tmp_path, shared_data_dir,
                                                           compilation_cache):
  name = 'SIGINT'
  status, lines, _ = run_to_signal_point(tmp_path, shared_data_dir, compilation_cache,
                                         'during_save@2', name=name, count=2)
  assert_clean_end(status, lines, name, f'{name} again: exited at once',
                   'the latest complete checkpoint is step 2')
  assert any('a checkpoint is being written' in line for line in lines), lines
  assert checkpoint_steps(tmp_path / 'run') == [2]
