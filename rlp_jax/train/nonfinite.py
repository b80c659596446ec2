"""Skipping a non-finite update inside the jitted step (docs/objective.md, "Non-finite steps").

An update whose loss, gradient norm or optimizer update is not finite (NaN or ±inf) keeps θ, φ
and the optimizer state of the state it started from, bitwise: each leaf is chosen with
`jnp.where` on one scalar predicate, so nothing is synchronised with the host. The key, the data
position and `step` still advance (the batch is consumed, checkpoints stay numbered by batch), and
`TrainState.nonfinite_steps` counts the skipped updates (it is saved with the checkpoint).

Not `optax.apply_if_finite`: it tests the gradients only (an infinite or NaN learning rate gives
finite gradients and a NaN update), it leaves φ's EMA and the rest of the state to the caller,
it applies `p + 0` (which turns −0.0 into +0.0, so θ is not bitwise unchanged) and after
`max_consecutive_errors` it applies the non-finite update; here the loop stops instead
(`train.max_nonfinite_steps`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from rlp_jax.train.state import TrainState


def all_finite(tree: Any) -> jax.Array:
  """True when every element of every leaf is finite (per leaf, so no sum can overflow)."""
  leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def keep_finite_update(old: TrainState, new: TrainState, loss: jax.Array, grad_norm: jax.Array,
                       updates: Any) -> tuple[TrainState, dict[str, jax.Array]]:
  """`new`, or `new` with θ, φ and the optimizer state of `old` when the update is not finite;
  and the metrics `nonfinite_step` (1.0 skipped, 0.0 applied) and `nonfinite_steps` (the run's
  count of skipped updates, `old`'s plus this one)."""
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(updates)
  keep = lambda n, o: jnp.where(finite, n, o)  # noqa: E731
  count = old.nonfinite_steps + jnp.where(finite, 0, 1).astype(old.nonfinite_steps.dtype)
  state = new.replace(
      params=jax.tree.map(keep, new.params, old.params),
      opt_state=jax.tree.map(keep, new.opt_state, old.opt_state),
      teacher_params=(None if new.teacher_params is None
                      else jax.tree.map(keep, new.teacher_params, old.teacher_params)),
      nonfinite_steps=count)
  metrics = {'nonfinite_step': jnp.where(finite, 0.0, 1.0).astype(jnp.float32),
             'nonfinite_steps': count.astype(jnp.float32)}
  return state, metrics
