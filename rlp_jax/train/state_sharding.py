"""Shardings of the train state, creating it already sharded, and the jitted step wrapper.

θ, φ and the optimizer state are created inside one jit whose out_shardings come from the
parameters' logical axes and the rules table, so no host ever holds a whole large model. A run
starting from `model.init_from` never initialises θ randomly: θ is read from the checkpoint in
its sharding and φ and the optimizer state are created from it (`create_sharded_state(params=)`).
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
                         params: Any | None = None,
                         ) -> tuple[TrainState, TrainState]:
  """(state, its shardings), with every array created directly in its sharded layout.

  θ is, in this order of precedence:
    `params`       arrays already in their shardings (`param_shardings`, e.g. read from
                   `model.init_from` by interop/checkpoint_init.load_init_params): kept as they
                   are; φ (a copy) and the optimizer state are created from them by one jit, so
                   the state holds θ + φ + optimizer state and nothing else was ever allocated;
    `init_params`  a function returning θ, run inside the jit;
    neither, with `model.init_from` set: nothing is created. The state is abstract
                   (jax.ShapeDtypeStruct leaves carrying their shardings): the restore target of a
                   resume, or replaced by the state built from the loaded θ (`params`). A random
                   θ is never initialised for a run that starts from a checkpoint;
    neither:       a fresh random init from `seed`, inside the jit.
  """
  _, abstract_params = registry.abstract_params(model_config)

  def create(theta: Any) -> TrainState:
    return create_train_state(theta, tx, seed, with_teacher=with_teacher)

  if init_params is not None:
    abstract = jax.eval_shape(lambda: create(init_params()))
  else:
    abstract = jax.eval_shape(create, abstract_params)  # shapes only: no init is traced
  shardings = state_shardings(abstract, param_shardings(model_config, mesh, rules), tx, mesh)
  if params is not None:
    _check_params(params, abstract_params, shardings.params)
    rest = jax.jit(lambda theta: create(theta).replace(params=None),
                   out_shardings=shardings.replace(params=None))(params)
    return rest.replace(params=params), shardings
  if init_params is None and model_config.get('init_from'):
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=sharding), abstract, shardings), shardings
  if init_params is None:
    init_params = lambda: registry.init_params(model_config, seed)[1]  # noqa: E731
  return jax.jit(lambda: create(init_params()), out_shardings=shardings)(), shardings


def _check_params(params: Any, abstract_params: Any, shardings: Any) -> None:
  """θ given to `create_sharded_state` has the model's tree, shapes, dtypes and shardings."""
  if jax.tree.structure(params) != jax.tree.structure(abstract_params):
    raise ValueError('params do not have the parameter tree of the configured model')
  for (path, leaf), want, sharding in zip(jax.tree_util.tree_leaves_with_path(params),
                                          jax.tree.leaves(abstract_params),
                                          jax.tree.leaves(shardings)):
    where = jax.tree_util.keystr(path)
    if (tuple(leaf.shape), leaf.dtype) != (tuple(want.shape), want.dtype):
      raise ValueError(f'params{where} is {leaf.dtype}{list(leaf.shape)}, the model has '
                       f'{want.dtype}{list(want.shape)}')
    if not leaf.sharding.is_equivalent_to(sharding, leaf.ndim):
      raise ValueError(f'params{where} is laid out as {leaf.sharding}, not {sharding}')


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
