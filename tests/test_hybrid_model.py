"""Hybrid (Nemotron-H) model: parity with transformers, cached decode, padding, sizes, RLP run."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.config import validate_config
from rlp_jax.models import registry
from rlp_jax.models.ssd import ssd_chunked_scan, ssd_step
from tests import helpers

tiny_config = helpers.hybrid_model_config  # layers 'M*-M-' unless layer_pattern= says otherwise
load_config = helpers.load_config
relative_error = helpers.relative_error


def randomise(params, seed: int):
  """Every parameter random, including norm scales, A_log, D, dt_bias and conv biases (leaves may
  be arrays or the ShapeDtypeStructs of registry.abstract_params)."""
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    names = [str(getattr(key, 'key', '')) for key in path]
    if names[-1] == 'scale':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif names[-1] in ('A_log', 'dt_bias', 'D'):
      value = rng.uniform(-1.0, 1.0, leaf.shape)
    else:
      value = rng.normal(0.0, 0.2, leaf.shape)
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(perturb, params)


_jitted_forward = jax.jit(registry.forward, static_argnums=0)


def mamba_leaves(config, cache) -> list:
  """Every array of the cache's Mamba2 states, in layer order."""
  return jax.tree.leaves(cache.layers.of_kind(registry.layer_plan(config), 'M'))


def full_forward(graphdef, params, tokens, token_mask=None):
  tokens = jnp.asarray(tokens)
  logits, cache = _jitted_forward(graphdef, params, tokens, jnp.zeros_like(tokens),
                                  None if token_mask is None else jnp.asarray(token_mask))
  assert cache is None
  return np.asarray(logits)


# ---------------------------------------------------------------------------------------------
# 1. Parity with transformers' NemotronHForCausalLM (torch CPU, fp32, random weights).


def torch_nemotron_h_to_params(state_dict, config) -> dict:
  """Maps a NemotronHForCausalLM state dict onto our params pure dict (the safetensors layout)."""
  e, h, p = config.hidden_size, config.mamba_num_heads, config.mamba_head_dim
  g, n = config.mamba_n_groups, config.ssm_state_size
  inner, group_width = h * p, g * n

  def get(name):
    return jnp.asarray(state_dict[name].detach().cpu().numpy())

  def mamba(prefix):
    in_proj = get(prefix + 'in_proj.weight').T  # [E, I | I + 2GN | H] = z | x B C | dt
    conv = get(prefix + 'conv1d.weight')[:, 0, :].T  # [K, I + 2GN] = x | B | C
    conv_bias = get(prefix + 'conv1d.bias')
    z, xbc, dt = in_proj[:, :inner], in_proj[:, inner:-h], in_proj[:, -h:]
    splits = (inner, inner + group_width)
    x_w, b_w, c_w = jnp.split(xbc, splits, axis=1)
    x_k, b_k, c_k = jnp.split(conv, splits, axis=1)
    x_b, b_b, c_b = jnp.split(conv_bias, splits)
    k = conv.shape[0]
    return {
        'z_proj': {'kernel': z.reshape(e, h, p)}, 'x_proj': {'kernel': x_w.reshape(e, h, p)},
        'b_proj': {'kernel': b_w.reshape(e, g, n)}, 'c_proj': {'kernel': c_w.reshape(e, g, n)},
        'dt_proj': {'kernel': dt},
        'conv_x': {'kernel': x_k.reshape(k, h, p), 'bias': x_b.reshape(h, p)},
        'conv_b': {'kernel': b_k.reshape(k, g, n), 'bias': b_b.reshape(g, n)},
        'conv_c': {'kernel': c_k.reshape(k, g, n), 'bias': c_b.reshape(g, n)},
        'dt_bias': get(prefix + 'dt_bias'), 'A_log': get(prefix + 'A_log'),
        'D': get(prefix + 'D'),
        'norm': {'scale': get(prefix + 'norm.weight').reshape(h, p)},
        'out_proj': {'kernel': get(prefix + 'out_proj.weight').T.reshape(h, p, e)},
    }

  def attention(prefix):
    qh, kh, d = config.num_heads, config.num_kv_heads, config.head_dim
    return {'q_proj': {'kernel': get(prefix + 'q_proj.weight').T.reshape(e, qh, d)},
            'k_proj': {'kernel': get(prefix + 'k_proj.weight').T.reshape(e, kh, d)},
            'v_proj': {'kernel': get(prefix + 'v_proj.weight').T.reshape(e, kh, d)},
            'o_proj': {'kernel': get(prefix + 'o_proj.weight').T.reshape(qh, d, e)}}

  def mlp(prefix):
    return {'up_proj': {'kernel': get(prefix + 'up_proj.weight').T},
            'down_proj': {'kernel': get(prefix + 'down_proj.weight').T}}

  mixers = {'M': mamba, '*': attention, '-': mlp}
  params = {'token_embedding': {'embedding': get('model.embeddings.weight')},
            'final_norm': {'scale': get('model.norm_f.weight')}, 'layers': {}}
  for i, kind in enumerate(config.layer_pattern):
    prefix = f'model.layers.{i}.'
    params['layers'][i] = {'norm': {'scale': get(prefix + 'norm.weight')},
                           'mixer': mixers[kind](prefix + 'mixer.')}
  if not config.tie_embeddings:
    params['lm_head'] = {'kernel': get('lm_head.weight').T}
  return params


