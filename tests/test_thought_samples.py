"""Thought samples (train.sample_every): a run writes a few rollout rows as text to thoughts.jsonl
and TensorBoard; the texts decode the ids the rollout sampled and the batch held; a resume drops
the samples after the restored step; the rows are read from sharded rollouts on 8 devices;
`python -m rlp_jax.inspect` prints them and plots the run, with one-line errors
(docs/inspect.md)."""
import glob
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlp_jax import inspect as inspect_cli
from rlp_jax.rollout.reasoned_evidence import ScoredSequences
from rlp_jax.rollout.rlp_rollout import Rollout
from rlp_jax.train.loop import train
from rlp_jax.train.metrics_writer import MetricsWriter, read_metrics, read_samples
from rlp_jax.train.sample_text import format_sample, samples_markdown
from rlp_jax.train.thought_samples import SAMPLE_FIELDS, ThoughtSampler, is_sample_step, pick_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _record_rollouts(monkeypatch) -> list:
  """Every rollout of the run, with its batch, on the host: (batch, rollout) per loop step."""
  import rlp_jax.train.loop as loop  # pylint: disable=import-outside-toplevel
  recorded = []
  original = loop.make_rlp_step

  def recording_make_rlp_step(*args, **kwargs):
    rollout_fn, update_fn = original(*args, **kwargs)

    def recording_rollout(state, batch):
      state, rollout = rollout_fn(state, batch)
      recorded.append(jax.device_get((batch, rollout)))
      return state, rollout

    return recording_rollout, update_fn

  monkeypatch.setattr(loop, 'make_rlp_step', recording_make_rlp_step)
  return recorded


