"""The EMA "no-think" teacher φ."""
from __future__ import annotations

from typing import Any

import jax


def ema_update(teacher_params: Any, params: Any, decay: float) -> Any:
  """φ ← τ φ + (1 − τ) θ, leaf by leaf, in the teacher's dtype."""
  return jax.tree.map(
      lambda phi, theta: (decay * phi + (1.0 - decay) * theta.astype(phi.dtype)).astype(phi.dtype),
      teacher_params, params)