def transformers_model(config, dt_min: float, seed: int):
  """Seeded, eager attention, every weight random (helpers.randomise_torch, std 0.2), and the
  mixers' dt clamp at (dt_min, inf)."""
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  model = helpers.nemotron_h_model(config, seed=seed, std=0.2, eager=True,
                                   mlp_hidden_act='relu2', use_conv_bias=True, use_bias=False,
                                   mlp_bias=False, attention_bias=False)
  # transformers 5.24 clamps the prefill dt to (config.time_step_min, inf), read once into each
  # mixer's time_step_limit (config.time_step_limit is unused); time_step_min also seeds the dt_bias
  # init through log(), so 0 cannot go through the config: set the limit on the mixers.
  mixers = [layer.mixer for layer in model.model.layers if layer.block_type == 'linear_attention']
  assert mixers and all(m.time_step_limit == (model.config.time_step_min, math.inf)
                        for m in mixers)
  for mixer in mixers:
    mixer.time_step_limit = (dt_min, math.inf)
  return model


transformers_logits = helpers.torch_logits


@pytest.mark.parity
def test_parity_with_transformers_nemotron_h():
  # Untied only: transformers' NemotronHForCausalLM never ties lm_head to the embedding. The
  # clamp test below covers a second pattern ('M*-M-').
  pattern = '-M*M'
  config = tiny_config(layer_pattern=pattern)
  model = transformers_model(config, dt_min=0.0, seed=0)
  graphdef, reference = registry.abstract_params(config)
  params = torch_nemotron_h_to_params(model.state_dict(), config)
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), params)
          == jax.tree.map(lambda x: (x.shape, x.dtype), reference))
  rng = np.random.default_rng(1)
  for length in (13, 29):  # 2 and 4 chunks of 8, neither a multiple of the chunk
    tokens = rng.integers(0, config.vocab_size, (2, length), np.int32)
    error = relative_error(full_forward(graphdef, params, tokens),
                           transformers_logits(model, tokens))
    print(f'transformers parity ({pattern}, L={length}): max rel error {error:.2e}')
    assert error <= 1e-4


@pytest.mark.parity
@pytest.mark.slow
def test_parity_with_transformers_when_the_dt_clamp_binds():
  dt_min = 0.5
  config = tiny_config(mamba_dt_limit_min=dt_min)
  model = transformers_model(config, dt_min=dt_min, seed=2)
  params = torch_nemotron_h_to_params(model.state_dict(), config)
  graphdef, _ = registry.abstract_params(config)
  tokens = np.random.default_rng(3).integers(0, config.vocab_size, (2, 21), np.int32)
  expected = transformers_logits(model, tokens)
  error = relative_error(full_forward(graphdef, params, tokens), expected)
  unclamped_graphdef, _ = registry.abstract_params(tiny_config())
  unclamped_error = relative_error(full_forward(unclamped_graphdef, params, tokens), expected)
  print(f'dt clamp at {dt_min}: max rel error {error:.2e} (without our clamp: '
        f'{unclamped_error:.2e})')
  assert error <= 1e-4
  assert unclamped_error > 1e-2  # the clamp really binds


