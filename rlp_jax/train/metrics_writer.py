"""Per-step metrics and thought samples to JSONL files and TensorBoard event files (tensorboardX,
no TensorFlow)."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Mapping, Sequence

import numpy as np

from rlp_jax import paths
from rlp_jax.errors import DataError


class MetricsWriter:
  """Appends one JSON object per logged step to `metrics.jsonl` and scalars to `tensorboard/`;
  `write_samples` appends the thought samples of a step to `thoughts.jsonl` and their text to
  TensorBoard (docs/inspect.md).

  On resume, in both files, lines for steps after `resume_step` (logged after the last
  checkpoint by a run that was then interrupted) and a torn last line (a write cut off by a crash)
  are dropped, so each file holds each step once. The repaired file is written next to the live
  one and renamed over it (`paths.write_atomically`), so a crash during the repair leaves the old
  file whole; it is never truncated in place.

  A URL workdir (`gs://…`, an object store: no append, a rename is copy + delete) keeps the rows
  in memory and writes the whole file the same way at most every `flush_seconds` and at `close`
  (a crash loses at most the rows of the last `flush_seconds`, which a resume from the last
  checkpoint drops anyway when they are newer than it). TensorBoard event files are written to a
  local staging directory and copied whole to `<workdir>/tensorboard/` at the same moments
  (tensorboardX reaches gs:// only through its own google-cloud-storage writer).

  A non-finite value (a skipped step's NaN loss) is written as JSON `null`, so the file stays
  strict JSON; TensorBoard gets only the finite scalars, and every row carries `nonfinite_step`
  and `nonfinite_steps` (train/nonfinite.py), which show skipped steps there.
  """

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True,
               flush_seconds: float = 30.0):
    self.jsonl_path = paths.join(workdir, 'metrics.jsonl')
    self.samples_path = paths.join(workdir, 'thoughts.jsonl')
    self.tensorboard_dir = paths.join(workdir, 'tensorboard')
    self.enabled = enabled
    self.remote = paths.is_url(workdir)
    self.flush_seconds = flush_seconds
    self._tb = None
    if not enabled:
      return
    # The thought samples (train/thought_samples.py): the file is created on the first sample.
    self._samples = _StepRows(self.samples_path, resume_step, self.remote, create=False)
    self._metrics = _StepRows(self.jsonl_path, resume_step, self.remote, create=True)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    if self.remote:
      self._staging = tempfile.mkdtemp(prefix='rlp_jax_tensorboard_')
      self._tb = SummaryWriter(self._staging, purge_step=resume_step + 1)
      self._flushed_at = time.monotonic()
    else:
      self._tb = SummaryWriter(self.tensorboard_dir, purge_step=resume_step + 1)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step)}
    row.update({k: _to_float(v) for k, v in metrics.items()})
    line = json.dumps(_json_row(row), allow_nan=False) + '\n'
    for name, value in row.items():
      if name != 'step' and math.isfinite(value):
        self._tb.add_scalar(name, value, global_step=step)
    self._metrics.append([line])
    self._maybe_flush()

  def write_samples(self, step: int, rows: Sequence[Mapping[str, Any]], text: str) -> None:
    """Thought samples of `step`: `rows` (JSON objects, each with `step`) to thoughts.jsonl and
    `text` (markdown) to TensorBoard's text tab under the tag `thoughts`."""
    if not self.enabled or not rows:
      return
    self._samples.append([json.dumps(_json_row(dict(row)), allow_nan=False, ensure_ascii=False)
                          + '\n' for row in rows])
    self._tb.add_text('thoughts', text, global_step=step)
    self._maybe_flush()

  def _maybe_flush(self) -> None:
    if self.remote and time.monotonic() - self._flushed_at >= self.flush_seconds:
      self.flush()

  def flush(self) -> None:
    """A URL workdir: writes metrics.jsonl, thoughts.jsonl and the event files whole (local ones
    are always flushed)."""
    if not (self.enabled and self.remote):
      return
    self._metrics.flush()
    self._samples.flush()
    self._tb.flush()
    for name in sorted(os.listdir(self._staging)):
      with open(os.path.join(self._staging, name), 'rb') as f:
        paths.write_atomically(paths.join(self.tensorboard_dir, name), f.read())
    self._flushed_at = time.monotonic()

  def close(self) -> None:
    if not self.enabled:
      return
    if self.remote:
      self._tb.close()
      self.flush()
      shutil.rmtree(self._staging, ignore_errors=True)
    else:
      self._metrics.close()
      self._samples.close()
      self._tb.close()


class _StepRows:
  """One JSONL file of rows that carry a `step` (metrics.jsonl, thoughts.jsonl), repaired on
  resume to the rows of steps <= `resume_step` (`_repair`). Local: appended and flushed row by
  row (`create`: the file is opened at once, else on the first row). URL: the rows are kept in
  memory and `flush` writes the whole file (when `create`, or once it has rows)."""

  def __init__(self, path: str, resume_step: int, remote: bool, create: bool):
    self.path = path
    self.remote = remote
    kept = _repair(path, resume_step)
    self._rows = kept if remote else []  # local rows stay in the file
    self._write_on_flush = create
    self._file = None
    if create and not remote:
      self._file = open(path, 'a', encoding='utf-8')

  def append(self, lines: list[str]) -> None:
    if self.remote:
      self._rows.extend(lines)
      self._write_on_flush = True
      return
    if self._file is None:
      self._file = open(self.path, 'a', encoding='utf-8')
    self._file.write(''.join(lines))
    self._file.flush()

  def flush(self) -> None:
    if self.remote and self._write_on_flush:
      paths.write_atomically(self.path, ''.join(self._rows))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def _to_float(value) -> float:
  return float(np.asarray(value))


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
  """Non-finite floats as `null` (JSON has no NaN or Infinity)."""
  return {k: None if isinstance(v, float) and not math.isfinite(v) else v
          for k, v in row.items()}


def _kept_lines(path: str, step: int) -> list[str]:
  """The lines of `path` for steps <= `step`; a last line that is not a whole JSON row (a write
  cut off by a crash) is dropped."""
  lines = paths.read_text(path).split('\n')
  kept = []
  for number, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      row_step = row['step']
    except (ValueError, KeyError, TypeError) as error:
      if any(rest.strip() for rest in lines[number + 1:]):
        raise DataError(f'{path}: line {number + 1} is not a JSON row with a step ({error}); '
                        'move the file away to start it afresh') from None
      break  # the torn last line
    if row_step <= step:
      kept.append(line + '\n')
  return kept


def _repair(path: str, step: int) -> list[str]:
  """Rewrites `path` with the rows of steps <= `step` into a new file and renames it over the old
  one (never truncating the live file); returns the rows kept. Nothing when `path` is absent."""
  if not paths.exists(path):
    return []
  kept = _kept_lines(path, step)
  paths.write_atomically(path, ''.join(kept))
  return kept


def read_step_rows(path: str) -> list[dict[str, Any]]:
  """The rows of a JSONL file of step rows (metrics.jsonl, thoughts.jsonl), in order, without a
  torn last line (a run may be appending to it); a damaged line before the last is one line."""
  return [json.loads(line) for line in _kept_lines(path, math.inf)]


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The rows of `workdir/metrics.jsonl`, in order (non-finite values are `None`)."""
  text = paths.read_text(paths.join(workdir, 'metrics.jsonl'))
  return [json.loads(line) for line in text.split('\n') if line.strip()]


def read_samples(workdir: str) -> list[dict[str, Any]]:
  """The rows of `workdir/thoughts.jsonl` (thought samples, docs/inspect.md), in order."""
  text = paths.read_text(paths.join(workdir, 'thoughts.jsonl'))
  return [json.loads(line) for line in text.split('\n') if line.strip()]
