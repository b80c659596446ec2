"""Tiny dense model on the embedded reasoning corpus: the CPU default (a few minutes on 2 cores)."""
from rlp_jax.config_schema import base_config


def get_config():
  config = base_config()
  config.train.num_steps = 200
  return config
