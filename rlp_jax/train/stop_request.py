"""SIGTERM and SIGINT at any moment of a run: stop at the next step boundary with a checkpoint.

What a run does on a signal (docs/failure_modes.md, "Signals"):
- The first SIGTERM (preemption, SLURM, `docker stop`) or SIGINT (Ctrl-C) only sets a request and
  prints one line. Nothing is raised inside JAX calls, so a compile or a donated step is never cut
  in half. During start-up the run stops before its first step (nothing new to save); during
  training it finishes the current step, saves a checkpoint at it (unless that step was just
  saved) and stops. `RunStopped` carries the one-line outcome and the exit status: 0 for SIGTERM
  (a scheduler's stop is a success), 130 for SIGINT.
- A second signal stops at once without saving, unless a checkpoint is being written: then the
  run exits as soon as that checkpoint is complete (a third signal exits at once). Either way the
  newest checkpoint on disk is complete (orbax writes to a temp dir and renames it); a temp dir
  left by the third signal is removed at the next start.

Signals are handled on a watcher thread fed by `signal.set_wakeup_fd` (one byte per delivered
signal), not by a Python handler, which runs only on the main thread between bytecodes: a second
Ctrl-C during a ten-minute compile still exits at once. Where the wakeup fd is already taken (an
asyncio loop, a notebook kernel) the Python handler does the same work, when the main thread
returns to Python.

On several processes each one receives its own signals; `requested_everywhere()` (an all-gather of
one flag at each step boundary) makes them all stop after the same step.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
from typing import Callable

import jax
import numpy as np

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_EXIT_STATUS = {signal.SIGTERM: 0, signal.SIGINT: 130}


class RunStopped(Exception):
  """The run stopped on a signal; `message` is the one line to print, `exit_status` the code."""

  def __init__(self, message: str, exit_status: int):
    super().__init__(message)
    self.message = message
    self.exit_status = exit_status


def _write(line: str) -> None:
  for stream in (sys.stdout, sys.stderr):
    with contextlib.suppress(Exception):
      stream.flush()
  # os.write: safe from a signal handler and from the watcher thread while the main thread holds
  # the stdout buffer's lock.
  with contextlib.suppress(OSError):
    os.write(sys.stdout.fileno(), f'[rlp_jax] {line}\n'.encode())


class StopRequest:
  """Context manager that installs the handlers (main thread only) and restores the old ones.

  The loop asks `requested_everywhere()` at each step boundary, wraps each checkpoint save in
  `saving()`, and reports what was saved through `latest_checkpoint` (a callable returning the
  newest complete step or None), `save_in_flight` and `wait_for_saves`, which it sets once the
  checkpointer exists.
  """

  active: 'StopRequest | None' = None  # the installed one (for signal_points.py)

  def __init__(self, say: Callable[[str], None] = _write, uninstall: bool = True):
    """`uninstall=False` (the command line) keeps the handlers after the block, until the process
    ends: a second signal during the interpreter's shutdown still exits at once, with the status
    of the first."""
    self._uninstall = uninstall
    self.signum: int | None = None  # the first signal received
    self.count = 0  # signals handled so far
    self.latest_checkpoint: Callable[[], int | None] = lambda: None
    self.save_in_flight: Callable[[], bool] = lambda: False
    self.wait_for_saves: Callable[[], None] = lambda: None
    self._say = say
    # Set by a command with nothing to save (`--dry_run`): the first signal exits at once.
    self.nothing_to_save: str | None = None
    self._lock = threading.RLock()
    self._in_save_call = False
    self._exit_after_save = False
    self._exiting = False
    self._previous: dict[int, object] = {}
    self._previous_wakeup_fd: int | None = None
    self._sockets: tuple[socket.socket, socket.socket] | None = None

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signum).name if self.signum is not None else ''

  @property
  def exit_status(self) -> int:
    return _EXIT_STATUS.get(self.signum, 1)

  # -- installation --------------------------------------------------------------------------

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is not threading.main_thread():
      return self  # signal handlers can only be installed from the main thread
    for signum in _SIGNALS:
      self._previous[signum] = signal.signal(signum, self._python_handler)
    self._start_watcher()
    StopRequest.active = self
    return self

  def __exit__(self, *exc) -> None:
    if not self._uninstall:
      return
    if StopRequest.active is self:
      StopRequest.active = None
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
    if self._sockets is not None:
      signal.set_wakeup_fd(self._previous_wakeup_fd)
      for sock in self._sockets:
        sock.close()  # the watcher's recv returns and it ends
      self._sockets = None

  def reinstall(self) -> None:
    """Takes SIGTERM and SIGINT back after something replaced the handlers: `jax.distributed.
    initialize` installs its preemption notifier on SIGTERM, which would swallow the signal."""
    if self._previous:
      for signum in _SIGNALS:
        signal.signal(signum, self._python_handler)

  def _start_watcher(self) -> None:
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    if previous != -1:  # someone else (an asyncio loop, a notebook kernel) uses the wakeup fd
      signal.set_wakeup_fd(previous)
      reader.close()
      writer.close()
      return
    self._previous_wakeup_fd = previous
    self._sockets = (reader, writer)
    threading.Thread(target=self._watch, args=(reader,), name='rlp_jax-signals',
                     daemon=True).start()

  # -- handling ------------------------------------------------------------------------------

  def _python_handler(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if self._sockets is None:  # no watcher (the wakeup fd is someone else's): handle it here
      self._handle(signum)

  def _watch(self, reader: socket.socket) -> None:
    while True:
      try:
        data = reader.recv(64)
      except OSError:
        return
      if not data:
        return
      for signum in data:  # one byte per delivered signal (the Python handler coalesces them)
        if signum in _EXIT_STATUS:
          self._handle(signum)

  def _handle(self, signum: int) -> None:
    with self._lock:
      self.count += 1
      name = signal.Signals(signum).name
      if self.count == 1 and self.nothing_to_save:
        self.signum = signum
        self._say(f'{name}: {self.nothing_to_save} stopped; nothing to save')
        os._exit(self.exit_status)  # pylint: disable=protected-access
      if self.count == 1:
        self.signum = signum
        self._say(f'{name}: stopping at the end of this step with a checkpoint '
                  f'({name} again to exit at once)')
        return
      saving = self._in_save_call or self.save_in_flight()
      if self.count == 2 and saving:
        self._say(f'{name} again: a checkpoint is being written; exiting as soon as it is '
                  'complete (a third signal exits at once)')
        if self._in_save_call:
          self._exit_after_save = True  # the main thread exits when the save returns
          return
        self._exiting = True  # the main thread must not start another save meanwhile
    if self.count == 2 and saving:
      while self.save_in_flight():  # an asynchronous commit on orbax's thread
        time.sleep(0.02)
    self.exit_now(f'{name} again')

  def exit_now(self, reason: str) -> None:
    """Exits the process at once, without saving: one line naming the newest checkpoint."""
    latest = self.latest_checkpoint()
    where = (f'the latest complete checkpoint is step {latest}' if latest is not None
             else 'no checkpoint was written')
    self._say(f'{reason}: exited at once; {where}')
    os._exit(self.exit_status)  # pylint: disable=protected-access

  # -- what the loop calls -------------------------------------------------------------------

  @contextlib.contextmanager
  def saving(self):
    """Marks a checkpoint save on the main thread; a second signal inside waits for its end."""
    with self._lock:
      exiting = self._exiting
      self._in_save_call = not exiting
    if exiting:  # the watcher thread is exiting the process once orbax's commit is complete
      threading.Event().wait()
    try:
      yield
    finally:
      with self._lock:
        self._in_save_call = False
        exit_now = self._exit_after_save
    if exit_now:
      self.wait_for_saves()
      self.exit_now(f'{self.signal_name} again')

  def requested_everywhere(self) -> bool:
    """Whether any process received a signal (every process must call this at the same step)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    flags = multihost_utils.process_allgather(np.array(self.requested, np.int32))
    if np.any(flags) and not self.requested:
      self.signum = signal.SIGTERM  # another process was told to stop: stop as it does
    return bool(np.any(flags))

  def stopped(self, message: str) -> RunStopped:
    return RunStopped(f'stopped by {self.signal_name} {message}', self.exit_status)
