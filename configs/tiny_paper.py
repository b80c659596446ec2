"""The tiny model with the paper's RLP objective settings (`presets.paper_rlp`: ntp_weight 0,
kl_weight 0, τ 0.999, temperature 0.7, G 16, constant lr 1e-6); the template for paper-faithful
runs, though from random weights these settings learn very slowly."""
from rlp_jax.config import base_config, presets


def get_config():
  config = presets.paper_rlp(base_config())
  config.data.batch_size = 4
  config.rlp.max_thought_tokens = 32
  config.train.num_steps = 50
  return config
