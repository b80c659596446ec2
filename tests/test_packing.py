"""Packed rows (several documents per row, told apart by `segment_ids`; rlp_jax/models/segments.py)
against the same documents one per row.

Rows are packed by hand: PACKED holds documents A (5 tokens), B (7) and C (3) in row 0 and D (10),
E (4) in row 1, then padding; document starts fall inside Mamba chunks (the hybrid test model's
chunk is 4) and on their boundaries. The unpacked layout has one document per row.

  * next-token log-probs of every document (and the next-token loss) are those of its unpacked
    row, fp32 within 1e-5, dense and hybrid, unrolled and scanned layers;
  * changing document A leaves every logit of the other documents bitwise unchanged;
  * allowed positions never fall on padding or on a document's first `min_context` tokens;
  * the SSD scan with resets is the recurrence restarted at each document start (numpy loop);
  * RLP: S_ema, S_pred, the reward and the thought log-probs at the same scored positions with
    the same thought tokens equal the unpacked ones, both prefix modes, both families; sampling
    with the same key draws the same thoughts.

The reward comparison maps each packed slot (row b, slot k) at column t of document d, t = start_d
+ τ, to its own unpacked row b·K + k holding d alone, scored at τ with one slot per row (K = 1).
Rollout rows r = (b·K + k)·G + g are then the same in both layouts, so one array of thought tokens
serves both, and the comparison runs at the boundary that takes positions and thoughts explicitly:
`baseline_evidence` (S_ema), `strategy.encode` / `prompts` / `build_scored_sequences` /
`strategy.score` (thought log-probs, S_pred), and `strategy.sample` for the sampling check.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.models import registry
from rlp_jax.models.segments import positions_in_segment, segment_ids_of
from rlp_jax.models.ssd import ssd_chunked_scan
from rlp_jax.objective.log_probs import token_log_probs
from rlp_jax.objective.next_token import next_token_loss
from rlp_jax.rollout.baseline_evidence import baseline_evidence, scored_positions_and_baseline
from rlp_jax.rollout.positions import after_marker, allowed_positions, choose_positions
from rlp_jax.rollout.prefix_strategies import prefix_strategy
from rlp_jax.rollout.reasoned_evidence import build_scored_sequences
from rlp_jax.rollout.rlp_rollout import rollout_batch
from rlp_jax.rollout.thought_sampler import Thoughts
from rlp_jax.train.rlp_loss import rlp_loss
from tests import helpers
from tests.float64 import float64_run, to_float64

THINK_START, THINK_END, PAD = helpers.THINK_START, helpers.THINK_END, helpers.PAD
SPECIAL = SpecialTokens(think_start_id=THINK_START, think_end_id=THINK_END, pad_id=PAD)
WIDTH = 16
LENGTHS = {'A': 5, 'B': 7, 'C': 3, 'D': 10, 'E': 4}
PACKING = (('A', 'B', 'C'), ('D', 'E'))  # documents of each packed row, in order
MAX_ABS = 1e-5  # fp32, packed against unpacked
F64_MAX_ABS = 1e-12  # the same computations in float64 (tests/float64.py)
MIN_CONTEXT = 2
GROUP, LIMIT = 2, 4
# Scored slots (packed row, document, τ = position within the document): first allowed tokens,
# documents' last tokens, columns on a Mamba chunk boundary (8, 4, 12) and inside chunks.
SLOTS = ((('A', 2), ('B', 3), ('C', 2)), (('D', 4), ('D', 9), ('E', 2)))
FAMILIES = ('dense', 'hybrid')


def document_tokens() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {name: rng.integers(5, helpers.ROLLOUT_VOCAB, size=n).astype(np.int32)
          for name, n in LENGTHS.items()}


def starts() -> dict[str, int]:
  """The column where each document starts in its packed row."""
  out = {}
  for row in PACKING:
    column = 0
    for name in row:
      out[name] = column
      column += LENGTHS[name]
  return out


def packed_batch(docs: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """{'tokens', 'mask', 'segment_ids'} of PACKING: segments 1, 2, 3 per row, 0 on padding."""
  tokens = np.full((len(PACKING), WIDTH), PAD, np.int32)
  segment_ids = np.zeros((len(PACKING), WIDTH), np.int32)
  for b, row in enumerate(PACKING):
    for segment, name in enumerate(row, start=1):
      start = starts()[name]
      tokens[b, start:start + LENGTHS[name]] = docs[name]
      segment_ids[b, start:start + LENGTHS[name]] = segment
  return {'tokens': jnp.asarray(tokens), 'mask': jnp.asarray(segment_ids > 0),
          'segment_ids': jnp.asarray(segment_ids)}


def unpacked_batch(docs: dict[str, np.ndarray], names) -> dict[str, jax.Array]:
  """One document per row (right-padded to WIDTH), no segment ids: the pre-packing layout."""
  tokens = np.full((len(names), WIDTH), PAD, np.int32)
  for row, name in enumerate(names):
    tokens[row, :LENGTHS[name]] = docs[name]
  mask = np.arange(WIDTH)[None, :] < np.asarray([LENGTHS[n] for n in names])[:, None]
  return {'tokens': jnp.asarray(tokens), 'mask': jnp.asarray(mask)}


def model_config(family: str, scanned: bool = False):
  """The rollout tests' tiny model (init_std 0.3); hybrid 'M*-M', Mamba chunk 4."""
  config = helpers.rollout_model_config(family)
  config.scan_layers = scanned
  return config


