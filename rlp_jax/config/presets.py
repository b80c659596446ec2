"""Model and objective presets: the values the files under configs/ name.

`qwen3(size)` and `nemotron_h(size)` return `model.*` values (for `config.model.update(...)`),
`paper_rlp(config)` applies the paper's RLP objective settings, and `qwen3_rlp(size)` /
`nemotron_h_rlp(size)` are whole configs: the recipes of configs/ for a published base continued
with RLP on a named target (`pod_recipe`).
"""
from __future__ import annotations

from typing import Any

import ml_collections

from rlp_jax.config.schema import base_config

QWEN3_VOCAB_SIZE = 151936
_QWEN3_WIDTHS = {  # size → (hidden_size, intermediate_size)
    '0.6b': (1024, 3072),
    '1.7b': (2048, 6144),
}

_NEMOTRON_H_SIZES = {
    # Nemotron-Nano-12B-v2(-Base): 62 layers, 12.31B parameters.
    '12b': dict(layer_pattern='M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M-',
                hidden_size=5120, intermediate_size=20480),
    # Nemotron-Nano-9B-v2(-Base): the 12B model pruned and distilled (Minitron), 56 layers,
    # 8.89B parameters, the same Mamba2 and attention sizes.
    '9b': dict(layer_pattern='M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-',
               hidden_size=4480, intermediate_size=15680),
}


def qwen3(size: str) -> dict[str, Any]:
  """`model.*` of Qwen3-<size>(-Base) as published, size '0.6b' or '1.7b' (dense family).

  28 layers, 16 query / 8 key-value heads of dim 128, vocab 151936, RMSNorm eps 1e-6, RoPE θ 1e6,
  tied embedding; fp32 parameters, bf16 compute; layers scanned (`model.scan_layers`).
  0.6b: hidden 1024, MLP 3072, 0.596B parameters; 1.7b: hidden 2048, MLP 6144, 1.7206B
  parameters (with the tied embedding).
  """
  if size not in _QWEN3_WIDTHS:
    raise ValueError(f'qwen3 size must be one of {list(_QWEN3_WIDTHS)}, got {size!r}')
  hidden_size, intermediate_size = _QWEN3_WIDTHS[size]
  return dict(family='dense', vocab_size=QWEN3_VOCAB_SIZE, hidden_size=hidden_size,
              intermediate_size=intermediate_size, num_layers=28, num_heads=16, num_kv_heads=8,
              head_dim=128, rope_theta=1_000_000.0, norm_eps=1e-6, tie_embeddings=True,
              param_dtype='float32', compute_dtype='bfloat16', scan_layers=True)


def nemotron_h(size: str) -> dict[str, Any]:
  """`model.*` of a hybrid (Nemotron-H: Mamba2 + attention + squared-ReLU MLP) model.

  '9b' / '12b': the NVIDIA Nemotron-Nano-9B-v2 / 12B-v2(-Base) architectures (8.89B / 12.31B
  parameters, bf16 compute, layers scanned: 'M-M-M-M*-' × 6 + 'M-' × 4 for 12B). Only the model
  is set; before a real run also set
  `tokenizer.kind='hf_json'` and `tokenizer.path='<model dir>/tokenizer.json'` (the config leaves
  the sentencepiece default because validation rejects hf_json with an empty path),
  `tokenizer.vocab_size` to the tokenizer's size (<= 131072), `model.init_from='<Hugging Face
  model dir>'` (the published weights), and the data / RLP / optimizer / mesh settings of the run.
  dt clamp: the published config has time_step_limit (0, inf), which mamba_ssm applies;
  transformers 5.x instead clamps dt from below at time_step_min (0.001) in its prefill path only.
  We follow the published limit; set `model.mamba_dt_limit_min = 0.001` to reproduce
  transformers' prefill.

  'tiny': the CPU-fast hybrid, pattern 'M-M*-M': three Mamba2 layers (8 heads × 16, state 16,
  2 groups, chunk 16), one attention layer (no RoPE), two MLP layers; everything else as the
  tiny dense default.
  """
  if size == 'tiny':
    return dict(family='hybrid', layer_pattern='M-M*-M', num_layers=6, hidden_size=128,
                intermediate_size=384, num_heads=4, num_kv_heads=2, head_dim=32, norm_eps=1e-5,
                mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, mamba_n_groups=2,
                mamba_conv_kernel=4, mamba_chunk_size=16)
  if size not in _NEMOTRON_H_SIZES:
    raise ValueError(f"nemotron_h size must be one of {['tiny', *_NEMOTRON_H_SIZES]}, "
                     f'got {size!r}')
  sizes = _NEMOTRON_H_SIZES[size]
  return dict(family='hybrid', layer_pattern=sizes['layer_pattern'],
              num_layers=len(sizes['layer_pattern']), vocab_size=131072,
              hidden_size=sizes['hidden_size'], intermediate_size=sizes['intermediate_size'],
              num_heads=40, num_kv_heads=8, head_dim=128, norm_eps=1e-5, tie_embeddings=False,
              param_dtype='float32', compute_dtype='bfloat16', mamba_num_heads=128,
              mamba_head_dim=80, ssm_state_size=128, mamba_n_groups=8, mamba_conv_kernel=4,
              mamba_chunk_size=128, mamba_dt_limit_min=0.0, mamba_dt_limit_max=float('inf'),
              scan_layers=True)


