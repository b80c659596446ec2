"""The RLP reward: how much a thought raised the log-likelihood of the real next token."""

import jax
import jax.numpy as jnp


def information_gain(s_pred: jax.Array, s_ema: jax.Array) -> jax.Array:
  """Reward r = S_pred − S_ema in nats, with no gradient through either input.

  Args:
    s_pred: log p_θ(x_t | x_<t, <think> c </think>), any shape.
    s_ema: log p_φ(x_t | x_<t) from the EMA no-think teacher, broadcastable to s_pred.

  Returns:
    float32 reward, the broadcast shape of the inputs.
  """
  s_pred = jax.lax.stop_gradient(s_pred.astype(jnp.float32))
  s_ema = jax.lax.stop_gradient(s_ema.astype(jnp.float32))
  return s_pred - s_ema