def next_token_log_probs(graphdef, params, batch):
  """log p(x_{l+1} | x_≤l) [B, L − 1] of a batch (packed when it holds segment ids)."""
  segment_ids = batch.get('segment_ids')
  logits, _ = registry.forward(graphdef, params, batch['tokens'],
                               registry.document_positions(batch['tokens'], segment_ids),
                               batch['mask'], segment_ids=segment_ids)
  return token_log_probs(logits[:, :-1], batch['tokens'][:, 1:]), logits


@pytest.mark.parametrize('scanned', [False, True], ids=['unrolled', 'scanned'])
@pytest.mark.parametrize('family', FAMILIES)
def test_next_token_log_probs_and_loss_equal_unpacked(family, scanned):
  config = model_config(family, scanned)
  graphdef, params = registry.init_params(config, seed=0)
  docs = document_tokens()
  names = [name for row in PACKING for name in row]
  packed, unpacked = packed_batch(docs), unpacked_batch(docs, names)

  def packed_loss(params, graphdef):
    _, logits = next_token_log_probs(graphdef, params, packed)
    return next_token_loss(logits, packed['tokens'], packed['mask'], packed['segment_ids'])

  def run(params, graphdef, with_grads):
    (packed_lp, _), (unpacked_lp, unpacked_logits) = (
        next_token_log_probs(graphdef, params, batch) for batch in (packed, unpacked))
    unpacked_loss = next_token_loss(unpacked_logits, unpacked['tokens'], unpacked['mask'])
    if not with_grads:
      return packed_lp, unpacked_lp, (packed_loss(params, graphdef), unpacked_loss), None
    loss, grads = jax.value_and_grad(packed_loss, has_aux=True)(params, graphdef)
    return packed_lp, unpacked_lp, (loss, unpacked_loss), grads

  # Unpacked rows given segment ids (one segment a row, as the loader sends them) compute what
  # they compute without: the segment masks change nothing but XLA's fusion (fp rounding).
  with_ids = dict(unpacked, segment_ids=unpacked['mask'].astype(jnp.int32))
  lp_ids, lp_plain = jax.jit(lambda p: (next_token_log_probs(graphdef, p, with_ids)[0],
                                        next_token_log_probs(graphdef, p, unpacked)[0]))(params)
  real = np.asarray(unpacked['mask'][:, 1:])
  one_segment = float(np.max(np.abs(np.asarray(lp_ids) - np.asarray(lp_plain))[real]))
  assert one_segment <= MAX_ABS

  def worst_difference(packed_lp, unpacked_lp):
    worst = 0.0
    for b, row in enumerate(PACKING):
      for name in row:
        start, n = starts()[name], LENGTHS[name]
        got = np.asarray(packed_lp[b, start:start + n - 1], np.float64)  # tokens 1 … n−1
        want = np.asarray(unpacked_lp[names.index(name), :n - 1], np.float64)
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst

  with_grads = family == 'hybrid' and scanned  # (the unrolled hybrid's: the slow update test)
  packed_lp, unpacked_lp, (packed_loss32, unpacked_loss), grads = jax.jit(
      run, static_argnums=(1, 2))(params, graphdef, with_grads)
  if with_grads:  # the Mamba resets' −inf log-decays leave the gradient finite
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(grads))
  worst = worst_difference(packed_lp, unpacked_lp)
  exact = ''
  if not scanned:  # the same code in float64: packed and unpacked differ only by rounding
    with float64_run():
      graphdef64, _ = registry.abstract_params(config)
      lp64 = jax.jit(run, static_argnums=(1, 2))(to_float64(params), graphdef64, False)[:2]
    assert lp64[0].dtype == jnp.float64
    worst64 = worst_difference(*lp64)
    exact = f', float64 {worst64:.1e}'
    assert worst64 <= F64_MAX_ABS
  print(f'{family} {"scanned" if scanned else "unrolled"}: packed vs unpacked next-token '
        f'log-probs max abs {worst:.1e}{exact}, loss '
        f'{abs(float(packed_loss32[0] - unpacked_loss[0])):.1e}; unpacked with vs without '
        f'segment ids {one_segment:.1e}')
  assert worst <= MAX_ABS
  packed_loss = packed_loss32
  # Every document predicts its own n − 1 tokens; none is predicted across a boundary.
  assert int(packed_loss[1]) == int(unpacked_loss[1]) == sum(n - 1 for n in LENGTHS.values())
  assert abs(float(packed_loss[0]) - float(unpacked_loss[0])) <= MAX_ABS


