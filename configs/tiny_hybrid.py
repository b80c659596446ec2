"""Tiny hybrid (Nemotron-H style: Mamba2 + attention + squared-ReLU MLP) trained with RLP on the
embedded reasoning corpus; CPU-fast.

Pattern 'M-M*-M': three Mamba2 layers (8 heads × 16, state 16, 2 groups, chunk 16), one attention
layer (no RoPE), two MLP layers. The other settings are those of configs/tiny.py.
"""
from rlp_jax.config_schema import base_config


def get_config():
  config = base_config()
  config.model.update(dict(
      family='hybrid',
      layer_pattern='M-M*-M',
      num_layers=6,
      hidden_size=128,
      intermediate_size=384,
      num_heads=4,
      num_kv_heads=2,
      head_dim=32,
      norm_eps=1e-5,
      mamba_num_heads=8,
      mamba_head_dim=16,
      ssm_state_size=16,
      mamba_n_groups=2,
      mamba_conv_kernel=4,
      mamba_chunk_size=16,
  ))
  config.train.num_steps = 150
  return config
