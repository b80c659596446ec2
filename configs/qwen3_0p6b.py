"""Qwen3-0.6B(-Base) continued with RLP (the paper's objective, bf16 compute); point it at a
checkpoint as `presets.qwen3_rlp` and docs/models.md say."""
from rlp_jax.config import presets


def get_config():
  return presets.qwen3_rlp('0.6b')