@pytest.mark.parametrize('family', FAMILIES)
def test_changing_one_document_leaves_the_others_bitwise_unchanged(family):
  """Nothing crosses a boundary in either direction: new tokens in document A (row 0's first)
  leave every logit of B and C unchanged bit for bit, and every S_pred of a thought scored in B
  or C (shared prefix: document keys and Mamba states of the packed pass)."""
  config = model_config(family)
  graphdef, params = registry.init_params(config, seed=0)
  docs = document_tokens()
  changed = dict(docs, A=(docs['A'] * 7 + 3) % 19 + 5)
  strategy = prefix_strategy('shared')
  positions = scored_columns()
  thoughts = given_thoughts()

  @jax.jit
  def run(batch):
    _, logits = next_token_log_probs(graphdef, params, batch)
    _, _, s_pred = score_given_thoughts(strategy, graphdef, params, batch, positions, thoughts)
    return logits, s_pred

  logits, s_pred = run(packed_batch(docs))
  logits_changed, s_pred_changed = run(packed_batch(changed))
  a_end = LENGTHS['A']
  assert not np.array_equal(np.asarray(logits[0, :a_end]), np.asarray(logits_changed[0, :a_end]))
  np.testing.assert_array_equal(np.asarray(logits[0, a_end:]),
                                np.asarray(logits_changed[0, a_end:]))
  np.testing.assert_array_equal(np.asarray(logits[1]), np.asarray(logits_changed[1]))
  rows_a = np.arange(GROUP)  # slot (0, 0) scores A: rows 0 … G−1
  assert not np.array_equal(np.asarray(s_pred[rows_a]), np.asarray(s_pred_changed[rows_a]))
  np.testing.assert_array_equal(np.asarray(s_pred[GROUP:]), np.asarray(s_pred_changed[GROUP:]))


