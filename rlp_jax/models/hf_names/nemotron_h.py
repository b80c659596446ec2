"""The 'hybrid' family ↔ Hugging Face Nemotron-H (`NemotronHForCausalLM`): names and config.json.

Published checkpoints spell the trunk `backbone.`; transformers 5 renames it to `model.` when it
loads them. Both spellings are read; exports write `backbone.` (the published layout).

  backbone.embeddings.weight                 token_embedding/embedding [V, E]
  backbone.layers.N.norm.weight              layers/N/norm/scale
  'M' backbone.layers.N.mixer.in_proj.weight  [I | I + 2GN | H, E] fused: z | x B C | dt
        → mixer/{z,x}_proj [E, H, P], mixer/{b,c}_proj [E, G, N], mixer/dt_proj [E, H]
      mixer.conv1d.weight [I + 2GN, 1, K], mixer.conv1d.bias [I + 2GN]   fused: x | B | C
        → mixer/conv_{x,b,c}/kernel [K, …], /bias
      mixer.{dt_bias, A_log, D} [H]; mixer.norm.weight [I] → mixer/norm/scale [H, P];
      mixer.out_proj.weight [E, I] → mixer/out_proj/kernel [H, P, E]
  '*' mixer.{q,k,v,o}_proj.weight            mixer/{q,k,v,o}_proj/kernel (no q/k norm, no RoPE)
  '-' mixer.{up,down}_proj.weight            mixer/{up,down}_proj/kernel
  backbone.norm_f.weight                     final_norm/scale
  lm_head.weight                             lm_head/kernel [E, V]; tied: a copy of the embedding
(I = H·P Mamba inner size, G groups, N state size, K conv kernel.)

transformers' NemotronH never ties the head to the embedding (it computes with `lm_head.weight`
whatever `tie_word_embeddings` says), so a tied model is exported with `lm_head.weight` = the
embedding; on load that copy may be absent, and when present must equal the embedding.
"""
from __future__ import annotations

import math
from typing import Any

from rlp_jax.errors import DataError
from rlp_jax.models.family import HFNames
from rlp_jax.models.hf_names.tensor_map import (ConvKernel, Flattened, LinearKernel,
                                                TensorMapping, copy_of, fused, one)

MODEL_TYPE = 'nemotron_h'
ARCHITECTURE = 'NemotronHForCausalLM'
TRUNK = 'backbone.'  # published spelling; transformers 5 state dicts use 'model.'
PREFIX_ALIASES = ((TRUNK, 'model.'),)
# config.json block types (transformers 5 names and the older ones) → layer_pattern characters.
_BLOCK_KINDS = {'linear_attention': 'M', 'mamba': 'M', 'full_attention': '*', 'attention': '*',
                'mlp': '-'}


def _mamba_mappings(hf: str, ours: tuple) -> list[TensorMapping]:
  mixer = ours + ('mixer',)
  linear = LinearKernel()
  return [
      fused(hf + 'in_proj.weight', [(mixer + (name, 'kernel'), linear) for name in
                                    ('z_proj', 'x_proj', 'b_proj', 'c_proj', 'dt_proj')]),
      fused(hf + 'conv1d.weight', [(mixer + (conv, 'kernel'), ConvKernel())
                                   for conv in ('conv_x', 'conv_b', 'conv_c')]),
      fused(hf + 'conv1d.bias', [(mixer + (conv, 'bias'), Flattened())
                                 for conv in ('conv_x', 'conv_b', 'conv_c')]),
      one(hf + 'dt_bias', mixer + ('dt_bias',)),
      one(hf + 'A_log', mixer + ('A_log',)),
      one(hf + 'D', mixer + ('D',)),
      one(hf + 'norm.weight', mixer + ('norm', 'scale'), Flattened()),
      one(hf + 'out_proj.weight', mixer + ('out_proj', 'kernel'), LinearKernel(in_dims=2)),
  ]