def _event_bytes(workdir: str) -> bytes:
  files = sorted(glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents*')))
  assert files, 'no TensorBoard event file'
  return b''.join(open(name, 'rb').read() for name in files)


def _png_size(path: str) -> tuple[int, int]:
  with open(path, 'rb') as f:
    head = f.read(24)
  assert head[:8] == PNG_SIGNATURE and head[12:16] == b'IHDR', head
  return struct.unpack('>II', head[16:24])


def _run_inspect(capsys, *argv: str) -> tuple[int, str, str]:
  try:
    inspect_cli.main(list(argv))
    code = 0
  except SystemExit as exit_:
    code = exit_.code
  out, err = capsys.readouterr()
  return code, out, err


@pytest.mark.slow
def test_a_run_writes_samples_that_decode_its_rollouts(small_config, tmp_path, monkeypatch,
                                                       capsys):
  config = small_config
  config.train.num_steps = 3
  config.train.checkpoint_every = 3
  config.train.sample_every = 2
  config.train.sample_count = 3
  config.train.sample_thoughts = 2
  config.train.sample_context_tokens = 6
  recorded = _record_rollouts(monkeypatch)
  workdir = str(tmp_path / 'run')
  train(config, workdir)
  from rlp_jax.data.tokenizer import build_tokenizer  # pylint: disable=import-outside-toplevel
  tokenizer = build_tokenizer(config.tokenizer, config.data)
  k, g = config.rlp.positions_per_document, config.rlp.thoughts_per_position
  samples = read_samples(workdir)
  steps = [row['step'] for row in samples]
  assert sorted(set(steps)) == [2, 3]  # every 2 batches and the last
  assert all(steps.count(step) == 3 * 2 for step in (2, 3))
  metrics = {row['step']: row for row in read_metrics(workdir)}
  for row in samples:
    assert tuple(row) == SAMPLE_FIELDS
    batch, rollout = recorded[row['step'] - 1]
    r, b, t = row['rollout_row'], row['row'], row['position']
    assert (b, row['thought_index']) == (r // (k * g), r % g)
    assert bool(rollout.row_valid[r])
    # From the batch: the context before t and the real next token x_t.
    context = batch['tokens'][b, :t][batch['mask'][b, :t]]
    assert row['context_tokens'] == context.size
    assert row['context_tail'] == tokenizer.decode(context[-6:].tolist())
    assert row['next_token'] == tokenizer.decode([int(batch['tokens'][b, t])])
    # From the rollout: the sampled thought tokens (the policy's actions).
    region = rollout.sequences.tokens[r, rollout.sequences.prompt_length:]
    thought = region[:rollout.thought_mask.shape[1]][rollout.thought_mask[r]]
    assert row['thought'] == tokenizer.decode(thought.tolist())
    assert row['thought_tokens'] == thought.size
    assert row['ended'] == (int(thought[-1]) == tokenizer.think_end_id)
    assert row['s_pred'] == float(rollout.s_pred[r]) and row['s_ema'] == float(rollout.s_ema[r])
    assert row['reward'] == float(rollout.reward[r])
    assert row['advantage'] == float(rollout.advantages[r])
    assert abs(row['reward'] - (row['s_pred'] - row['s_ema'])) <= 1e-5
  for step in (2, 3):  # the rollout's per-row values are the ones its metrics averaged
    _, rollout = recorded[step - 1]
    valid = np.asarray(rollout.row_valid)
    assert abs(rollout.reward[valid].mean() - metrics[step]['reward_mean']) <= 1e-5
    rows = [row for row in samples if row['step'] == step]
    assert [row['row'] for row in rows] == [0, 0, 1, 1, 2, 2]  # 3 documents, 2 thoughts each
    assert [row['thought_index'] for row in rows] == [0, 1] * 3
  events = _event_bytes(workdir)
  assert b'thoughts' in events
  for row in samples:
    assert format_sample(row)[3].encode() in events  # the thought line, as TensorBoard text

  capsys.readouterr()  # the run's own output
  code, out, err = _run_inspect(capsys, f'--workdir={workdir}')
  assert code == 0, err
  last = [row for row in samples if row['step'] == 3]
  assert out.startswith('\n'.join(format_sample(last[0])))
  assert 'step 2 ·' not in out  # --last=1: the latest sampled step only
  assert _png_size(os.path.join(workdir, 'inspect.png')) == (800, 900)




def _fake_rollout(rng: np.random.Generator, documents: int = 8, k: int = 2, g: int = 4,
                  limit: int = 5, width: int = 12):
  """(batch, Rollout) of numpy arrays with the shared strategy's layout (a one-token `<think>`
  prompt), thoughts of random lengths, and document 0's first position skipped."""
  rows = documents * k * g
  tokens = rng.integers(5, 99, size=(documents, width)).astype(np.int32)
  t = np.repeat(rng.integers(2, width, size=documents * k), g).astype(np.int32)
  length = rng.integers(1, limit + 1, size=rows).astype(np.int32)
  ended = rng.random(rows) < 0.5
  closed = np.where(ended, length, length + 1).astype(np.int32)
  u = np.arange(limit + 2)[None, :]
  region = np.where(u < length[:, None], rng.integers(100, 200, size=(rows, limit + 2)), 0)
  region = np.where(u == closed[:, None], tokens[np.arange(rows) // (k * g), t][:, None], region)
  sequence_tokens = np.concatenate([np.full((rows, 1), 3), region], axis=1).astype(np.int32)
  positions = (t[:, None] + np.arange(limit + 3)[None, :]).astype(np.int32)  # <think> at t
  s_pred = rng.normal(size=rows).astype(np.float32)
  s_ema = rng.normal(size=rows).astype(np.float32)
  valid = np.ones(rows, bool)
  valid[:g] = False  # document 0, position 0: skipped (too short)
  sequences = ScoredSequences(tokens=sequence_tokens, positions=positions,
                              mask=np.ones_like(sequence_tokens, bool), closed_length=closed,
                              prompt_length=1, scored_position=t)
  rollout = Rollout(sequences=sequences, thought_mask=u[:, :limit] < length[:, None],
                    old_log_probs=np.zeros((rows, limit), np.float32),
                    advantages=rng.normal(size=rows).astype(np.float32), metrics={},
                    s_pred=s_pred, s_ema=s_ema, reward=s_pred - s_ema, row_valid=valid)
  return {'tokens': tokens, 'mask': np.ones_like(tokens, bool)}, rollout


class IdsTokenizer:
  """decode: the ids as text, so a sample shows exactly which ids it decoded."""

  def decode(self, ids):
    return ' '.join(str(i) for i in ids)


def _sampler(**overrides) -> ThoughtSampler:
  values = dict(every=1, positions=3, thoughts=2, context_tokens=4, positions_per_document=2,
                group_size=4, tokenizer=IdsTokenizer())
  values.update(overrides)
  return ThoughtSampler(**values)


def test_rows_of_a_rollout_show_the_first_scored_position_of_each_document():
  batch, rollout = _fake_rollout(np.random.default_rng(0))
  rows = _sampler().rows(rollout, batch, step=7)
  # Document 0's position 0 is skipped: its position 1 (rows 4, 5); then documents 1 and 2.
  assert [row['rollout_row'] for row in rows] == [4, 5, 8, 9, 16, 17]
  for row in rows:
    r, b, t = row['rollout_row'], row['row'], row['position']
    length = int(rollout.thought_mask[r].sum())
    assert row['context_tail'] == ' '.join(map(str, batch['tokens'][b, max(t - 4, 0):t]))
    assert row['context_tokens'] == t
    assert row['thought'] == ' '.join(map(str, rollout.sequences.tokens[r, 1:1 + length]))
    assert row['next_token'] == str(batch['tokens'][b, t])
    assert row['ended'] == (rollout.sequences.closed_length[r] == length)
  assert pick_rows({}, 64, 2, 4, positions=3, thoughts=2) == []
  assert pick_rows({r: True for r in range(64)}, 64, 2, 4, positions=2, thoughts=9) == [
      0, 1, 2, 3, 8, 9, 10, 11]  # at most the group
  assert [s for s in range(1, 13) if is_sample_step(s, 5, 12)] == [5, 10, 12]
  assert not any(is_sample_step(s, 0, 12) for s in range(1, 13))


SHARDED_SCRIPT = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
sys.path.insert(0, {repo!r})
from tests.test_thought_samples import _fake_rollout, _sampler
assert jax.device_count() == 8
batch, rollout = _fake_rollout(np.random.default_rng(1))
expected = _sampler().rows(rollout, batch, step=3)
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ('data', 'fsdp'))
layouts = [(('data', 'fsdp'), 'data'), ('data', ('data', 'fsdp')), (None, 'fsdp')]
for rows_spec, batch_spec in layouts:
  def put(spec):
    return lambda x: jax.device_put(
        x, NamedSharding(mesh, PartitionSpec(spec, *[None] * (x.ndim - 1))))
  sharded = jax.tree.map(put(rows_spec), rollout)
  assert len(sharded.sequences.tokens.sharding.device_set) == 8
  rows = _sampler().rows(sharded, jax.tree.map(put(batch_spec), batch), step=3)
  assert rows == expected, (rows_spec, rows, expected)
print('rows', len(expected))
"""


@pytest.mark.subprocess
def test_rows_come_from_the_shards_of_a_rollout_on_8_devices():
  """Rows split over 8 devices, over 4 (each on 2), or replicated, the batch split another way:
  the same rows as from the host arrays."""
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='8', JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT.format(repo=REPO)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'rows 6' in result.stdout


def _fake_run(workdir, sampled_steps=(2, 4), evaluated=False):
  """metrics.jsonl (steps 1..4) and thoughts.jsonl written as a run writes them."""
  writer = MetricsWriter(str(workdir))
  for step in range(1, 5):
    metrics = {'reward_mean': 0.1 * step, 'reward_std': 0.05, 's_pred_mean': -3.0 + 0.1 * step,
               's_ema_mean': -3.0, 'thought_length_mean': 10.0 + step, 'ntp_loss': 4.0}
    if evaluated and step % 2 == 0:
      metrics.update({'eval/gain/all/sampled_mean': -0.5, 'eval/gain/answer/sampled_mean': 0.2})
    writer.write(step, metrics)
    if step in sampled_steps:
      _, rollout = _fake_rollout(np.random.default_rng(step))
      batch = {'tokens': np.arange(8 * 12).reshape(8, 12), 'mask': np.ones((8, 12), bool)}
      rows = _sampler().rows(rollout, batch, step=step)
      writer.write_samples(step, rows, samples_markdown(rows))
  writer.close()


def test_inspect_prints_the_latest_samples_and_plots_the_run(tmp_path, capsys):
  _fake_run(tmp_path, evaluated=True)
  samples = read_samples(str(tmp_path))
  png = str(tmp_path / 'plots' / 'run.png')
  os.makedirs(os.path.dirname(png))
  code, out, err = _run_inspect(capsys, '--workdir', str(tmp_path), '--last=2', f'--png={png}')
  assert code == 0 and not err, err
  for row in samples:  # both sampled steps, each sample as format_sample writes it
    assert '\n'.join(format_sample(row)) in out
  assert 'last 4: reward_mean 0.4000' in out
  assert out.rstrip().endswith(f'wrote {png}')
  width, height = _png_size(png)
  assert (width, height) == (800, 900) and os.path.getsize(png) > 20_000
  code, out, _ = _run_inspect(capsys, f'--workdir={tmp_path}', '--last=0')  # the plot alone
  assert code == 0 and 'step 4 ·' not in out and os.path.isfile(tmp_path / 'inspect.png')


def test_a_resume_drops_the_samples_after_the_restored_step(tmp_path):
  _fake_run(tmp_path, sampled_steps=(1, 2, 3, 4))
  with open(tmp_path / 'thoughts.jsonl', 'a', encoding='utf-8') as f:
    f.write('{"step": 5, "row"')  # torn by a crash
  MetricsWriter(str(tmp_path), resume_step=2).close()
  assert sorted({row['step'] for row in read_samples(str(tmp_path))}) == [1, 2]
  assert [row['step'] for row in read_metrics(str(tmp_path))] == [1, 2]


def test_inspect_errors_are_one_line(tmp_path, capsys):
  cases = [([], 'the following arguments are required: --workdir'),
           ([f'--workdir={tmp_path / "missing"}'], 'is not a directory'),
           ([f'--workdir={tmp_path}'], 'metrics.jsonl not found'),
           ([f'--workdir={tmp_path}', '--last=-1'], '--last=-1')]
  for argv, message in cases:
    code, out, err = _run_inspect(capsys, *argv)
    assert code == 2 and not out and message in err, (argv, err)
    assert err.count('\n') == 1 and err.startswith('rlp_jax: error: '), err
  writer = MetricsWriter(str(tmp_path))
  writer.write(1, {'ntp_loss': 3.0})  # a next-token run
  writer.close()
  code, _, err = _run_inspect(capsys, f'--workdir={tmp_path}')
  assert code == 2 and 'has no RLP metrics' in err and err.count('\n') == 1
  os.makedirs(tmp_path / 'unsampled')
  _fake_run(tmp_path / 'unsampled', sampled_steps=())
  code, _, err = _run_inspect(capsys, f'--workdir={tmp_path / "unsampled"}')
  assert code == 2 and 'no thought samples yet' in err and '--last=0' in err
  assert err.count('\n') == 1


@pytest.mark.subprocess
def test_the_inspect_command_line_fails_without_a_traceback(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'rlp_jax.inspect', f'--workdir={tmp_path}'],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 2 and not result.stdout
  assert result.stderr == f'rlp_jax: error: {tmp_path}/metrics.jsonl not found: the run has ' \
                          'logged no step yet\n'
