"""Qwen3-0.6B(-Base) continued with RLP
on 8×H100: the paper's objective, a mesh that fits the target, the corpus on shared storage,
and a required base model (`--config.model.init_from=...`). See `presets.qwen3_rlp`, docs/launch.md."""
from rlp_jax.config import presets


def get_config():
  return presets.qwen3_rlp('0.6b')