def test_allowed_positions_never_fall_on_padding_or_a_documents_first_tokens():
  """Packed rows with a document shorter than min_context, padding between documents and at the
  end: allowed columns are exactly the real tokens with ≥ min_context tokens of their own
  document before them, and every drawn position (uniform and weighted) is one of them."""
  segment_ids = np.array([[1, 1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 0, 0, 4, 4, 4, 0, 0],
                          [1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 0]], np.int32)
  min_context = 3
  in_document = np.zeros_like(segment_ids)
  for b in range(segment_ids.shape[0]):
    for column in range(1, segment_ids.shape[1]):
      same = segment_ids[b, column] == segment_ids[b, column - 1]
      in_document[b, column] = in_document[b, column - 1] + 1 if same else 0
  want = (segment_ids > 0) & (in_document >= min_context)
  ids, mask = jnp.asarray(segment_ids), jnp.asarray(segment_ids > 0)
  np.testing.assert_array_equal(np.asarray(positions_in_segment(ids))[segment_ids > 0],
                                in_document[segment_ids > 0])
  np.testing.assert_array_equal(np.asarray(allowed_positions(mask, min_context, ids)), want)
  weights = jax.random.uniform(jax.random.key(1), segment_ids.shape)
  draw = jax.jit(jax.vmap(lambda key, w: choose_positions(key, mask, 3, min_context, w, ids),
                          in_axes=(0, None)))
  for w in (None, weights):
    positions, valid = draw(jax.random.split(jax.random.key(0), 200), w)
    positions, valid = np.asarray(positions), np.asarray(valid)
    rows = np.broadcast_to(np.arange(2)[None, :, None], positions.shape)
    assert valid.all()  # each row has ≥ 3 allowed columns (row 0 exactly 3: 3, 9, 10)
    assert want[rows, positions].all()
    assert set(np.unique(positions[:, 0])) == set(np.nonzero(want[0])[0])  # all get drawn
  # 'after_marker': a marker ending a document does not mark the next document's first token.
  tokens = jnp.asarray([[7, 8, 9, 7, 8, 5, 6]])
  marker_ids = jnp.asarray([[1, 1, 1, 1, 1, 2, 2]])
  np.testing.assert_array_equal(np.asarray(after_marker(tokens, (7, 8), marker_ids)),
                                [[False, False, True, False, False, False, False]])
  np.testing.assert_array_equal(np.asarray(after_marker(tokens, (7, 8))),
                                [[False, False, True, False, False, True, False]])


def test_ssd_scan_with_resets_is_the_recurrence_restarted_at_each_document():
  """ssd_chunked_scan(resets=…) (outputs, final state and states after any prefix) against a
  float64 numpy loop whose state is zeroed at each reset, resets inside chunks and on their
  boundaries; no reset leaves the scan bitwise as it was."""
  batch, length, heads, head_dim, groups, state = 2, 13, 4, 3, 2, 5
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, length, heads, head_dim))
  dt = np.log1p(np.exp(rng.normal(size=(batch, length, heads))))
  a = -np.exp(rng.normal(size=heads))
  bb, cc = rng.normal(size=(2, batch, length, groups, state))
  resets = np.zeros((batch, length), bool)
  resets[0, [3, 4, 8]] = True  # inside a chunk, on chunk boundaries (chunk 4), twice in a row
  resets[1, [6, 11]] = True
  ends = np.array([[1, 3, 4, 5, 9, 13], [6, 7, 8, 11, 12, 13]])
  as32 = lambda t: jnp.asarray(t, jnp.float32)
  args = (as32(x), as32(dt), as32(a), as32(bb), as32(cc), 4)
  y, final, states = ssd_chunked_scan(*args, state_ends=jnp.asarray(ends, jnp.int32),
                                      resets=jnp.asarray(resets))
  want_y, history = helpers.ssd_recurrence(x, dt, a, bb, cc, resets=resets)
  want_states = np.stack([history[b, ends[b]] for b in range(batch)])
  helpers.assert_close(y, want_y, 1e-5, 'outputs')
  helpers.assert_close(final, want_states[:, -1], 1e-5, 'final state')  # ends[:, -1] = L
  helpers.assert_close(states, want_states, 1e-5, 'states after prefixes')
  plain = ssd_chunked_scan(*args)
  no_resets = ssd_chunked_scan(*args, resets=jnp.zeros((batch, length), bool))
  for got, want in zip(no_resets, plain):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def scored_columns() -> jax.Array:
  """The packed scored positions [2, 3]: SLOTS as columns of the packed rows."""
  return jnp.asarray([[starts()[name] + tau for name, tau in row] for row in SLOTS], jnp.int32)


