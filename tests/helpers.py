"""Shared test helpers: tiny model configs, tolerance checks, transformers reference builders and
config loading, for the tests and for the bench/ scripts.

Tests import it as `from tests import helpers` (pytest puts the repository root on sys.path
because tests/ is a package); a bench script puts the repository root on sys.path first.
jax, torch, transformers and tokenizers are imported inside the functions that need them, so
importing this module starts nothing (a bench script may still set JAX flags afterwards).

Every tiny config starts from `base_config()` (the declared defaults) and changes a few sizes;
the values are the ones the tests were written with, so their seeds and tolerances still hold.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from rlp_jax.config import base_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO, 'configs')


# ---------------------------------------------------------------------------------------------
# Config loading.


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
  """`get_config()` of configs/<name>.py, or of the config file at a path ending in .py."""
  if name_or_path.endswith('.py'):
    path = name_or_path
  else:
    path = os.path.join(CONFIGS_DIR, f'{name_or_path}.py')
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def shipped_config_names() -> list[str]:
  """The names of the config files under configs/, sorted (without .py)."""
  return sorted(name[:-3] for name in os.listdir(CONFIGS_DIR)
                if name.endswith('.py') and not name.startswith('_'))


# ---------------------------------------------------------------------------------------------
# Tiny model configs.


def model_config(**values: Any) -> ml_collections.ConfigDict:
  """`base_config().model` with `values` changed; every other key keeps its declared default."""
  config = base_config().model
  config.update(values)
  return config


def dense_model_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The Qwen3-shaped model of the model and interop tests (vocab 97, hidden 64, 2 layers,
  4 query / 2 kv heads of dim 16, untied), small enough for a transformers parity run on CPU."""
  return model_config(**dict(dict(
      family='dense', vocab_size=97, hidden_size=64, intermediate_size=128, num_layers=2,
      num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=1000.0, norm_eps=1e-6,
      tie_embeddings=False, param_dtype='float32', compute_dtype='float32', init_std=0.1),
      **overrides))


def hybrid_model_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The Nemotron-H-shaped model of the model and interop tests: layers 'M*-M-' (num_layers
  follows the pattern), vocab 97, hidden 64, Mamba2 8 heads × 8, state 16, 2 groups, chunk 8."""
  config = model_config(**dict(dict(
      family='hybrid', layer_pattern='M*-M-', vocab_size=97, hidden_size=64,
      intermediate_size=96, num_heads=4, num_kv_heads=2, head_dim=16, norm_eps=1e-5,
      tie_embeddings=False, param_dtype='float32', compute_dtype='float32', init_std=0.1,
      mamba_num_heads=8, mamba_head_dim=8, ssm_state_size=16, mamba_n_groups=2,
      mamba_conv_kernel=4, mamba_chunk_size=8, mamba_dt_limit_min=0.0,
      mamba_dt_limit_max=float('inf')), **overrides))
  config.num_layers = len(config.layer_pattern)
  return config


# The rollout tests' token ids: documents use ids 5..VOCAB-1, so a special id never occurs in a
# document, while THINK_END can be sampled (thoughts end early as well as at the limit).
ROLLOUT_VOCAB = 24
THINK_START, THINK_END, PAD = 3, 4, 0
ROLLOUT_MAMBA_CHUNK = 4  # the hybrid rollout model's Mamba chunk: a 12-token document is 3 chunks


def rollout_model_config(family: str = 'dense') -> ml_collections.ConfigDict:
  """The rollout tests' model (vocab 24, hidden 32, 4 query / 2 kv heads of dim 8, init_std 0.3);
  'hybrid': layers 'M*-M', Mamba2 4 heads × 8, state 8, 2 groups, chunk 4, untied, same init_std."""
  config = model_config(vocab_size=ROLLOUT_VOCAB, hidden_size=32, intermediate_size=64,
                        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, init_std=0.3)
  if family == 'hybrid':
    # Comparisons on this model whose fp32 rounding depends on the CPU (the update gradients,
    # strongly cancelling sums in the B/C conv leaves) are made against float64 runs of the same
    # path (`float64_run`), not kept small by a smaller init scale.
    pattern = 'M*-M'
    config.update(dict(family='hybrid', layer_pattern=pattern, num_layers=len(pattern),
                       tie_embeddings=False, mamba_num_heads=4, mamba_head_dim=8,
                       ssm_state_size=8, mamba_n_groups=2, mamba_conv_kernel=4,
                       mamba_chunk_size=ROLLOUT_MAMBA_CHUNK, mamba_dt_limit_min=0.0,
                       mamba_dt_limit_max=float('inf')))
  return config


def rollout_rlp_config(**overrides: Any) -> ml_collections.ConfigDict:
  """`base_config().rlp` with K 3 positions, G 2 thoughts, T 6 tokens, min_context 2, temperature
  0.9, then `overrides`."""
  config = base_config().rlp
  config.update(dict(positions_per_document=3, thoughts_per_position=2, max_thought_tokens=6,
                     min_context=2, sample_temperature=0.9))
  config.update(overrides)
  return config


def rollout_documents(lengths: Sequence[int], width: int = 12, seed: int = 0) -> dict[str, Any]:
  """A batch {'tokens' int32 [B, width], 'mask' bool} (jax arrays) of random ids in
  5..ROLLOUT_VOCAB-1, row b real for its first lengths[b] tokens and PAD after."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  tokens = rng.integers(5, ROLLOUT_VOCAB, size=(len(lengths), width)).astype(np.int32)
  mask = np.arange(width)[None, :] < np.asarray(lengths)[:, None]
  return {'tokens': jnp.asarray(np.where(mask, tokens, PAD).astype(np.int32)),
          'mask': jnp.asarray(mask)}


