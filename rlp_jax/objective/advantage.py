"""Group advantages of the G thoughts at one position, and a registry picking one by name."""

from typing import Callable

import jax
import jax.numpy as jnp

from rlp_jax.errors import ConfigError

AdvantageEstimator = Callable[[jax.Array], jax.Array]

ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(
    name: str,
) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
  """Decorator: register an estimator `rewards [..., G] -> advantages [..., G]` by name."""

  def register(fn: AdvantageEstimator) -> AdvantageEstimator:
    if name in ADVANTAGE_ESTIMATORS:
      raise ValueError(f"advantage estimator {name!r} is already registered")
    ADVANTAGE_ESTIMATORS[name] = fn
    return fn

  return register


def get_advantage_estimator(name: str) -> AdvantageEstimator:
  """The estimator registered as `name` (config key rlp.advantage_estimator)."""
  try:
    return ADVANTAGE_ESTIMATORS[name]
  except KeyError:
    raise ConfigError(
        f"rlp.advantage_estimator: unknown advantage estimator {name!r}; "
        f"choose one of {sorted(ADVANTAGE_ESTIMATORS)}") from None


def _group_rewards(rewards: jax.Array) -> tuple[jax.Array, int]:
  """Stop-gradient float32 rewards and the group size G (last axis), which must be ≥ 2."""
  group_size = rewards.shape[-1] if rewards.ndim else 0
  if group_size < 2:
    raise ValueError(
        f"a group advantage needs at least 2 thoughts per group (last axis), "
        f"got shape {rewards.shape}")
  return jax.lax.stop_gradient(rewards.astype(jnp.float32)), group_size


@register_advantage_estimator("group")
def group_advantage(rewards: jax.Array) -> jax.Array:
  """A_i = G/(G−1) · (r_i − mean_j r_j) over the last axis; no std normalisation.

  Args:
    rewards: [..., G] information-gain rewards of the G thoughts of each position.

  Returns:
    float32 [..., G] advantages, stop-gradient.

  Raises:
    ValueError: when G < 2.
  """
  r, g = _group_rewards(rewards)
  return (g / (g - 1)) * (r - jnp.mean(r, axis=-1, keepdims=True))


@register_advantage_estimator("leave_one_out")
def leave_one_out_advantage(rewards: jax.Array) -> jax.Array:
  """A_i = r_i − mean_{j≠i} r_j (RLOO); equal to `group_advantage` up to rounding.

  Args:
    rewards: [..., G] rewards.

  Returns:
    float32 [..., G] advantages, stop-gradient.

  Raises:
    ValueError: when G < 2.
  """
  r, g = _group_rewards(rewards)
  others = (jnp.sum(r, axis=-1, keepdims=True) - r) / (g - 1)
  return r - others



# Added to a standard deviation before dividing by it, so equal rewards give advantage 0, not NaN.
STD_EPSILON = 1e-6


def _centred(rewards: jax.Array) -> jax.Array:
  """r_i − mean_j r_j over the last axis, exactly 0 for a group of equal rewards.

  The rewards are shifted by the group's first reward before the mean is taken: float32
  `r − mean(r)` of G equal rewards is often ±1 ulp (the mean rounds), which a division by a std of
  the same size would blow up to an advantage of order 1.
  """
  shifted = rewards - rewards[..., :1]
  return shifted - jnp.mean(shifted, axis=-1, keepdims=True)


@register_advantage_estimator("group_std")
def group_std_advantage(rewards: jax.Array) -> jax.Array:
  """A_i = (r_i − mean_j r_j) / (std_j r_j + 1e-6), the population std over the group's G rewards
  (GRPO): every group's advantages get unit scale, however small its reward differences.

  Args:
    rewards: [..., G] rewards.

  Returns:
    float32 [..., G] advantages, stop-gradient; 0 for a group whose rewards are all equal.

  Raises:
    ValueError: when G < 2.
  """
  r, _ = _group_rewards(rewards)
  centred = _centred(r)
  group_std = jnp.sqrt(jnp.mean(centred**2, axis=-1, keepdims=True))
  return centred / (group_std + STD_EPSILON)


@register_advantage_estimator("batch_std")
def batch_std_advantage(rewards: jax.Array) -> jax.Array:
  """The `group` advantage G/(G−1) · (r_i − mean_j r_j) divided by (the std of all group-centred
  rewards r_i − mean_j r_j in the batch + 1e-6): one scale for the whole batch, so groups keep
  their relative weight while the advantage no longer scales with the reward (in nats, which
  drifts over training).

  The std runs over every group passed in; in training that is all B·K position slots, the
  slots skipped for short documents included.

  Args:
    rewards: [..., G] rewards (all leading axes are the batch).

  Returns:
    float32 [..., G] advantages, stop-gradient; 0 for a group whose rewards are all equal.

  Raises:
    ValueError: when G < 2.
  """
  r, g = _group_rewards(rewards)
  centred = _centred(r)
  return (g / (g - 1)) * centred / (jnp.std(centred) + STD_EPSILON)