def test_chunked_scan_matches_the_step_recurrence():
  rng = np.random.default_rng(4)
  batch, length, heads, head_dim, groups, state = 2, 11, 4, 3, 2, 5
  x = rng.normal(size=(batch, length, heads, head_dim)).astype(np.float32)
  dt = rng.uniform(0.0, 1.0, (batch, length, heads)).astype(np.float32)
  a = -rng.uniform(0.1, 2.0, heads).astype(np.float32)
  b = rng.normal(size=(batch, length, groups, state)).astype(np.float32)
  c = rng.normal(size=(batch, length, groups, state)).astype(np.float32)
  initial = rng.normal(size=(batch, heads, head_dim, state)).astype(np.float32)
  s, outputs = jnp.asarray(initial), []
  for t in range(length):
    y, s = ssd_step(s, x[:, t], dt[:, t], a, b[:, t], c[:, t])
    outputs.append(y)
  expected = np.stack(outputs, axis=1)
  y, final = ssd_chunked_scan(x, dt, a, b, c, chunk_size=4, initial_state=initial)
  assert relative_error(y, expected) <= 1e-5
  assert relative_error(final, s) <= 1e-5


# ---------------------------------------------------------------------------------------------
# 2. Cached decode equals the full forward; split prefill; left padding.


def decode_config():
  return tiny_config(layer_pattern='M*-M', mamba_chunk_size=4, mamba_dt_limit_min=0.05,
                     mamba_dt_limit_max=2.0)


@pytest.mark.slow
def test_cached_decode_matches_full_forward():
  config = decode_config()
  graphdef, params = registry.abstract_params(config)
  params = randomise(params, seed=5)
  batch, length, prefill_len, max_len = 2, 15, 6, 16
  tokens = np.random.default_rng(6).integers(0, config.vocab_size, (batch, length), np.int32)
  expected = full_forward(graphdef, params, tokens)

  traces = []

  def step(params, cache, tokens):
    traces.append(tokens.shape)
    return registry.forward(graphdef, params, tokens, jnp.zeros_like(tokens), None, cache)
  step = jax.jit(step)

  cache = registry.init_cache(config, batch, max_len)
  logits, cache = step(params, cache, tokens[:, :prefill_len])
  pieces = [np.asarray(logits)]
  for t in range(prefill_len, length):
    logits, cache = step(params, cache, tokens[:, t:t + 1])
    pieces.append(np.asarray(logits))
  assert len(traces) == 2, traces  # one prefill trace, one decode trace for all steps
  assert int(cache.index) == length
  error = relative_error(np.concatenate(pieces, axis=1), expected)
  print(f'cached decode vs full forward: max rel error {error:.2e}')
  assert error <= 1e-5

  # Prefill in two L > 1 pieces (6 + 9 tokens) equals one prefill, logits and states.
  one_logits, one_cache = step(params, registry.init_cache(config, batch, max_len), tokens)
  first_logits, split_cache = step(params, registry.init_cache(config, batch, max_len),
                                   tokens[:, :6])
  second_logits, split_cache = step(params, split_cache, tokens[:, 6:])
  split_error = relative_error(np.concatenate([first_logits, second_logits], axis=1), one_logits)
  state_error = max(relative_error(a, b) for a, b in zip(mamba_leaves(config, split_cache),
                                                         mamba_leaves(config, one_cache)))
  print(f'split prefill vs one prefill: logits {split_error:.2e}, states {state_error:.2e}')
  assert split_error <= 1e-5 and state_error <= 1e-5
  assert relative_error(one_logits, expected) <= 1e-5


