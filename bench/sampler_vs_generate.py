"""rlp_jax's thought sampler vs transformers `generate` (torch CPU), side by side in one run.

Same Qwen3 model on both sides: a transformers Qwen3ForCausalLM with random weights (fp32) whose
weights are copied into rlp_jax's params. Same workload: R rows, each the P-token prefix of one
document followed by `<think>` (P + 1 prompt tokens), then exactly T new tokens per row
(`min_new_tokens = max_new_tokens = T` for generate; for rlp_jax the end token never matches, so
no row stops early). Sampling at temperature 0.7 without top-k/top-p, or greedy with --greedy.

Rows timed (median of --repeats calls after one warm-up, prompt processing included; generate
first, before JAX starts its CPU thread pool, then the two rlp_jax samplers alternating):
  transformers generate   (torch, DynamicCache, sdpa attention)
  rlp_jax naive sampler   (`thought_sampler.sample_thoughts`: prefill R rows + cached decode,
                           one jitted lax.while_loop)
  rlp_jax shared sampler  (`document_kv` once + `sample_thoughts_shared`: the R rows attend to one
                           document cache; a workload generate cannot share)
Greedy mode also checks that rlp_jax's tokens equal generate's.

  python bench/sampler_vs_generate.py                   # R 16, P 128, T 64, sampling
  python bench/sampler_vs_generate.py --greedy
  python bench/sampler_vs_generate.py --threads 1      # one thread each: robust to a busy machine
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
import torch
import transformers

from rlp_jax.config import base_config
from rlp_jax.models import registry
from rlp_jax.models.shared_prefix import document_kv
from rlp_jax.rollout.prefix_strategies import sample_thoughts_shared, thought_prompts
from rlp_jax.rollout.thought_sampler import build_prompts, sample_thoughts
from rlp_jax.models.registry import document_positions

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # for tests/
from tests import helpers  # noqa: E402  pylint: disable=wrong-import-position

THINK_START, NEVER = 3, -1  # NEVER: an end id no sampled token equals, so every row runs T steps


def model_config(vocab_size: int = 2048) -> Any:
  """The shared-prefix bench's model (Qwen3-shaped, ≈ 1.05 M parameters); with vocab 512 it is
  configs/tiny.py's model."""
  config = base_config().model
  config.update(dict(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_layers=4,
                     num_heads=4, num_kv_heads=2, head_dim=32))
  return config


def hf_model(config: Any) -> torch.nn.Module:
  """transformers' Qwen3ForCausalLM of `config` (tied), torch seed 0, transformers' own init."""
  return helpers.qwen3_model(config, seed=0, std=None, attention_bias=False,
                             use_sliding_window=False)


def median_seconds(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
  """Median seconds per call; one warm-up each, then the calls alternate within every repeat so
  that load from other processes hits all of them alike."""
  for fn in calls.values():
    fn()
  times = {name: [] for name in calls}
  for _ in range(repeats):
    for name, fn in calls.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', type=int, default=16, help='R rows (thoughts) per call')
  parser.add_argument('--prefix', type=int, default=128, help='P document tokens before <think>')
  parser.add_argument('--thought-tokens', type=int, default=64, help='T new tokens per row')
  parser.add_argument('--vocab', type=int, default=2048, help='512: configs/tiny.py model')
  parser.add_argument('--greedy', action='store_true')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--threads', type=int, default=0,
                      help='1: torch and XLA on one thread each; 0: their defaults (all cores)')
  args = parser.parse_args()
  if args.threads == 1:  # before the first jax computation starts the CPU backend
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen='
                               'false intra_op_parallelism_threads=1')
    torch.set_num_threads(1)
  rows, prefix, limit = args.rows, args.prefix, args.thought_tokens
  temperature = 0.0 if args.greedy else 0.7
  config = model_config(args.vocab)
  model = hf_model(config)
  document = np.random.default_rng(0).integers(5, config.vocab_size, (1, prefix + 1), np.int32)
  prompt = np.concatenate([document[0, :prefix], [THINK_START]])  # x_<P <think>, every row

  # transformers first, before any JAX computation: torch's OpenMP threads and XLA's CPU thread
  # pool in one process fight over the cores (2 torch threads ran ~80× slower that way).
  input_ids = torch.from_numpy(np.tile(prompt.astype(np.int64), (rows, 1)))
  generate_kwargs = dict(attention_mask=torch.ones_like(input_ids), min_new_tokens=limit,
                         max_new_tokens=limit, pad_token_id=0, eos_token_id=None)
  if args.greedy:
    generate_kwargs.update(do_sample=False)
  else:
    generate_kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)

  def generate():
    with torch.no_grad():
      return model.generate(input_ids, **generate_kwargs)[:, -limit:]

  timings = median_seconds({'transformers generate': generate}, args.repeats)
  theirs = generate().numpy()

  graphdef, _ = registry.abstract_params(config)
  params = helpers.params_from_torch(model, config)  # rlp_jax.interop's name map
  doc_tokens = jnp.asarray(document)
  positions = jnp.full((1, 1), prefix, jnp.int32)  # t = P: the prompt is x_<P <think>
  prompts = build_prompts(doc_tokens, positions, rows, THINK_START)
  assert np.array_equal(np.asarray(prompts.tokens), input_ids.numpy())
  key = jax.random.key(0)
  naive = jax.jit(lambda p, k: sample_thoughts(graphdef, p, config, prompts, k, limit,
                                               temperature, NEVER, 0).tokens)

  @jax.jit
  def shared(p, k):
    mask = jnp.ones(doc_tokens.shape, jnp.bool_)
    _, doc = document_kv(graphdef, p, doc_tokens, document_positions(doc_tokens), mask)
    one_token = thought_prompts(doc_tokens, positions, rows, THINK_START)
    return sample_thoughts_shared(graphdef, p, config, doc, one_token, k, limit, temperature,
                                  NEVER, 0).tokens

  timings.update(median_seconds({
      'rlp_jax naive sampler': lambda: jax.block_until_ready(naive(params, key)),
      'rlp_jax shared sampler': lambda: jax.block_until_ready(shared(params, key)),
  }, args.repeats))
  print(f'jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), '
        f'transformers {transformers.__version__}, {os.cpu_count()} CPUs; V={args.vocab} '
        f'R={rows} P={prefix} T={limit} {"greedy" if args.greedy else "sampling at 0.7"}, '
        f'repeats={args.repeats}')
  if args.greedy:
    ours = np.asarray(naive(params, key))
    print(f'greedy tokens equal to generate: {np.mean(ours == theirs):.3f} of tokens '
          f'(shared sampler vs naive: {np.mean(np.asarray(shared(params, key)) == ours):.3f})')
  base = timings['transformers generate']
  print('| sampler | s per call | new tokens/s | × generate |\n|---|---|---|---|')
  for name, seconds in timings.items():
    print(f'| {name} | {seconds:.3f} | {rows * limit / seconds:.0f} | {base / seconds:.1f} |')


if __name__ == '__main__':
  main()
