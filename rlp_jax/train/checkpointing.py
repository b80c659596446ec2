"""Orbax checkpoints of the whole train state: periodic, keep-N, verified on restore.

Each step directory holds up to three orbax items: `default`, the train state (StandardSave; the
name keeps the directory readable by a plain `CheckpointManager(...).restore(step)` and by
`interop/checkpoint_init.py`), `record`, a small JSON file with the checksum of every array
that was saved (train/state_checksum.py) and the caller's run record (config, tokenizer, data),
and `data`, the data loader's iterator state, one JSON file per process
(`process_<i>-of-<n>.json`, written by Grain's orbax handler; data/loader.py).

`restore_latest` tries the newest step first. A step whose tree (structure, shapes, dtypes) does
not fit the configured state is an error (the model changed: CheckpointError, the step is left as
it is). A step that orbax cannot read, or whose arrays do not match the recorded checksums, is
damaged and the next older step is tried; once one restores intact, each damaged newer step is
moved to `<checkpoints>/damaged/<step>` with a one-line warning (orbax no longer lists it, so a
later save of that step number and keep-N pruning work). If none is intact, CheckpointError names
the damaged steps and nothing is moved. A step written before the record existed (only the
`default` item) restores unverified, with a warning.

On several processes every process takes the same decision: each process's outcome (its own read
may be the only one to hit a damaged file) is gathered before anything is moved, only process 0
moves the directory, then all of them wait for it.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from rlp_jax import paths
from rlp_jax.errors import CheckpointError
from rlp_jax.models.layer_stack import (LayerPlan, other_layout, relayout_arrays, to_layout,
                                        tree_is_scanned)
from rlp_jax.parallel.distributed import is_primary_process, say
from rlp_jax.train.state_checksum import first_difference, leaf_name, state_checksums

STATE_ITEM = 'default'  # orbax's name for a single item: plain readers find the state here
RECORD_ITEM = 'record'
DATA_ITEM = 'data'  # the data iterator's state, one file per process (grain's handler)
RECORD_VERSION = 1
DAMAGED_DIR = 'damaged'
_MARKER = {'rlp_jax_record': RECORD_VERSION}  # the state item's custom metadata: a record exists


def _first_line(error: BaseException, limit: int = 300) -> str:
  """'Type: first line' of the innermost cause (tensorstore's own error, not orbax's wrapper)."""
  seen = [error]
  while (seen[-1].__cause__ or seen[-1].__context__) is not None and len(seen) < 10:
    seen.append(seen[-1].__cause__ or seen[-1].__context__)
  error = seen[-1]
  text = str(error).strip()
  line = text.splitlines()[0].strip() if text else ''
  line = f'{type(error).__name__}: {line}' if line else type(error).__name__
  return line if len(line) <= limit else line[:limit - 3] + '...'


_TEXT_BYTES = 512


def _gather(code: int, text: str = '') -> list[tuple[int, str]]:
  """Every process's (code, text), in process order (no collective on one process)."""
  if jax.process_count() == 1:
    return [(code, text)]
  raw = np.zeros(_TEXT_BYTES + 1, np.uint8)
  encoded = text.encode('utf-8')[:_TEXT_BYTES]
  raw[0], raw[1:1 + len(encoded)] = code, np.frombuffer(encoded, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(raw)).reshape(-1, _TEXT_BYTES + 1)
  return [(int(row[0]), bytes(row[1:]).rstrip(b'\0').decode('utf-8', 'replace')) for row in rows]


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], str]:
  dtype = getattr(leaf, 'dtype', None)
  return tuple(getattr(leaf, 'shape', ())), str(np.dtype(dtype)) if dtype is not None else '?'


def _describe(shape_dtype: tuple[tuple[int, ...], str]) -> str:
  shape, dtype = shape_dtype
  return f'{shape} {dtype}'


def _first_reason(outcomes: list[tuple[int, str]]) -> str:
  """The reason of the first process that found damage (named when it is not process 0)."""
  for process, (code, text) in enumerate(outcomes):
    if code:
      return text if process == 0 else f'on process {process}: {text}'
  return ''


class _DataStateSnapshot:
  """The data iterator's state when the save was requested, for Grain's orbax handler (which
  calls `get_state()`; orbax may run it after the loop has moved on). JSON bytes, as Grain's
  DataLoader iterators give."""

  def __init__(self, state: dict):
    self._state = json.dumps(state, indent=1).encode()

  def get_state(self) -> bytes:
    return self._state


class _Damaged(Exception):
  """A step that cannot be restored as written (the message is the one-line reason)."""


