"""The public functional API (rlp_jax/api.py, docs/api.md).

The page's examples run as written; the thoughts and gains it returns are checked against plain,
cache-free forwards of the whole `x_<t <think> c </think> x_t` sequence (a different code path
from the shared-prefix decode and scoring); a step of `make_train_step` equals the first step of a
training run on the same batch; the three model sources load.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import rlp_jax
from rlp_jax import api
from rlp_jax.data.loader import DataIterator, build_pipeline
from rlp_jax.errors import ConfigError, DataError
from rlp_jax.interop.hf_checkpoint import export_hf_checkpoint
from rlp_jax.models import registry
from rlp_jax.train.loop import train
from tests import helpers

DOCS = os.path.join(os.path.dirname(__file__), '..', 'docs', 'api.md')

SMALL = {'data.num_documents': 600, 'data.seq_len': 64, 'data.batch_size': 4,
         'tokenizer.vocab_size': 256, 'model.vocab_size': 256, 'model.hidden_size': 64,
         'model.intermediate_size': 128, 'model.num_layers': 2, 'model.num_heads': 4,
         'model.num_kv_heads': 2, 'model.head_dim': 16, 'rlp.positions_per_document': 2,
         'rlp.thoughts_per_position': 2, 'rlp.max_thought_tokens': 6,
         'optimizer.warmup_steps': 2, 'train.progress_bar': False}


@pytest.fixture(scope='module')
def loaded(shared_data_dir):
  return rlp_jax.load_model('tiny', overrides=dict(SMALL, **{'data.data_dir': shared_data_dir}))


@pytest.fixture(scope='module')
def documents(loaded):
  model, _, tokenizer, config = loaded
  texts = [rlp_jax.documents(config)[i] for i in range(2)]
  batch = rlp_jax.document_batch(tokenizer, texts, seq_len=config.data.seq_len)
  lengths = batch['mask'].sum(axis=1)
  positions = np.stack([[8, int(n) // 2, int(n) - 1] for n in lengths]).astype(np.int32)
  return jnp.asarray(batch['tokens']), jnp.asarray(batch['mask']), jnp.asarray(positions)


@pytest.mark.slow
def test_the_pages_examples_run(shared_data_dir, monkeypatch):
  """Every ```python block of docs/api.md, in order, in one namespace (asserts included)."""
  with open(DOCS, encoding='utf-8') as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)
  assert len(blocks) >= 5
  monkeypatch.setenv('RLP_JAX_DATA_DIR', shared_data_dir)
  namespace = {}
  for block in blocks:
    exec(compile(block, DOCS, 'exec'), namespace)  # pylint: disable=exec-used
  assert int(namespace['state'].step) == 2


WIDTH = 80  # every reference sequence is right-padded to this width: one compiled forward


@jax.jit
def _padded_forward(graphdef_and_params, tokens):
  graphdef, params = graphdef_and_params
  logits, _ = registry.forward(graphdef, params, tokens, jnp.arange(WIDTH)[None])
  return jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)


def _full_forward_log_probs(model, params, sequence):
  """log-softmax at every column of one sequence, no cache, no shared prefix: the reference path
  (causal, so the padding after the sequence changes nothing before it)."""
  tokens = np.zeros((1, WIDTH), np.int32)
  tokens[0, :len(sequence)] = sequence
  return np.asarray(_padded_forward((model.graphdef, params), tokens))[:len(sequence)]


def test_greedy_thoughts_are_the_argmax_of_full_forwards(loaded, documents):
  model, params, tokenizer, _ = loaded
  tokens, mask, positions = documents
  limit = 6
  thoughts = rlp_jax.sample_thoughts(model, params, tokens, mask, positions, jax.random.key(3),
                                     num_thoughts=2, max_thought_tokens=limit, temperature=0.0)
  assert thoughts.tokens.shape == positions.shape + (2, limit)
  for b in range(tokens.shape[0]):
    for k, t in enumerate(np.asarray(positions[b]).tolist()):
      sequence = np.asarray(tokens[b, :t]).tolist() + [tokenizer.think_start_id]
      expected = []
      while len(expected) < limit:
        token = int(np.argmax(_full_forward_log_probs(model, params, sequence)[-1]))
        expected.append(token)
        sequence.append(token)
        if token == tokenizer.think_end_id:
          break
      for g in range(2):  # greedy: both thoughts of the group are the same
        n = int(thoughts.length[b, k, g])
        assert np.asarray(thoughts.tokens[b, k, g, :n]).tolist() == expected
        assert bool(thoughts.ended[b, k, g]) == (expected[-1] == tokenizer.think_end_id)


def test_information_gain_is_s_pred_minus_s_ema_of_full_forwards(loaded, documents):
  model, params, tokenizer, _ = loaded
  tokens, mask, positions = documents
  thoughts = rlp_jax.sample_thoughts(model, params, tokens, mask, positions, jax.random.key(4),
                                     num_thoughts=3, max_thought_tokens=5, temperature=1.0)
  gains = rlp_jax.information_gain(model, params, tokens, mask, positions, thoughts)
  worst = 0.0
  for b in range(tokens.shape[0]):
    for k, t in enumerate(np.asarray(positions[b]).tolist()):
      prefix = np.asarray(tokens[b, :t]).tolist()
      next_token = int(tokens[b, t])
      s_ema = _full_forward_log_probs(model, params, prefix)[-1, next_token]
      worst = max(worst, abs(float(gains.s_ema[b, k]) - s_ema))
      for g in range(3):
        thought = np.asarray(thoughts.tokens[b, k, g, :int(thoughts.length[b, k, g])]).tolist()
        if not bool(thoughts.ended[b, k, g]):
          thought.append(tokenizer.think_end_id)  # forced `</think>` after T tokens
        sequence = prefix + [tokenizer.think_start_id] + thought
        s_pred = _full_forward_log_probs(model, params, sequence)[-1, next_token]
        worst = max(worst, abs(float(gains.s_pred[b, k, g]) - s_pred))
        assert float(gains.information_gain[b, k, g]) == pytest.approx(
            float(gains.s_pred[b, k, g]) - float(gains.s_ema[b, k]), abs=1e-6)
  # fp32 forwards of the same sequence in another order of summation (cache vs none, shared
  # prefix vs whole rows): log-probs of magnitude ~5 agree to a few ulp·L.
  assert worst < 2e-5, worst


def test_teacher_params_set_the_no_think_term(loaded, documents):
  model, params, _, _ = loaded
  tokens, mask, positions = documents
  thoughts = rlp_jax.sample_thoughts(model, params, tokens, mask, positions, jax.random.key(5),
                                     num_thoughts=2, max_thought_tokens=4, temperature=1.0)
  other = registry.init_params(model.config, seed=7)[1]
  own = rlp_jax.information_gain(model, params, tokens, mask, positions, thoughts)
  with_teacher = rlp_jax.information_gain(model, params, tokens, mask, positions, thoughts,
                                          teacher_params=other)
  log_probs, _ = rlp_jax.next_token_log_probs(model, other, tokens, mask)
  np.testing.assert_allclose(with_teacher.s_ema,
                             np.take_along_axis(np.asarray(log_probs), np.asarray(positions), 1),
                             atol=2e-5)
  # θ's term is unchanged (up to the rounding of another compiled program).
  np.testing.assert_allclose(with_teacher.s_pred, own.s_pred, rtol=1e-6)


def test_rlp_loss_is_differentiable_and_matches_the_rollout(loaded, documents):
  model, params, _, config = loaded
  tokens, mask, _ = documents
  batch = {'tokens': tokens, 'mask': mask}
  rollout = rlp_jax.rlp_rollout(model, params, params, batch, jax.random.key(1), config.rlp)
  (loss, metrics), grads = jax.value_and_grad(
      lambda p: rlp_jax.rlp_loss(model, p, params, batch, rollout, config.rlp),
      has_aux=True)(params)
  assert np.isfinite(float(loss))
  assert float(metrics['total_loss']) == pytest.approx(float(loss))
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and max(norms) > 0


@pytest.mark.slow
def test_a_train_step_is_the_first_step_of_a_training_run(loaded, tmp_path):
  _, _, tokenizer, config = loaded
  config = rlp_jax.load_config(config, {'train.num_steps': 1, 'train.checkpoint_every': 1})
  result = train(ml_collections.ConfigDict(config.to_dict()), str(tmp_path / 'run'))
  with open(result.metrics_path, encoding='utf-8') as f:
    logged = json.loads(f.readline())

  data = DataIterator(build_pipeline(config.data, tokenizer, seed=config.seed, process_index=0,
                                     process_count=1, local_rows=config.data.batch_size))
  batch = data.next_batch()[0]
  data.close()
  state = rlp_jax.init_state(config)
  state, metrics = rlp_jax.make_train_step(config, tokenizer)(state, batch)
  for name in ('reward_mean', 's_pred_mean', 'thought_length_mean', 'ntp_loss', 'total_loss',
               'grad_norm'):
    assert float(metrics[name]) == logged[name], name
  for ours, theirs in zip(jax.tree.leaves(state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(ours, theirs)

  # ... and a run directory loads back as (model, params, tokenizer, config).
  model, params, run_tokenizer, run_config = rlp_jax.load_model(str(tmp_path / 'run'))
  assert run_config.model.hidden_size == config.model.hidden_size
  assert run_tokenizer.encode('12 + 7') == tokenizer.encode('12 + 7')
  for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(ours, theirs)


def test_a_hugging_face_directory_loads_with_its_tokenizer(tmp_path):
  directory = tmp_path / 'hf'
  config = rlp_jax.load_config('tiny', {k: v for k, v in SMALL.items()
                                         if k.startswith(('model.', 'tokenizer.'))})
  config.model.vocab_size = 400
  _, params = registry.init_params(config.model, seed=3)
  export_hf_checkpoint(params, config.model, str(directory))
  helpers.train_byte_level_bpe(directory / 'tokenizer.json', vocab_size=400)
  model, loaded_params, tokenizer, loaded_config = rlp_jax.load_model(str(directory))
  assert loaded_config.tokenizer.kind == 'hf_json'
  assert model.special.think_start_id == tokenizer.think_start_id
  for ours, theirs in zip(jax.tree.leaves(loaded_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(ours, theirs)


def test_configs_are_importable_and_bad_overrides_name_the_key():
  from rlp_jax.configs import tiny_hybrid  # pylint: disable=import-outside-toplevel
  assert rlp_jax.load_config('tiny_hybrid').model.family == tiny_hybrid.get_config().model.family
  assert rlp_jax.load_config('configs/tiny.py').train.num_steps == 120
  with pytest.raises(ConfigError, match=r'unknown config key `rlp.no_such_key`'):
    rlp_jax.load_config('tiny', {'rlp.no_such_key': 1})
  with pytest.raises(ConfigError, match='no config'):
    rlp_jax.load_config('no_such_config')
  with pytest.raises(ConfigError, match='`rlp.thoughts_per_position`'):
    rlp_jax.load_config('tiny', {'rlp.thoughts_per_position': 'four'})


def test_a_directory_that_is_neither_kind_is_one_line(tmp_path):
  with pytest.raises(DataError, match='neither a Hugging Face model directory nor an rlp_jax run'):
    rlp_jax.load_model(str(tmp_path))


def test_everything_listed_is_exported():
  for name in rlp_jax.API:
    assert getattr(rlp_jax, name) is getattr(api, name)
