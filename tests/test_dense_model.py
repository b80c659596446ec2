"""Dense (Qwen3) decoder: cache decode == full forward, parity with transformers, metadata, grads."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from tests import helpers


tiny_config = helpers.dense_model_config
relative_error = helpers.relative_error


def randomise_norm_scales(params, seed: int):
  """Norm scales start at one; perturb them so the tests see their effect."""
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    if any(getattr(key, 'key', None) == 'scale' for key in path):
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    return leaf
  return jax.tree_util.tree_map_with_path(perturb, params)


_jitted_forward = jax.jit(registry.forward, static_argnums=0)


def full_forward(graphdef, params, tokens, positions, token_mask=None):
  """Cache-less forward, jitted (graphdefs are hashable, so static)."""
  logits, cache = _jitted_forward(graphdef, params, jnp.asarray(tokens), jnp.asarray(positions),
                                  None if token_mask is None else jnp.asarray(token_mask))
  assert cache is None
  return np.asarray(logits)


# ---------------------------------------------------------------------------------------------
# 1. KV-cache decode equals the full forward.


def test_cached_decode_matches_full_forward():
  config = tiny_config()
  graphdef, params = registry.init_params(config, seed=0)
  params = randomise_norm_scales(params, seed=1)
  batch, length, prefill_len, max_len = 2, 12, 5, 16
  tokens = np.random.default_rng(2).integers(0, config.vocab_size, (batch, length), np.int32)
  positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
  expected = full_forward(graphdef, params, tokens, positions)

  traces = []

  def step(params, cache, tokens, positions):
    traces.append(tokens.shape)
    return registry.forward(graphdef, params, tokens, positions, None, cache)
  step = jax.jit(step)

  cache = registry.init_cache(config, batch, max_len)
  logits, cache = step(params, cache, tokens[:, :prefill_len], positions[:, :prefill_len])
  pieces = [np.asarray(logits)]
  for t in range(prefill_len, length):
    logits, cache = step(params, cache, tokens[:, t:t + 1], positions[:, t:t + 1])
    pieces.append(np.asarray(logits))
  decoded = np.concatenate(pieces, axis=1)

  assert len(traces) == 2, traces  # one prefill trace, one decode trace for all steps
  assert int(cache.index) == length
  np.testing.assert_array_equal(np.asarray(cache.valid),
                                np.arange(max_len)[None, :].repeat(batch, 0) < length)
  error = relative_error(decoded, expected)
  print(f'cached decode vs full forward: max rel error {error:.2e}')
  assert error <= 1e-5


@pytest.mark.slow
def test_left_padded_ragged_prompts_match_unpadded_rows():
  config = tiny_config(tie_embeddings=True)
  graphdef, params = registry.init_params(config, seed=3)
  params = randomise_norm_scales(params, seed=4)
  rng = np.random.default_rng(5)
  prompt_lens, num_decode = [7, 4], 4
  width = max(prompt_lens)
  sequences = [rng.integers(0, config.vocab_size, n + num_decode, np.int32) for n in prompt_lens]

  # Left-padded prompt batch: positions start at 0 at each row's first real token.
  prompt = np.zeros((2, width), np.int32)
  prompt_pos = np.zeros((2, width), np.int32)
  prompt_mask = np.zeros((2, width), bool)
  for row, n in enumerate(prompt_lens):
    prompt[row, width - n:] = sequences[row][:n]
    prompt_pos[row, width - n:] = np.arange(n)
    prompt_mask[row, width - n:] = True
  references = [full_forward(graphdef, params, seq[None], np.arange(len(seq))[None])[0]
                for seq in sequences]

  # The padded full forward (no cache) already matches on real tokens and is finite on pads.
  padded = full_forward(graphdef, params, prompt, prompt_pos, prompt_mask)
  assert np.all(np.isfinite(padded))
  errors = [relative_error(padded[row, width - n:], references[row][:n])
            for row, n in enumerate(prompt_lens)]

  step = jax.jit(lambda params, cache, tok, pos, mask: registry.forward(
      graphdef, params, tok, pos, mask, cache))
  cache = registry.init_cache(config, 2, width + num_decode)
  logits, cache = step(params, cache, prompt, prompt_pos, prompt_mask)
  assert np.all(np.isfinite(np.asarray(logits)))
  outputs = [[np.asarray(logits)[row, width - n:]] for row, n in enumerate(prompt_lens)]
  for d in range(num_decode):
    tok = np.array([[seq[n + d]] for seq, n in zip(sequences, prompt_lens)], np.int32)
    pos = np.array([[n + d] for n in prompt_lens], np.int32)
    logits, cache = step(params, cache, tok, pos, np.ones((2, 1), bool))
    for row in range(2):
      outputs[row].append(np.asarray(logits)[row])
  for row in range(2):
    errors.append(relative_error(np.concatenate(outputs[row]), references[row]))
  print(f'ragged left-padded vs unpadded rows: max rel error {max(errors):.2e}')
  assert max(errors) <= 1e-5


# ---------------------------------------------------------------------------------------------
# 2. Parity with transformers' Qwen3ForCausalLM (torch CPU, fp32, random weights).


@pytest.mark.parity
@pytest.mark.parametrize('tie_embeddings', [True, False])
def test_parity_with_transformers_qwen3(tie_embeddings):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  config = tiny_config(tie_embeddings=tie_embeddings)
  # Seed 0, eager attention; norm weights U(0.5, 1.5), every other weight N(0, 0.1).
  model = helpers.qwen3_model(config, seed=0, std=0.1, eager=True, attention_bias=False,
                              use_sliding_window=False)
  if tie_embeddings:
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

  graphdef, reference_params = registry.init_params(config, seed=0)
  params = helpers.params_from_torch(model, config)
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), params)
          == jax.tree.map(lambda x: (x.shape, x.dtype), reference_params))

  tokens = np.random.default_rng(6).integers(0, config.vocab_size, (2, 11), np.int64)
  expected = helpers.torch_logits(model, tokens)
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  ours = full_forward(graphdef, params, tokens.astype(np.int32), positions)
  error = relative_error(ours, expected)
  print(f'transformers parity (tied={tie_embeddings}): max rel error {error:.2e}')
  assert error <= 1e-4


# ---------------------------------------------------------------------------------------------
# 3. Metadata, counting, bf16, errors.


def test_logical_axes_cover_every_param_and_count_matches():
  for tie in (True, False):
    config = tiny_config(tie_embeddings=tie)
    _, params = registry.init_params(config, seed=0)
    axes = registry.param_logical_axes(config)
    is_axes = lambda x: isinstance(x, tuple)
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params)
    known = {'vocab', 'embed', 'mlp', 'heads', 'kv_heads', 'head_dim', 'norm'}

    def check(names, leaf):
      assert len(names) == leaf.ndim and set(names) <= known, (names, leaf.shape)
    jax.tree.map(check, axes, params, is_leaf=is_axes)

    total = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert registry.count_params(config) == total
    c = config
    layer = (2 * c.hidden_size + 2 * c.head_dim
             + c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
             + 3 * c.hidden_size * c.intermediate_size)
    expected = (c.vocab_size * c.hidden_size * (1 if tie else 2) + c.hidden_size
                + c.num_layers * layer)
    assert total == expected


def test_abstract_params_match_init_params():
  config = tiny_config(param_dtype='bfloat16')
  _, abstract = registry.abstract_params(config)
  _, params = registry.init_params(config, seed=0)
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
          == jax.tree.map(lambda x: (x.shape, x.dtype), params))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))


@pytest.mark.parametrize('param_dtype', [pytest.param('float32', marks=pytest.mark.slow),
                                         'bfloat16'])
def test_bf16_compute_close_to_fp32(param_dtype):
  fp32_config = tiny_config(param_dtype=param_dtype)
  bf16_config = tiny_config(param_dtype=param_dtype, compute_dtype='bfloat16')
  graphdef32, params = registry.init_params(fp32_config, seed=0)
  graphdef16, params16 = registry.init_params(bf16_config, seed=0)
  assert (jax.tree.map(lambda x: x.dtype, params) == jax.tree.map(lambda x: x.dtype, params16))
  tokens = np.random.default_rng(7).integers(0, 97, (2, 9), np.int32)
  positions = np.broadcast_to(np.arange(9, dtype=np.int32), tokens.shape)
  mask = np.ones(tokens.shape, bool)
  mask[1, :3] = False
  reference = full_forward(graphdef32, params, tokens, positions, mask)
  logits, _ = _jitted_forward(graphdef16, params, jnp.asarray(tokens), jnp.asarray(positions),
                              jnp.asarray(mask))
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(logits)))
  error = relative_error(logits, reference)
  print(f'bf16 compute ({param_dtype} params) vs fp32: max rel error {error:.2e}')
  assert error <= 5e-2

  cache = registry.init_cache(bf16_config, 2, 12)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(cache.layers))
  cached_logits, cache = _jitted_forward(graphdef16, params, jnp.asarray(tokens),
                                         jnp.asarray(positions), jnp.asarray(mask), cache)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(cache.layers))
  assert relative_error(cached_logits, reference) <= 5e-2


def test_init_cache_layout():
  config = tiny_config()
  cache = registry.init_cache(config, batch_size=3, max_len=10)
  assert len(cache.layers.entries) == config.num_layers
  assert all(len(kv) == 2 for kv in cache.layers.entries)
  assert all(x.shape == (3, 10, 2, 16) and x.dtype == jnp.float32
             for x in jax.tree.leaves(cache.layers))
  assert cache.valid.shape == (3, 10) and not np.any(np.asarray(cache.valid))
  assert cache.index.dtype == jnp.int32 and cache.index.shape == () and int(cache.index) == 0


def test_unknown_family_is_a_config_error():
  with pytest.raises(ConfigError, match='model.family'):
    registry.init_params(tiny_config(family='moe'), seed=0)
  with pytest.raises(ConfigError, match='model.compute_dtype'):
    registry.init_params(tiny_config(compute_dtype='float16'), seed=0)


# ---------------------------------------------------------------------------------------------
# 4. Gradients.


@pytest.mark.parametrize('tie_embeddings', [True, pytest.param(False, marks=pytest.mark.slow)])
def test_gradients_are_finite_for_every_param(tie_embeddings):
  config = tiny_config(tie_embeddings=tie_embeddings)
  graphdef, params = registry.init_params(config, seed=0)
  tokens = np.random.default_rng(8).integers(0, 97, (2, 10), np.int32)
  positions = np.broadcast_to(np.arange(10, dtype=np.int32), tokens.shape)
  mask = np.ones(tokens.shape, bool)
  mask[0, :4] = False  # left padding: fully masked query rows must not poison the gradient

  @jax.jit
  def loss_fn(params):
    logits, _ = registry.forward(graphdef, params, tokens[:, :-1], positions[:, :-1],
                                 mask[:, :-1])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, 1:] & mask[:, :-1]
    return -jnp.sum(picked * weights) / jnp.sum(weights)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  assert math.isfinite(float(loss))
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)), path
    assert np.any(grad != 0), path
