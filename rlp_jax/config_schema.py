"""Every config key rlp_jax knows, with its default, and the start-up validation of a config.

Config files under configs/ start from `base_config()` and change values; they never add keys.
`validate_config` runs before anything is built and raises `ConfigError` with a message naming the
dotted key, so the command line can report it on one line.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from rlp_jax.errors import ConfigError

_DTYPES = ('float32', 'bfloat16')


# Logical axis name → mesh axes (None: replicated). One table for parameters and activations:
# parameters use `embed`, `mlp`, `heads`, ...; activations use `batch`, `length` and the
# `activation_*` names (the activation's feature dimensions, kept apart from the parameters'
# because `embed` shards parameters over fsdp while the residual stream must not be).
DEFAULT_LOGICAL_AXIS_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('activation_embed', None),
    ('activation_heads', 'tensor'),
    ('activation_kv_heads', 'tensor'),
    ('activation_mlp', 'tensor'),
    ('activation_vocab', 'tensor'),
    ('activation_mamba_heads', 'tensor'),
    ('activation_mamba_groups', 'tensor'),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('norm', None),
    ('mamba_heads', 'tensor'),
    ('mamba_groups', 'tensor'),
    ('mamba_head_dim', None),
    ('ssm_state', None),
    ('conv_kernel', None),
)


def _group(values: dict[str, Any]) -> ml_collections.ConfigDict:
  # Not type-safe: a config file that assigns a wrong type reaches validate_config, which names
  # the full dotted key (ConfigDict's own error names only the leaf).
  return ml_collections.ConfigDict(values, type_safe=False)


def base_config() -> ml_collections.ConfigDict:
  """All keys with their defaults (the tiny CPU model, next-token training)."""
  config = ml_collections.ConfigDict(type_safe=False)
  config.seed = 0
  config.data = _group(dict(
      corpus='reasoning',  # 'reasoning' (embedded generator) | 'local_text' (data.files)
      data_dir='',  # '' → $RLP_JAX_DATA_DIR or ~/.cache/rlp_jax/data
      num_documents=20000,  # size of the embedded reasoning corpus
      corpus_seed=0,
      worked_fraction=0.5,  # share of embedded-corpus documents that show worked <think> steps
      files='',  # comma-separated .txt / .jsonl paths or globs for corpus='local_text'
      text_field='text',  # jsonl field holding the document text
      seq_len=96,  # tokens per document row (truncated / padded)
      batch_size=8,  # documents per step
  ))
  config.tokenizer = _group(dict(
      kind='sentencepiece',  # 'sentencepiece' | 'hf_json' (a Hugging Face tokenizer.json at path)
      path='',  # '' → trained on the corpus at first use and cached under data_dir
      vocab_size=512,
  ))
  config.model = _group(dict(
      family='dense',  # 'dense' (Qwen3) | 'hybrid' (Nemotron-H: Mamba2 + attention + MLP)
      init_from='',  # '' random init; a Hugging Face model dir or an rlp_jax checkpoint dir
      vocab_size=512,  # ≥ tokenizer vocab size
      hidden_size=128,
      intermediate_size=384,
      num_layers=4,
      num_heads=4,
      num_kv_heads=2,
      head_dim=32,
      rope_theta=1_000_000.0,
      norm_eps=1e-6,
      tie_embeddings=True,
      param_dtype='float32',
      compute_dtype='float32',
      init_std=0.02,
      # 'block': each decoder layer's forward is rematerialised in the backward pass (only the
      # residual stream between layers is kept); 'none': every activation is kept.
      remat='block',
      # hybrid family only (ignored by 'dense'): one character per layer, M Mamba2, * attention,
      # - MLP (squared ReLU); each layer is x + mixer(RMSNorm(x)); attention has no RoPE.
      layer_pattern='',
      mamba_num_heads=0,
      mamba_head_dim=0,
      ssm_state_size=0,
      mamba_n_groups=1,
      mamba_conv_kernel=4,
      mamba_chunk_size=128,
      mamba_dt_limit_min=0.0,  # dt = clamp(softplus(dt + dt_bias), min, max)
      mamba_dt_limit_max=float('inf'),
  ))
  config.optimizer = _group(dict(
      learning_rate=3e-3,
      schedule='cosine',  # 'cosine' | 'constant' (both after linear warmup)
      warmup_steps=20,
      final_lr_fraction=0.1,  # cosine ends at learning_rate * final_lr_fraction
      weight_decay=0.01,
      b1=0.9,
      b2=0.95,
      eps=1e-8,
      grad_clip_norm=1.0,
  ))
  config.rlp = _group(dict(
      enabled=True,  # False: plain next-token pretraining
      positions_per_document=2,  # K scored positions per document
      thoughts_per_position=4,  # G thoughts per position (the advantage group)
      max_thought_tokens=24,  # T: `</think>` is forced after T sampled tokens
      min_context=8,  # tokens of history required before a scored position
      sample_temperature=0.7,  # 0 samples greedily
      ema_decay=0.9,  # τ of the teacher φ ← τ φ + (1 − τ) θ (paper: 0.999, from a base model)
      epsilon_low=0.2,  # clip band of the importance ratio: [1 − ε_low, 1 + ε_high]
      epsilon_high=0.2,
      ntp_weight=1.0,  # weight of the next-token loss in the combined update (paper: 0)
      kl_weight=0.0,  # weight of KL(θ‖φ) on thought tokens (paper: 0)
      updates_per_rollout=1,  # optimizer steps taken on one rollout batch
      advantage_estimator='group',  # see rlp_jax.objective.advantage
      # 'uniform' | 'teacher_loss' | 'teacher_entropy': scored positions drawn uniformly or in
      # proportion to the EMA teacher's loss / entropy there; 'after_marker': the token right
      # after the text `position_marker` (docs/objective.md, step 1)
      position_rule='uniform',
      position_marker='',
      # thoughts that reach T without `</think>`: 'keep' (their advantage as computed) or
      # 'no_gradient' (advantage 0: no policy gradient, as DAPO's overlong filtering)
      truncated_thoughts='keep',
      prefix_mode='shared',  # one document pass serves all K·G rollouts; 'naive': re-encode
      # x_<t per rollout (the reference the shared path is tested against)
  ))
  config.mesh = _group(dict(
      data=-1,  # data-parallel replicas (−1: all devices left over)
      fsdp=1,  # parameters, gradients and optimizer state sharded over this axis
      tensor=1,  # tensor parallelism (heads, MLP, vocab)
      rules=DEFAULT_LOGICAL_AXIS_RULES,
  ))
  config.train = _group(dict(
      num_steps=200,
      log_every=1,
      checkpoint_every=50,
      keep_checkpoints=3,
      progress_bar=True,
      eval_every=0,  # run the evaluator (config.eval) every N batches and at the end; 0: never
  ))
  config.eval = _group(dict(
      num_documents=64,  # held-out documents (validation split) for next-token loss and gain
      num_problems=64,  # held-out problems per accuracy source
      benchmarks='',  # comma-separated jsonl files (GSM8K or MATH format) scored for accuracy
      vote_samples=4,  # k sampled thoughts per problem for the majority vote
      thoughts_per_position=4,  # thoughts per position for the sampled information gain
      max_answer_tokens=12,  # an answer ends at a newline, eos, or after this many tokens
      rows_per_call=64,  # generation rows per jitted call (fixed, so each phase compiles once)
      seed=0,  # positions and sampled thoughts of the evaluation
  ))
  return config


# Keys whose values must be > 0.
_POSITIVE = (
    'data.num_documents', 'data.seq_len', 'data.batch_size', 'tokenizer.vocab_size',
    'model.vocab_size', 'model.hidden_size', 'model.intermediate_size', 'model.num_layers',
    'model.num_heads', 'model.num_kv_heads', 'model.head_dim', 'model.rope_theta',
    'model.norm_eps', 'model.init_std', 'optimizer.learning_rate', 'optimizer.eps',
    'optimizer.grad_clip_norm', 'train.num_steps', 'train.log_every', 'train.checkpoint_every',
    'train.keep_checkpoints', 'rlp.positions_per_document', 'rlp.max_thought_tokens',
    'rlp.min_context', 'rlp.updates_per_rollout', 'eval.vote_samples',
    'eval.thoughts_per_position', 'eval.max_answer_tokens', 'eval.rows_per_call',
)
_NON_NEGATIVE = ('seed', 'data.corpus_seed', 'optimizer.warmup_steps', 'optimizer.weight_decay',
                 'optimizer.final_lr_fraction', 'rlp.sample_temperature', 'rlp.epsilon_low',
                 'rlp.epsilon_high', 'rlp.ntp_weight', 'rlp.kl_weight', 'rlp.ema_decay',
                 'train.eval_every', 'data.worked_fraction', 'eval.num_documents',
                 'eval.num_problems', 'eval.seed')
_CHOICES = {
    'data.corpus': ('reasoning', 'local_text'),
    'tokenizer.kind': ('sentencepiece', 'hf_json'),
    'model.family': ('dense', 'hybrid'),
    'model.param_dtype': _DTYPES,
    'model.compute_dtype': _DTYPES,
    'model.remat': ('none', 'block'),
    'optimizer.schedule': ('cosine', 'constant'),
    'rlp.prefix_mode': ('naive', 'shared'),
    'rlp.truncated_thoughts': ('keep', 'no_gradient'),
    'rlp.position_rule': ('uniform', 'teacher_loss', 'teacher_entropy', 'after_marker'),
}


def _flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      flat[name] = value
      flat.update(_flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def _type_ok(value: Any, default: Any) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, ml_collections.ConfigDict):
    return isinstance(value, ml_collections.ConfigDict)
  return isinstance(value, type(default))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad key: unknown, wrong type, or out-of-range value."""
  schema = _flatten(base_config())
  values = _flatten(config)
  for name, value in values.items():
    if name not in schema:
      raise ConfigError(f'unknown config key `{name}`')
    default = schema[name]
    if not _type_ok(value, default):
      raise ConfigError(f'config key `{name}` must be of type {type(default).__name__}, '
                        f'got {type(value).__name__} {value!r}')
  for name in schema:
    if name not in values:
      raise ConfigError(f'config key `{name}` is missing (start config files from base_config())')
  for name in _POSITIVE:
    if not values[name] > 0:
      raise ConfigError(f'config key `{name}` must be > 0, got {values[name]!r}')
  for name in _NON_NEGATIVE:
    if not values[name] >= 0:
      raise ConfigError(f'config key `{name}` must be >= 0, got {values[name]!r}')
  for name, choices in _CHOICES.items():
    if values[name] not in choices:
      raise ConfigError(f'config key `{name}` must be one of {list(choices)}, got {values[name]!r}')
  _validate_relations(config)


