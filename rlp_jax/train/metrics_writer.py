"""Per-step metrics to a JSONL file and TensorBoard event files (tensorboardX, no TensorFlow)."""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np

from rlp_jax.errors import DataError


class MetricsWriter:
  """Appends one JSON object per logged step to `metrics.jsonl` and scalars to `tensorboard/`.

  On resume, lines for steps after `resume_step` (logged after the last checkpoint by a run that
  was then interrupted) and a torn last line (a write cut off by a crash) are dropped, so the file
  holds each step once. The repaired file is written next to the live one and renamed over it
  (`os.replace`), so a crash during the repair leaves the old file whole; it is never truncated
  in place.

  A non-finite value (a skipped step's NaN loss) is written as JSON `null`, so the file stays
  strict JSON; TensorBoard gets only the finite scalars, and every row carries `nonfinite_step`
  and `nonfinite_steps` (train/nonfinite.py), which show skipped steps there.
  """

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard_dir = os.path.join(workdir, 'tensorboard')
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    _repair(self.jsonl_path, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(self.tensorboard_dir, purge_step=resume_step + 1)
    self._jsonl = open(self.jsonl_path, 'a', encoding='utf-8')

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step)}
    row.update({k: _to_float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(_json_row(row), allow_nan=False) + '\n')
    self._jsonl.flush()
    for name, value in row.items():
      if name != 'step' and math.isfinite(value):
        self._tb.add_scalar(name, value, global_step=step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _to_float(value) -> float:
  return float(np.asarray(value))


def _json_row(row: dict[str, float]) -> dict[str, float | None]:
  """Non-finite values as `null` (JSON has no NaN or Infinity)."""
  return {k: v if math.isfinite(v) else None for k, v in row.items()}


def _kept_lines(path: str, step: int) -> list[str]:
  """The lines of `path` for steps <= `step`; a last line that is not a whole JSON row (a write
  cut off by a crash) is dropped."""
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = f.read().split('\n')
  kept = []
  for number, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      row_step = row['step']
    except (ValueError, KeyError, TypeError) as error:
      if any(rest.strip() for rest in lines[number + 1:]):
        raise DataError(f'{path}: line {number + 1} is not a metrics row ({error}); move the '
                        'file away to start it afresh') from None
      break  # the torn last line
    if row_step <= step:
      kept.append(line + '\n')
  return kept


def _repair(path: str, step: int) -> None:
  """Rewrites `path` with the rows of steps <= `step` into a new file and renames it over the old
  one (never truncating the live file)."""
  if not os.path.exists(path):
    return
  kept = _kept_lines(path, step)
  temporary = f'{path}.tmp'
  try:
    with open(temporary, 'w', encoding='utf-8') as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    if os.path.exists(temporary):
      os.remove(temporary)
    raise
  _fsync_directory(os.path.dirname(path))


def _fsync_directory(directory: str) -> None:
  """Makes the rename durable (where the platform allows opening a directory)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The rows of `workdir/metrics.jsonl`, in order (non-finite values are `None`)."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]
