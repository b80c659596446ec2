"""Decode speed and update MFU on an accelerator (issue 5, item 5), side by side in one run.

Qwen3-1.7B-shaped model (vocab 151936, hidden 2048, intermediate 6144, 28 layers, 16 query / 8 kv
heads of dim 128, tied embeddings) with random bf16 weights; one document, 64 rollouts (K 4 × G 16)
at t = prefix 512, T = 128 thought tokens (the end token never matches: every row runs T steps).

Reported:
  ms per decode step, shared sampler and naive sampler: (sampler time − prefill time) / T, where
    prefill is the document forward (shared) or the R-row prompt forward (naive) plus the first
    `<think>` step, timed by itself;
  weights-only floor: 2 bytes × parameter count (bf16) ÷ measured copy bandwidth, the bandwidth
    being (read + write bytes) ÷ time of an elementwise pass over a 1 GiB bf16 buffer — a decode
    step reads every weight once, so no step can be faster;
  transformers generate (torch on the same card, when torch has CUDA; CPU with --tiny): ms per
    decode step the same way (generate T tokens − generate 1 token) / (T − 1);
  update step (gradient of rlp_loss with the shared prefix strategy, bf16, optimizer left out): seconds and model-FLOPs
    utilisation, the model FLOPs being 6 × (non-embedding params + lm head) × tokens + 12 × layers × heads ×
    head_dim × (attended keys summed over tokens), peak from --peak-tflops or the device kind.

  python bench/gpu_decode_bench.py                 # the accelerator run
  python bench/gpu_decode_bench.py --tiny          # a seconds-long CPU smoke run of the same code
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.config import base_config
from rlp_jax.models import registry
from rlp_jax.models.shared_prefix import document_kv, thought_forward
from rlp_jax.rollout.reasoned_evidence import build_scored_sequences
from rlp_jax.rollout.prefix_strategies import sample_thoughts_shared, thought_prompts
from rlp_jax.rollout.thought_sampler import build_prompts, sample_thoughts
from rlp_jax.rollout.rlp_rollout import Rollout
from rlp_jax.train.rlp_loss import rlp_loss
from rlp_jax.models.registry import document_positions

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for tests/
from tests import helpers  # noqa: E402  pylint: disable=wrong-import-position

THINK_START, THINK_END, NEVER = 3, 4, -1
PEAK_BF16_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0, 'B200': 2250.0}  # dense


def model_config(tiny: bool) -> Any:
  config = base_config().model
  if tiny:
    config.update(dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_layers=4,
                       num_heads=4, num_kv_heads=2, head_dim=32))
  else:
    config.update(dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_layers=28, num_heads=16, num_kv_heads=8, head_dim=128))
  config.update(dict(param_dtype='bfloat16', compute_dtype='bfloat16'))
  return config


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def copy_bandwidth(repeats: int, num_bytes: int) -> float:
  """Bytes/s of read + write traffic of an elementwise pass over a bf16 buffer."""
  buffer = jnp.ones((num_bytes // 2,), jnp.bfloat16)
  step = jax.jit(lambda x: x * jnp.bfloat16(1.001))
  return 2 * num_bytes / median_seconds(lambda: step(buffer), repeats)


def model_flops(config: Any, doc_len: int, rollouts: int, width: int, t: int) -> float:
  """Training FLOPs (forward + backward) of one shared update, counting useful attention only."""
  e, layers = config.hidden_size, config.num_layers
  q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
  per_token = layers * (2 * e * q + 2 * e * kv + 3 * e * config.intermediate_size) \
      + e * config.vocab_size
  tokens = doc_len + rollouts * width
  attended = doc_len * (doc_len + 1) / 2 + rollouts * (width * t + width * (width + 1) / 2)
  return 6 * per_token * tokens + 12 * layers * q * attended


def torch_generate_ms(config: Any, prompt: np.ndarray, limit: int, repeats: int) -> str:
  """ms per decode step of transformers generate, or why it was not measured."""
  try:
    import torch
    import transformers
  except ImportError as error:
    return f'not measured ({error})'
  on_gpu = torch.cuda.is_available()
  if not on_gpu and config.hidden_size > 512:
    return 'not measured (torch has no CUDA here; a 1.7B CPU generate is out of budget)'
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

  full = median_seconds(lambda: generate(limit), repeats)
  first = median_seconds(lambda: generate(1), repeats)
  return f'{1e3 * (full - first) / (limit - 1):.2f} ms/step on {device}'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tiny', action='store_true', help='small model and shapes, CPU smoke run')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--peak-tflops', type=float, default=0.0, help='bf16 dense peak; 0: guess')
  args = parser.parse_args()
  config = model_config(args.tiny)
  k, g, prefix, limit = (2, 4, 64, 16) if args.tiny else (4, 16, 512, 128)
  rollouts = k * g
  device = jax.devices()[0]
  graphdef, params = registry.init_params(config, seed=0)
  num_params = registry.count_params(config)
  print(f'{device.device_kind} ({device.platform}); {num_params / 1e9:.3f} B params bf16; '
        f'rollouts {rollouts}, prefix {prefix}, T {limit}', flush=True)

  bandwidth = copy_bandwidth(args.repeats, (64 if args.tiny else 1024) * 2**20)
  floor_ms = 1e3 * 2 * num_params / bandwidth
  print(f'copy bandwidth {bandwidth / 1e9:.0f} GB/s → weights-only floor {floor_ms:.3f} ms/step')

  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(5, config.vocab_size, (1, prefix + 1)).astype(np.int32))
  mask = jnp.ones(tokens.shape, jnp.bool_)
  positions = jnp.full((1, k), prefix, jnp.int32)
  key = jax.random.key(0)
  naive_prompts = build_prompts(tokens, positions, g, THINK_START)

  @jax.jit
  def shared_prefill(p):
    _, doc = document_kv(graphdef, p, tokens, document_positions(tokens), mask)
    prompts = thought_prompts(tokens, positions, g, THINK_START)
    prefix_len = prompts.scored_position.reshape(1, rollouts)
    return thought_forward(graphdef, p, doc, prefix_len, prompts.tokens.reshape(1, rollouts, 1),
                           prompts.positions.reshape(1, rollouts, 1),
                           prompts.mask.reshape(1, rollouts, 1))[0]

  @jax.jit
  def shared_sample(p, key):
    _, doc = document_kv(graphdef, p, tokens, document_positions(tokens), mask)
    prompts = thought_prompts(tokens, positions, g, THINK_START)
    return sample_thoughts_shared(graphdef, p, config, doc, prompts, key, limit, 0.7, NEVER, 0)

  naive_prefill = jax.jit(lambda p: registry.forward(
      graphdef, p, naive_prompts.tokens, naive_prompts.positions, naive_prompts.mask)[0][:, -1])
  naive_sample = jax.jit(lambda p, key: sample_thoughts(graphdef, p, config, naive_prompts, key,
                                                        limit, 0.7, NEVER, 0))
  results = {}
  for name, prefill, sample in (('shared', shared_prefill, shared_sample),
                                ('naive', naive_prefill, naive_sample)):
    prefill_s = median_seconds(lambda: prefill(params), args.repeats)
    sample_s = median_seconds(lambda: sample(params, key), args.repeats)
    results[name] = 1e3 * (sample_s - prefill_s) / limit
    print(f'{name} sampler: {sample_s:.3f} s per rollout, prefill {prefill_s:.3f} s, '
          f'{results[name]:.3f} ms/decode step ({results[name] / floor_ms:.2f}× floor)', flush=True)
  print(f'transformers generate: '
        f'{torch_generate_ms(config, np.asarray(naive_prompts.tokens), limit, args.repeats)}')

  thoughts = shared_sample(params, key)  # T tokens per row; `</think>` is forced after them
  prompts = thought_prompts(tokens, positions, g, THINK_START)
  rollout = Rollout(sequences=build_scored_sequences(prompts, thoughts, THINK_END, 0),
                    thought_mask=thoughts.mask, old_log_probs=thoughts.log_probs,
                    advantages=jax.random.normal(key, (rollouts,)), metrics={})
  rlp = base_config().rlp
  rlp.update(dict(positions_per_document=k, thoughts_per_position=g, max_thought_tokens=limit,
                  prefix_mode='shared'))
  batch = {'tokens': tokens, 'mask': mask}
  update = jax.jit(jax.grad(lambda p: rlp_loss(p, p, graphdef, batch, rollout, rlp)[0]))
  update_s = median_seconds(lambda: update(params), args.repeats)
  flops = model_flops(config, prefix + 1, rollouts, limit + 2, prefix)
  peak = args.peak_tflops or next((v for n, v in PEAK_BF16_TFLOPS.items()
                                   if n in device.device_kind), 0.0)
  mfu = f'{100 * flops / update_s / (peak * 1e12):.1f}% of {peak:.0f} TFLOP/s' if peak else 'n/a'
  print(f'update (shared, gradient): {update_s:.3f} s, {flops / update_s / 1e12:.2f} '
        f'TFLOP/s model FLOPs, MFU {mfu}')


if __name__ == '__main__':
  main()
