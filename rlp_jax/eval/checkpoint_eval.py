"""Evaluate a run's checkpoint (or the weights `model.init_from` names) and write its report.

`evaluate_checkpoint(config, workdir, step, limit)` loads θ of `step` (default: the latest) from
`workdir/checkpoints`, or, when the workdir holds no checkpoint, the Hugging Face directory or
rlp_jax checkpoint in `model.init_from` (reported as step 0); it evaluates, writes
`workdir/eval/step_N.json` and returns the report. The workdir may be local or a URL (gs://...):
files go through rlp_jax.paths.
"""
from __future__ import annotations

import json
from typing import Any

import ml_collections

from rlp_jax import paths
from rlp_jax.config import validate_config
from rlp_jax.data.corpora import load_documents
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.errors import DataError
from rlp_jax.interop.checkpoint_init import (find_checkpoint_dir, load_init_params,
                                             restore_checkpoint_params)
from rlp_jax.models import registry


def load_evaluated_params(config: ml_collections.ConfigDict, workdir: str,
                          step: int | None) -> tuple[Any, int, str]:
  """(θ, step, a description of where it came from)."""
  workdir = paths.resolve_str(workdir, '--workdir')
  checkpoint_dir = find_checkpoint_dir(workdir) if paths.is_dir(workdir) else None
  if checkpoint_dir is not None:
    params, step = restore_checkpoint_params(checkpoint_dir, config.model, step=step)
    return params, step, f'checkpoint {checkpoint_dir} step {step}'
  if step is not None:
    raise DataError(f'--step={step}: {workdir} holds no checkpoints (looked in {workdir} and '
                    f'{paths.join(workdir, "checkpoints")})')
  if not config.model.init_from:
    raise DataError(f'--workdir {workdir} holds no checkpoints and model.init_from is not set: '
                    'nothing to evaluate')
  params, source = load_init_params(config.model.init_from, config.model)
  return params, 0, source


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                        limit: int | None = None, progress_bar: bool = True) -> dict[str, Any]:
  """Evaluates θ of `step` of the run in `workdir`; writes and returns the report."""
  from rlp_jax.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
  validate_config(config)
  if limit is not None and limit < 1:
    raise DataError(f'--limit must be >= 1, got {limit}')
  workdir = paths.resolve_str(workdir, '--workdir')
  params, step, source = load_evaluated_params(config, workdir, step)
  tokenizer = build_tokenizer(config.tokenizer, config.data, base_model=config.model.init_from)
  graphdef, _ = registry.abstract_params(config.model)
  evaluator = Evaluator(config, graphdef, tokenizer, load_documents(config.data, 'validation'),
                        limit=limit, progress_bar=progress_bar)
  result = evaluator.evaluate(params)
  report = {'step': step, 'weights': source, 'limit': limit, **result}
  path = paths.join(workdir, 'eval', f'step_{step}.json')
  # A kill while writing leaves the previous report whole.
  paths.write_atomically(path, json.dumps(report, indent=2))
  report['path'] = path
  return report
