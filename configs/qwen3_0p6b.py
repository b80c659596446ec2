"""Qwen3-0.6B(-Base) continued with RLP, in bf16 compute: the dense family at published size.

Architecture as published (0.596B parameters with the tied embedding): hidden 1024, MLP 3072,
28 layers, 16 query / 8 key-value heads of dim 128, vocab 151936, RMSNorm eps 1e-6, RoPE θ 1e6.
The paths below are placeholders; point them at a downloaded Hugging Face checkpoint:

  python -m rlp_jax.main --config=configs/qwen3_0p6b.py --workdir=DIR \\
      --config.model.init_from=/path/to/Qwen3-0.6B-Base \\
      --config.tokenizer.path=/path/to/Qwen3-0.6B-Base \\
      --config.data.corpus=local_text --config.data.files=/path/to/corpus.jsonl

`model.init_from` may also be an rlp_jax checkpoint directory. With `model.init_from=''` the run
starts from random weights (and says so at start-up). The tokenizer is the checkpoint's
tokenizer.json; it has no bos token, so documents are framed `<|endoftext|> … <|endoftext|>`.
The objective follows the paper (as configs/tiny_paper.py: G 16, τ 0.999, lr 1e-6 constant,
ntp_weight 0, kl_weight 0); batch and lengths are a one-host starting point (the paper uses 512
contexts of 2048 tokens and thoughts of up to 2048): raise them with the data.* / rlp.* keys.
"""
from rlp_jax.config_schema import base_config

CHECKPOINT = '/path/to/Qwen3-0.6B-Base'  # placeholder: set via --config.model.init_from=...


def get_config():
  config = base_config()
  config.model.update(dict(
      family='dense',
      init_from=CHECKPOINT,
      vocab_size=151936,
      hidden_size=1024,
      intermediate_size=3072,
      num_layers=28,
      num_heads=16,
      num_kv_heads=8,
      head_dim=128,
      rope_theta=1_000_000.0,
      norm_eps=1e-6,
      tie_embeddings=True,
      param_dtype='float32',
      compute_dtype='bfloat16',
  ))
  config.tokenizer.update(dict(kind='hf_json', path=CHECKPOINT, vocab_size=151936))
  config.data.update(dict(seq_len=1024, batch_size=4))
  config.rlp.update(dict(
      positions_per_document=1,
      thoughts_per_position=16,
      max_thought_tokens=128,
      min_context=128,
      sample_temperature=0.7,
      ema_decay=0.999,
      ntp_weight=0.0,
      kl_weight=0.0,
  ))
  config.optimizer.update(dict(learning_rate=1e-6, schedule='constant', warmup_steps=0,
                               weight_decay=0.0))
  config.train.update(dict(num_steps=1000, checkpoint_every=100))
  return config
