"""NVIDIA Nemotron-Nano-9B-v2(-Base) architecture: 56 layers (Mamba2 + attention + MLP), 8.89B
parameters, bf16 compute. The 12B model pruned and distilled (Minitron): hidden 4480, MLP 15680,
56 layers, the same Mamba2 and attention sizes.

Only the model is set here. Before a real run, set:
  tokenizer.kind = 'hf_json' and tokenizer.path = '<model dir>/tokenizer.json'
  (left at the sentencepiece default because the schema rejects hf_json with an empty path),
  tokenizer.vocab_size to the tokenizer's size (<= 131072),
  model.init_from = '<Hugging Face model dir>' (the published weights),
  and the data / RLP / optimizer / mesh settings of the run.
dt clamp: see configs/nano12b.py (published limit (0, inf); transformers 5.x clamps its prefill
from below at time_step_min = 0.001).
"""
from rlp_jax.config_schema import base_config

LAYER_PATTERN = 'M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-'


def get_config():
  config = base_config()
  config.model.update(dict(
      family='hybrid',
      layer_pattern=LAYER_PATTERN,
      num_layers=len(LAYER_PATTERN),
      vocab_size=131072,
      hidden_size=4480,
      intermediate_size=15680,
      num_heads=40,
      num_kv_heads=8,
      head_dim=128,
      norm_eps=1e-5,
      tie_embeddings=False,
      param_dtype='float32',
      compute_dtype='bfloat16',
      mamba_num_heads=128,
      mamba_head_dim=80,
      ssm_state_size=128,
      mamba_n_groups=8,
      mamba_conv_kernel=4,
      mamba_chunk_size=128,
      mamba_dt_limit_min=0.0,
      mamba_dt_limit_max=float('inf'),
  ))
  return config
