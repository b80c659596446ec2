"""`model.attention_impl` (rlp_jax/models/attention_kernels.py): `jax.nn.dot_product_attention`
and the Pallas flash kernels (splash attention in interpret mode on this CPU) against the reference
einsum softmax, for causal self-attention with padding and packed segments, for the shared
prefix's thought attention (two kernel calls merged by their log-sum-exps, with its own backward),
and through whole models in both prefix modes.

fp32 bounds come from float64 runs of the reference path (tests/float64.py): an implementation's
error against that run is at most ACCURACY_FACTOR × the fp32 reference's own error (+ a floor),
relative to each quantity's scale. Outputs are compared at real queries only: what a padding
query attends to is never read, and the kernels mask it differently (attention_kernels.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.models import attention_kernels as kernels
from rlp_jax.models import registry
from rlp_jax.models.prefix_attention import ThoughtMasks, thought_attention
from rlp_jax.models.kv_cache import causal_attention_mask
from rlp_jax.rollout.reasoned_evidence import score_thoughts
from rlp_jax.rollout.rlp_rollout import rollout_batch
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.train.rlp_loss import rlp_loss
from tests import helpers
from tests.float64 import float64_run, max_abs, max_diff, to_float64

KERNELS = ('dot_product', 'pallas')
# The kernels' online softmax rounds the running max and sum once per key block and splash
# pre-scales the queries: a few more roundings per output than the reference's two passes.
ACCURACY_FACTOR = 4.0
ACCURACY_FLOOR = 1e-7


def _assert_accurate(got, reference32, reference64, what):
  """got's error against the float64 reference ≤ ACCURACY_FACTOR × the fp32 reference's
  (+ ACCURACY_FLOOR), both relative to the float64 value's scale."""
  scale = max(max_abs(reference64), 1e-30)
  error, reference_error = max_diff(got, reference64) / scale, max_diff(reference32,
                                                                         reference64) / scale
  bound = ACCURACY_FACTOR * reference_error + ACCURACY_FLOOR
  assert error <= bound, (f'{what}: relative error {error:.3g} against float64 > {bound:.3g} '
                          f'(the fp32 reference path: {reference_error:.3g})')


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _self_attention_inputs(packed: bool):
  batch, length, heads, kv_heads, dim = 2, 40, 4, 2, 16
  q = _random((batch, length, heads, dim), 0)
  k = _random((batch, length, kv_heads, dim), 1)
  v = _random((batch, length, kv_heads, dim), 2)
  columns = np.arange(length)[None, :]
  token_mask = columns < np.array([[length], [29]])  # row 1 padded after 29 tokens
  segment_ids = None
  if packed:  # row 0: documents [0, 15) and [15, 40); row 1: [0, 9), [9, 29), padding
    segment_ids = jnp.asarray(np.where(token_mask, 1 + (columns >= np.array([[15], [9]])), 0),
                              jnp.int32)
  return (q, k, v), kernels.CausalMask(jnp.asarray(token_mask), segment_ids)


@pytest.mark.parametrize('packed', [False, True], ids=['padded', 'packed'])
@pytest.mark.parametrize('impl', KERNELS)
def test_self_attention_kernels_match_the_reference(impl, packed):
  inputs, mask = _self_attention_inputs(packed)
  real = np.asarray(mask.token_mask)[:, :, None, None]
  weights = jnp.cos(jnp.arange(inputs[0].shape[-1], dtype=jnp.float32))

  def run(implementation, values=inputs, weights=weights):
    def loss(q, k, v):
      out = kernels.attend(q, k, v, mask, implementation)
      return jnp.sum(jnp.where(real, out, 0) * weights), out
    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(*values)
    return np.asarray(jnp.where(real, out, 0)), [np.asarray(g) for g in grads]

  got, reference32 = run(impl), run('reference')
  with float64_run():
    reference64 = run('reference', to_float64(inputs), weights.astype(jnp.float64))
  _assert_accurate(got[0], reference32[0], reference64[0], f'{impl} output')
  for name, g, g32, g64 in zip('qkv', got[1], reference32[1], reference64[1]):
    _assert_accurate(g, g32, g64, f'{impl} d{name}')


