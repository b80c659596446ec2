"""An exported config.json over the config.json of the checkpoint a run started from.

A run initialised from a Hugging Face directory (`model.init_from`) is exported with every key of
that directory's config.json, except the writer's bookkeeping and other spellings of keys the
export writes; over them go the keys the run defines (its family's `hf_config`: the architecture
the weights implement, and the export's special-token ids). A key in `SOURCE_KEPT` describes the
model without changing what the weights compute (context length, sliding-window bookkeeping,
initialisation): the source's value stays, the run's is only the default.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SOURCE_KEPT = ('max_position_embeddings', 'max_window_layers', 'initializer_range',
               'time_step_max', 'time_step_floor', 'use_cache')
# The writer's bookkeeping and its dtype (the export writes its own), remote code the export does
# not copy, and the older spellings transformers reads over the keys the export writes
# (NemotronHConfig takes `mamba_dt_min` over `time_step_min`, ...).
SOURCE_DROPPED = ('_name_or_path', 'transformers_version', 'auto_map', 'torch_dtype', 'dtype',
                  'mamba_dt_min', 'mamba_dt_max', 'mamba_dt_limit', 'mamba_dt_init_floor',
                  'mamba_n_groups', 'mamba_d_conv', 'mamba_expand', 'mamba_conv_bias',
                  'mamba_chunk_size')


def merged_config_json(run: Mapping[str, Any],
                       source: Mapping[str, Any] | None) -> dict[str, Any]:
  """The config.json to write: `source` (None: none) without SOURCE_DROPPED, then `run`'s keys
  (for a SOURCE_KEPT key only when the source lacks it)."""
  if not source:
    return dict(run)
  merged = {key: value for key, value in source.items() if key not in SOURCE_DROPPED}
  merged.update({key: value for key, value in run.items()
                 if key not in SOURCE_KEPT or key not in merged})
  return merged
