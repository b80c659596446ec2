"""`model.scan_layers`: the scanned layer stack computes what the unrolled one does.

Numbers are compared in float64 runs of the library's own code (tests/float64.py), where the two
layouts agree to F64_REL: the same computation. (In fp32 they differ by rounding only: XLA fuses a
scan body and accumulates the stacked parameters' gradients in another order than unrolled
layers, so an fp32 comparison would measure summation order, not correctness.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.models import registry
from rlp_jax.interop.checkpoint_init import load_init_params
from rlp_jax.interop.hf_checkpoint import export_hf_checkpoint
from rlp_jax.models.layer_stack import (is_scanned_tree, scan_segments, scanned_params,
                                        to_layout, unrolled_params)
from rlp_jax.models.registry import document_positions
from rlp_jax.models.shared_prefix import document_kv, empty_thought_cache, thought_forward
from rlp_jax.rollout.rlp_rollout import rollout_batch
from rlp_jax.train.checkpointing import Checkpointer
from rlp_jax.train.state import create_train_state
from rlp_jax.train.rlp_loss import rlp_loss
from tests import helpers
from tests.float64 import float64_run, max_abs, max_diff, to_float64

F64_REL = 1e-12
NEMOTRON_H_12B = 'M-M-M-M*-' * 6 + 'M-' * 4
SPECIAL = SpecialTokens(think_start_id=helpers.THINK_START, think_end_id=helpers.THINK_END,
                        pad_id=helpers.PAD)
# The hybrid test pattern: 'M*' scanned twice, then '-' run once (every layer kind, both kinds of
# segment).
HYBRID_PATTERN = 'M*M*-'


def layouts(family: str):
  """(unrolled, scanned) model configs of the tiny rollout model of `family`."""
  base = helpers.rollout_model_config(family)
  if family == 'hybrid':
    base.layer_pattern, base.num_layers = HYBRID_PATTERN, len(HYBRID_PATTERN)
  else:
    base.num_layers = 2
  scanned = base.copy_and_resolve_references()
  scanned.scan_layers = True
  return base, scanned


def test_segments_cut_the_pattern_into_repeated_units():
  assert scan_segments(NEMOTRON_H_12B) == (('M-M-M-M*-', 6), ('M-', 4))
  assert scan_segments('D' * 28) == (('D', 28),)
  assert scan_segments('M*-M') == (('M*-M', 1),)  # nothing repeats: one unrolled segment
  assert scan_segments(HYBRID_PATTERN) == (('M*', 2), ('-', 1))
  rng = np.random.default_rng(0)
  for _ in range(200):  # any pattern: the segments give it back, and repeats are ≥ 2 or a loose run
    kinds = ''.join(rng.choice(list('M*-'), size=int(rng.integers(1, 40))))
    segments = scan_segments(kinds)
    assert ''.join(unit * n for unit, n in segments) == kinds
    assert all(unit and n >= 1 for unit, n in segments)
    # A run is never split: the same unit is never scanned twice in a row, and two loose runs
    # are never neighbours.
    assert all(a != b and not (m == n == 1) for (a, m), (b, n) in zip(segments, segments[1:]))


@pytest.mark.parametrize('family', ['dense', 'hybrid'])
def test_a_seed_gives_the_same_parameters_in_both_layouts(family):
  unrolled_config, scanned_config = layouts(family)
  _, unrolled = registry.init_params(unrolled_config, seed=3)
  _, scanned = registry.init_params(scanned_config, seed=3)
  plan = registry.layer_plan(scanned_config)
  assert is_scanned_tree(scanned) and not is_scanned_tree(unrolled)
  jax.tree.map(np.testing.assert_array_equal, scanned_params(unrolled, plan), scanned)
  jax.tree.map(np.testing.assert_array_equal, unrolled_params(scanned, plan), unrolled)
  axes = registry.param_logical_axes(scanned_config)
  first_unit = axes['blocks'][0][0]
  assert all(leaf[0] == 'layers' for leaf in jax.tree.leaves(
      first_unit, is_leaf=lambda x: isinstance(x, tuple)))


def model_outputs(config, params, tokens, mask, positions):
  """Everything a layout changes, in one jitted call: the forward's logits, the cached decode
  (prefill of 10 tokens then 2 one-token steps), the next-token loss gradient, and the shared-
  prefix passes (document pass, thought scoring with gradient, thought decoding with a cache)."""
  graphdef, _ = registry.abstract_params(config)
  plan = registry.layer_plan(config)
  width = tokens.shape[1]

  @jax.jit
  def run(params):
    doc_positions = document_positions(tokens)
    logits, _ = registry.forward(graphdef, params, tokens, doc_positions, mask)
    cache = registry.init_cache(config, tokens.shape[0], width)
    pieces, cache = registry.forward(graphdef, params, tokens[:, :10], doc_positions[:, :10],
                                     mask[:, :10], cache)
    pieces = [pieces]
    for t in range(10, width):
      step_logits, cache = registry.forward(graphdef, params, tokens[:, t:t + 1],
                                            doc_positions[:, t:t + 1], mask[:, t:t + 1], cache)
      pieces.append(step_logits)

    def ntp(params):
      out, _ = registry.forward(graphdef, params, tokens, doc_positions, mask)
      log_probs = jax.nn.log_softmax(out[:, :-1])
      picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], -1)[..., 0]
      return -jnp.sum(jnp.where(mask[:, 1:], picked, 0.0))
    grads = jax.grad(ntp)(params)

    thoughts = jnp.full(positions.shape + (2,), 7, jnp.int32)
    thought_positions = positions[..., None] + jnp.arange(2)
    thought_mask = jnp.ones(thoughts.shape, jnp.bool_)

    def scored(params):
      _, doc = document_kv(graphdef, params, tokens, doc_positions, mask, positions)
      out, _ = thought_forward(graphdef, params, doc, positions, thoughts, thought_positions,
                               thought_mask)
      return jnp.sum(out ** 2) * 1e-3, out
    (_, thought_logits), thought_grads = jax.value_and_grad(scored, has_aux=True)(params)
    _, doc = document_kv(graphdef, params, tokens, doc_positions, mask, positions)
    own = empty_thought_cache(config, doc, positions.shape[1], 2)
    decoded = []
    for u in range(2):
      step_logits, own = thought_forward(graphdef, params, doc, positions, thoughts[..., u:u + 1],
                                         thought_positions[..., u:u + 1],
                                         thought_mask[..., u:u + 1], own)
      decoded.append(step_logits)
    if plan.scanned:
      grads = unrolled_params(grads, plan)
      thought_grads = unrolled_params(thought_grads, plan)
    return dict(logits=logits, decode=jnp.concatenate(pieces, 1), ntp_grads=grads,
                thought_logits=thought_logits, thought_grads=thought_grads,
                thought_decode=jnp.concatenate(decoded, 2))

  return run(params)


def assert_layouts_equal(run64):
  """run64: {layout: outputs} of float64 runs; every leaf of every output equal across layouts to
  F64_REL of its scale."""
  for name in run64['unrolled']:
    pairs = zip(jax.tree.leaves(run64['unrolled'][name]), jax.tree.leaves(run64['scanned'][name]),
                strict=True)
    for i, (u64, s64) in enumerate(pairs):
      assert s64.dtype == jnp.float64
      scale = max(max_abs(u64), 1e-30)
      assert max_diff(s64, u64) <= F64_REL * scale, (name, i, max_diff(s64, u64) / scale)


@pytest.mark.parametrize('family', ['dense', 'hybrid'])
def test_forward_decode_gradients_and_shared_prefix_passes_equal_unrolled(family):
  """Both prefix modes' model passes: the naive path's forward, cached decode and gradient, the
  shared path's document pass, thought scoring with gradient and thought decoding."""
  unrolled_config, scanned_config = layouts(family)
  _, params = registry.init_params(unrolled_config, seed=0)
  plan = registry.layer_plan(scanned_config)
  batch = helpers.rollout_documents([12, 9, 5])
  tokens, mask = batch['tokens'], batch['mask']
  positions = jnp.asarray([[5, 8, 11], [2, 4, 8], [2, 3, 4]], jnp.int32)
  trees = {'unrolled': params, 'scanned': scanned_params(params, plan)}
  configs = {'unrolled': unrolled_config, 'scanned': scanned_config}
  with float64_run():
    run64 = {k: model_outputs(configs[k], to_float64(trees[k]), tokens, mask, positions)
             for k in trees}
  assert_layouts_equal(run64)
  # The cached decode is what it claims (against the plain forward).
  helpers.assert_close(run64['scanned']['decode'], run64['unrolled']['logits'], 1e-10)