def given_thoughts() -> Thoughts:
  """Fixed thought tokens for the R = 6 · G rows: some end with a sampled `</think>` (after 1 to
  LIMIT tokens), the others run to the limit (then `</think>` is forced)."""
  rows = len(SLOTS) * len(SLOTS[0]) * GROUP
  rng = np.random.default_rng(5)
  tokens = rng.integers(5, helpers.ROLLOUT_VOCAB, size=(rows, LIMIT)).astype(np.int32)
  length = np.asarray([1, 4, 2, 4, 3, 4, 4, 2, 1, 3, 4, 4], np.int32)
  ended = np.asarray([True, True, True, False, True, False, False, True, True, True, True, False])
  for row in range(rows):
    if ended[row]:
      tokens[row, length[row] - 1] = THINK_END
    tokens[row, length[row]:] = PAD
  mask = np.arange(LIMIT)[None, :] < length[:, None]
  return Thoughts(tokens=jnp.asarray(tokens), log_probs=jnp.zeros((rows, LIMIT), jnp.float32),
                  mask=jnp.asarray(mask), length=jnp.asarray(length), ended=jnp.asarray(ended))


def score_given_thoughts(strategy, graphdef, params, batch, positions, thoughts):
  """(thought log-probs [R, T], S_pred [R], via `strategy`) for the given thoughts."""
  segment_ids = batch.get('segment_ids')
  _, context = strategy.encode(graphdef, params, batch['tokens'], batch['mask'], positions,
                               need_hidden=False, segment_ids=segment_ids)
  prompts = strategy.prompts(batch['tokens'], positions, GROUP, THINK_START, segment_ids)
  sequences = build_scored_sequences(prompts, thoughts, THINK_END, PAD)
  log_probs, s_pred = strategy.score(graphdef, params, context, sequences, LIMIT, 0.9)
  return prompts, log_probs, s_pred


def evidence_and_samples(strategy, graphdef, params, teacher, model, batch, positions, key):
  """Given thoughts' log-probs, S_pred and S_ema [R] (under θ and φ) and thoughts sampled from
  `key` at the same positions."""
  segment_ids = batch.get('segment_ids')
  prompts, log_probs, s_pred = score_given_thoughts(strategy, graphdef, params, batch,
                                                    positions, given_thoughts())
  s_ema = baseline_evidence(graphdef, teacher, batch['tokens'], batch['mask'], positions,
                            segment_ids)
  _, context = strategy.encode(graphdef, params, batch['tokens'], batch['mask'], positions,
                               need_hidden=False, segment_ids=segment_ids)
  sampled = strategy.sample(graphdef, params, model, context, prompts, key, LIMIT, 0.9,
                            THINK_END, PAD)
  return log_probs, s_pred, jnp.repeat(s_ema.reshape(-1), GROUP), sampled


@pytest.mark.parametrize('mode', ['naive', 'shared'])
@pytest.mark.parametrize('family', FAMILIES)
def test_rlp_evidence_and_reward_equal_unpacked(family, mode):
  config = model_config(family)
  graphdef, params = registry.init_params(config, seed=0)
  _, teacher = registry.init_params(config, seed=1)
  docs = document_tokens()
  strategy = prefix_strategy(mode)
  slot_names = [name for row in SLOTS for name, _ in row]  # unpacked row b·K + k: its document
  taus = jnp.asarray([[tau] for row in SLOTS for _, tau in row], jnp.int32)  # [6, K = 1]
  run = jax.jit(functools.partial(evidence_and_samples, strategy, graphdef, model=config,
                                  key=jax.random.key(4)))
  packed = run(params=params, teacher=teacher, batch=packed_batch(docs),
               positions=scored_columns())
  unpacked = run(params=params, teacher=teacher, batch=unpacked_batch(docs, slot_names),
                 positions=taus)
  (log_probs, s_pred, s_ema, sampled), (log_probs_u, s_pred_u, s_ema_u, sampled_u) = (
      packed, unpacked)
  mask = np.asarray(given_thoughts().mask)
  differences = {
      'thought log-probs': np.abs(np.asarray(log_probs) - np.asarray(log_probs_u))[mask],
      'S_pred': np.abs(np.asarray(s_pred) - np.asarray(s_pred_u)),
      'S_ema': np.abs(np.asarray(s_ema) - np.asarray(s_ema_u)),
      'reward': np.abs(np.asarray(s_pred - s_ema) - np.asarray(s_pred_u - s_ema_u)),
  }
  print(f'{family} {mode}: ' + ', '.join(f'{name} {np.max(d):.1e}'
                                         for name, d in differences.items()))
  for name, difference in differences.items():
    assert np.max(difference) <= MAX_ABS, name
  assert np.max(np.abs(np.asarray(s_pred - s_ema))) > 0.1  # θ ≠ φ: the reward is not trivial
  # Sampling from the same key draws the same thoughts in both layouts.
  np.testing.assert_array_equal(np.asarray(sampled.tokens), np.asarray(sampled_u.tokens))
  np.testing.assert_array_equal(np.asarray(sampled.mask), np.asarray(sampled_u.mask))
  sampled_mask = np.asarray(sampled.mask)
  assert np.max(np.abs(np.asarray(sampled.log_probs) - np.asarray(sampled_u.log_probs))
                [sampled_mask]) <= MAX_ABS