@pytest.mark.slow
def test_left_padded_ragged_rows_match_unpadded_rows():
  config = decode_config()
  graphdef, params = registry.abstract_params(config)
  params = randomise(params, seed=8)
  rng = np.random.default_rng(9)
  prompt_lens, num_decode = [11, 5], 4
  width = max(prompt_lens)
  sequences = [rng.integers(0, config.vocab_size, n + num_decode, np.int32) for n in prompt_lens]
  prompt = np.zeros((2, width), np.int32)
  prompt_mask = np.zeros((2, width), bool)
  for row, n in enumerate(prompt_lens):
    prompt[row, width - n:] = sequences[row][:n]
    prompt_mask[row, width - n:] = True
  references = [full_forward(graphdef, params, seq[None])[0] for seq in sequences]

  padded = full_forward(graphdef, params, prompt, prompt_mask)  # no cache
  assert np.all(np.isfinite(padded))
  errors = [relative_error(padded[row, width - n:], references[row][:n])
            for row, n in enumerate(prompt_lens)]

  step = jax.jit(lambda params, cache, tok, mask: registry.forward(
      graphdef, params, tok, jnp.zeros_like(tok), mask, cache))
  cache = registry.init_cache(config, 2, width + num_decode + 1)
  logits, cache = step(params, cache, prompt, prompt_mask)
  outputs = [[np.asarray(logits)[row, width - n:]] for row, n in enumerate(prompt_lens)]
  for d in range(num_decode):
    tok = np.array([[seq[n + d]] for seq, n in zip(sequences, prompt_lens)], np.int32)
    logits, cache = step(params, cache, tok, np.ones((2, 1), bool))
    for row in range(2):
      outputs[row].append(np.asarray(logits)[row])
  for row in range(2):
    errors.append(relative_error(np.concatenate(outputs[row]), references[row]))
  print(f'ragged left-padded vs unpadded rows: max rel error {max(errors):.2e}')
  assert max(errors) <= 1e-5

  # A masked one-token step (a finished row) leaves that row's Mamba states untouched.
  _, after = step(params, cache, np.array([[3], [4]], np.int32), np.array([[False], [True]]))
  for old, new in zip(mamba_leaves(config, cache), mamba_leaves(config, after)):
    np.testing.assert_array_equal(np.asarray(old)[0], np.asarray(new)[0])
    assert not np.array_equal(np.asarray(old)[1], np.asarray(new)[1])


def test_init_cache_layout():
  config = decode_config()
  cache = registry.init_cache(config, batch_size=3, max_len=10)
  plan = registry.layer_plan(config)
  attention, mamba = cache.layers.of_kind(plan, '*'), cache.layers.of_kind(plan, 'M')
  assert len(attention) == 1 and all(a.shape == (3, 10, 2, 16) for a in attention[0])
  assert len(mamba) == 2
  assert all(value is None for value in cache.layers.of_kind(plan, '-'))
  for state in mamba:
    assert state.conv_x.shape == (3, 3, 8, 8) and state.conv_x.dtype == jnp.float32
    assert state.conv_b.shape == state.conv_c.shape == (3, 3, 2, 16)
    assert state.ssm.shape == (3, 8, 8, 16) and state.ssm.dtype == jnp.float32
  bf16_config = tiny_config(compute_dtype='bfloat16')
  bf16 = registry.init_cache(bf16_config, 1, 4).layers.of_kind(registry.layer_plan(bf16_config),
                                                               'M')
  assert bf16[0].conv_x.dtype == jnp.bfloat16 and bf16[0].ssm.dtype == jnp.float32
  assert int(cache.index) == 0 and not np.any(np.asarray(cache.valid))


# ---------------------------------------------------------------------------------------------
# 3. Sizes, metadata, bf16, gradients.


@pytest.mark.parametrize('name,billions', [('nano9b', 8.89), ('nano12b', 12.31)])
def test_published_parameter_counts(name, billions):
  config = load_config(name)
  validate_config(config)
  count = registry.count_params(config.model)
  print(f'{name}: {count:,} parameters')
  assert count == expected_param_count(config.model)
  assert round(count / 1e9, 2) == billions


