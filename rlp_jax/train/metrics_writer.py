"""Per-step metrics to a JSONL file and TensorBoard event files (tensorboardX, no TensorFlow)."""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

import numpy as np


class MetricsWriter:
  """Appends one JSON object per logged step to `metrics.jsonl` and scalars to `tensorboard/`.

  On resume, lines for steps after `resume_step` (logged after the last checkpoint by a run that
  was then interrupted) are dropped, so the file holds each step once.
  """

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
    self.jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    self.tensorboard_dir = os.path.join(workdir, 'tensorboard')
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    _truncate_after(self.jsonl_path, resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._tb = SummaryWriter(self.tensorboard_dir, purge_step=resume_step + 1)
    self._jsonl = open(self.jsonl_path, 'a', encoding='utf-8')

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step)}
    row.update({k: _to_float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + '\n')
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


def _truncate_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path, encoding='utf-8') as f:
    kept = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
  with open(path, 'w', encoding='utf-8') as f:
    f.writelines(kept)


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The rows of `workdir/metrics.jsonl`, in order."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]