class Checkpointer:
  """Saves the train state every `every` steps under `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str, every: int, keep: int):
    # Grain's orbax handler for the data item (imported here: grain is only needed to train).
    from grain import checkpoint as grain_checkpoint  # pylint: disable=import-outside-toplevel
    self.directory = paths.resolve_str(directory, 'checkpoint directory')  # local or a URL
    self.every = every
    self._manager = ocp.CheckpointManager(
        paths.as_path(self.directory),
        item_handlers={STATE_ITEM: ocp.StandardCheckpointHandler(),
                       RECORD_ITEM: ocp.JsonCheckpointHandler(),
                       DATA_ITEM: grain_checkpoint.CheckpointHandler()},
        # cleanup_tmp_directories: a save killed half-way leaves `<step>.orbax-checkpoint-tmp-*`
        # behind; it is removed when the next run opens the directory.
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True),
    )
    self._state_handler = ocp.StandardCheckpointHandler()  # reads, see `_read`
    self._record_handler = ocp.JsonCheckpointHandler()
    # orbax starts that clean-up in a thread and waits for it at the first save; wait now, so
    # nothing of a killed save is left once the run has started (private in orbax 0.12.8).
    getattr(self._manager, '_maybe_await_cleanup_tmp_directory', lambda: None)()

  @property
  def damaged_directory(self) -> str:
    return paths.join(self.directory, DAMAGED_DIR)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  # -------------------------------------------------------------------------------------------
  # Saving.

  def maybe_save(self, step: int, state: Any, force: bool = False,
                 record: dict | None = None, data_state: dict | None = None) -> bool:
    """Saves when `step` is a multiple of `every` (or when forced); returns whether it saved.

    `record` (JSON-serialisable) is stored next to the state with the checksums of its arrays;
    `restore_latest` returns it. `data_state`, this process's data iterator state (JSON), is
    stored as this process's file of the `data` item (`restore_data_state` reads it back)."""
    if not force and step % self.every:
      return False
    if step in self._manager.all_steps():
      return False
    contents = {'version': RECORD_VERSION, 'step': int(step),
                'checksums': state_checksums(state), 'record': record}
    try:
      json.dumps(contents)
    except (TypeError, ValueError) as error:
      raise TypeError(f'Checkpointer.maybe_save: `record` is not JSON-serialisable ({error})'
                      ) from error
    items = {STATE_ITEM: ocp.args.StandardSave(state, custom_metadata=dict(_MARKER)),
             RECORD_ITEM: ocp.args.JsonSave(contents)}
    if data_state is not None:
      from grain import checkpoint as grain_checkpoint  # pylint: disable=import-outside-toplevel
      items[DATA_ITEM] = grain_checkpoint.CheckpointSave(_DataStateSnapshot(data_state))
    return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore_data_state(self, step: int) -> tuple[dict | None, str]:
    """(this process's data iterator state saved with `step`, '') or (None, why there is none):
    the step has no data item (written before it existed), or none for this number of processes
    (the job had another; the reason names both counts)."""
    directory = paths.as_path(paths.join(self.directory, str(step), DATA_ITEM))
    index, count = jax.process_index(), jax.process_count()
    if not directory.is_dir():
      return None, f'checkpoint {step} holds no data loader state (written by an older rlp_jax)'
    path = directory / f'process_{index}-of-{count}.json'
    if not path.exists():
      counts = sorted({name.name.rsplit('-of-', 1)[-1].removesuffix('.json')
                       for name in directory.glob('process_*-of-*.json')})
      return None, (f'checkpoint {step} holds the data loader state of {" or ".join(counts)} '
                    f'processes and this job has {count}')
    try:
      return json.loads(path.read_text()), ''
    except Exception as error:  # pylint: disable=broad-exception-caught  # any backend's error
      return None, f'the data loader state {path} is unreadable ({_first_line(error)})'


  # -------------------------------------------------------------------------------------------
  # Restoring.

  def restore_latest(self, abstract_state: Any,
                     check_record: Callable[[dict | None, int], None] | None = None,
                     layout: LayerPlan | None = None,
                     ) -> tuple[Any, int, dict | None] | None:
    """(state, step, record) of the newest intact step, None when there is no checkpoint.

    Restores into the structure, shapes, dtypes and shardings of `abstract_state`. With `layout`
    (the model's layer plan), a step saved in the other layer layout (`model.scan_layers`) is
    read in its own layout, verified, then moved into `abstract_state`'s. `record` is
    what `maybe_save` was given (None for a step written before records existed);
    `check_record(record, step)`, when given, sees it before the step's arrays are read or its
    tree is compared with `abstract_state`, and may raise (its exception is passed on as it is).

    Damaged steps newer than the one restored are moved to `damaged/`, each with a one-line
    warning. When no step is intact, CheckpointError names them all and nothing is moved (an
    error that is not the files' fault, a file system not mounted, must not rearrange the
    directory). CheckpointError too when a step does not fit `abstract_state` (the model
    changed); that step is left as it is."""
    self._manager.reload()
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    damaged = []
    for step in steps:
      outcome = self._attempt(abstract_state, step, check_record, layout)
      if isinstance(outcome, str):
        damaged.append((step, outcome))
        continue
      for damaged_step, reason in damaged:
        moved = self._move_aside(damaged_step, reason)
        following = steps[steps.index(damaged_step) + 1]
        say(f'warning: checkpoint step {damaged_step} is damaged ({reason}); moved it to '
             f'{moved} and falling back to step {following}')
      state, record = outcome
      return state, step, record
    listed = ', '.join(str(step) for step, _ in damaged)
    reasons = '; '.join(f'step {step}: {reason}' for step, reason in damaged)
    raise CheckpointError(
        f'no intact checkpoint in {self.directory}: steps {listed} are damaged ({reasons}); '
        'delete or move them to start over, or use another --workdir')

  def restore(self, abstract_state: Any, step: int | None = None,
              layout: LayerPlan | None = None) -> Any:
    """The state of `step` (default: the latest), verified like `restore_latest` but without
    falling back: CheckpointError when it is damaged (it is not moved).

    A checkpoint written before the state counted non-finite steps (no `nonfinite_steps` entry)
    restores with the count 0."""
    self._manager.reload()
    step = self.latest_step() if step is None else step
    if step is None or step not in self._manager.all_steps():
      raise CheckpointError(f'{self.directory} has no checkpoint of step {step} '
                            f'(steps: {self.all_steps()})')
    outcome = self._attempt(abstract_state, step, None, layout)
    if isinstance(outcome, str):
      raise CheckpointError(f'checkpoint step {step} in {self.directory} is damaged ({outcome})')
    return outcome[0]

  def _attempt(self, abstract_state: Any, step: int,
               check_record: Callable[[dict | None, int], None] | None,
               layout: LayerPlan | None = None) -> tuple[Any, dict | None] | str:
    """(state, record) of `step`, or the reason it is damaged (the same on every process)."""
    # 1. The tree metadata and the record (small files): unreadable means damaged.
    reason, plan = None, None
    try:
      plan = self._plan(abstract_state, step, layout)
    except _Damaged as error:
      reason = str(error)
    except Exception as error:  # pylint: disable=broad-exception-caught
      reason = f'cannot read its metadata: {_first_line(error)}'
    outcomes = _gather(1 if reason else 0, reason or '')
    if any(code for code, _ in outcomes):
      return _first_reason(outcomes)
    target, legacy_count, contents, mismatch, relayout = plan
    record = contents.get('record') if contents is not None else None
    if check_record is not None:
      check_record(record, step)
    if mismatch:  # the model changed: an error, not damage (the same on every process)
      raise CheckpointError(
          f'checkpoint step {step} in {self.directory} does not fit the configured state: '
          f'{mismatch}; the model shape changed since the checkpoint was written (use the config '
          'it was written with, or another --workdir)')

    # 2. The arrays: any error of orbax or tensorstore means damage.
    state = None
    try:
      state = self._read(step, target)
    except Exception as error:  # pylint: disable=broad-exception-caught
      reason = f'reading it failed: {_first_line(error)}'
    outcomes = _gather(1 if reason else 0, reason or '')
    if any(code for code, _ in outcomes):
      return _first_reason(outcomes)

    # 3. The checksums (computed on the devices; the same numbers on every process).
    if contents is not None:
      differing = first_difference(contents['checksums'], state_checksums(state))
      if differing is not None:
        return f'checksum of {differing} differs'
    else:
      say(f'warning: checkpoint step {step} was written without checksums (by an older rlp_jax); '
           'restored it unverified')
    if legacy_count:
      state = state.replace(nonfinite_steps=jnp.zeros((), jnp.int32))
    if relayout is not None:  # saved in the other layer layout: now into the configured one
      state = relayout_arrays(state, layout, relayout)
    return state, record

  def _plan(self, abstract_state: Any, step: int, layout: LayerPlan | None = None,
            ) -> tuple[Any, bool, dict | None, str | None, Any]:
    """(restore target, whether the step predates `nonfinite_steps`, the record's contents or
    None for a step without one, how the stored tree differs from `abstract_state` or None, and
    the configured state's shapes and shardings when the step is in the other layer layout,
    else None)."""
    step_dir = self._step_path(step)
    metadata = self._state_handler.metadata(step_dir / STATE_ITEM)
    custom = getattr(metadata, 'custom_metadata', None) or {}
    contents = None
    if custom.get('rlp_jax_record') is not None or (step_dir / RECORD_ITEM).is_dir():
      try:
        contents = self._record_handler.restore(step_dir / RECORD_ITEM,
                                                args=ocp.args.JsonRestore())
      except Exception as error:  # pylint: disable=broad-exception-caught
        raise _Damaged(f'cannot read its record: {_first_line(error)}') from error
      if not (isinstance(contents, dict) and isinstance(contents.get('checksums'), dict)):
        raise _Damaged('its record holds no checksums')
    relayout = None
    stored_scanned = None if layout is None else tree_is_scanned(metadata.tree)
    if stored_scanned is not None and stored_scanned != layout.scanned:
      abstract_state = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
      relayout = abstract_state
      abstract_state = to_layout(abstract_state, other_layout(layout))
    stored = {leaf_name(path): _shape_dtype(leaf)
              for path, leaf in jax.tree_util.tree_leaves_with_path(metadata.tree)}
    configured = {leaf_name(path): _shape_dtype(leaf)
                  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)}
    legacy_count = ('nonfinite_steps' in configured and 'nonfinite_steps' not in stored
                    and getattr(abstract_state, 'nonfinite_steps', None) is not None)
    if legacy_count:
      del configured['nonfinite_steps']
      abstract_state = abstract_state.replace(nonfinite_steps=None)
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    for name, now in configured.items():
      then = stored.get(name)
      if then != now:
        saved = 'is not in the checkpoint' if then is None else f'is {_describe(then)} there'
        return target, legacy_count, contents, (f'{name} {saved} and {_describe(now)} in the '
                                                'configured state'), relayout
    for name, then in stored.items():
      if name not in configured:
        return (target, legacy_count, contents,
                f'{name} ({_describe(then)}) is in the checkpoint but not in the configured state',
                relayout)
    return target, legacy_count, contents, None, relayout

  def _read(self, step: int, target: Any) -> Any:
    # The item's own handler, not `CheckpointManager.restore`: after reading, the manager waits
    # at a barrier made of a device collective, which a process whose read failed never reaches
    # (the processes' collectives would pair up wrongly). The handler reads without collectives;
    # `_attempt` gathers every process's outcome afterwards.
    return self._state_handler.restore(self._step_path(step) / STATE_ITEM,
                                       args=ocp.args.StandardRestore(target))

  def _step_path(self, step: int) -> Any:
    """The step's directory as orbax's path type (etils.epath.Path): `<directory>/<step>`."""
    return paths.as_path(paths.join(self.directory, str(step)))

  def _move_aside(self, step: int, reason: str) -> str:
    """Moves the step directory under damaged/ (process 0; the others wait); returns where."""
    source = paths.join(self.directory, str(step))
    destination = paths.join(self.damaged_directory, str(step))
    suffix = 1
    while paths.exists(destination):
      suffix += 1
      destination = paths.join(self.damaged_directory, f'{step}.{suffix}')
    failure = ''
    if is_primary_process():
      # Local: one atomic rename. An object store renames by copying every file, then deleting
      # the source: a crash between leaves a partial copy under damaged/ (orbax ignores it) and
      # the step where it was, found damaged again and moved at the next start.
      try:
        paths.makedirs(self.damaged_directory)
        paths.rename(source, destination)
      except Exception as error:  # pylint: disable=broad-exception-caught  # any backend's error
        failure = _first_line(error)
    failed = _gather(1 if failure else 0)  # every process learns whether process 0 moved it
    _sync(f'rlp_jax: damaged checkpoint {step} moved aside')
    if any(code for code, _ in failed):
      raise CheckpointError(
          f'checkpoint step {step} in {self.directory} is damaged ({reason}) and could not be '
          f'moved to {destination}' + (f' ({failure})' if failure else '') + '; move or delete it')
    self._manager.reload()
    return destination

  def save_in_progress(self) -> bool:
    """Whether orbax is still writing a step in the background (asynchronous commit)."""
    return self._manager.is_saving_in_progress()

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
    self._state_handler.close()
    self._record_handler.close()
