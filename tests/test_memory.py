"""Memory levers of the step: rematerialisation (`model.remat`), logits of only the needed columns
(`registry.forward_hidden` + `registry.logits_from_hidden`) and activation sharding constraints
(parallel/activation_sharding.py). Each must leave the numbers unchanged and save memory."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.config import base_config, validate_config
from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.objective import next_token_loss
from rlp_jax.objective.log_probs import token_log_probs
from rlp_jax.parallel.activation_sharding import activation_layout, constrain
from rlp_jax.rollout.reasoned_evidence import ScoredSequences, score_thoughts
from rlp_jax.rollout.baseline_evidence import baseline_evidence
from rlp_jax.models.registry import document_positions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_config(family: str, remat: str = 'none'):
  """The tiny CPU model of that family (hybrid: every layer kind), with `model.remat_policy`."""
  config = base_config()
  config.tokenizer.vocab_size = 64
  config.model.update(dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_heads=4,
                           num_kv_heads=2, head_dim=8, init_std=0.2, remat_policy=remat))
  if family == 'hybrid':
    config.model.update(dict(family='hybrid', layer_pattern='M*-M', num_layers=4,
                             mamba_num_heads=4, mamba_head_dim=8, ssm_state_size=8,
                             mamba_n_groups=2, mamba_chunk_size=8))
  validate_config(config)
  return config.model


def documents(rows: int = 4, length: int = 24, seed: int = 0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(1, 64, size=(rows, length)), jnp.int32)
  mask = jnp.asarray(np.arange(length)[None, :] < rng.integers(length // 2, length + 1,
                                                                 size=(rows, 1)))
  return tokens, mask


def ntp_loss_and_grads(graphdef, params, tokens, mask):
  def loss_fn(params):
    logits, _ = registry.forward(graphdef, params, tokens, document_positions(tokens), mask)
    return next_token_loss(logits, tokens, mask)[0]
  return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.parametrize('family', ['dense', 'hybrid'])
@pytest.mark.slow
def test_remat_gives_the_same_loss_and_gradients(family):
  graphdef_plain, params = registry.init_params(model_config(family, 'none'), seed=3)
  graphdef_remat, _ = registry.abstract_params(model_config(family, 'full'))
  tokens, mask = documents()
  loss_plain, grads_plain = ntp_loss_and_grads(graphdef_plain, params, tokens, mask)
  loss_remat, grads_remat = ntp_loss_and_grads(graphdef_remat, params, tokens, mask)
  # The recomputed forward runs the same ops on the same inputs; XLA fuses the backward pass
  # differently around it, so gradients may differ by fp32 rounding (a few ulps), nothing more.
  np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6, atol=0)
  for path, remat_grad in jax.tree_util.tree_leaves_with_path(grads_remat):
    plain_grad = np.asarray(dict(jax.tree_util.tree_leaves_with_path(grads_plain))[path])
    scale = np.max(np.abs(plain_grad))
    assert np.max(np.abs(np.asarray(remat_grad) - plain_grad)) <= 1e-5 * scale, path
  # ... and the differentiated program really recomputes: the backward pass of every layer
  # runs its forward's matmuls again.
  def dots_in_gradient(graphdef):
    def loss_fn(params):
      logits, _ = registry.forward(graphdef, params, tokens, document_positions(tokens), mask)
      return next_token_loss(logits, tokens, mask)[0]
    return str(jax.make_jaxpr(jax.grad(loss_fn))(params)).count('dot_general')
  assert dots_in_gradient(graphdef_remat) > dots_in_gradient(graphdef_plain)


def test_remat_is_validated_with_the_key_name():
  config = base_config()
  config.model.remat_policy = 'block'
  with pytest.raises(ConfigError, match='model.remat_policy'):
    validate_config(config)
  model = model_config('dense')
  model.remat_policy = 'everything'
  with pytest.raises(ConfigError, match='model.remat_policy'):
    registry.init_params(model, seed=0)


@pytest.mark.parametrize('family', ['dense', 'hybrid'])
@pytest.mark.slow
def test_logits_from_hidden_equal_forward_logits(family):
  config = model_config(family)
  graphdef, params = registry.init_params(config, seed=1)
  tokens, mask = documents()
  positions = document_positions(tokens)
  logits, _ = registry.forward(graphdef, params, tokens, positions, mask)
  hidden, _ = registry.forward_hidden(graphdef, params, tokens, positions, mask)
  assert hidden.shape == tokens.shape + (config.hidden_size,)
  np.testing.assert_array_equal(registry.logits_from_hidden(graphdef, params, hidden), logits)
  # Some columns only: the same numbers as those columns of the full logits.
  columns = registry.logits_from_hidden(graphdef, params, hidden[:, 5:9])
  np.testing.assert_allclose(columns, logits[:, 5:9], rtol=1e-6, atol=1e-6)
  # With a cache as well (the sampler's prefill).
  cache = registry.init_cache(config, tokens.shape[0], tokens.shape[1] + 4)
  cached_logits, cache_a = registry.forward(graphdef, params, tokens, positions, mask, cache)
  cached_hidden, cache_b = registry.forward_hidden(graphdef, params, tokens, positions, mask,
                                                   cache)
  np.testing.assert_array_equal(registry.logits_from_hidden(graphdef, params, cached_hidden),
                                cached_logits)
  jax.tree.map(np.testing.assert_array_equal, cache_a, cache_b)


def scored_sequences(rows: int, prompt_length: int, limit: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  width = prompt_length + limit + 2
  tokens = rng.integers(1, 64, size=(rows, width))
  prompt_mask = np.arange(prompt_length)[None, :] >= rng.integers(0, prompt_length - 2,
                                                                    size=(rows, 1))
  closed = rng.integers(1, limit + 2, size=rows)
  region_mask = np.arange(limit + 2)[None, :] <= closed[:, None]
  mask = np.concatenate([prompt_mask, region_mask], axis=1)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return ScoredSequences(tokens=jnp.asarray(np.where(mask, tokens, 0), jnp.int32),
                         positions=jnp.asarray(positions, jnp.int32), mask=jnp.asarray(mask),
                         closed_length=jnp.asarray(closed, jnp.int32),
                         prompt_length=prompt_length)


@pytest.mark.parametrize('family', ['dense', 'hybrid'])
@pytest.mark.slow
def test_score_thoughts_equals_scoring_from_full_logits(family):
  """The scorer takes logits of the thought region only; a reference slicing the full-sequence
  logits (the scorer as it was) gives the same log-probs and S_pred."""
  graphdef, params = registry.init_params(model_config(family), seed=2)
  limit, prompt_length = 5, 12
  seqs = scored_sequences(rows=6, prompt_length=prompt_length, limit=limit)
  log_probs, s_pred = score_thoughts(graphdef, params, seqs, limit, 0.7)

  logits, _ = registry.forward(graphdef, params, seqs.tokens, seqs.positions, seqs.mask)
  start = prompt_length - 1
  region_logits = logits[:, start:start + limit + 2]
  region_tokens = seqs.tokens[:, start + 1:start + limit + 3]
  expected_log_probs = token_log_probs(region_logits[:, :limit], region_tokens[:, :limit], 0.7)
  rows = np.arange(6)
  closed = np.asarray(seqs.closed_length)
  expected_s_pred = token_log_probs(region_logits[rows, closed], region_tokens[rows, closed], 1.0)
  np.testing.assert_allclose(log_probs, expected_log_probs, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(s_pred, expected_s_pred, rtol=1e-6, atol=1e-6)


def test_baseline_evidence_equals_full_logit_log_probs():
  graphdef, params = registry.init_params(model_config('dense'), seed=4)
  tokens, mask = documents()
  positions = jnp.asarray([[13, 3], [12, 5], [7, 9], [11, 4]], jnp.int32)
  s_ema = baseline_evidence(graphdef, params, tokens, mask, positions)
  logits, _ = registry.forward(graphdef, params, tokens, document_positions(tokens), mask)
  every = token_log_probs(logits[:, :-1], tokens[:, 1:])  # column t-1 predicts x_t
  np.testing.assert_allclose(s_ema, np.take_along_axis(np.asarray(every), positions - 1, axis=1),
                             rtol=1e-6, atol=1e-6)


def test_constraints_are_no_ops_without_a_layout():
  x = jnp.ones((4, 3, 8))
  assert constrain(x, ('batch', 'length', 'activation_embed')) is x
  with activation_layout(None, base_config().mesh.rules):  # no mesh: still off
    assert constrain(x, ('batch', 'length', 'activation_embed')) is x


@pytest.fixture(scope='module')
def levers_report():
  """tests/scripts/memory_levers_check.py in a fresh process with 8 simulated devices."""
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'tests', 'scripts', 'memory_levers_check.py')],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
      env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3'))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.subprocess
@pytest.mark.slow
def test_activations_follow_the_rules_on_an_fsdp_mesh(levers_report):
  """Mesh fsdp=8: with the layout the residual stream's batch is split over fsdp; without it
  GSPMD splits the embed dimension like the parameters instead and keeps the whole batch on
  every device, so the tiny RLP rollout's temporaries are several times larger."""
  for family in ('dense', 'hybrid'):
    assert levers_report[family]['with_layout'] == ['fsdp', None, None], levers_report
    assert levers_report[family]['without_layout'] != ['fsdp', None, None], levers_report
  rollout = levers_report['rollout_temporaries']
  assert rollout['with'] < 0.5 * rollout['without'], rollout


@pytest.mark.subprocess
@pytest.mark.slow
def test_remat_keeps_less_for_the_backward_pass(levers_report):
  """Compiled temporaries of the NTP gradient of an 8-layer model, block remat vs none: without
  remat every layer keeps its [8, 4, 256, 256] fp32 attention scores and probabilities (8 MiB
  each) for the backward pass; with it the recomputed layer's only."""
  temporaries = levers_report['ntp_grad_temporaries']
  assert temporaries['full'] < 0.8 * temporaries['none'], temporaries
