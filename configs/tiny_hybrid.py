"""Tiny hybrid (Nemotron-H style, pattern 'M-M*-M') trained with RLP on the embedded reasoning
corpus; CPU-fast. The other settings are those of configs/tiny.py."""
from rlp_jax.config import base_config, presets


def get_config():
  config = base_config()
  config.model.update(presets.nemotron_h('tiny'))
  config.train.num_steps = 150
  return config
