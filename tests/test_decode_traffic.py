"""What a decode step reads (issue 16, item 3): the weights once, in the compute dtype; the one
document cache of the shared-prefix sampler once for all its rollouts; the thoughts' own cache
updated in place.

XLA:CPU is not the machine these numbers matter on, and it blurs two of them: it has no bf16
matmul or bf16 in-place update, so with bf16 compute it converts weights and caches to fp32
inside the compiled step (whole buffers, every step). So:
  * the dtype of what enters the decode loop is checked on the traced program (what every
    backend compiles): weights bf16, document cache once, not once per rollout;
  * bytes per step (`compiled.cost_analysis()`) and the in-place update (`memory_analysis()`)
    are measured with fp32 compute, where CPU runs the program as written.
bench/gpu_decode_bench.py measures the same step's bytes on an accelerator.
"""
import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.models import registry
from rlp_jax.models.shared_prefix import document_kv, empty_thought_cache, thought_forward
from rlp_jax.rollout.decode_inputs import (compute_dtype_leaves, decode_params, loop_document_kv,
                                           shared_decode_step)
from rlp_jax.rollout.prefix_strategies import sample_thoughts_shared, thought_prompts
from rlp_jax.rollout.thought_sampler import build_prompts, decode_thoughts, sample_thoughts
from tests import helpers

THINK_START, NEVER = 3, -1


def tree_bytes(tree):
  return sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def traffic_config(dtype, **overrides):
  """A small dense model whose document cache per column (2 layers × keys, values × 2 kv heads
  × 128) is large next to a thought's per-step activations, so a copy per rollout would show."""
  return helpers.model_config(**dict(dict(
      vocab_size=512, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=2,
      num_kv_heads=2, head_dim=128, param_dtype='float32', compute_dtype=dtype), **overrides))


def document(config, length, positions_per_doc=2):
  tokens = jnp.asarray(np.random.default_rng(0).integers(
      5, config.vocab_size, (1, length)).astype(np.int32))
  positions = jnp.asarray([[length - 1 - 3 * k for k in range(positions_per_doc)]], jnp.int32)
  return tokens, jnp.ones(tokens.shape, jnp.bool_), positions


def random_params(config, seed=0):
  """(graphdef, parameters drawn in numpy): normal kernels, norm scales and Mamba D near 1, A_log
  and dt_bias as Mamba2 initialises them, all off the bf16 grid; no JAX compile."""
  graphdef, abstract = registry.abstract_params(config)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    noise = rng.standard_normal(leaf.shape)
    if name in ('scale', 'D'):
      value = 1 + 0.05 * noise
    elif name == 'A_log':
      value = np.log(np.arange(1, leaf.shape[-1] + 1)) + 0.01 * noise
    elif name == 'dt_bias':
      value = -3 + 0.5 * noise
    else:
      value = config.init_std * noise
    return jnp.asarray(value, leaf.dtype)

  return graphdef, jax.tree_util.tree_map_with_path(draw, abstract)


def _shared_sampler_before(graphdef, params, model_config, doc_kv, prompts, key, limit,
                           temperature):
  """sample_thoughts_shared as it was before decode_inputs.py: uncast weights, model layout."""
  batch = doc_kv.valid.shape[0]
  rows = prompts.tokens.shape[0]
  num_thoughts = rows // batch
  prefix_len = prompts.scored_position.reshape(batch, num_thoughts)

  def forward(tokens, positions, mask, cache):
    logits, cache = thought_forward(
        graphdef, params, doc_kv, prefix_len, tokens.reshape(batch, num_thoughts, -1),
        positions.reshape(batch, num_thoughts, -1), mask.reshape(batch, num_thoughts, -1), cache)
    return logits.reshape(rows, -1, logits.shape[-1])[:, -1], cache

  cache = empty_thought_cache(model_config, doc_kv, num_thoughts, limit + 1)
  logits, cache = forward(prompts.tokens, prompts.positions, prompts.mask, cache)
  return decode_thoughts(forward, logits, cache, prompts.positions[:, -1], key, limit,
                         temperature, helpers.THINK_END, helpers.PAD)


