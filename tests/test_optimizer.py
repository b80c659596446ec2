"""Learning-rate schedules: linear warmup, then constant or cosine."""
import math

import numpy as np

from rlp_jax.config import base_config
from rlp_jax.train.optimizer import learning_rate_schedule


def test_warmup_then_cosine_matches_closed_form():
  opt = base_config().optimizer
  opt.update(dict(learning_rate=1.0, warmup_steps=4, schedule='cosine', final_lr_fraction=0.1))
  schedule = learning_rate_schedule(opt, num_steps=14)
  got = [float(schedule(step)) for step in range(14)]
  expected = []
  for step in range(14):
    t = step + 1
    if t <= 4:
      expected.append(t / 4)
    else:
      progress = (t - 4) / 10
      expected.append(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert got[0] > 0  # the first step already moves


def test_constant_schedule_after_warmup():
  opt = base_config().optimizer
  opt.update(dict(learning_rate=0.5, warmup_steps=2, schedule='constant'))
  schedule = learning_rate_schedule(opt, num_steps=10)
  np.testing.assert_allclose([float(schedule(s)) for s in range(5)], [0.25, 0.5, 0.5, 0.5, 0.5])