def nemotron_h_mappings(model_config: Any) -> list[TensorMapping]:
  """One mapping per HF tensor of the hybrid decoder described by `model_config`."""
  mappings = [
      one(TRUNK + 'embeddings.weight', ('token_embedding', 'embedding')),
      one(TRUNK + 'norm_f.weight', ('final_norm', 'scale')),
  ]
  for i, kind in enumerate(model_config.layer_pattern):
    hf, ours = f'{TRUNK}layers.{i}.', ('layers', i)
    mappings.append(one(hf + 'norm.weight', ours + ('norm', 'scale')))
    mixer = ours + ('mixer',)
    if kind == 'M':
      mappings += _mamba_mappings(hf + 'mixer.', ours)
    elif kind == '*':
      mappings += [one(f'{hf}mixer.{name}.weight', mixer + (name, 'kernel'),
                       LinearKernel(in_dims=2 if name == 'o_proj' else 1))
                   for name in ('q_proj', 'k_proj', 'v_proj', 'o_proj')]
    else:
      mappings += [one(f'{hf}mixer.{name}.weight', mixer + (name, 'kernel'), LinearKernel())
                   for name in ('up_proj', 'down_proj')]
  if model_config.tie_embeddings:
    mappings.append(copy_of('lm_head.weight', ('token_embedding', 'embedding')))
  else:
    mappings.append(one('lm_head.weight', ('lm_head', 'kernel'), LinearKernel()))
  return mappings


def nemotron_h_hf_config(model_config: Any, torch_dtype: str) -> dict[str, Any]:
  """config.json of the equivalent NemotronHForCausalLM, in the published layout.

  The dt clamp: the published checkpoints and the mamba_ssm kernels read `time_step_limit`
  (min, max); transformers 5 ignores it and clamps the prefill's dt (its chunked scan, and the
  kernels' dt_limit) from below at `time_step_min`, its decode steps not at all. So both are
  written: `time_step_limit` = (min, max) and `time_step_min` = min, 0 included (the model's own
  floor: a dt under transformers' default 0.001 is kept, as in rlp_jax). `time_step_max` and
  `time_step_floor` only shape transformers' initialisation of a dt_bias a checkpoint lacks.
  transformers applies no upper clamp: a finite `model.mamba_dt_limit_max` is exported in
  `time_step_limit` only.
  """
  c = model_config
  dt_min, dt_max = float(c.mamba_dt_limit_min), float(c.mamba_dt_limit_max)
  return {
      'architectures': [ARCHITECTURE],
      'model_type': MODEL_TYPE,
      'vocab_size': int(c.vocab_size),
      'hidden_size': int(c.hidden_size),
      'intermediate_size': int(c.intermediate_size),
      'num_hidden_layers': len(c.layer_pattern),
      'hybrid_override_pattern': str(c.layer_pattern),
      'num_attention_heads': int(c.num_heads),
      'num_key_value_heads': int(c.num_kv_heads),
      'head_dim': int(c.head_dim),
      'attention_bias': False,
      'mlp_bias': False,
      'mlp_hidden_act': 'relu2',
      'use_bias': False,
      'use_conv_bias': True,
      'mamba_num_heads': int(c.mamba_num_heads),
      'mamba_head_dim': int(c.mamba_head_dim),
      'mamba_hidden_act': 'silu',
      'ssm_state_size': int(c.ssm_state_size),
      'n_groups': int(c.mamba_n_groups),
      'conv_kernel': int(c.mamba_conv_kernel),
      'chunk_size': int(c.mamba_chunk_size),
      'expand': 2,
      'time_step_limit': [dt_min, dt_max],
      'time_step_min': dt_min,
      'time_step_max': 0.1,
      'time_step_floor': 1e-4,
      'layer_norm_epsilon': float(c.norm_eps),
      'residual_in_fp32': False,
      'tie_word_embeddings': bool(c.tie_embeddings),
      'initializer_range': float(c.init_std),
      'use_cache': True,
      'torch_dtype': torch_dtype,
  }