def test_prepared_loop_draws_the_same_thoughts_bit_for_bit():
  """Hybrid model, fp32 weights, bf16 compute. `decode_params` casts the projection kernels and
  the embedding, and leaves what the model reads in fp32 (Mamba vectors and conv kernels,
  Nemotron-H's fp32-scaled norms; a blanket bf16 cast changes the logits); the prepared loop
  (bf16 weights, heads-major document keys among the Mamba states) draws the same tokens with
  bit-identical log-probs as the loop over the uncast weights."""
  config = helpers.rollout_model_config('hybrid')
  config.update(dict(compute_dtype='bfloat16'))
  graphdef, params = random_params(config)
  cast = jax.eval_shape(lambda p: decode_params(graphdef, p), params)
  flat = jax.tree_util.tree_flatten_with_path(cast)[0]
  dtypes = {tuple(getattr(k, 'key', k) for k in path): leaf.dtype for path, leaf in flat}
  assert all(dtypes[path] == jnp.bfloat16 for path in compute_dtype_leaves(graphdef, params))
  for path in (('layers', 0, 'mixer', 'A_log'), ('layers', 0, 'mixer', 'conv_x', 'kernel'),
               ('layers', 0, 'norm', 'scale'), ('final_norm', 'scale')):
    assert dtypes[path] == jnp.float32, path
  assert tree_bytes(cast) < 0.55 * tree_bytes(params)

  tokens = jnp.asarray(np.random.default_rng(1).integers(
      5, config.vocab_size, (2, 8)).astype(np.int32))
  mask = jnp.ones(tokens.shape, jnp.bool_)
  positions = jnp.asarray([[5, 7], [3, 6]], jnp.int32)
  key = jax.random.key(3)

  @jax.jit
  def both(p):
    _, doc = document_kv(graphdef, p, tokens, registry.document_positions(tokens), mask,
                         positions)
    prompts = thought_prompts(tokens, positions, 3, THINK_START)
    after = sample_thoughts_shared(graphdef, p, config, doc, prompts, key, 4, 1.0,
                                   helpers.THINK_END, helpers.PAD)
    return after, _shared_sampler_before(graphdef, p, config, doc, prompts, key, 4, 1.0)

  after, before = both(params)
  np.testing.assert_array_equal(np.asarray(after.tokens), np.asarray(before.tokens))
  np.testing.assert_array_equal(np.asarray(after.log_probs).view(np.uint32),
                                np.asarray(before.log_probs).view(np.uint32))
  assert int(after.length.sum()) > 4  # thoughts were drawn


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in (value if isinstance(value, (list, tuple)) else [value]):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _equations(inner)


def _decode_loop(closed_jaxpr):
  """The decode loop's `while` equation: the one whose body runs a matmul."""
  found = [eqn for eqn in _equations(closed_jaxpr.jaxpr) if eqn.primitive.name == 'while' and any(
      e.primitive.name == 'dot_general' for e in _equations(eqn.params['body_jaxpr'].jaxpr))]
  assert len(found) == 1, f'expected one decode loop, found {len(found)}'
  return found[0]


def _aval_bytes(aval):
  """Bytes of an array operand (0 for a PRNG key)."""
  if jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key):
    return 0
  return aval.size * np.dtype(aval.dtype).itemsize


def test_decode_loop_reads_bf16_weights_and_one_document_cache():
  """What the traced shared sampler hands its `while` loop (fp32 master weights, bf16 compute):
  every weight once and in bf16, the document cache once for all N = 32 rollouts, the own cache
  once. The bytes of the loop's operands are accounted for exactly up to the small carries, and
  the slack left is smaller than what fp32 weights or a copy of the document per rollout would
  add."""
  config = traffic_config('bfloat16')
  graphdef, params = registry.abstract_params(config)
  length, k, g, limit = 256, 2, 16, 8
  tokens, mask, positions = document(config, length + 1, k)
  rows = k * g

  def shared(p, key):
    _, doc = document_kv(graphdef, p, tokens, registry.document_positions(tokens), mask)
    prompts = thought_prompts(tokens, positions, g, THINK_START)
    return sample_thoughts_shared(graphdef, p, config, doc, prompts, key, limit, 0.7, NEVER, 0)

  loop = _decode_loop(jax.make_jaxpr(shared)(params, jax.random.key(0)))
  operands = [v.aval for v in loop.invars]
  wide = [a for a in operands if jnp.issubdtype(a.dtype, jnp.floating) and a.ndim >= 2]
  fp32 = sorted(tuple(a.shape) for a in wide if a.dtype == jnp.float32)
  # fp32 carries only: the last logits [R, V] and the recorded log-probs [R, T].
  assert fp32 == sorted([(rows, config.vocab_size), (rows, limit)]), fp32

  weights = tree_bytes(jax.eval_shape(lambda p: decode_params(graphdef, p), params))
  doc = jax.eval_shape(lambda p: document_kv(graphdef, p, tokens,
                                             registry.document_positions(tokens), mask)[1], params)
  own = jax.eval_shape(lambda d: empty_thought_cache(config, d, rows, limit + 1), doc)
  carries = rows * (config.vocab_size * 4 + limit * (4 + 4 + 1) + 64)  # logits, outputs, flags
  total = sum(_aval_bytes(a) for a in operands)
  floor = weights + tree_bytes(doc) + tree_bytes(own)
  assert floor <= total <= floor + carries, (floor, total, carries)
  fp32_weights_extra = weights  # 2 more bytes for each bf16 weight byte pair
  tiled_extra = (g * k - 1) * tree_bytes(doc.layers)
  assert carries < fp32_weights_extra and carries < tiled_extra