# ---------------------------------------------------------------------------------------------
# Tolerances.


def relative_error(actual: Any, expected: Any) -> float:
  """max |actual − expected| / max |expected|, in float64."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def assert_close(actual: Any, expected: Any, rel: float, what: str = '') -> None:
  """Asserts max |actual − expected| ≤ rel · max |expected| (float64; the scale is floored at
  1e-30, so two all-zero arrays agree) and prints the relative error (visible with pytest -s)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = max(np.max(np.abs(expected)), 1e-30)
  error = np.max(np.abs(actual - expected)) / scale
  print(f'{what + ": " if what else ""}relative error {error:.1e}')
  assert error <= rel, (what, error, rel, scale) if what else (error, scale)


# ---------------------------------------------------------------------------------------------
# transformers reference models (torch CPU, fp32).


def randomise_torch(model: Any, std: float = 0.2) -> None:
  """Every parameter random, in named_parameters order: norm weights U(0.5, 1.5), the Mamba
  vectors A_log, dt_bias, D U(−1, 1), everything else N(0, std)."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    for name, weight in model.named_parameters():
      if name.endswith('norm.weight') or name.endswith('norm_f.weight'):
        weight.uniform_(0.5, 1.5)
      elif name.split('.')[-1] in ('A_log', 'dt_bias', 'D'):
        weight.uniform_(-1.0, 1.0)
      else:
        weight.normal_(0.0, std)


def qwen3_hf_config(config: Any, **overrides: Any) -> Any:
  """transformers.Qwen3Config of the dense model config `config` (then `overrides`)."""
  import transformers  # pylint: disable=import-outside-toplevel
  values = dict(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
      num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
      head_dim=config.head_dim, rms_norm_eps=config.norm_eps,
      rope_parameters={'rope_type': 'default', 'rope_theta': config.rope_theta},
      tie_word_embeddings=config.tie_embeddings)
  values.update(overrides)
  return transformers.Qwen3Config(**values)


def nemotron_h_hf_config(config: Any, **overrides: Any) -> Any:
  """transformers.NemotronHConfig of the hybrid model config `config` (then `overrides`);
  transformers' NemotronH never ties lm_head to the embedding."""
  import transformers  # pylint: disable=import-outside-toplevel
  kinds = {'M': 'linear_attention', '*': 'full_attention', '-': 'mlp'}
  values = dict(
      vocab_size=config.vocab_size, hidden_size=config.hidden_size,
      layers_block_type=[kinds[c] for c in config.layer_pattern],
      intermediate_size=config.intermediate_size, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
      mamba_num_heads=config.mamba_num_heads, mamba_head_dim=config.mamba_head_dim,
      ssm_state_size=config.ssm_state_size, n_groups=config.mamba_n_groups,
      conv_kernel=config.mamba_conv_kernel, chunk_size=config.mamba_chunk_size,
      layer_norm_epsilon=config.norm_eps, tie_word_embeddings=False)
  values.update(overrides)
  return transformers.NemotronHConfig(**values)


def _torch_model(model_class: str, hf_config: Any, seed: int, std: float | None,
                 eager: bool) -> Any:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  if eager:
    hf_config._attn_implementation = 'eager'  # pylint: disable=protected-access
  torch.manual_seed(seed)
  model = getattr(transformers, model_class)(hf_config).float().eval()
  if std is not None:
    randomise_torch(model, std)
  return model


