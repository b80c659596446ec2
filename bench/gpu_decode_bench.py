"""Decode speed and update MFU on an accelerator (issue 16, items 3-4; first prepared for issue 5,
item 5), measured side by side in one run.

Models, random weights kept as the presets train them (fp32 master weights, bf16 compute, layers
scanned, `model.remat_policy` 'full', logits `model.logits_chunk_tokens` at a time):
  qwen3  Qwen3-1.7B-shaped (presets.qwen3('1.7b'): vocab 151936, hidden 2048, MLP 6144, 28 layers,
         16 query / 8 kv heads of dim 128, tied embedding; 1.72 B parameters);
  nano   Nemotron-Nano-12B-v2-shaped layers (presets.nemotron_h('12b'): hidden 5120, MLP 20480,
         Mamba2 128 heads × 80, state 128, 8 groups, GQA 40 / 8 heads of 128 without RoPE, vocab
         131072 untied) scaled to fit one card: `--nano-units` repeats of the 12B's unit
         'M-M-M-M*-' (default 1: 9 of its 62 layers, 2.92 B parameters; the RLP update then holds
         ≈ 70 GB of θ, φ, Adam moments, gradient and update in fp32).

Parts, per model (`--parts`):
  decode    the shared-prefix sampler (`sample_thoughts_shared`) on one document with 64 rollouts
            (K 4 × G 16) at t = 512, T = 128 (the end token never matches: every row runs T
            steps). ms per decode step = (sampler − prefill) / T, the prefill (document pass,
            weight cast, first `<think>` step) timed alone. Against two floors, bytes ÷ the
            measured bandwidth ((read + write) bytes ÷ time of an elementwise pass over a 1 GiB
            bf16 buffer): `floor_weights` the bf16 weights a step reads; `floor_step` everything
            a step must touch: weights, the document cache, the thoughts' own caches (all T + 1
            columns, which the step reads; Mamba states read and written), the fp32 logits.
            `step_bytes_ratio`: XLA's bytes accessed of one compiled step (cost_analysis) ÷ the
            step floor's bytes, ≈ 1 when a step reads the weights and each cache once.
  generate  transformers `generate` of the same Qwen3 model (bf16, on the card; qwen3 only): ms
            per decode step, (T tokens − 1 token) / (T − 1), 64 rows of the 513-token prompt,
            greedy. Run first, before JAX allocates (torch gives its memory back after).
  ntp       the next-token train step (train/ntp_step.py: AdamW, clipping) at 8 × 2048 tokens;
  rlp       the RLP update (train/rlp_step.py's update: the shared-prefix loss's gradient, AdamW,
            EMA of φ) on the decode part's rollout: 1 document of 513 tokens + 64 thoughts of
            T + 2 columns.
  naive     (qwen3, not in the default parts) the naive sampler's ms per decode step.
MFU = model FLOPs ÷ time ÷ peak: 6 × matmul parameters (every projection kernel and the lm head)
per trained token, + 12 × query width × attended keys per attention layer, + 3 × the Mamba2 SSD
scan's forward FLOPs per token and layer (2·chunk·(G·N + H·P) + 4·H·P·N); recomputation under
remat is not counted. Peak: --peak-tflops, else the device kind's dense bf16 figure (H100 / H200
989 TFLOP/s); the rate of a measured 8192³ bf16 matmul is printed beside it.

Prints versions and the device first, one `RESULT {json}` line as each part ends (a run stopped
by its timeout keeps those), and a final `BENCH {json}` line with everything, which
docs/performance.md is filled from.

  bash bench/run_on_device.sh                      # on the lent accelerator (the wheel it needs)
  python bench/gpu_decode_bench.py --tiny          # CPU smoke run of the same code
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Any, Callable

# torch's generate runs first and gives its memory back; then JAX may take most of the card.
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # rlp_jax and tests/ without an install

import jax  # noqa: E402  pylint: disable=wrong-import-position
import jax.numpy as jnp  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from rlp_jax.config import base_config, presets  # noqa: E402
from rlp_jax.data.special_tokens import SpecialTokens  # noqa: E402
from rlp_jax.models import registry  # noqa: E402
from rlp_jax.models.shared_prefix import document_kv, empty_thought_cache  # noqa: E402
from rlp_jax.rollout.decode_inputs import (compute_dtype_leaves, decode_params,  # noqa: E402
                                           loop_document_kv, shared_decode_step)
from rlp_jax.rollout.prefix_strategies import sample_thoughts_shared, thought_prompts  # noqa: E402
from rlp_jax.rollout.reasoned_evidence import build_scored_sequences  # noqa: E402
from rlp_jax.rollout.rlp_rollout import Rollout  # noqa: E402
from rlp_jax.rollout.thought_sampler import build_prompts, sample_thoughts  # noqa: E402
from rlp_jax.train.ntp_step import make_ntp_step  # noqa: E402
from rlp_jax.train.optimizer import make_optimizer  # noqa: E402
from rlp_jax.train.rlp_step import make_rlp_step  # noqa: E402
from rlp_jax.train.state import create_train_state  # noqa: E402
from tests import helpers  # noqa: E402
# pylint: enable=wrong-import-position

THINK_START, THINK_END, PAD, NEVER = 3, 4, 0, -1
PEAK_BF16_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0, 'B200': 2250.0}  # dense
NANO_UNIT = 'M-M-M-M*-'  # the repeating unit of Nemotron-Nano-12B-v2's 62 layers
PARTS = ('generate', 'decode', 'ntp', 'rlp', 'naive')


def workload(tiny: bool) -> dict[str, int]:
  """K positions × G thoughts at t = prefix, T thought tokens; the next-token batch."""
  if tiny:
    return dict(k=2, g=4, prefix=64, limit=16, ntp_batch=2, ntp_len=128)
  return dict(k=4, g=16, prefix=512, limit=128, ntp_batch=8, ntp_len=2048)


def model_config(name: str, tiny: bool, nano_units: int, attention_impl: str) -> Any:
  """The `model` config of 'qwen3' or 'nano' (module docstring), tiny: the same layer kinds at
  CPU sizes."""
  config = base_config().model
  if name == 'qwen3':
    config.update(presets.qwen3('1.7b'))
    if tiny:
      config.update(dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_layers=4,
                         num_heads=4, num_kv_heads=2, head_dim=32))
  else:
    config.update(presets.nemotron_h('12b'))
    if tiny:
      config.update(presets.nemotron_h('tiny'))
      config.update(dict(vocab_size=2048, tie_embeddings=False))
    pattern = NANO_UNIT * nano_units
    config.update(dict(layer_pattern=pattern, num_layers=len(pattern)))
  config.update(dict(param_dtype='float32', compute_dtype='bfloat16', scan_layers=True))
  if attention_impl:
    if 'attention_impl' not in base_config().model:
      print(f'note: this checkout declares no `model.attention_impl`; {attention_impl!r} is '
            'set but no layer reads it', flush=True)
    config.attention_impl = attention_impl
  registry.family_of(config).validate_config(config)
  return config


def versions() -> dict[str, str]:
  found = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'transformers', 'torch'):
    try:
      found[name] = __import__(name).__version__
    except ImportError:
      found[name] = 'not installed'
  device = jax.devices()[0]
  found['device'] = f'{device.device_kind} ({device.platform}, {jax.device_count()} device(s))'
  try:
    import torch  # pylint: disable=import-outside-toplevel
    found['torch_cuda'] = f'{torch.version.cuda} ({torch.cuda.is_available()})'
  except ImportError:
    pass
  return found


def tree_bytes(tree: Any) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def attention_entries(values: Any) -> list:
  """The (keys, values) of every attention layer of a LayerValues (either layout)."""
  entries = values.entries
  if values.scanned:
    entries = [entry for segment in entries for entry in segment]
  return [entry for entry in entries if isinstance(entry, tuple)]


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def timed_steps(step: Callable, state: Any, args: tuple, repeats: int) -> tuple[dict, Any]:
  """A donating train step run 1 + repeats times, threading the state: (first call's seconds
  (compile included), median seconds of the others), the last state."""
  start = time.perf_counter()
  state, metrics = step(state, *args)
  jax.block_until_ready((state, metrics))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    state, metrics = step(state, *args)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return dict(compile_and_first_s=round(first, 2), seconds=sig(statistics.median(times))), state


def copy_bandwidth(repeats: int, num_bytes: int) -> float:
  """Bytes/s of read + write traffic of an elementwise pass over a bf16 buffer."""
  buffer = jnp.ones((num_bytes // 2,), jnp.bfloat16)
  step = jax.jit(lambda x: x * jnp.bfloat16(1.001))
  return 2 * num_bytes / median_seconds(lambda: step(buffer), repeats)


def matmul_tflops(repeats: int, size: int) -> float:
  """TFLOP/s of a size³ bf16 matmul (fp32 accumulation), 8 back to back per timing."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
  chain = jax.jit(lambda a: jax.lax.fori_loop(0, 8, lambda _, x: (x @ a) * 1e-2, a))
  return 8 * 2 * size ** 3 / median_seconds(lambda: chain(a), repeats) / 1e12


