"""`python -m rlp_jax.eval --config=configs/X.py --workdir=RUN [--step=N] [--limit=N]`.

Evaluates θ of a run's checkpoint (default: the latest; or the weights `model.init_from` names
when the workdir holds none) on the configured corpus's validation split and the benchmark files
in `eval.benchmarks`, prints the table and writes RUN/eval/step_N.json (docs/evaluation.md).
Bad input stops with one line naming the problem and exit status 2.
"""
from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from rlp_jax.cli import config_from_flags, fail, flags_parser
from rlp_jax.errors import UserInputError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'ml_collections config file of the run (default: configs/tiny.py, shipped '
    'with rlp_jax; a relative configs/NAME.py that the working directory lacks is read from the '
    'shipped copy); override keys with --config.a.b=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'The run directory whose checkpoints/ to '
                               'evaluate; the report goes to WORKDIR/eval/step_N.json.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to evaluate (default: the latest).')
_LIMIT = flags.DEFINE_integer('limit', None, 'Evaluate at most N held-out documents and N '
                              'problems per source (default: eval.num_documents / '
                              'eval.num_problems).')


def main(argv: list[str]) -> None:
  config = config_from_flags(argv, _CONFIG)
  if not _WORKDIR.value:
    fail('--workdir is required (the run directory to evaluate)')
  from rlp_jax.eval.checkpoint_eval import evaluate_checkpoint  # pylint: disable=import-outside-toplevel
  from rlp_jax.eval.evaluator import format_table  # pylint: disable=import-outside-toplevel
  from rlp_jax.train import startup_checks  # pylint: disable=import-outside-toplevel
  try:
    startup_checks.check_workdir(_WORKDIR.value)  # a file, or under one: one line, nothing loaded
    report = evaluate_checkpoint(config, _WORKDIR.value, _STEP.value, _LIMIT.value)
  except UserInputError as error:
    fail(str(error))
  except KeyboardInterrupt:
    sys.exit(130)
  print(f"[rlp_jax.eval] {report['weights']}")
  for line in format_table(report['metrics']):
    print(line)
  print(f"[rlp_jax.eval] wrote {report['path']}")


def run() -> None:
  logging.set_verbosity(logging.ERROR)  # orbax warns on every read-only checkpoint manager
  app.run(main, flags_parser=flags_parser)


if __name__ == '__main__':
  run()
