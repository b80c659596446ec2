"""Tiny dense model trained with RLP on the embedded reasoning corpus: the CPU default.

About 3 minutes on 2 CPU cores. It starts from random weights and learns fast (lr 3e-3), so the
EMA teacher uses τ = 0.9 to keep up with θ; with the paper's 0.999 the reward would mostly measure
how far θ has moved past a lagging φ rather than what the thought buys.
"""
from rlp_jax.config import base_config


def get_config():
  config = base_config()
  config.train.num_steps = 120
  return config