def _validate_relations(config: ml_collections.ConfigDict) -> None:
  model, data = config.model, config.data
  if model.num_heads % model.num_kv_heads:
    raise ConfigError(f'config key `model.num_kv_heads` ({model.num_kv_heads}) must divide '
                      f'`model.num_heads` ({model.num_heads})')
  if model.vocab_size < config.tokenizer.vocab_size:
    raise ConfigError(f'config key `model.vocab_size` ({model.vocab_size}) must be >= '
                      f'`tokenizer.vocab_size` ({config.tokenizer.vocab_size})')
  if data.corpus == 'local_text' and not data.files.strip():
    raise ConfigError('config key `data.files` must name at least one .txt/.jsonl file when '
                      "`data.corpus` is 'local_text'")
  if data.seq_len < 2:
    raise ConfigError(f'config key `data.seq_len` must be >= 2, got {data.seq_len}')
  if model.family == 'hybrid':
    _validate_hybrid(model)
  elif model.layer_pattern:
    raise ConfigError("config key `model.layer_pattern` is only used by `model.family` 'hybrid'")
  if config.tokenizer.kind == 'hf_json' and not config.tokenizer.path:
    raise ConfigError("config key `tokenizer.path` must name a tokenizer.json when "
                      "`tokenizer.kind` is 'hf_json'")
  mesh = config.mesh
  for axis in ('data', 'fsdp', 'tensor'):
    if mesh[axis] == 0 or mesh[axis] < -1:
      raise ConfigError(f'config key `mesh.{axis}` must be a positive size or -1, got {mesh[axis]}')
  if [mesh.data, mesh.fsdp, mesh.tensor].count(-1) > 1:
    raise ConfigError('config keys `mesh.data`, `mesh.fsdp`, `mesh.tensor`: at most one may be -1')
  rlp = config.rlp
  if rlp.thoughts_per_position < 2:
    raise ConfigError('config key `rlp.thoughts_per_position` must be >= 2 (the advantage compares '
                      f'thoughts within a group), got {rlp.thoughts_per_position}')
  if rlp.min_context >= data.seq_len:
    raise ConfigError(f'config key `rlp.min_context` ({rlp.min_context}) must be < '
                      f'`data.seq_len` ({data.seq_len})')
  from rlp_jax.objective.advantage import get_advantage_estimator  # pylint: disable=import-outside-toplevel
  get_advantage_estimator(rlp.advantage_estimator)  # unknown name → ConfigError naming the key
  if rlp.position_rule == 'after_marker' and not rlp.position_marker:
    raise ConfigError("config key `rlp.position_marker` must be set when `rlp.position_rule` is "
                      "'after_marker' (e.g. 'Answer: ')")
  if rlp.ema_decay > 1:
    raise ConfigError(f'config key `rlp.ema_decay` must be in [0, 1], got {rlp.ema_decay}')
  if rlp.epsilon_low >= 1:
    raise ConfigError(f'config key `rlp.epsilon_low` must be < 1, got {rlp.epsilon_low}')
  if config.optimizer.final_lr_fraction > 1:
    raise ConfigError('config key `optimizer.final_lr_fraction` must be <= 1, got '
                      f'{config.optimizer.final_lr_fraction}')


