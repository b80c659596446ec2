"""Named moments of the loop at which the signal tests deliver SIGTERM / SIGINT to the run itself.

`RLP_JAX_SIGNAL_AT=POINT@STEP:SIGNAME[xCOUNT]` (e.g. `after_save_check@3:SIGINTx2`) makes the
process send itself COUNT signals when it reaches POINT at loop step STEP, each one handled before
the run goes on, so a test hits a moment no external timing could (tests/test_signals.py).
SIGKILL ends the process there and then, as `kill -9` would (tests/test_data_resume.py).
Points: `after_save_check` (the step's checkpoint decision is taken, the next step not begun) and
`during_save` (inside a checkpoint save, after orbax started writing). Unset, `reached` is a
dictionary lookup.
"""
from __future__ import annotations

import os
import re
import signal
import time

ENV = 'RLP_JAX_SIGNAL_AT'
_SPEC = re.compile(r'^(\w+)@(\d+):(SIGTERM|SIGINT|SIGKILL)(?:x(\d+))?$')


def _parse(spec: str) -> tuple[str, int, int, int] | None:
  match = _SPEC.match(spec.strip())
  if not match:
    raise ValueError(f'{ENV}={spec!r}: expected POINT@STEP:SIGTERM|SIGINT|SIGKILL[xCOUNT]')
  point, step, name, count = match.groups()
  return point, int(step), int(getattr(signal, name)), int(count or 1)


def reached(point: str, step: int) -> None:
  spec = os.environ.get(ENV)
  if not spec:
    return
  target, target_step, signum, count = _parse(spec)
  if (target, target_step) != (point, step):
    return
  from rlp_jax.train.stop_request import StopRequest  # pylint: disable=import-outside-toplevel
  stop = StopRequest.active
  for _ in range(count):
    handled = stop.count if stop is not None else 0
    os.kill(os.getpid(), signum)
    deadline = time.monotonic() + 5.0
    while stop is not None and stop.count <= handled and time.monotonic() < deadline:
      time.sleep(0.005)  # the watcher thread handles it