@pytest.mark.slow
@pytest.mark.parametrize('family', ['hybrid'])  # every layer kind; dense: the passes above
def test_rlp_update_equals_unrolled_in_both_prefix_modes(family):
  """The RLP loss, its metrics and ∇θ of one rollout per prefix mode (rolled out by the unrolled
  model in fp32), computed by each layout in float64: equal to F64_REL. (fp32 rounding of the
  layouts is compared on the same per-layer paths by the test above.)"""
  unrolled_config, scanned_config = layouts(family)
  graphdef, params = registry.init_params(unrolled_config, seed=0)
  _, teacher = registry.init_params(unrolled_config, seed=1)
  plan = registry.layer_plan(scanned_config)
  documents = helpers.rollout_documents([12, 5, 4])
  rlp = {mode: helpers.rollout_rlp_config(thoughts_per_position=2, max_thought_tokens=3,
                                          prefix_mode=mode) for mode in ('naive', 'shared')}
  rollouts = jax.jit(lambda p, t: {mode: rollout_batch(
      graphdef, p, t, jax.random.key(3), documents, unrolled_config, rlp[mode], SPECIAL)
      for mode in rlp})(params, teacher)
  assert float(rollouts['shared'].metrics['thought_tokens']) > 0

  def update(config, theta, phi, rollouts):
    graphdef, _ = registry.abstract_params(config)
    out = {}
    for mode in rlp:
      (loss, metrics), grads = jax.value_and_grad(
          lambda p: rlp_loss(p, phi, graphdef, documents, rollouts[mode], rlp[mode]),
          has_aux=True)(theta)
      if is_scanned_tree(grads):
        grads = unrolled_params(grads, plan)
      out[mode] = dict(loss=loss, metrics=metrics, grads=grads)
    return out

  configs = {'unrolled': unrolled_config, 'scanned': scanned_config}
  convert = {'unrolled': lambda p: p, 'scanned': lambda p: scanned_params(p, plan)}
  with float64_run():
    run64 = {k: jax.jit(lambda t, f, r, k=k: update(configs[k], t, f, r))(
        to_float64(convert[k](params)), to_float64(convert[k](teacher)), to_float64(rollouts))
        for k in configs}
  for mode in rlp:
    assert_layouts_equal({k: run64[k][mode] for k in configs})