def _validate_hybrid(model: ml_collections.ConfigDict) -> None:
  pattern = model.layer_pattern
  if not pattern or set(pattern) - set('M*-'):
    raise ConfigError('config key `model.layer_pattern` must be a non-empty string of M (Mamba2), '
                      f'* (attention) and - (MLP), got {pattern!r}')
  if len(pattern) != model.num_layers:
    raise ConfigError(f'config key `model.num_layers` ({model.num_layers}) must equal the length '
                      f'of `model.layer_pattern` ({len(pattern)})')
  if 'M' in pattern:
    for key in ('mamba_num_heads', 'mamba_head_dim', 'ssm_state_size', 'mamba_n_groups',
                'mamba_conv_kernel', 'mamba_chunk_size'):
      if not model[key] > 0:
        raise ConfigError(f'config key `model.{key}` must be > 0 when the layer pattern has '
                          f'Mamba2 layers, got {model[key]!r}')
    if model.mamba_num_heads % model.mamba_n_groups:
      raise ConfigError(f'config key `model.mamba_n_groups` ({model.mamba_n_groups}) must divide '
                        f'`model.mamba_num_heads` ({model.mamba_num_heads})')
  if not 0 <= model.mamba_dt_limit_min <= model.mamba_dt_limit_max:
    raise ConfigError('config keys `model.mamba_dt_limit_min` <= `model.mamba_dt_limit_max` must '
                      f'hold with min >= 0, got {model.mamba_dt_limit_min}, '
                      f'{model.mamba_dt_limit_max}')
