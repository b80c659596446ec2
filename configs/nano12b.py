"""NVIDIA Nemotron-Nano-12B-v2(-Base) (hybrid, 12.31B parameters) continued with RLP
on a TPU v5p-64: the paper's objective, a mesh that fits the target, the corpus on shared storage,
and a required base model (`--config.model.init_from=...`). See `presets.nemotron_h_rlp`, docs/launch.md."""
from rlp_jax.config import presets


def get_config():
  return presets.nemotron_h_rlp('12b')