def paper_rlp(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets the paper's RLP objective and returns `config`: G 16, temperature 0.7, τ 0.999,
  ntp_weight 0, kl_weight 0, constant lr 1e-6 without warmup.

  The paper starts RLP from a pretrained base model; on the randomly initialised tiny model these
  settings learn very slowly (configs/tiny_paper.py is the template for paper-faithful runs).
  """
  config.rlp.update(dict(thoughts_per_position=16, sample_temperature=0.7, ema_decay=0.999,
                         ntp_weight=0.0, kl_weight=0.0))
  config.optimizer.update(dict(learning_rate=1e-6, schedule='constant', warmup_steps=0))
  return config


# Where the recipes read their corpus: jsonl shards (one document per line, field `text`) on the
# shared storage every host mounts (launch/tpu_pod.sh, launch/slurm_gpu.sbatch; docs/launch.md).
RECIPE_DATA_FILES = '/mnt/shared/data/train-*.jsonl'
RECIPE_DATA_DIR = '/mnt/shared/data/cache'

# The paper trains on contexts of 2048 tokens, 512 per batch, thoughts of up to 2048 tokens. One
# step of that does not fit the targets' memory (docs/scaling.md), so the recipes scale it by one
# rule: keep the objective as published (G 16, temperature 0.7, τ 0.999, ntp_weight 0, kl_weight 0,
# constant lr 1e-6) and give each batch shard one document of 1024 tokens with one scored position
# (K 1) and thoughts of up to 128 tokens: the workload the dry run measured on each target.
RECIPE_SEQ_LEN = 1024
RECIPE_THOUGHT_TOKENS = 128


def pod_recipe(config: ml_collections.ConfigDict, *, mesh: dict[str, int],
               batch_size: int) -> ml_collections.ConfigDict:
  """Makes `config` (a model preset on `base_config()`) a recipe for a pod; returns it.

  The paper's objective (`paper_rlp`), the scaled sizes above, `mesh` and `batch_size` (−1: one
  document per batch shard, whatever the device count), the corpus at RECIPE_DATA_FILES, and a required
  base model: `model.init_from` must be given (`model.allow_random_init=False`; a run without it
  stops with one line). The tokenizer is the base model's tokenizer.json (`tokenizer.path=''`).
  """
  paper_rlp(config)
  config.model.update(dict(init_from='', allow_random_init=False))
  config.tokenizer.update(dict(kind='hf_json', path='', vocab_size=config.model.vocab_size))
  # Streamed from the shards in place (docs/data.md); 4 loader worker processes per host.
  config.data.update(dict(corpus='local_text', files=RECIPE_DATA_FILES, data_dir=RECIPE_DATA_DIR,
                          seq_len=RECIPE_SEQ_LEN, batch_size=batch_size, workers=4))
  config.rlp.update(dict(positions_per_document=1, max_thought_tokens=RECIPE_THOUGHT_TOKENS,
                         min_context=128))
  config.mesh.update(mesh)
  config.optimizer.weight_decay = 0.0
  config.train.update(dict(num_steps=1000, checkpoint_every=100))
  return config


def qwen3_rlp(size: str) -> ml_collections.ConfigDict:
  """Qwen3-<size>(-Base) continued with RLP: the recipe for 8×H100 (80 GB), which also fits a TPU
  v5p-64 or v6e-64 unchanged.

  `pod_recipe` with θ, φ and the optimizer state sharded over every device (mesh fsdp=−1) and one
  document per device (`data.batch_size=-1`); docs/scaling.md has the dry run of each target.
  Give the base model:

    python -m rlp_jax.main --config=configs/qwen3_1p7b.py --workdir=DIR \\
        --config.model.init_from=/path/to/Qwen3-1.7B-Base

  `model.init_from` may also be an rlp_jax checkpoint directory (then set `tokenizer.path` to the
  base model's tokenizer.json). The tokenizer has no bos token, so documents are framed
  `<|endoftext|> … <|endoftext|>`.
  """
  config = base_config()
  config.model.update(qwen3(size))
  return pod_recipe(config, mesh=dict(data=1, fsdp=-1, tensor=1), batch_size=-1)


def nemotron_h_rlp(size: str) -> ml_collections.ConfigDict:
  """NVIDIA Nemotron-Nano-<size>-v2(-Base) continued with RLP: the recipe for a TPU v5p-64, which
  also fits 8×H100 and a v6e-64 unchanged.

  `pod_recipe` with tensor=2 (heads, MLP and vocabulary split in two) and fsdp over the other
  devices (fsdp=−1: 16 on a v5p-64, 4 on 8×H100), one document per batch shard
  (`data.batch_size=-1`); docs/scaling.md has the dry run of each target. Give the base:

    python -m rlp_jax.main --config=configs/nano12b.py --workdir=DIR \\
        --config.model.init_from=/path/to/NVIDIA-Nemotron-Nano-12B-v2-Base
  """
  config = base_config()
  config.model.update(nemotron_h(size))
  return pod_recipe(config, mesh=dict(data=1, fsdp=-1, tensor=2), batch_size=-1)