@pytest.mark.parametrize('saved_scanned', [False, True])
def test_a_checkpoint_restores_into_the_other_layout(tmp_path, saved_scanned):
  """A train state (θ, φ, AdamW moments) saved in one layout resumes in the other, verified by
  its checksums and equal to the saved arrays moved (stacked or sliced), bit for bit; `init_from`
  an rlp_jax checkpoint or a Hugging Face directory loads into either layout too."""
  unrolled_config, scanned_config = layouts('hybrid')
  configs = {False: unrolled_config, True: scanned_config}
  saved_config, loaded_config = configs[saved_scanned], configs[not saved_scanned]
  loaded_plan = registry.layer_plan(loaded_config)
  _, params = registry.init_params(saved_config, seed=5)
  tx = optax.adam(1e-3)
  state = create_train_state(params, tx, seed=0, with_teacher=True)
  state = state.replace(opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))  # nonzero moments
  checkpointer = Checkpointer(str(tmp_path / 'checkpoints'), every=1, keep=2)
  assert checkpointer.maybe_save(1, state, force=True)
  checkpointer.wait_until_finished()

  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  _, loaded_params = registry.abstract_params(loaded_config)
  target = jax.eval_shape(lambda p: create_train_state(p, tx, seed=0, with_teacher=True),
                          loaded_params)
  target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                        target)
  restored, step, _ = checkpointer.restore_latest(target, layout=loaded_plan)
  checkpointer.close()
  assert step == 1
  expected = to_layout(state, loaded_plan)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, restored, expected)
  assert is_scanned_tree(restored.params) == (not saved_scanned)

  # init_from: θ of that checkpoint, and of a Hugging Face export of it, in the other layout.
  config = loaded_config.copy_and_resolve_references()
  loaded, _ = load_init_params(str(tmp_path), config)
  jax.tree.map(np.testing.assert_array_equal, loaded, to_layout(params, loaded_plan))
  export_hf_checkpoint(params, saved_config, str(tmp_path / 'hf'))
  from_hf, _ = load_init_params(str(tmp_path / 'hf'), config)
  jax.tree.map(np.testing.assert_array_equal, from_hf, to_layout(params, loaded_plan))
