"""`python -m rlp_jax.inspect --workdir=RUN [--last=N] [--png=PATH]`: what a run's thoughts look
like, and how its reward, information gain and thought length moved (docs/inspect.md).

Prints the thought samples of the last N sampled steps (RUN/thoughts.jsonl, written every
`train.sample_every` batches; default N 1, 0 prints none) and writes a PNG (default
RUN/inspect.png) of three panels over the steps of RUN/metrics.jsonl:
  reward            `reward_mean` ± `reward_std`: S_pred − S_ema of the rollouts, in nats
  information gain  the held-out gain of thinking under θ (`eval/gain/…`, written when
                    `train.eval_every` > 0): the training reward also counts θ's lead over the
                    lagging teacher φ, this one does not; without it, the reward's two terms
                    `s_pred_mean` and `s_ema_mean`
  thought length    `thought_length_mean`, tokens
Works on a finished run or one still writing (a torn last line is skipped); RUN may be a URL.
A missing workdir, metrics file or samples file is one line and exit status 2.
"""
from __future__ import annotations

import argparse
import io
import json
import math
from typing import Any, Sequence

from rlp_jax import paths
from rlp_jax.cli import fail
from rlp_jax.errors import DataError, UserInputError
from rlp_jax.train.metrics_writer import read_step_rows
from rlp_jax.train.sample_text import format_sample

# Panel 2 when the run evaluated: metric → label (docs/evaluation.md).
HELD_OUT_GAINS = (('eval/gain/all/sampled_mean', 'held-out, uniform positions'),
                  ('eval/gain/answer/sampled_mean', 'held-out, answer positions'),
                  ('eval/gain/gold/mean', 'held-out, gold thoughts'))


class _Parser(argparse.ArgumentParser):
  def error(self, message: str) -> None:  # one line, exit status 2 (not argparse's usage block)
    fail(f'{message} (python -m rlp_jax.inspect --help)')


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog='python -m rlp_jax.inspect',
                   description='Print a run\'s latest thought samples and plot its reward, '
                               'information gain and thought length over steps.')
  parser.add_argument('--workdir', required=True, help='the run directory (local or a URL)')
  parser.add_argument('--last', type=int, default=1,
                      help='print the samples of the last N sampled steps (0: none; default 1)')
  parser.add_argument('--png', default='', help='where to write the plot (default '
                      'WORKDIR/inspect.png)')
  return parser


def load_run(workdir: str, last: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(metrics rows, sample rows of the last `last` sampled steps); one-line errors."""
  if not paths.is_dir(workdir):
    raise DataError(f'--workdir {workdir} is not a directory')
  metrics_path = paths.join(workdir, 'metrics.jsonl')
  if not paths.exists(metrics_path):
    raise DataError(f'{metrics_path} not found: the run has logged no step yet')
  metrics = read_step_rows(metrics_path)
  if not metrics:
    raise DataError(f'{metrics_path} has no rows: the run has logged no step yet')
  if not any('reward_mean' in row for row in metrics):
    raise DataError(f'{metrics_path} has no RLP metrics (reward_mean): a next-token run '
                    '(rlp.enabled=False) has no thoughts to show')
  if last <= 0:
    return metrics, []
  samples_path = paths.join(workdir, 'thoughts.jsonl')
  samples = read_step_rows(samples_path) if paths.exists(samples_path) else []
  if not samples:
    raise DataError(f'{samples_path}: no thought samples yet (config key train.sample_every; 0 '
                    'writes none); --last=0 writes the plot alone')
  steps = sorted({row['step'] for row in samples})[-last:]
  return metrics, [row for row in samples if row['step'] in steps]


def sample_lines(samples: Sequence[dict[str, Any]]) -> list[str]:
  lines = []
  for row in samples:
    lines.extend(format_sample(row) + [''])
  return lines


def _series(metrics: Sequence[dict[str, Any]], name: str) -> tuple[list[int], list[float]]:
  """(steps, values) of the rows that carry `name` (null: NaN, a gap in the line)."""
  rows = [row for row in metrics if name in row]
  return ([row['step'] for row in rows],
          [math.nan if row[name] is None else float(row[name]) for row in rows])


def _thought_limit(workdir: str) -> int | None:
  """`rlp.max_thought_tokens` of the run's config.json (None when it cannot be read)."""
  try:
    return int(json.loads(paths.read_text(paths.join(workdir, 'config.json')))['rlp'][
        'max_thought_tokens'])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def plot_png(metrics: Sequence[dict[str, Any]], workdir: str) -> bytes:
  """The three panels (module docstring) as PNG bytes."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(8, 9), layout='constrained')
  reward, gain, length = figure.subplots(3, 1, sharex=True)
  figure.suptitle(f'{workdir}', fontsize=9)

  steps, mean = _series(metrics, 'reward_mean')
  reward.plot(steps, mean, label='reward_mean')
  _, std = _series(metrics, 'reward_std')
  if len(std) == len(mean):
    reward.fill_between(steps, [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)], alpha=0.2, label='± reward_std')
  reward.axhline(0.0, color='grey', linewidth=0.5)
  reward.set_title('reward S_pred − S_ema of the rollouts (nats)', fontsize=10)
  reward.legend(fontsize=8)

  held_out = [(name, label) for name, label in HELD_OUT_GAINS
              if any(name in row for row in metrics)]
  if held_out:
    for name, label in held_out:
      gain.plot(*_series(metrics, name), marker='o', label=label)
    gain.axhline(0.0, color='grey', linewidth=0.5)
    gain.set_title('information gain of thinking under θ, held out (eval/gain, nats)',
                   fontsize=10)
  else:
    gain.plot(*_series(metrics, 's_pred_mean'), label='S_pred (with the thought, θ_old)')
    gain.plot(*_series(metrics, 's_ema_mean'), label='S_ema (no thought, teacher φ)')
    gain.set_title('the reward\'s evidence, log p(real next token) (no held-out gain: '
                   'train.eval_every = 0)', fontsize=10)
  gain.legend(fontsize=8)

  length.plot(*_series(metrics, 'thought_length_mean'), label='thought_length_mean')
  limit = _thought_limit(workdir)
  if limit is not None:
    length.axhline(limit, color='grey', linestyle='--', linewidth=0.8,
                   label=f'limit T = rlp.max_thought_tokens = {limit}')
  length.xaxis.set_major_locator(MaxNLocator(integer=True))
  length.set_title('thought length (tokens)', fontsize=10)
  length.set_xlabel('step (batches)')
  length.set_ylim(bottom=0)
  length.legend(fontsize=8)
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=100)
  return buffer.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  if args.last < 0:
    fail(f'--last={args.last}: a number of sampled steps, 0 or more')
  workdir = args.workdir.rstrip('/') or args.workdir
  png = args.png or paths.join(workdir, 'inspect.png')
  try:
    metrics, samples = load_run(workdir, args.last)
  except (UserInputError, OSError) as error:
    fail(str(error))
  for line in sample_lines(samples):
    print(line)
  last = metrics[-1]
  print(f"[rlp_jax.inspect] {len(metrics)} logged steps, the last {last['step']}: " + ', '.join(
      f'{name} {last[name]:.4f}' for name in
      ('reward_mean', 's_pred_mean', 's_ema_mean', 'thought_length_mean')
      if isinstance(last.get(name), float)))
  try:
    paths.write_atomically(png, plot_png(metrics, workdir))
  except OSError as error:
    fail(f'{png}: cannot write the plot ({error})')
  print(f'[rlp_jax.inspect] wrote {png}')


if __name__ == '__main__':
  main()
