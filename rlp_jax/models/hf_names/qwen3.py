"""The 'dense' family ↔ Hugging Face Qwen3 (`Qwen3ForCausalLM`): tensor names and config.json.

  model.embed_tokens.weight                        token_embedding/embedding    [V, E]
  model.layers.N.input_layernorm.weight            layers/N/attention_norm/scale
  model.layers.N.self_attn.{q,k,v}_proj.weight     layers/N/attention/{q,k,v}_proj/kernel [E, H, D]
  model.layers.N.self_attn.o_proj.weight           layers/N/attention/o_proj/kernel [H, D, E]
  model.layers.N.self_attn.{q,k}_norm.weight       layers/N/attention/{q,k}_norm/scale [D]
  model.layers.N.post_attention_layernorm.weight   layers/N/mlp_norm/scale
  model.layers.N.mlp.{gate,up,down}_proj.weight    layers/N/mlp/{gate,up,down}_proj/kernel
  model.norm.weight                                final_norm/scale
  lm_head.weight                                   lm_head/kernel [E, V]   (only when untied)

torch Linear weights are [out, in]; our kernels put the input axes first (see tensor_map.py).
"""
from __future__ import annotations

from typing import Any

from rlp_jax.errors import DataError
from rlp_jax.models.family import HFNames
from rlp_jax.models.hf_names.tensor_map import LinearKernel, TensorMapping, one

MODEL_TYPE = 'qwen3'
ARCHITECTURE = 'Qwen3ForCausalLM'


def qwen3_mappings(model_config: Any) -> list[TensorMapping]:
  """One mapping per parameter of the dense decoder described by `model_config`."""
  mappings = [
      one('model.embed_tokens.weight', ('token_embedding', 'embedding')),
      one('model.norm.weight', ('final_norm', 'scale')),
  ]
  for i in range(model_config.num_layers):
    hf, ours = f'model.layers.{i}.', ('layers', i)
    attention = ours + ('attention',)
    mappings += [
        one(hf + 'input_layernorm.weight', ours + ('attention_norm', 'scale')),
        one(hf + 'post_attention_layernorm.weight', ours + ('mlp_norm', 'scale')),
        one(hf + 'self_attn.q_norm.weight', attention + ('q_norm', 'scale')),
        one(hf + 'self_attn.k_norm.weight', attention + ('k_norm', 'scale')),
        one(hf + 'self_attn.o_proj.weight', attention + ('o_proj', 'kernel'),
                      LinearKernel(in_dims=2)),
    ]
    mappings += [one(f'{hf}self_attn.{name}.weight', attention + (name, 'kernel'),
                               LinearKernel()) for name in ('q_proj', 'k_proj', 'v_proj')]
    mappings += [one(f'{hf}mlp.{name}.weight', ours + ('mlp', name, 'kernel'),
                               LinearKernel()) for name in ('gate_proj', 'up_proj', 'down_proj')]
  if not model_config.tie_embeddings:
    mappings.append(one('lm_head.weight', ('lm_head', 'kernel'), LinearKernel()))
  return mappings


def qwen3_ignored_tensors(model_config: Any) -> set[str]:
  """Published tied Qwen3 checkpoints (0.6B, 1.7B, 4B) still store lm_head.weight; transformers
  ties it to the embedding on load, and so do we (the stored copy is not read)."""
  return {'lm_head.weight'} if model_config.tie_embeddings else set()


def qwen3_hf_config(model_config: Any, torch_dtype: str) -> dict[str, Any]:
  """The config.json of the equivalent Qwen3ForCausalLM (the layout of the published Qwen3 ones).

  No `max_position_embeddings`: the model has no length limit of its own; the export writes the
  source checkpoint's or the run's (interop/export.py)."""
  c = model_config
  return {
      'architectures': [ARCHITECTURE],
      'model_type': MODEL_TYPE,
      'vocab_size': int(c.vocab_size),
      'hidden_size': int(c.hidden_size),
      'intermediate_size': int(c.intermediate_size),
      'num_hidden_layers': int(c.num_layers),
      'num_attention_heads': int(c.num_heads),
      'num_key_value_heads': int(c.num_kv_heads),
      'head_dim': int(c.head_dim),
      'hidden_act': 'silu',
      'rms_norm_eps': float(c.norm_eps),
      'rope_theta': float(c.rope_theta),
      'rope_scaling': None,
      'tie_word_embeddings': bool(c.tie_embeddings),
      'attention_bias': False,
      'attention_dropout': 0.0,
      'use_sliding_window': False,
      'sliding_window': None,
      'max_window_layers': int(c.num_layers),  # no sliding window: descriptive only
      'initializer_range': float(c.init_std),
      'use_cache': True,
      'torch_dtype': torch_dtype,
  }


def _rope_theta(hf_config: dict[str, Any], where: str) -> float:
  """rope_theta from transformers-5 `rope_parameters` or the older top-level keys; only plain
  (unscaled) RoPE is supported."""
  rope = hf_config.get('rope_parameters') or hf_config.get('rope_scaling') or {}
  rope_type = rope.get('rope_type', rope.get('type', 'default'))
  if rope_type != 'default':
    raise DataError(f'{where}: RoPE scaling {rope_type!r} is not supported (only plain RoPE)')
  return float(rope.get('rope_theta', hf_config.get('rope_theta', 10000.0)))


def model_config_from_qwen3(hf_config: dict[str, Any], where: str) -> dict[str, Any]:
  """rlp_jax `model.*` keys for a Qwen3 config.json (`where` names the file in errors)."""
  unsupported = {'attention_bias': True, 'use_sliding_window': True}
  for key, bad in unsupported.items():
    if hf_config.get(key, False) == bad:
      raise DataError(f'{where}: {key}={bad} is not supported by the dense family')
  if hf_config.get('hidden_act', 'silu') != 'silu':
    raise DataError(f"{where}: hidden_act {hf_config['hidden_act']!r} is not supported (silu)")
  try:
    num_heads = int(hf_config['num_attention_heads'])
    return dict(
        family='dense',
        vocab_size=int(hf_config['vocab_size']),
        hidden_size=int(hf_config['hidden_size']),
        intermediate_size=int(hf_config['intermediate_size']),
        num_layers=int(hf_config['num_hidden_layers']),
        num_heads=num_heads,
        num_kv_heads=int(hf_config.get('num_key_value_heads') or num_heads),
        head_dim=int(hf_config.get('head_dim') or hf_config['hidden_size'] // num_heads),
        rope_theta=_rope_theta(hf_config, where),
        norm_eps=float(hf_config.get('rms_norm_eps', 1e-6)),
        tie_embeddings=bool(hf_config.get('tie_word_embeddings', False)),
    )
  except KeyError as e:
    raise DataError(f'{where}: missing key {e.args[0]!r}') from e


QWEN3 = HFNames(model_type=MODEL_TYPE, architecture=ARCHITECTURE, mappings=qwen3_mappings,
                hf_config=qwen3_hf_config, model_keys=model_config_from_qwen3,
                ignored=qwen3_ignored_tensors)