def _thought_inputs(seed=3):
  """Two documents of 40 columns (row 1 packed: documents [0, 12) and [12, 33), then padding),
  N 3 thoughts of Q 5 tokens each with a random token mask, prefix lengths at the first column,
  inside a document and at its end."""
  batch, length, heads, kv_heads, dim, num_thoughts, q_len = 2, 40, 4, 2, 16, 3, 5
  queries = _random((batch, num_thoughts, q_len, heads, dim), seed)
  doc_keys = _random((batch, length, kv_heads, dim), seed + 1)
  doc_values = _random((batch, length, kv_heads, dim), seed + 2)
  own_keys = _random((batch * num_thoughts, q_len, kv_heads, dim), seed + 3)
  own_values = _random((batch * num_thoughts, q_len, kv_heads, dim), seed + 4)
  columns = np.arange(length)
  valid = columns[None, :] < np.array([[length], [33]])
  segments = np.where(valid, 1 + (columns[None, :] >= 12), 0)
  segments[0] = valid[0]
  prefix_len = np.array([[1, 20, 40], [12, 13, 33]])
  own_document = np.take_along_axis(segments, prefix_len - 1, axis=1)
  doc_visible = (valid[:, None, :] & (columns[None, None, :] < prefix_len[:, :, None])
                 & (segments[:, None, :] == own_document[:, :, None]))
  thought_mask = np.random.default_rng(seed).random((batch, num_thoughts, q_len)) > 0.3
  thought_mask[0, 0] = False  # a thought slot with no tokens at all
  row_mask = jnp.asarray(thought_mask.reshape(batch * num_thoughts, q_len))
  masks = ThoughtMasks(doc_visible=jnp.asarray(doc_visible),
                       own_visible=causal_attention_mask(row_mask).reshape(
                           batch, num_thoughts, q_len, q_len),
                       own_valid=None, own_causal=kernels.CausalMask(row_mask))
  return (queries, doc_keys, doc_values, own_keys, own_values), masks, thought_mask


@pytest.mark.parametrize('impl', KERNELS)
def test_thought_attention_merged_by_log_sum_exp_matches_one_softmax(impl):
  """Outputs and the gradients of every input (queries, document and own keys/values) against
  the reference's single softmax over [document ‖ own], including a thought that sees only the
  first document column, one that sees a whole packed document and an empty slot."""
  inputs, masks, thought_mask = _thought_inputs()
  real = thought_mask[..., None, None]
  weights = jnp.cos(jnp.arange(inputs[0].shape[-1], dtype=jnp.float32))

  def run(implementation, values=inputs, weights=weights):
    def loss(*args):
      out = thought_attention(implementation, args[0], args[1], args[2], masks, args[3], args[4])
      return jnp.sum(jnp.where(real, out, 0) * weights), out
    (_, out), grads = jax.value_and_grad(loss, argnums=tuple(range(5)), has_aux=True)(*values)
    return np.asarray(jnp.where(real, out, 0)), [np.asarray(g) for g in grads]

  got, reference32 = run(impl), run('reference')
  with float64_run():
    reference64 = run('reference', to_float64(inputs), weights.astype(jnp.float64))
  _assert_accurate(got[0], reference32[0], reference64[0], f'{impl} output')
  for name, g, g32, g64 in zip(('queries', 'doc keys', 'doc values', 'own keys', 'own values'),
                               got[1], reference32[1], reference64[1]):
    _assert_accurate(g, g32, g64, f'{impl} d({name})')


SPECIAL = SpecialTokens(think_start_id=helpers.THINK_START, think_end_id=helpers.THINK_END,
                        pad_id=helpers.PAD)


def _model_config(family, impl):
  config = helpers.rollout_model_config(family)
  config.attention_impl = impl
  return config


def _rollout(family, impl, mode, params, teacher, documents):
  """One rollout, thoughts sampled under `impl` (document pass, decoding, scoring)."""
  config = _model_config(family, impl)
  graphdef, _ = registry.abstract_params(config)
  rlp = helpers.rollout_rlp_config(prefix_mode=mode)
  return jax.jit(lambda p, t: rollout_batch(graphdef, p, t, jax.random.key(3), documents, config,
                                            rlp, SPECIAL))(params, teacher)