def expected_param_count(c) -> int:
  """Parameters of a hybrid config, written out per layer kind."""
  e, inner, groups_state = c.hidden_size, c.mamba_num_heads * c.mamba_head_dim, (
      c.mamba_n_groups * c.ssm_state_size)
  conv_channels = inner + 2 * groups_state
  per_kind = {
      'M': (e + e * (2 * inner + 2 * groups_state + c.mamba_num_heads)  # norm, in projections
            + (c.mamba_conv_kernel + 1) * conv_channels  # conv kernel and bias
            + 3 * c.mamba_num_heads + inner + inner * e),  # dt_bias A_log D, gated norm, out_proj
      '*': e + e * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads),
      '-': e + 2 * e * c.intermediate_size,
  }
  embeddings = c.vocab_size * e * (1 if c.tie_embeddings else 2)
  return embeddings + e + sum(per_kind[kind] for kind in c.layer_pattern)


def test_logical_axes_cover_every_param():
  for config in (tiny_config(), tiny_config(tie_embeddings=True)):
    _, params = registry.abstract_params(config)
    axes = registry.param_logical_axes(config)
    is_axes = lambda x: isinstance(x, tuple)
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params)
    known = {'vocab', 'embed', 'mlp', 'heads', 'kv_heads', 'head_dim', 'norm', 'mamba_heads',
             'mamba_head_dim', 'mamba_groups', 'ssm_state', 'conv_kernel'}

    def check(names, leaf):
      assert len(names) == leaf.ndim and set(names) <= known, (names, leaf.shape)
    jax.tree.map(check, axes, params, is_leaf=is_axes)
    assert registry.count_params(config) == expected_param_count(config)


@pytest.mark.slow
def test_bf16_compute_close_to_fp32():
  graphdef32, params = registry.abstract_params(tiny_config())
  graphdef16, _ = registry.abstract_params(tiny_config(compute_dtype='bfloat16'))
  params = randomise(params, seed=10)
  tokens = np.random.default_rng(11).integers(0, 97, (2, 19), np.int32)
  reference = full_forward(graphdef32, params, tokens)
  logits = full_forward(graphdef16, params, tokens)
  error = relative_error(logits, reference)
  print(f'bf16 compute vs fp32: max rel error {error:.2e}')
  assert np.all(np.isfinite(logits)) and error <= 5e-2


@pytest.mark.slow
def test_gradients_are_finite_for_every_param():
  config = tiny_config()
  graphdef, params = registry.init_params(config, seed=0)
  tokens = np.random.default_rng(12).integers(0, 97, (2, 18), np.int32)
  mask = np.ones(tokens.shape, bool)
  mask[0, :5] = False  # left padding must not poison the gradient

  @jax.jit
  def loss_fn(params):
    logits, _ = registry.forward(graphdef, params, tokens[:, :-1], jnp.zeros_like(tokens[:, :-1]),
                                 mask[:, :-1])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
    weights = mask[:, 1:] & mask[:, :-1]
    return -jnp.sum(picked * weights) / jnp.sum(weights)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  assert math.isfinite(float(loss))
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)), path
    assert np.any(grad != 0), path


# ---------------------------------------------------------------------------------------------
# 4. RLP end to end on configs/tiny_hybrid.py.


@pytest.mark.slow
def test_rlp_runs_end_to_end_on_tiny_hybrid(shared_data_dir, tmp_path):
  from rlp_jax.train.loop import train  # pylint: disable=import-outside-toplevel
  from rlp_jax.train.metrics_writer import read_metrics  # pylint: disable=import-outside-toplevel
  config = load_config('tiny_hybrid')
  validate_config(config)
  config.data.data_dir = shared_data_dir  # a session tmp dir: the corpus is built once per run
  config.data.num_documents = 600
  config.train.num_steps = 2
  config.train.progress_bar = False
  workdir = str(tmp_path / 'run')
  train(config, workdir)
  rows = read_metrics(workdir)
  assert [row['step'] for row in rows] == [1, 2]
  for row in rows:
    for name in ('reward_mean', 'reward_std', 's_pred_mean', 's_ema_mean', 'policy_loss',
                 'ntp_loss', 'total_loss', 'thought_length_mean'):
      assert name in row and np.isfinite(row[name]), (row['step'], name)