def peak_memory_gb() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else round(peak / 1e9, 2)


class FlopModel:
  """Training FLOPs of a model (module docstring); `train(tokens, attended)`."""

  def __init__(self, config: Any, graphdef: Any, abstract: Any):
    kernels = compute_dtype_leaves(graphdef, abstract)
    flat = {tuple(getattr(k, 'key', k) for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    self.matmul = sum(math.prod(flat[path].shape) for path in kernels if path[-1] == 'kernel')
    if config.tie_embeddings:  # the tied head's matmul (the embedding gather is no matmul)
      self.matmul += config.vocab_size * config.hidden_size
    kinds = registry.layer_plan(config).kinds
    self.attention_layers = sum(kind in 'D*' for kind in kinds)
    self.mamba_layers = kinds.count('M')
    self.query_width = config.num_heads * config.head_dim
    self.ssd_forward = 0
    if self.mamba_layers:
      heads_x_dim = config.mamba_num_heads * config.mamba_head_dim
      self.ssd_forward = (2 * config.mamba_chunk_size * (
          config.mamba_n_groups * config.ssm_state_size + heads_x_dim)
                          + 4 * heads_x_dim * config.ssm_state_size)

  def train(self, tokens: float, attended: float) -> float:
    """Forward + backward FLOPs of `tokens` trained tokens attending to `attended` keys in all
    (summed over tokens, per attention layer)."""
    return (6 * self.matmul * tokens + 12 * self.query_width * self.attention_layers * attended
            + 3 * self.ssd_forward * self.mamba_layers * tokens)


def sig(x: float, digits: int = 4) -> float:
  return float(f'{x:.{digits}g}')


def mfu(flops: float, seconds: float, peak_tflops: float, matmul: float) -> dict[str, Any]:
  """Model TFLOP/s, MFU against the peak and the fraction of the measured bf16 matmul rate."""
  tflops = flops / seconds / 1e12
  return dict(model_tflop=sig(flops / 1e12), tflops=sig(tflops),
              mfu=(sig(tflops / peak_tflops, 3) if peak_tflops else None),
              of_measured_matmul=sig(tflops / matmul, 3))


def torch_generate(config: Any, prompt: np.ndarray, limit: int, repeats: int) -> dict[str, Any]:
  """ms per decode step of transformers generate (qwen3 only), or why it was not measured."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    return dict(note=f'not measured ({error})')
  on_gpu = torch.cuda.is_available()
  if not on_gpu and config.hidden_size > 512:
    return dict(note='not measured: torch has no CUDA here (a 1.7B CPU generate is out of budget)')
  hf_config = helpers.qwen3_hf_config(config, tie_word_embeddings=True, use_sliding_window=False)
  device = 'cuda' if on_gpu else 'cpu'
  with torch.device(device):
    model = transformers.Qwen3ForCausalLM(hf_config).to(torch.bfloat16).eval()
  input_ids = torch.from_numpy(prompt.astype(np.int64)).to(device)

  def generate(new_tokens):
    with torch.no_grad():
      model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                     min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=0,
                     eos_token_id=None)
    if on_gpu:
      torch.cuda.synchronize()

  def seconds(new_tokens):
    generate(new_tokens)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      generate(new_tokens)
      times.append(time.perf_counter() - start)
    return statistics.median(times)

  full, first = seconds(limit), seconds(1)
  del model
  if on_gpu:
    torch.cuda.empty_cache()
  attn = getattr(hf_config, '_attn_implementation', None)  # pylint: disable=protected-access
  return dict(ms_per_step=round(1e3 * (full - first) / (limit - 1), 3), device=device,
              attn_implementation=attn)


def decode_part(name: str, config: Any, graphdef: Any, params: Any, work: dict[str, int],
                bandwidth: float, repeats: int, parts: set[str]) -> tuple[dict, Any]:
  """The shared sampler's ms per decode step against the floors (and the naive sampler's), and
  the rollout the rlp part trains on."""
  k, g, prefix, limit = work['k'], work['g'], work['prefix'], work['limit']
  rollouts = k * g
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(5, config.vocab_size, (1, prefix + 1)).astype(np.int32))
  mask = jnp.ones(tokens.shape, jnp.bool_)
  positions = jnp.full((1, k), prefix, jnp.int32)
  key = jax.random.key(0)
  heads_major = config.get('attention_impl', 'reference') == 'reference'

  def document(p):
    return document_kv(graphdef, p, tokens, registry.document_positions(tokens), mask,
                       positions)[1]

  @jax.jit
  def shared_prefill(p):  # everything sample_thoughts_shared does before its loop
    prompts = thought_prompts(tokens, positions, g, THINK_START)
    doc = document(p)
    cache = empty_thought_cache(config, doc, rollouts, limit + 1)
    loop_kv = loop_document_kv(doc) if heads_major else doc
    return shared_decode_step(graphdef, decode_params(graphdef, p), loop_kv,
                              prompts.scored_position.reshape(1, rollouts), prompts.tokens,
                              prompts.positions, prompts.mask, cache, heads_major=heads_major)

  @jax.jit
  def shared_sample(p, key):
    prompts = thought_prompts(tokens, positions, g, THINK_START)
    return sample_thoughts_shared(graphdef, p, config, document(p), prompts, key, limit, 0.7,
                                  NEVER, PAD)

  start = time.perf_counter()
  thoughts = jax.block_until_ready(shared_sample(params, key))
  compile_s = time.perf_counter() - start
  prefill_s = median_seconds(lambda: shared_prefill(params), repeats)
  sample_s = median_seconds(lambda: shared_sample(params, key), repeats)
  step_ms = 1e3 * (sample_s - prefill_s) / limit

  # What one step must touch, and what XLA's compiled step reads.
  cast = jax.eval_shape(lambda p: decode_params(graphdef, p), params)
  doc = jax.eval_shape(lambda p: loop_document_kv(document(p)) if heads_major else document(p),
                       params)
  own = jax.eval_shape(lambda d: empty_thought_cache(config, d, rollouts, limit + 1), doc)
  own_states = tree_bytes(own.layers) - sum(tree_bytes(e) for e in attention_entries(own.layers))
  weights = tree_bytes(cast)
  step_bytes = (weights + sum(tree_bytes(e) for e in attention_entries(doc.layers))
                + tree_bytes(own) + own_states + rollouts * config.vocab_size * 4)
  column = jax.ShapeDtypeStruct((rollouts, 1), jnp.int32)
  prefix_len = jnp.full((1, rollouts), prefix, jnp.int32)
  one_step = jax.jit(lambda p, d, c, t, q, m: shared_decode_step(
      graphdef, p, d, prefix_len, t, q, m, c, heads_major=heads_major), donate_argnums=2)
  cost = one_step.lower(cast, doc, own, column, column, jax.ShapeDtypeStruct(
      (rollouts, 1), jnp.bool_)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  accessed = float(cost.get('bytes accessed', float('nan')))

  floor_weights_ms = 1e3 * weights / bandwidth
  floor_step_ms = 1e3 * step_bytes / bandwidth
  result = dict(
      rollouts=rollouts, prefix=prefix, thought_tokens=limit, heads_major_document=heads_major,
      compile_and_first_s=round(compile_s, 2), prefill_s=round(prefill_s, 4),
      sample_s=round(sample_s, 4), shared_ms_per_step=round(step_ms, 3),
      weights_gb=round(weights / 1e9, 3), step_floor_gb=round(step_bytes / 1e9, 3),
      floor_weights_ms=round(floor_weights_ms, 3), floor_step_ms=round(floor_step_ms, 3),
      x_floor_weights=round(step_ms / floor_weights_ms, 2),
      x_floor_step=round(step_ms / floor_step_ms, 2),
      step_bytes_accessed_gb=round(accessed / 1e9, 3),
      step_bytes_ratio=round(accessed / step_bytes, 2), peak_memory_gb=peak_memory_gb())
  print(f'[{name}] shared sampler: {sample_s:.3f} s per rollout (compile + first '
        f'{compile_s:.1f} s), prefill {prefill_s:.4f} s → {step_ms:.3f} ms/decode step = '
        f'{result["x_floor_weights"]}× the weights floor ({floor_weights_ms:.3f} ms), '
        f'{result["x_floor_step"]}× the step floor ({floor_step_ms:.3f} ms, '
        f'{step_bytes / 1e9:.3f} GB); XLA reads {accessed / 1e9:.3f} GB per compiled step '
        f'({result["step_bytes_ratio"]}× the step floor)', flush=True)

  if 'naive' in parts and config.family == 'dense':
    naive_prompts = build_prompts(tokens, positions, g, THINK_START)
    naive_prefill = jax.jit(lambda p: registry.forward(
        graphdef, decode_params(graphdef, p), naive_prompts.tokens, naive_prompts.positions,
        naive_prompts.mask)[0][:, -1])
    naive_sample = jax.jit(lambda p, key: sample_thoughts(
        graphdef, p, config, naive_prompts, key, limit, 0.7, NEVER, PAD))
    prefill = median_seconds(lambda: naive_prefill(params), repeats)
    sample = median_seconds(lambda: naive_sample(params, key), repeats)
    result['naive_ms_per_step'] = round(1e3 * (sample - prefill) / limit, 3)
    print(f'[{name}] naive sampler: {sample:.3f} s, prefill {prefill:.3f} s → '
          f'{result["naive_ms_per_step"]} ms/decode step', flush=True)

  prompts = thought_prompts(tokens, positions, g, THINK_START)
  rollout = Rollout(sequences=build_scored_sequences(prompts, thoughts, THINK_END, PAD),
                    thought_mask=thoughts.mask, old_log_probs=thoughts.log_probs,
                    advantages=jax.random.normal(key, (rollouts,)), metrics={})
  return result, dict(batch={'tokens': tokens, 'mask': mask}, rollout=rollout)


def ntp_part(name: str, config: Any, graphdef: Any, params: Any, work: dict[str, int],
             flop_model: FlopModel, peak: float, matmul: float, repeats: int,
             ) -> tuple[dict, Any]:
  """The next-token train step at ntp_batch × ntp_len tokens: seconds and MFU."""
  batch_size, length = work['ntp_batch'], work['ntp_len']
  tx, schedule = make_optimizer(base_config().optimizer, num_steps=1000)
  state = create_train_state(params, tx, seed=0)
  rng = np.random.default_rng(1)
  batch = {'tokens': jnp.asarray(rng.integers(5, config.vocab_size, (batch_size, length)),
                                 jnp.int32),
           'mask': jnp.ones((batch_size, length), jnp.bool_)}
  timing, state = timed_steps(make_ntp_step(graphdef, tx, schedule), state, (batch,), repeats)
  flops = flop_model.train(batch_size * length, batch_size * length * (length + 1) / 2)
  result = dict(tokens=batch_size * length, **timing,
                **mfu(flops, timing['seconds'], peak, matmul), peak_memory_gb=peak_memory_gb())
  print(f'[{name}] next-token step {batch_size}×{length}: {timing["seconds"]:.4f} s (compile + '
        f'first {timing["compile_and_first_s"]} s), {result["tflops"]} TFLOP/s model FLOPs, '
        f'MFU {result["mfu"]} ({result["of_measured_matmul"]} of the measured matmul rate)',
        flush=True)
  return result, state.params


def rlp_part(name: str, config: Any, graphdef: Any, params: Any, work: dict[str, int],
             inputs: dict, flop_model: FlopModel, peak: float, matmul: float,
             repeats: int) -> dict:
  """The RLP update (shared prefix, AdamW, EMA) on the decode part's rollout: seconds and MFU."""
  k, g, prefix, limit = work['k'], work['g'], work['prefix'], work['limit']
  full = base_config()
  presets.paper_rlp(full)
  rlp = full.rlp
  rlp.update(dict(positions_per_document=k, thoughts_per_position=g, max_thought_tokens=limit,
                  prefix_mode='shared'))
  tx, schedule = make_optimizer(full.optimizer, num_steps=1000)
  state = create_train_state(params, tx, seed=0, with_teacher=True)
  special = SpecialTokens(think_start_id=THINK_START, think_end_id=THINK_END, pad_id=PAD)
  _, update = make_rlp_step(graphdef, config, rlp, special, tx, schedule)
  timing, _ = timed_steps(update, state, (inputs['batch'], inputs['rollout']), repeats)
  rollouts, width, document = k * g, limit + 2, prefix + 1
  attended = (document * (document + 1) / 2
              + rollouts * (width * prefix + width * (width + 1) / 2))
  flops = flop_model.train(document + rollouts * width, attended)
  result = dict(tokens=document + rollouts * width, **timing,
                **mfu(flops, timing['seconds'], peak, matmul), peak_memory_gb=peak_memory_gb())
  print(f'[{name}] RLP update ({document} document + {rollouts}×{width} thought tokens): '
        f'{timing["seconds"]:.4f} s (compile + first {timing["compile_and_first_s"]} s), '
        f'{result["tflops"]} TFLOP/s model FLOPs, MFU {result["mfu"]} '
        f'({result["of_measured_matmul"]} of the measured matmul rate)', flush=True)
  return result


def free_device_memory() -> None:
  gc.collect()
  for array in jax.live_arrays():
    array.delete()
  jax.clear_caches()


def run_model(name: str, config: Any, work: dict[str, int], bandwidth: float, peak: float,
              matmul: float, repeats: int, parts: set[str], report: dict) -> None:
  """The parts of one model, in order; each part's result into `report[name]` and printed."""
  graphdef, abstract = registry.abstract_params(config)
  flop_model = FlopModel(config, graphdef, abstract)
  num_params = registry.count_params(config)
  state_gb = num_params * 24 / 1e9  # θ, φ, Adam m and v, gradient, update: fp32
  entry = report.setdefault(name, {})
  entry.update(layers=config.num_layers, layer_pattern=config.get('layer_pattern', '') or None,
               params_b=round(num_params / 1e9, 3),
               matmul_params_b=round(flop_model.matmul / 1e9, 3),
               rlp_state_estimate_gb=round(state_gb, 1))
  pattern = f' {entry["layer_pattern"]!r}' if entry['layer_pattern'] else ''
  print(f'[{name}] {config.num_layers} layers{pattern}, '
        f'{num_params / 1e9:.3f} B params (fp32 master, bf16 compute), '
        f'≈ {state_gb:.0f} GB of RLP train state', flush=True)

  def part(label: str, run: Callable[[], Any]) -> Any:
    """run() → (result, carried); a failure is reported and the next part still runs (one run
    on the card has to cover them all)."""
    try:
      entry[label], carried = run()
    except Exception as error:  # pylint: disable=broad-exception-caught
      traceback.print_exc()
      entry[label], carried = dict(error=f'{type(error).__name__}: {str(error)[:500]}'), None
    print('RESULT ' + json.dumps({name: {label: entry[label]}}), flush=True)
    return carried

  _, params = registry.init_params(config, seed=0)
  inputs = None
  if 'decode' in parts or 'rlp' in parts:
    inputs = part('decode', lambda: decode_part(name, config, graphdef, params, work, bandwidth,
                                                repeats, parts))
  if 'ntp' in parts:  # the step donates its state, params included: it returns the new ones
    params = part('ntp', lambda: ntp_part(name, config, graphdef, params, work, flop_model,
                                          peak, matmul, repeats))
  if 'rlp' in parts and inputs is None:
    part('rlp', lambda: (dict(error='not run: the decode part, whose rollout it trains on, failed'),
                         None))
  elif 'rlp' in parts:
    if params is None:
      _, params = registry.init_params(config, seed=0)
    part('rlp', lambda: (rlp_part(name, config, graphdef, params, work, inputs, flop_model,
                                  peak, matmul, repeats), None))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tiny', action='store_true', help='small model and shapes, CPU smoke run')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--peak-tflops', type=float, default=0.0, help='bf16 dense peak; 0: guess')
  parser.add_argument('--models', default='qwen3,nano', help='comma-separated: qwen3, nano')
  parser.add_argument('--parts', default='generate,decode,ntp,rlp',
                      help=f'comma-separated of {",".join(PARTS)}')
  parser.add_argument('--nano-units', type=int, default=1,
                      help=f"repeats of the 12B's unit {NANO_UNIT!r} (9 layers each)")
  parser.add_argument('--attention-impl', default='',
                      help='sets model.attention_impl (reference, dot_product, pallas); '
                           'unset: the config default')
  args = parser.parse_args()
  models = [m for m in args.models.split(',') if m]
  parts = {p for p in args.parts.split(',') if p}
  if set(models) - {'qwen3', 'nano'} or parts - set(PARTS):
    parser.error(f'--models of qwen3, nano; --parts of {PARTS}')
  work = workload(args.tiny)
  configs = {m: model_config(m, args.tiny, args.nano_units, args.attention_impl) for m in models}
  report: dict[str, Any] = dict(versions=versions(), tiny=args.tiny, workload=work,
                                attention_impl=args.attention_impl or 'default', models={})
  for key, value in report['versions'].items():
    print(f'{key}: {value}', flush=True)

  if 'generate' in parts and 'qwen3' in configs:  # before JAX computes anything
    # The naive sampler's prompt rows: the decode part's document up to t, then `<think>`.
    document = np.random.default_rng(0).integers(5, configs['qwen3'].vocab_size,
                                                 work['prefix'] + 1)
    prompt = np.tile(np.append(document[:work['prefix']], THINK_START), (work['k'] * work['g'], 1))
    try:
      generate = torch_generate(configs['qwen3'], prompt, work['limit'], args.repeats)
    except Exception as error:  # pylint: disable=broad-exception-caught
      traceback.print_exc()
      generate = dict(error=f'{type(error).__name__}: {str(error)[:500]}')
    report['models'].setdefault('qwen3', {})['generate'] = generate
    print(f'[qwen3] transformers generate: {generate}', flush=True)
    print('RESULT ' + json.dumps({'qwen3': {'generate': generate}}), flush=True)
    free_device_memory()

  size = 64 * 2**20 if args.tiny else 2**30
  bandwidth = copy_bandwidth(args.repeats, size)
  matmul = matmul_tflops(args.repeats, 512 if args.tiny else 8192)
  device = jax.devices()[0]
  peak = args.peak_tflops or next((v for n, v in PEAK_BF16_TFLOPS.items()
                                   if n in device.device_kind), 0.0)
  report.update(bandwidth_gbps=round(bandwidth / 1e9, 1), matmul_tflops=round(matmul, 1),
                peak_tflops=peak or None)
  print(f'copy bandwidth {bandwidth / 1e9:.0f} GB/s; bf16 matmul {matmul:.1f} TFLOP/s; MFU peak '
        f'{peak or "unknown (--peak-tflops)"} TFLOP/s', flush=True)

  for name, config in configs.items():
    run_model(name, config, work, bandwidth, peak, matmul, args.repeats, parts,
              report['models'])
    free_device_memory()
  qwen = report['models'].get('qwen3', {})
  if 'ms_per_step' in qwen.get('generate', {}) and 'shared_ms_per_step' in qwen.get('decode', {}):
    qwen['generate']['x_shared_faster'] = round(
        qwen['generate']['ms_per_step'] / qwen['decode']['shared_ms_per_step'], 1)
  print('BENCH ' + json.dumps(report), flush=True)


if __name__ == '__main__':
  main()