def _update(family, impl, mode, params, teacher, documents, rollout):
  """The update's loss and θ-gradient on `rollout`, attention under `impl`."""
  graphdef, _ = registry.abstract_params(_model_config(family, impl))
  rlp = helpers.rollout_rlp_config(prefix_mode=mode)
  return jax.jit(jax.value_and_grad(
      lambda p, t, r: rlp_loss(p, t, graphdef, documents, r, rlp)[0]))(params, teacher, rollout)


# 'pallas' in the shared prefix mode runs every implementation: its causal self-attention
# (document pass), the merged thought attention (the document block through dot_product, the own
# block through the kernel) and decode steps on dense masks. Passed by hand, kept out of CI for
# its time (≈ 45-90 s each on 2 cores): ('dense', 'pallas', 'naive') (scoring over left-padded
# prompts) and ('hybrid', 'dot_product', 'shared').
@pytest.mark.parametrize('family,impl,mode', [('dense', 'pallas', 'shared')])
def test_models_sample_and_train_alike_under_every_attention_impl(family, impl, mode):
  """A whole rollout (document pass, decoding, scoring, rewards) and the update's gradient under
  `impl` against the reference path: the same sampled thoughts; their log-probs, the loss and
  every θ-gradient leaf within the float64-derived bound (float64: the update on the same
  rollout, and the thoughts' log-probs teacher-forced, which is what decoding computes)."""
  documents = helpers.rollout_documents([12, 5, 4])
  _, params = registry.init_params(_model_config(family, 'reference'), seed=0)
  _, teacher = registry.init_params(_model_config(family, 'reference'), seed=1)
  rollouts = {name: _rollout(family, name, mode, params, teacher, documents)
              for name in (impl, 'reference')}
  np.testing.assert_array_equal(rollouts[impl].sequences.tokens,
                                rollouts['reference'].sequences.tokens)
  reference = rollouts['reference']
  updates = [_update(family, name, mode, params, teacher, documents, reference)
             for name in (impl, 'reference')]
  with float64_run():
    graphdef64, _ = registry.abstract_params(_model_config(family, 'reference'))
    limit, temperature = (helpers.rollout_rlp_config().max_thought_tokens,
                          helpers.rollout_rlp_config().sample_temperature)
    log_probs64, _ = score_thoughts(graphdef64, to_float64(params), reference.sequences, limit,
                                    temperature)
    updates.append(_update(family, 'reference', mode, to_float64(params), to_float64(teacher),
                           documents, to_float64(reference)))
  mask = np.asarray(reference.thought_mask)
  _assert_accurate(np.asarray(rollouts[impl].old_log_probs)[mask],
                   np.asarray(reference.old_log_probs)[mask], np.asarray(log_probs64)[mask],
                   f'{impl} {mode} sampled log-probs')
  _assert_accurate(updates[0][0], updates[1][0], updates[2][0], f'{impl} {mode} loss')
  flat = [dict(jax.tree_util.tree_leaves_with_path(grads)) for _, grads in updates]
  for path, grad in flat[0].items():
    assert np.any(np.asarray(grad) != 0), path
    _assert_accurate(grad, flat[1][path], flat[2][path],
                     f'{impl} {mode} d{jax.tree_util.keystr(path)}')


def test_pallas_gpu_kernel_output_and_log_sum_exp(monkeypatch):
  """The Pallas GPU flash kernel as 'pallas' takes it on a GPU (interpret mode here): output and
  log-sum-exp (the kernel's is in base 2) against the reference's, packed rows."""
  monkeypatch.setattr(kernels, '_on_gpu', lambda: True)
  (q, k, v), mask = _self_attention_inputs(packed=True)
  real = np.asarray(mask.token_mask)
  out, lse = kernels.pallas_causal_attention(q, k, v, mask, with_lse=True)
  reference32 = kernels.reference_attention(q, k, v, mask.dense(), with_lse=True)
  with float64_run():
    reference64 = kernels.reference_attention(*to_float64((q, k, v)), mask.dense(), with_lse=True)
  for what, got, want32, want64 in zip(('output', 'log-sum-exp'), (out, lse), reference32,
                                       reference64):
    pick = lambda x: np.asarray(x)[real]
    _assert_accurate(pick(got), pick(want32), pick(want64), f'GPU kernel {what}')