def qwen3_model(config: Any, seed: int = 0, std: float | None = 0.2, eager: bool = False,
                **hf_overrides: Any) -> Any:
  """A transformers Qwen3ForCausalLM of `config` (fp32, eval): torch seeded with `seed`, then
  every weight drawn by `randomise_torch(model, std)` (std None: transformers' own init); eager
  attention if asked; `hf_overrides` go to the Qwen3Config."""
  return _torch_model('Qwen3ForCausalLM', qwen3_hf_config(config, **hf_overrides), seed, std,
                      eager)


def nemotron_h_model(config: Any, seed: int = 0, std: float | None = 0.2, eager: bool = False,
                     **hf_overrides: Any) -> Any:
  """A transformers NemotronHForCausalLM of `config`, built like `qwen3_model`."""
  return _torch_model('NemotronHForCausalLM', nemotron_h_hf_config(config, **hf_overrides), seed,
                      std, eager)


def torch_logits(model: Any, tokens: Any) -> np.ndarray:
  """The transformers model's fp32 logits of int token ids [B, L]."""
  import torch  # pylint: disable=import-outside-toplevel
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(np.asarray(tokens, np.int64))).logits.numpy()


def params_from_torch(model: Any, config: Any) -> dict:
  """rlp_jax params of `config` from a transformers model's state dict (rlp_jax.interop's
  Hugging Face name map)."""
  from rlp_jax.interop import hf_checkpoint  # pylint: disable=import-outside-toplevel
  tensors = {name: value.detach().cpu().numpy() for name, value in model.state_dict().items()}
  return hf_checkpoint.params_from_tensors(tensors, config)


# ---------------------------------------------------------------------------------------------
# Hugging Face tokenizer.json files (trained here; nothing is downloaded).

BPE_SPECIALS = ('<pad>', '<s>', '</s>', '<think>', '</think>')


def bpe_documents() -> list[str]:
  """The documents the byte-level BPE tokenizers are trained on (200 of the reasoning corpus)."""
  from rlp_jax.data.reasoning_corpus import (  # pylint: disable=import-outside-toplevel
      generate_documents)
  return list(generate_documents(200, seed=0))


def train_byte_level_bpe(path: Any, specials: Sequence[str] = BPE_SPECIALS,
                         vocab_size: int = 400) -> str:
  """A byte-level BPE tokenizer.json (exact round trips) with `specials` as added tokens."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(specials),
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(bpe_documents(), trainer=trainer)
  tok.save(str(path))
  return str(path)


def wait_for_processes(processes: Sequence[Any], timeout: float) -> list[str]:
  """The outputs of the `subprocess.Popen` jobs of one multi-process test, each of which must exit
  0 within `timeout` seconds; those still running when one fails are killed (a process whose peer
  died would otherwise wait on its collectives forever)."""
  outputs = []
  try:
    for process in processes:
      outputs.append(process.communicate(timeout=timeout)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output[-4000:]
  return outputs


# ---------------------------------------------------------------------------------------------
# The Mamba2 state recurrence as a plain float64 numpy loop (the SSD scan's reference).


def ssd_recurrence(x, dt, a, bb, cc, start=None, resets=None):
  """(outputs y [B, L, H, P], states [B, L + 1, H, P, N]: the state after each prefix of 0..L
  tokens) of h_t = exp(dt_t a) h_{t-1} + dt_t x_t ⊗ B_t, y_t = h_t C_t, heads grouped over the
  B/C groups, from `start` (default zeros); `resets` [B, L] zeroes the state before token t."""
  batch, length, heads, head_dim = x.shape
  per_group = heads // bb.shape[2]
  state_size = bb.shape[3]
  y = np.zeros(x.shape)
  states = np.zeros((batch, length + 1, heads, head_dim, state_size))
  for b in range(batch):
    s = np.zeros((heads, head_dim, state_size)) if start is None else np.array(start[b])
    states[b, 0] = s
    for t in range(length):
      s = np.zeros_like(s) if resets is not None and resets[b, t] else s.copy()
      for h in range(heads):
        g = h // per_group
        s[h] = np.exp(dt[b, t, h] * a[h]) * s[h] + dt[b, t, h] * np.outer(x[b, t, h], bb[b, t, g])
        y[b, t, h] = s[h] @ cc[b, t, g]
      states[b, t + 1] = s
  return y, states


def compilation_cache_environment() -> dict[str, str]:
  """The environment that points a subprocess at this session's persistent compilation cache
  (tests/conftest.py), so a command line that compiles what an in-process test already compiled
  loads it; {} when the session has none."""
  import jax  # pylint: disable=import-outside-toplevel
  directory = jax.config.jax_compilation_cache_dir
  if not directory:
    return {}
  return {'JAX_COMPILATION_CACHE_DIR': directory,
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
