"""The train state: one pytree holding everything a resumed run needs."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """θ, the EMA teacher φ (None without RLP), optimizer state, step, the training key, the data
  position (index of the next batch) and the count of updates skipped as non-finite
  (train/nonfinite.py).

  The key is stored as raw uint32 key data so that checkpoints hold plain arrays; `next_key`
  wraps it, splits it, and the step stores the new half back.
  """
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any  # nested dict of arrays (θ)
  opt_state: optax.OptState
  rng: jax.Array  # uint32 key data
  data_position: jax.Array  # int32 scalar: index of the next batch to read
  teacher_params: Any = None  # φ, same structure as params
  nonfinite_steps: Any = None  # int32 scalar: updates skipped for a non-finite loss or update

  def next_key(self) -> tuple['TrainState', jax.Array]:
    """Splits the training key: returns the state with the advanced key and a fresh subkey."""
    key, sub = jax.random.split(jax.random.wrap_key_data(self.rng))
    return self.replace(rng=jax.random.key_data(key)), sub


def create_train_state(params: Any, tx: optax.GradientTransformation, seed: int,
                       with_teacher: bool = False) -> TrainState:
  """Step 0; with a teacher, φ starts as a copy of θ."""
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=jax.random.key_data(jax.random.key(seed)),
      data_position=jnp.zeros((), jnp.int32),
      teacher_params=jax.tree.map(jnp.copy, params) if with_teacher else None,
      nonfinite_steps=jnp.zeros((), jnp.int32),
  )


def constrain_state(state: TrainState, sharding: TrainState | None) -> TrainState:
  """Pins the state's layout inside a jitted step (no-op without a mesh), so every step returns
  the state in the sharding it came in with and the step compiles once."""
  if sharding is None:
    return state
  return jax.lax.with_sharding_constraint(state, sharding)
