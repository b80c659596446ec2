"""Orbax checkpoints of the whole train state: periodic, keep-N, resumable."""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves the train state every `every` steps under `directory`, keeping the newest `keep`."""

  def __init__(self, directory: str, every: int, keep: int):
    self.directory = os.path.abspath(directory)
    self.every = every
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """Restores into the structure, shapes, dtypes and shardings of `abstract_state`.

    A checkpoint written before the state counted non-finite steps (no `nonfinite_steps` entry)
    restores with the count 0."""
    step = self.latest_step() if step is None else step
    try:
      return self._restore(abstract_state, step)
    except Exception as error:  # pylint: disable=broad-exception-caught
      if getattr(abstract_state, 'nonfinite_steps', None) is None:
        raise
      try:
        older = self._restore(abstract_state.replace(nonfinite_steps=None), step)
      except Exception:  # pylint: disable=broad-exception-caught
        raise error from None
      return older.replace(nonfinite_steps=jnp.zeros((), jnp.int32))

  def _restore(self, abstract_state: Any, step: int) -> Any:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def maybe_save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves when `step` is a multiple of `every` (or when forced); returns whether it saved."""
    if not force and step % self.every:
      return False
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
