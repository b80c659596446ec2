"""The record a model family registers: everything the rest of rlp_jax needs to know about it.

A family (`model.family` = its `name`) is one decoder architecture. Its record says how to build
the decoder, its decode cache, its shared-prefix passes (one document pass serving every thought
rollout, then the thoughts over it; see prefix_attention.py), how its parameters are named in a
Hugging Face checkpoint, and which `model.*` keys it checks. Records are registered in
registry.FAMILIES; nothing else in the package switches on the family name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import nnx

from rlp_jax.models.hf_names.tensor_map import TensorMapping

ModelConfig = Any  # the `model` group of the config (a ConfigDict or anything with its keys)


def _no_ignored_tensors(model_config: ModelConfig) -> set[str]:
  del model_config
  return set()


@dataclasses.dataclass(frozen=True)
class HFNames:
  """How a family is stored as a Hugging Face model type (config.json + safetensors names)."""
  model_type: str  # config.json `model_type`
  architecture: str  # config.json `architectures[0]`
  mappings: Callable[[ModelConfig], list[TensorMapping]]  # one per HF tensor, covering every leaf
  # (model config, torch dtype) → config.json; export lays it over the source checkpoint's
  # config.json when the run started from one (hf_names/config_json.py).
  hf_config: Callable[[ModelConfig, str], dict[str, Any]]
  model_keys: Callable[[dict[str, Any], str], dict[str, Any]]  # (config.json, where) → model.*
  # Tensors a checkpoint may hold that the model does not use (e.g. a tied head stored too).
  ignored: Callable[[ModelConfig], set[str]] = _no_ignored_tensors
  # (stored prefix, alternative prefix): names tried when the first spelling is absent.
  prefix_aliases: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """One model family. Every callable takes the `model` config group, never the whole config.

  decoder: the module class (a decoder.Decoder), built as `decoder(model_config, rngs)`; its
      `__call__(tokens, positions, token_mask, cache)` returns (fp32 logits, new cache or None).
  init_cache(model_config, batch_size, max_len): the empty decode cache `forward` takes.
  document_kv(model, tokens, positions, mask, state_positions, segment_ids, *, return_hidden):
      one pass over documents → (fp32 logits [B, L, V], prefix_attention.DocumentKV); `model` is
      the merged decoder; segment_ids int32 [B, L] of packed rows or None (models/segments.py);
      `return_hidden` True: the residual stream [B, L, E] before the final norm instead of the
      logits (the callers that train take log-probs from it a chunk at a time).
  thought_forward(model, doc_kv, prefix_len, thought_tokens, thought_positions, thought_mask,
      self_cache, *, return_hidden): thoughts [B, N, Tq] over the document → (fp32 logits
      [B, N, Tq, V], or with `return_hidden` the residual stream [B, N, Tq, E], new cache).
  empty_thought_cache(model_config, doc_kv, thoughts_per_document, max_len): the thoughts' own
      cache of B·N rows.
  validate_config(model_config): ConfigError naming the first bad family-specific `model.*` key.
  hf: the Hugging Face names, or None when the family has no checkpoint interop.
  The three shared-prefix callables may be None: rlp.prefix_mode='shared' then says so.
  """
  name: str
  decoder: type[nnx.Module]
  init_cache: Callable[[ModelConfig, int, int], Any]
  validate_config: Callable[[ModelConfig], None]
  document_kv: Callable[..., Any] | None = None
  thought_forward: Callable[..., Any] | None = None
  empty_thought_cache: Callable[..., Any] | None = None
  hf: HFNames | None = None