def _step_bytes(config, rows, length, limit=8):
  """XLA's bytes accessed by one compiled decode step of the shared sampler (the loop body:
  shared_decode_step on the inputs as the loop carries them, the cache donated), and the
  bytes that step must touch at least: weights, document cache, own cache, fp32 logits."""
  graphdef, params = registry.abstract_params(config)
  tokens, mask, _ = document(config, length)
  doc = jax.eval_shape(lambda p: loop_document_kv(document_kv(
      graphdef, p, tokens, registry.document_positions(tokens), mask)[1]), params)
  own = jax.eval_shape(lambda d: empty_thought_cache(config, d, rows, limit + 1), doc)
  prefix_len = jnp.full((1, rows), length, jnp.int32)
  step = jax.jit(lambda p, d, c, t, pos, m: shared_decode_step(
      graphdef, p, d, prefix_len, t, pos, m, c, heads_major=True), donate_argnums=2)
  column = jax.ShapeDtypeStruct((rows, 1), jnp.int32)
  compiled = step.lower(params, doc, own, column, column,
                        jax.ShapeDtypeStruct((rows, 1), jnp.bool_)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  floor = tree_bytes(params) + tree_bytes(doc) + tree_bytes(own) + rows * config.vocab_size * 4
  return cost['bytes accessed'], floor, tree_bytes(doc.layers)


def _naive_step_bytes(config, rows, length, limit=8):
  """The same for the naive sampler's step: every row attends to its own copy of the prefix."""
  graphdef, params = registry.abstract_params(config)
  cache = jax.eval_shape(lambda: registry.init_cache(config, rows, length + limit))
  step = jax.jit(lambda p, c, t, pos, m: registry.forward(graphdef, p, t, pos, m, c),
                 donate_argnums=1)
  column = jax.ShapeDtypeStruct((rows, 1), jnp.int32)
  compiled = step.lower(params, cache, column, column,
                        jax.ShapeDtypeStruct((rows, 1), jnp.bool_)).compile()
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)['bytes accessed']


def test_decode_step_reads_each_cache_once():
  """Bytes accessed by one shared decode step (fp32 compute, N = 64 rollouts of one 1024-token
  document) are within 4× what it must read: on XLA:CPU the step also re-lays out the own cache
  and the document values for its matmul kernels (a read and a write each), counts the in-place
  cache write as the whole buffer, and the reference attention writes and re-reads fp32 scores
  [N·H, L] a few times. A rollout added costs under a quarter of a document cache; the naive
  step, whose rows each hold a copy of the prefix, is far over the same bound."""
  config = traffic_config('float32')
  length = 1024
  bytes64, floor64, doc_bytes = _step_bytes(config, 64, length)
  bytes32, _, _ = _step_bytes(config, 32, length)
  assert bytes64 <= 4 * floor64, (bytes64, floor64)
  per_rollout = (bytes64 - bytes32) / 32
  assert per_rollout < 0.25 * doc_bytes, (per_rollout, doc_bytes)
  assert _naive_step_bytes(config, 64, length) > 4 * 4 * floor64


def test_decode_loop_updates_the_own_cache_in_place():
  """The compiled sampler's temporaries grow with T by the own cache's growth plus XLA:CPU's
  per-layer re-laid-out copy of one layer's keys and values (1.5× with two layers), not by a
  second copy of the cache per step (≥ 2×). fp32 compute: for a bf16 cache XLA:CPU's compiled
  step converts the whole buffer to fp32, writes the new column and converts it back (its
  emulation of bf16), which says nothing about an accelerator."""
  config = traffic_config('float32')
  graphdef, params = registry.abstract_params(config)
  length, k, g = 256, 2, 16
  tokens, mask, positions = document(config, length + 1, k)

  def temporaries(limit):
    def shared(p, key):
      _, doc = document_kv(graphdef, p, tokens, registry.document_positions(tokens), mask)
      prompts = thought_prompts(tokens, positions, g, THINK_START)
      return sample_thoughts_shared(graphdef, p, config, doc, prompts, key, limit, 0.7, NEVER, 0)
    compiled = jax.jit(shared).lower(params, jax.random.key(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  column = k * g * config.num_layers * 2 * config.num_kv_heads * config.head_dim * 4
  grown = temporaries(40) - temporaries(8)
  assert 0.9 * 32 * column < grown < 2.0 * 32 * column, grown / (32 * column)


def test_naive_sampler_loop_reads_bf16_weights():
  """The naive sampler (and the evaluator's generation, which calls it) hands its loop bf16
  weights too."""
  config = traffic_config('bfloat16', num_layers=1)
  graphdef, params = registry.abstract_params(config)
  tokens, _, positions = document(config, 17, 2)
  prompts = build_prompts(tokens, positions, 2, THINK_START)
  loop = _decode_loop(jax.make_jaxpr(lambda p: sample_thoughts(
      graphdef, p, config, prompts, jax.random.key(0), 4, 0.7, NEVER, 0))(params))
  fp32 = [v.aval.shape for v in loop.invars if getattr(v.aval, 'dtype', None) == jnp.float32
          and v.aval.ndim >= 2]
  assert sorted(fp32) == sorted([(4, config.vocab_size), (4, 4)]), fp32
