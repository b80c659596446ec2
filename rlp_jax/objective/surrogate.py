"""The clipped (PPO-style) surrogate policy loss on thought tokens."""

import jax
import jax.numpy as jnp


def _check_epsilons(epsilon_low: float, epsilon_high: float, log_ratio_clip: float) -> None:
  """Validate the clip parameters when they are Python numbers (not traced)."""
  if isinstance(epsilon_low, (int, float)) and not 0.0 <= epsilon_low < 1.0:
    raise ValueError(f"epsilon_low must be in [0, 1), got {epsilon_low}")
  if isinstance(epsilon_high, (int, float)) and epsilon_high < 0.0:
    raise ValueError(f"epsilon_high must be >= 0, got {epsilon_high}")
  if isinstance(log_ratio_clip, (int, float)) and log_ratio_clip <= 0.0:
    raise ValueError(f"log_ratio_clip must be > 0, got {log_ratio_clip}")


def clipped_surrogate(
    logp_new: jax.Array,
    logp_old: jax.Array,
    advantages: jax.Array,
    thought_mask: jax.Array,
    epsilon_low: float,
    epsilon_high: float,
    log_ratio_clip: float = 20.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Clipped surrogate loss averaged over thoughts, with its diagnostics.

  ρ_u = exp(clip(logp_new − logp_old, ±log_ratio_clip)) and, per thought i with |c_i|
  masked tokens, L_i = −(1/|c_i|) Σ_u min(ρ_u A_i, clip(ρ_u, 1−ε_low, 1+ε_high) A_i).
  The loss is the mean of L_i over all N thoughts; a thought with no tokens has L_i = 0.
  Gradient flows only into `logp_new` (logp_old and advantages are stop-gradient).

  Metrics (float32, stop-gradient, averaged over all masked thought tokens of the batch,
  each 0 when there are none):
    clip_fraction: fraction of tokens where the clip binds, i.e. the clipped term is
      strictly smaller than the unclipped one: (A_i > 0 and ρ_u > 1+ε_high) or
      (A_i < 0 and ρ_u < 1−ε_low). These tokens get no gradient. Tokens with A_i = 0
      never count.
    approx_kl: mean of the k3 estimator (ρ−1) − log ρ of KL(θ_old‖θ) (thoughts were
      sampled from θ_old).
    ratio_mean, ratio_max: mean and max of ρ.

  Args:
    logp_new: [N, T] log π_θ of the thought tokens (with gradient).
    logp_old: [N, T] log π_θ_old of the same tokens, recorded at rollout.
    advantages: [N] one advantage per thought.
    thought_mask: [N, T] bool, True on real thought tokens (padding may hold anything).
    epsilon_low: lower clip width ε_low, in [0, 1).
    epsilon_high: upper clip width ε_high, ≥ 0.
    log_ratio_clip: bound on |log ρ| before exponentiating (overflow guard).

  Returns:
    (loss, metrics): float32 scalar loss and a dict of float32 scalars.
  """
  _check_epsilons(epsilon_low, epsilon_high, log_ratio_clip)
  mask = thought_mask.astype(bool)
  logp_old = jax.lax.stop_gradient(logp_old.astype(jnp.float32))
  adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))[:, None]

  log_ratio = jnp.clip(logp_new.astype(jnp.float32) - logp_old,
                       -log_ratio_clip, log_ratio_clip)
  log_ratio = jnp.where(mask, log_ratio, 0.0)  # padding never reaches exp or the loss
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high) * adv
  per_token = -jnp.minimum(unclipped, clipped)

  thought_len = jnp.sum(mask, axis=-1).astype(jnp.float32)
  per_thought = jnp.sum(jnp.where(mask, per_token, 0.0), axis=-1) / jnp.maximum(thought_len, 1.0)
  loss = jnp.mean(per_thought)

  ratio_sg = jax.lax.stop_gradient(ratio)
  log_ratio_sg = jax.lax.stop_gradient(log_ratio)
  num_tokens = jnp.maximum(jnp.sum(mask).astype(jnp.float32), 1.0)

  def token_mean(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0.0)) / num_tokens

  clip_binds = (((adv > 0) & (ratio_sg > 1.0 + epsilon_high))
                | ((adv < 0) & (ratio_sg < 1.0 - epsilon_low)))
  metrics = {
      "clip_fraction": token_mean(clip_binds.astype(jnp.float32)),
      "approx_kl": token_mean((ratio_sg - 1.0) - log_ratio_sg),
      "ratio_mean": token_mean(ratio_sg),
      "ratio_max": jnp.max(jnp.where(mask, ratio_sg, 0.0)),
  }
  return loss, metrics