def _layer_pattern(hf_config: dict[str, Any], where: str) -> str:
  if hf_config.get('hybrid_override_pattern'):
    pattern = str(hf_config['hybrid_override_pattern'])
  else:
    kinds = hf_config.get('layers_block_type') or hf_config.get('layer_types')
    if not kinds:
      raise DataError(f'{where}: no hybrid_override_pattern or layers_block_type')
    unknown = sorted(set(kinds) - set(_BLOCK_KINDS))
    if unknown:
      raise DataError(f'{where}: layer types {unknown} are not supported by the hybrid family')
    pattern = ''.join(_BLOCK_KINDS[kind] for kind in kinds)
  if set(pattern) - set('M*-'):
    raise DataError(f'{where}: layer pattern {pattern!r} has layers the hybrid family lacks '
                    '(supported: M Mamba2, * attention, - MLP; not E mixture-of-experts)')
  return pattern


def _first(hf_config: dict[str, Any], names: tuple[str, ...], default: Any) -> Any:
  for name in names:
    if name in hf_config and hf_config[name] is not None:
      return hf_config[name]
  return default


def _float(value: Any) -> float:
  """A float from config.json; transformers 5 writes infinity as {"__float__": "Infinity"}."""
  if isinstance(value, dict) and '__float__' in value:
    return float(value['__float__'])
  return float(value)


def model_config_from_nemotron_h(hf_config: dict[str, Any], where: str) -> dict[str, Any]:
  """rlp_jax `model.*` keys for a Nemotron-H config.json (`where` names the file in errors)."""
  required_false = ('attention_bias', 'mlp_bias', 'use_bias')
  for key in required_false:
    if hf_config.get(key, False):
      raise DataError(f'{where}: {key}=true is not supported by the hybrid family')
  if not _first(hf_config, ('use_conv_bias', 'mamba_conv_bias'), True):
    raise DataError(f'{where}: use_conv_bias=false is not supported by the hybrid family')
  for key, expected in (('mlp_hidden_act', 'relu2'), ('mamba_hidden_act', 'silu')):
    if hf_config.get(key, expected) != expected:
      raise DataError(f'{where}: {key} {hf_config[key]!r} is not supported ({expected})')
  pattern = _layer_pattern(hf_config, where)
  dt_limit = _first(hf_config, ('time_step_limit', 'mamba_dt_limit'), (0.0, math.inf))
  try:
    num_heads = int(hf_config['num_attention_heads'])
    return dict(
        family='hybrid',
        layer_pattern=pattern,
        num_layers=len(pattern),
        vocab_size=int(hf_config['vocab_size']),
        hidden_size=int(hf_config['hidden_size']),
        intermediate_size=int(hf_config['intermediate_size']),
        num_heads=num_heads,
        num_kv_heads=int(hf_config.get('num_key_value_heads') or num_heads),
        head_dim=int(hf_config.get('head_dim') or hf_config['hidden_size'] // num_heads),
        norm_eps=float(hf_config.get('layer_norm_epsilon', 1e-5)),
        tie_embeddings=bool(hf_config.get('tie_word_embeddings', False)),
        mamba_num_heads=int(hf_config['mamba_num_heads']),
        mamba_head_dim=int(hf_config['mamba_head_dim']),
        ssm_state_size=int(hf_config['ssm_state_size']),
        mamba_n_groups=int(_first(hf_config, ('n_groups', 'mamba_n_groups'), 8)),
        mamba_conv_kernel=int(_first(hf_config, ('conv_kernel', 'mamba_d_conv'), 4)),
        mamba_chunk_size=int(_first(hf_config, ('chunk_size', 'mamba_chunk_size'), 128)),
        mamba_dt_limit_min=_float(dt_limit[0]),
        mamba_dt_limit_max=_float(dt_limit[1]),
    )
  except KeyError as e:
    raise DataError(f'{where}: missing key {e.args[0]!r}') from e


NEMOTRON_H = HFNames(model_type=MODEL_TYPE, architecture=ARCHITECTURE,
                     mappings=nemotron_h_mappings, hf_config=nemotron_h_hf_config,
                     model_keys=model_config_from_nemotron_h, prefix_aliases=PREFIX_ALIASES)
