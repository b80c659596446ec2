"""The tiny model with the paper's RLP objective settings (ntp_weight 0, kl_weight 0, τ 0.999,
temperature 0.7, G 16, constant lr 1e-6).

The paper starts RLP from a pretrained base model; on the randomly initialised tiny model these
settings learn very slowly. Use this file as the template for paper-faithful runs.
"""
from rlp_jax.config_schema import base_config


def get_config():
  config = base_config()
  config.data.batch_size = 4
  config.rlp.update(dict(
      thoughts_per_position=16,
      max_thought_tokens=32,
      sample_temperature=0.7,
      ema_decay=0.999,
      ntp_weight=0.0,
      kl_weight=0.0,
  ))
  config.optimizer.update(dict(learning_rate=1e-6, schedule='constant', warmup_steps=0))
  config.train.num_steps = 50
  return config
