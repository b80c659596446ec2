"""A KL penalty pulling the policy θ towards the EMA teacher φ on sampled thought tokens."""

import jax
import jax.numpy as jnp


def kl_to_teacher(
    logp_theta: jax.Array,
    logp_teacher: jax.Array,
    mask: jax.Array,
    log_ratio_clip: float = 20.0,
) -> jax.Array:
  """k3 estimate of KL(π_θ‖π_φ) on thought tokens, averaged per thought then over thoughts.

  Per token, with d = log π_φ − log π_θ (clipped to ±log_ratio_clip as an overflow guard;
  no effect on ordinary values): k3 = exp(d) − d − 1 ≥ 0. It estimates KL(θ‖φ) without bias
  when the tokens were sampled from θ. Each thought contributes (1/|c|) Σ_u k3_u (0 when it
  has no tokens); the result is the mean over all N thoughts. The teacher is stop-gradient:
  gradient flows only into `logp_theta`.

  Args:
    logp_theta: [N, T] log π_θ of the thought tokens (with gradient).
    logp_teacher: [N, T] log π_φ of the same tokens.
    mask: [N, T] bool, True on real thought tokens.
    log_ratio_clip: bound on |d| before exponentiating.

  Returns:
    float32 scalar.
  """
  mask = mask.astype(bool)
  logp_teacher = jax.lax.stop_gradient(logp_teacher.astype(jnp.float32))
  d = jnp.clip(logp_teacher - logp_theta.astype(jnp.float32), -log_ratio_clip, log_ratio_clip)
  d = jnp.where(mask, d, 0.0)
  k3 = jnp.exp(d) - d - 1.0
  thought_len = jnp.sum(mask, axis=-1).astype(jnp.float32)
  per_thought = jnp.sum(jnp.where(mask, k3, 0.0), axis=-1) / jnp.maximum(thought_len, 1.0)
  return jnp.mean(per_thought)
