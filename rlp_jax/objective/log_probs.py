"""Per-token log-probabilities, in float32, at a given sampling temperature."""

import jax
import jax.numpy as jnp


def token_log_probs(
    logits: jax.Array, targets: jax.Array, temperature: float = 1.0
) -> jax.Array:
  """log softmax(logits / temperature) at `targets`, as gather − logsumexp in float32.

  Args:
    logits: [..., V] in any float dtype (cast to float32 before anything else).
    targets: [...] integer token ids in [0, V).
    temperature: the sampling temperature; 1.0 gives the untempered log-prob.

  Returns:
    float32 [...] log-probabilities.
  """
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  scaled = logits.astype(jnp.float32) / jnp.asarray(temperature, jnp.float32)
  picked = jnp.take_along_axis(
      scaled, targets.astype(jnp.int32)[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(scaled, axis=-1)
