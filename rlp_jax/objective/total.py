"""The one loss an optimizer step takes."""

import jax


def rlp_total_loss(
    policy_loss: jax.Array,
    ntp_loss: jax.Array,
    kl: jax.Array,
    ntp_weight: float,
    kl_weight: float,
) -> jax.Array:
  """policy_loss + ntp_weight · ntp_loss + kl_weight · kl.

  The policy loss (clipped surrogate over thought tokens) is the RLP objective proper: it
  rewards thoughts that raised the log-likelihood of the real next token. The next-token loss
  keeps ordinary pretraining going on the same documents, and the KL term pulls θ towards the
  EMA teacher φ on sampled thoughts. With ntp_weight = kl_weight = 0 this is the paper's loss.
  """
  return policy_loss + ntp_weight * ntp_loss + kl_weight * kl
