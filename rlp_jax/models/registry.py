"""The one public entry point to the models: config → module, params, pure forward, caches.

`FAMILIES` registers each model family's record (family.py); `family_of(model_config)` looks up
the one `model.family` names. Adding a family is one module defining its record and one line
here. Everything compiled is a pure function of (graphdef, params, inputs); `params` is the nested
pure dict of arrays that `nnx.to_pure_dict` produces (list indices are int keys).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.errors import ConfigError
from rlp_jax.models.decoder import OutputHead
from rlp_jax.models.dense_family import DENSE
from rlp_jax.models.family import ModelFamily
from rlp_jax.models.hybrid_cache import HybridCache
from rlp_jax.models.layer_stack import LayerPlan
from rlp_jax.models.hybrid_family import HYBRID
from rlp_jax.models.kv_cache import KVCache
from rlp_jax.models.segments import positions_in_segment

Params = dict[str, Any]
Cache = KVCache | HybridCache  # what the registered families' `init_cache` return

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (
    DENSE,
    HYBRID,
)}


def family_of(model_config: Any) -> ModelFamily:
  """The record of `model_config.family`; ConfigError naming the key and its choices otherwise."""
  name = model_config.family
  if name not in FAMILIES:
    raise ConfigError(f'config key `model.family` must be one of {sorted(FAMILIES)}, got {name!r}')
  return FAMILIES[name]


def family_of_model(model: nnx.Module) -> ModelFamily:
  """The record whose decoder class built `model` (a merged graphdef and params)."""
  matches = [family for family in FAMILIES.values() if type(model) is family.decoder]
  if len(matches) != 1:
    raise ConfigError(f'{type(model).__name__} is the decoder of {len(matches)} model families '
                      f'(registered: {sorted(FAMILIES)}); expected exactly one')
  return matches[0]


def layer_plan(model_config: Any) -> LayerPlan:
  """Where the model's layers and per-layer values live (unrolled or scanned, layer_stack.py)."""
  return family_of(model_config).decoder.layer_plan(model_config)


def with_layout(model_config: Any, scanned: bool) -> Any:
  """A copy of `model_config` with `model.scan_layers` = `scanned` (the same parameters, laid
  out unrolled or scanned)."""
  config = model_config.copy_and_resolve_references()
  config.scan_layers = scanned
  return config


def build_model(model_config: Any, rngs: nnx.Rngs) -> nnx.Module:
  """Instantiates the model named by `model_config.family` with fresh parameters."""
  return family_of(model_config).decoder(model_config, rngs)


def init_params(model_config: Any, seed: int) -> tuple[nnx.GraphDef, Params]:
  """(graphdef, params pure dict) of a freshly initialised model."""
  model = build_model(model_config, nnx.Rngs(params=seed))
  graphdef, state = nnx.split(model, nnx.Param)
  return graphdef, nnx.to_pure_dict(state)


def _abstract_state(model_config: Any) -> tuple[nnx.GraphDef, nnx.State]:
  model = nnx.eval_shape(lambda: build_model(model_config, nnx.Rngs(params=0)))
  return nnx.split(model, nnx.Param)


def abstract_params(model_config: Any) -> tuple[nnx.GraphDef, Params]:
  """(graphdef, params of jax.ShapeDtypeStruct), without allocating any parameter."""
  graphdef, state = _abstract_state(model_config)
  return graphdef, nnx.to_pure_dict(state)


def param_logical_axes(model_config: Any) -> Params:
  """A pytree shaped like the params whose leaves are tuples of logical axis names.

  Tuples are pytree nodes: map over it together with params using
  `jax.tree.map(f, axes, params, is_leaf=lambda x: isinstance(x, tuple))`.
  """
  _, state = _abstract_state(model_config)
  axes: Params = {}
  for path, variable in state.flat_state():
    node = axes
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = tuple(variable.get_metadata()['logical_axes'])
  return axes


def count_params(model_config: Any) -> int:
  """Total number of parameter elements."""
  _, params = abstract_params(model_config)
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def document_positions(tokens: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
  """RoPE positions of document rows [B, L]: 0..L-1 on every row, or with `segment_ids` (packed
  rows, segments.py) each column's index within its own document."""
  if segment_ids is not None:
    return positions_in_segment(segment_ids)
  return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)


def forward(graphdef: nnx.GraphDef, params: Params, tokens: jax.Array, positions: jax.Array,
            token_mask: jax.Array | None = None, cache: Cache | None = None,
            segment_ids: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
  """Logits fp32 [B, L, V] and the updated cache (None without a cache). Pure; jit-able.

  Without a cache: causal attention over the L tokens, keys with token_mask False masked out;
  with `segment_ids` int32 [B, L] (packed rows: 0 padding, 1, 2, … per document; segments.py)
  every document is kept to itself (attention within its segment, Mamba2 states restarted at
  its start; pass `document_positions(tokens, segment_ids)` as positions). With a cache (no
  segment_ids): the L tokens are written at columns [cache.index, cache.index + L) and attend to
  valid cache columns up to their own (see kv_cache.py); the hybrid family also carries its
  Mamba2 states forward (see hybrid_cache.py). The cache comes from `init_cache`.
  """
  model = nnx.merge(graphdef, params)
  return model(tokens, positions, token_mask, cache, segment_ids)


def forward_hidden(graphdef: nnx.GraphDef, params: Params, tokens: jax.Array,
                   positions: jax.Array, token_mask: jax.Array | None = None,
                   cache: Cache | None = None, segment_ids: jax.Array | None = None,
                   ) -> tuple[jax.Array, Cache | None]:
  """`forward` up to the last layer: the residual stream [B, L, E] (before the final norm, in
  the compute dtype) and the updated cache. `logits_from_hidden` of any columns of it equals the
  same columns of `forward`'s logits, so callers that need few columns skip the rest of the
  [B, L, V] logits."""
  model = nnx.merge(graphdef, params)
  return model.residual_stream(tokens, positions, token_mask, cache, segment_ids)


def logits_from_hidden(graphdef: nnx.GraphDef, params: Params, hidden: jax.Array) -> jax.Array:
  """fp32 logits [..., L, V] of residual-stream columns [B, L, E] (final norm, then lm head)."""
  model = nnx.merge(graphdef, params)
  return model.output_logits(hidden)


def output_head(graphdef: nnx.GraphDef, params: Params, hidden: jax.Array,
                ) -> tuple[jax.Array, OutputHead]:
  """(final-normed residual-stream columns [B, L, E] in the compute dtype, the lm head as one
  matrix): `head.logits(normed)` equals `logits_from_hidden(graphdef, params, hidden)`. What the
  log-probs over the vocabulary take, a chunk at a time (objective/chunked_log_probs.py)."""
  model = nnx.merge(graphdef, params)
  return model.output_head(hidden)


def init_cache(model_config: Any, batch_size: int, max_len: int) -> Cache:
  """Empty decode cache (zeros, nothing valid, index 0) in the compute dtype; SSM states fp32."""
  return family_of(model_config).init_cache(model_config, batch_size, max_len)
