"""Shardings of the train state, creating it already sharded, and the jitted step wrapper.

θ, φ and the optimizer state are created inside one jit whose out_shardings come from the
parameters' logical axes and the rules table, so no host ever holds a whole large model.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from rlp_jax.models import registry
from rlp_jax.parallel.logical_rules import rules_table, tree_shardings
from rlp_jax.parallel.batch_sharding import batch_sharding, replicated
from rlp_jax.train.state import TrainState, create_train_state


def param_shardings(model_config: ml_collections.ConfigDict, mesh: Mesh, rules) -> Any:
  """NamedShardings of θ (and φ), from each parameter's logical axes."""
  _, shapes = registry.abstract_params(model_config)
  return tree_shardings(registry.param_logical_axes(model_config), shapes, mesh,
                        rules_table(rules))


def state_shardings(abstract_state: TrainState, params_sharding: Any, tx: optax.GradientTransformation,
                    mesh: Mesh) -> TrainState:
  """Shardings for every leaf of the train state: optimizer moments follow their parameters."""
  rep = replicated(mesh)
  opt_sharding = optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_state.opt_state, params_sharding,
      transform_non_params=lambda _: rep)
  return TrainState(
      step=rep, params=params_sharding, opt_state=opt_sharding, rng=rep, data_position=rep,
      teacher_params=None if abstract_state.teacher_params is None else params_sharding,
      nonfinite_steps=rep)


def create_sharded_state(model_config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                         seed: int, with_teacher: bool, mesh: Mesh, rules,
                         init_params: Callable[[], Any] | None = None,
                         ) -> tuple[TrainState, TrainState]:
  """(state, its shardings), with every array created directly in its sharded layout.

  `init_params` returns θ (default: a fresh random init from `seed`); it runs inside the jit.
  """
  if init_params is None:
    init_params = lambda: registry.init_params(model_config, seed)[1]  # noqa: E731

  def create() -> TrainState:
    return create_train_state(init_params(), tx, seed, with_teacher=with_teacher)

  abstract = jax.eval_shape(create)
  shardings = state_shardings(abstract, param_shardings(model_config, mesh, rules), tx, mesh)
  return jax.jit(create, out_shardings=shardings)(), shardings


class StepJit:
  """`jax.jit` of a step `fn(state, batch, *more) -> (state, outputs)` with explicit in/out
  shardings and the state donated.

  in_shardings: the state's `state_sharding`, the batch's documents sharding (every leaf [B, L]
  split over the batch axes by `rules`; as it arrives without rules), and for further arguments (the rollout, produced on the mesh by the
  rollout step) the shardings they arrive with on the first call or `lower`; out_shardings: the
  state in `state_sharding`, the rest as the partitioner chooses. Without a mesh
  (`state_sharding` None) it is a plain jit. An input in another layout than the one the step was
  compiled for is an error (jit's), not a silent recompile.
  """

  def __init__(self, fn: Callable, state_sharding: Any, rules: Any):
    self.fn = fn
    self.state_sharding = state_sharding
    self.rules = rules
    self._jitted = None if state_sharding is not None else jax.jit(fn, donate_argnums=0)

  def jitted(self, args: tuple[Any, ...]) -> Any:
    if self._jitted is None:
      mesh = jax.tree.leaves(self.state_sharding)[0].mesh
      arrived = lambda arg: jax.tree.map(lambda x: x.sharding, arg)
      documents = (arrived(args[1]) if self.rules is None
                   else batch_sharding(mesh, self.rules))
      more = tuple(arrived(arg) for arg in args[2:])
      self._jitted = jax.jit(
          self.fn, in_shardings=(self.state_sharding, documents) + more,
          out_shardings=(self.state_sharding, None), donate_argnums=0)
    return self._jitted

  def __call__(self, *args: Any) -> Any:
    return self.jitted(args)(*args)

  def lower(self, *args: Any) -> Any:
    return self.jitted(args).lower(*args)

  def _cache_size(self) -> int:
    """How many times the step compiled (0 before the first call): jit's own count."""
    return 0 if self._jitted is None else self._jitted._cache_size()  # pylint: disable=protected-access