@pytest.mark.parametrize('family', ['dense', pytest.param('hybrid', marks=pytest.mark.slow)])
def test_rollout_and_update_on_packed_rows(family):
  """`rollout_batch` and `rlp_loss` read `segment_ids` from the batch: every scored position is
  allowed in its own document, the shared and naive rollouts agree, the update's next-token
  loss counts no cross-document prediction, and (hybrid) the update's gradient is finite: the
  −inf log-decays of the Mamba resets, also through the document states at t, give no NaN."""
  config = model_config(family)
  graphdef, params = registry.init_params(config, seed=0)
  batch = packed_batch(document_tokens())
  rlp = {mode: helpers.rollout_rlp_config(thoughts_per_position=GROUP, max_thought_tokens=LIMIT,
                                          min_context=MIN_CONTEXT, prefix_mode=mode)
         for mode in ('naive', 'shared')}

  @jax.jit
  def run(params):
    out = {}
    for mode in ('naive', 'shared'):
      rollout = rollout_batch(graphdef, params, params, jax.random.key(2), batch, config,
                              rlp[mode], SPECIAL)
      if family == 'hybrid':
        (_, metrics), grads = jax.value_and_grad(rlp_loss, has_aux=True)(
            params, params, graphdef, batch, rollout, rlp[mode])
      else:  # (no −inf log-decays to guard against)
        metrics, grads = rlp_loss(params, params, graphdef, batch, rollout, rlp[mode])[1], None
      out[mode] = (rollout, metrics, grads)
    positions, valid, _ = scored_positions_and_baseline(
        graphdef, params, jax.random.split(jax.random.key(2))[0], batch['tokens'],
        batch['mask'], rlp['naive'], segment_ids=batch['segment_ids'])
    return out, positions, valid

  out, positions, valid = run(params)
  allowed = np.asarray(allowed_positions(batch['mask'], MIN_CONTEXT, batch['segment_ids']))
  positions, valid = np.asarray(positions), np.asarray(valid)
  assert valid.all() and allowed[np.arange(2)[:, None], positions].all()
  naive, shared = out['naive'], out['shared']
  for mode, (rollout, metrics, grads) in out.items():
    scored = np.asarray(rollout.sequences.scored_position).reshape(2, -1)[:, ::GROUP]
    np.testing.assert_array_equal(scored, positions)
    if grads is not None:
      assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(grads)), mode
      assert any(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(grads)), mode
  np.testing.assert_array_equal(np.asarray(shared[0].thought_mask),
                                np.asarray(naive[0].thought_mask))
  helpers.assert_close(shared[0].advantages, naive[0].advantages, 1e-5, 'advantages')
  for name in ('ntp_loss', 'policy_loss', 'total_loss'):  # policy_loss ≈ 0 on a first update
    assert abs(float(shared[1][name]) - float(naive[1][name])) <= MAX_ABS, name
  # The update's next-token loss is the unpacked documents' loss.
  names = [name for row in PACKING for name in row]
  unpacked = unpacked_batch(document_tokens(), names)
  _, logits = next_token_log_probs(graphdef, params, unpacked)
  want, _ = next_token_loss(logits, unpacked['tokens'], unpacked['mask'])
  assert abs(float(naive[1]['ntp_loss']) - float(want)) <= MAX_ABS
  assert segment_ids_of(unpacked) is None  # no ids: the code path from before packing
