"""The RLP objective: information-gain reward, group advantage, clipped surrogate, NTP, total."""

from rlp_jax.objective.advantage import (
    ADVANTAGE_ESTIMATORS,
    get_advantage_estimator,
    group_advantage,
    leave_one_out_advantage,
    register_advantage_estimator,
)
from rlp_jax.objective.chunked_log_probs import (
    head_log_probs_and_entropy,
    head_token_log_probs,
)
from rlp_jax.objective.information_gain import information_gain
from rlp_jax.objective.kl import kl_to_teacher
from rlp_jax.objective.log_probs import token_log_probs
from rlp_jax.objective.next_token import next_token_loss, next_token_loss_from_head
from rlp_jax.objective.surrogate import clipped_surrogate
from rlp_jax.objective.total import rlp_total_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "clipped_surrogate",
    "get_advantage_estimator",
    "group_advantage",
    "head_log_probs_and_entropy",
    "head_token_log_probs",
    "information_gain",
    "kl_to_teacher",
    "leave_one_out_advantage",
    "next_token_loss",
    "next_token_loss_from_head",
    "register_advantage_estimator",
    "rlp_total_loss",
    "token_log_probs",
]
