"""Checks that involve more than one key (single-key choices and ranges are declared in keys.py).

Every message is one line naming the dotted keys involved.
"""
from __future__ import annotations

import ml_collections

from rlp_jax.errors import ConfigError
from rlp_jax.models.registry import FAMILIES


def validate_relations(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first pair (or group) of keys that do not fit together."""
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
  FAMILIES[model.family].validate_config(model)  # the family's own model.* keys
  mesh = config.mesh
  if [mesh.data, mesh.fsdp, mesh.tensor].count(-1) > 1:
    raise ConfigError('config keys `mesh.data`, `mesh.fsdp`, `mesh.tensor`: at most one may be -1')
  rlp = config.rlp
  if rlp.min_context >= data.seq_len:
    raise ConfigError(f'config key `rlp.min_context` ({rlp.min_context}) must be < '
                      f'`data.seq_len` ({data.seq_len})')
  scorable = data.seq_len - rlp.min_context  # positions t with min_context <= t < seq_len
  if rlp.positions_per_document > scorable:
    raise ConfigError(f'config key `rlp.positions_per_document` ({rlp.positions_per_document}) '
                      f'must be <= `data.seq_len` - `rlp.min_context` ({data.seq_len} - '
                      f'{rlp.min_context} = {scorable}), the positions a row can score')
  if rlp.position_rule == 'after_marker' and not rlp.position_marker:
    raise ConfigError("config key `rlp.position_marker` must be set when `rlp.position_rule` is "
                      "'after_marker' (e.g. 'Answer: ')")

