"""What a decode loop reads at every step, prepared once before the loop (both samplers).

A decode step is bound by memory traffic, not arithmetic: per sampled token it reads every weight
and every cache. Two preparations keep that traffic at what the step needs:

  decode_params      the weights the model only ever uses in its compute dtype, cast to it once.
                     Large-model configs keep fp32 master weights (`model.param_dtype`) and
                     compute in bf16; inside the loop every step would otherwise read 4 bytes per
                     weight and convert them, unless the compiler happens to hoist the convert.
  loop_document_kv   the shared document's keys/values carried into the loop heads-major
  step_document_kv   [B, Hkv, L, D] (the layout the attention's batched matmuls read, batched
                     over (document, kv head)) and seen by each step in the model's [B, L, Hkv, D]
                     layout through a transpose the compiler can turn into a relabelling, so a
                     step need not re-lay out the whole document cache (on XLA:CPU this removes
                     the per-step copy of the document keys; docs/performance.md).
  shared_decode_step one step of the shared sampler over them: what its loop runs, and what
                     tests/test_decode_traffic.py and bench/gpu_decode_bench.py compile alone.

Both are exact: `decode_params` casts only what the layers cast themselves before any arithmetic
(layers.Projection kernels: attention, MLP, Mamba2 in/out projections, an untied lm head; the
layers.Embedding table, whose gathered rows are cast), so the sampled thoughts and their
log-probs are bit for bit those of the uncast weights. Everything else keeps its dtype: the
parameters a family reads in fp32 (Mamba2 conv kernels and biases, dt_bias, A_log, D, the gated
norm's scale, Nemotron-H's fp32-scaled RMSNorms) and the RMSNorm scales cast to the activations'
dtype, a few vectors in all. The cast copy lives as long as the decode loop: 2 bytes per weight
beside the fp32 master weights (what XLA holds anyway when it hoists the convert itself).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.models.layer_stack import map_values
from rlp_jax.models.layers import Embedding, Projection
from rlp_jax.models.prefix_attention import DocumentKV
from rlp_jax.models.shared_prefix import thought_forward


def compute_dtype_leaves(graphdef: nnx.GraphDef, params: Any) -> dict[tuple, Any]:
  """{path in the params dict: compute dtype} of every leaf the model only reads in its compute
  dtype: each Projection's `kernel` and the Embedding's `embedding` table."""
  model = nnx.merge(graphdef, params)
  leaves = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, Projection):
      leaves[tuple(path) + ('kernel',)] = node.compute_dtype
    elif isinstance(node, Embedding):
      leaves[tuple(path) + ('embedding',)] = node.compute_dtype
  return leaves


def decode_params(graphdef: nnx.GraphDef, params: Any) -> Any:
  """`params` with every compute-dtype-only leaf cast to the compute dtype (module docstring):
  the same forward numbers, half the bytes per weight per decode step for fp32 master weights
  and bf16 compute; a no-op when the weights are already stored in the compute dtype."""
  targets = compute_dtype_leaves(graphdef, params)

  def cast(path, leaf):
    dtype = targets.get(tuple(getattr(key, 'key', getattr(key, 'idx', key)) for key in path))
    return leaf if dtype is None else jnp.asarray(leaf).astype(dtype)

  return jax.tree_util.tree_map_with_path(cast, params)


def _swap_attention_entry(value: Any) -> Any:
  """An attention layer's (keys, values) with axes 1 and 2 swapped; other values (Mamba states)
  unchanged."""
  if isinstance(value, tuple):
    return tuple(jnp.swapaxes(array, 1, 2) for array in value)
  return value


def loop_document_kv(doc_kv: DocumentKV) -> DocumentKV:
  """The document keys/values heads-major [B, Hkv, L, D], as a decode loop carries them."""
  return doc_kv.replace(layers=map_values(doc_kv.layers, _swap_attention_entry))


def step_document_kv(loop_kv: DocumentKV) -> DocumentKV:
  """`loop_document_kv`'s inverse: the model's [B, L, Hkv, D] layout, inside a decode step."""
  return loop_kv.replace(layers=map_values(loop_kv.layers, _swap_attention_entry))


def shared_decode_step(graphdef: nnx.GraphDef, params: Any, loop_kv: DocumentKV,
                       prefix_len: jax.Array, tokens: jax.Array, positions: jax.Array,
                       mask: jax.Array, cache: Any, *, heads_major: bool,
                       ) -> tuple[jax.Array, Any]:
  """One cached step of the shared-prefix sampler (its prefill and each loop iteration):
  tokens/positions/mask [B·N, Tq] of the thought rows (row b·N + n) over the document as the loop
  carries it (`loop_document_kv` when `heads_major`, else the model's layout) and the thoughts'
  own cache → (fp32 logits of each row's last token [B·N, V], the updated cache). `params` as
  the loop reads them (`decode_params`); prefix_len int32 [B, N]."""
  batch, num_thoughts = prefix_len.shape
  doc_kv = step_document_kv(loop_kv) if heads_major else loop_kv
  logits, cache = thought_forward(
      graphdef, params, doc_kv, prefix_len, tokens.reshape(batch, num_thoughts, -1),
      positions.reshape(batch, num_thoughts, -1), mask.reshape(batch, num_thoughts, -1), cache)
  return logits.reshape(batch * num_thoughts, -1, logits.shape[-1])[:, -1], cache
