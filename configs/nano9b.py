"""NVIDIA Nemotron-Nano-9B-v2(-Base) architecture (hybrid, 8.89B parameters); only the model is
set: see `presets.nemotron_h` for what to set before a real run."""
from rlp_jax.config import base_config, presets


def get_config():
  config = base_config()
  config.model.update(presets.nemotron_h('9b'))
  return config
