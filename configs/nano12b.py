"""NVIDIA Nemotron-Nano-12B-v2(-Base) architecture (hybrid, 12.31B parameters); only the model is
set: see `presets.nemotron_h` for what to set before a real run."""
from rlp_jax.config import base_config, presets


def get_config():
  config = base_config()
  config.model.update(presets.nemotron_h('12b'))
  return config
