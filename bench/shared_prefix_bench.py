"""Shared-prefix vs naive RLP compute, measured side by side in one run (docs/performance.md).

For each K·G it times, on the same random model, documents and key, the two prefix strategies
(`rlp.prefix_mode`, rollout/prefix_strategies.py):
  rollout: `rlp_rollout.rollout_batch` with 'naive' (every rollout re-encodes x_<t) against
           'shared' (one document pass) — positions, teacher S_ema forward, sampling, S_pred —
           reported as sampled thought tokens per second;
  update:  value_and_grad of `rlp_loss.rlp_loss` with each strategy
           (policy + next-token loss; the optimizer is the same for both and left out).
Each time is the median of --repeats timed calls after one compiling warm-up call, the naive and
shared calls alternating; each ratio (×) is the median of the per-repeat ratios. It also prints
the compiled temporaries of both calls (XLA CPU buffer assignment) and checks that both paths
drew the same thoughts and agree on their log-probs.

Model (random weights, fp32): dense = Qwen3-shaped, vocab 2048, hidden 128, intermediate 384,
4 layers, 4 query / 2 kv heads of dim 32, tied embeddings (≈ 1.05 M parameters); --family hybrid
= Nemotron-H-shaped, layers 'M*-M' (Mamba2: 8 heads × 32, state 64, 2 groups, chunk 64; GQA
without RoPE; squared-ReLU MLP), untied. One document of 512 real tokens per step, K = 4
positions, G = K·G / 4 thoughts per position, T = 32 thought tokens.

  python bench/shared_prefix_bench.py                  # K·G 16 and 64, doc 512, T 32
  python bench/shared_prefix_bench.py --thought-tokens 128 --rollouts 64
  python bench/shared_prefix_bench.py --family hybrid
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.config import base_config
from rlp_jax.models import registry
from rlp_jax.data.special_tokens import SpecialTokens
from rlp_jax.train.rlp_loss import rlp_loss
from rlp_jax.rollout.rlp_rollout import rollout_batch

SPECIAL = SpecialTokens(think_start_id=3, think_end_id=4, pad_id=0)


HYBRID_PATTERN = 'M*-M'  # two Mamba2 layers, one attention, one MLP (Nemotron-H's kinds)


def bench_model_config(vocab: int = 2048, hidden: int = 128, layers: int = 4,
                       family: str = 'dense') -> Any:
  config = base_config().model
  config.update(dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
                     num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=hidden // 4))
  if family == 'hybrid':
    config.update(dict(family='hybrid', layer_pattern=HYBRID_PATTERN,
                       num_layers=len(HYBRID_PATTERN), tie_embeddings=False,
                       mamba_num_heads=8, mamba_head_dim=2 * hidden // 8, ssm_state_size=64,
                       mamba_n_groups=2, mamba_conv_kernel=4, mamba_chunk_size=64))
  return config


def paired_seconds(naive: Callable[[], Any], shared: Callable[[], Any],
                   repeats: int) -> tuple[float, float, float]:
  """(median naive s, median shared s, median of per-repeat naive/shared ratios).

  One compiling warm-up call each, then the two alternate, so that load from other processes on
  the machine hits both paths alike.
  """
  jax.block_until_ready(naive())
  jax.block_until_ready(shared())
  times = {naive: [], shared: []}
  for _ in range(repeats):
    for fn in (naive, shared):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[fn].append(time.perf_counter() - start)
  ratios = [a / b for a, b in zip(times[naive], times[shared])]
  return statistics.median(times[naive]), statistics.median(times[shared]), \
      statistics.median(ratios)


def measure(rollouts: int, args: argparse.Namespace) -> dict[str, Any]:
  """Rollout and update timings of both paths at K·G = rollouts."""
  model_config = bench_model_config(family=args.family)
  graphdef, params = registry.init_params(model_config, seed=0)
  rlp = {}
  for name in ('naive', 'shared'):
    rlp[name] = base_config().rlp
    rlp[name].update(dict(positions_per_document=args.positions, thoughts_per_position=rollouts //
                          args.positions, max_thought_tokens=args.thought_tokens, min_context=8,
                          sample_temperature=0.7, prefix_mode=name))
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, model_config.vocab_size, (args.docs, args.doc_len)).astype(np.int32)
  batch = {'tokens': jnp.asarray(tokens), 'mask': jnp.ones(tokens.shape, jnp.bool_)}
  key = jax.random.key(0)
  rollout, grad, data = {}, {}, {}
  for name in ('naive', 'shared'):
    rollout[name] = jax.jit(lambda p, k, r=rlp[name]: rollout_batch(graphdef, p, p, k, batch,
                                                                    model_config, r, SPECIAL))
    data[name] = rollout[name](params, key)
    grad[name] = jax.jit(jax.value_and_grad(
        lambda p, d, r=rlp[name]: rlp_loss(p, p, graphdef, batch, d, r), has_aux=True))
  temp_mib = {name: (rollout[name].lower(params, key).compile().memory_analysis(),
                     grad[name].lower(params, data[name]).compile().memory_analysis())
              for name in rollout}
  temp_mib = {name: tuple(m.temp_size_in_bytes / 2**20 for m in pair)
              for name, pair in temp_mib.items()}
  rollout_s = paired_seconds(lambda: rollout['naive'](params, key),
                             lambda: rollout['shared'](params, key), args.repeats)
  update_s = paired_seconds(lambda: grad['naive'](params, data['naive']),
                            lambda: grad['shared'](params, data['shared']), args.repeats)
  thought_tokens = float(data['naive'].metrics['thought_tokens'])
  naive, shared = data['naive'], data['shared']
  start = naive.sequences.prompt_length  # the shared rows' prompt is `<think>` alone
  limit = args.thought_tokens
  same_rows = jnp.all((naive.sequences.tokens[:, start:start + limit]
                       == shared.sequences.tokens[:, 1:1 + limit])
                      & (naive.thought_mask == shared.thought_mask), axis=1)
  # Where fp32 rounding (≈1e-6 in the logits) flips one draw, the two thoughts part ways; the
  # log-prob check is over the rows that stayed identical.
  error = float(jnp.max(jnp.where(same_rows[:, None],
                                  jnp.abs(naive.old_log_probs - shared.old_log_probs), 0.0)))
  return dict(rollout_s=rollout_s, update_s=update_s, thought_tokens=thought_tokens,
              temp_mib=temp_mib,
              same_thoughts=float(jnp.mean(same_rows)), max_logp_error=error)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rollouts', default='16,64', help='comma-separated K·G values')
  parser.add_argument('--positions', type=int, default=4, help='K (G = K·G / K)')
  parser.add_argument('--docs', type=int, default=1, help='documents per step (B)')
  parser.add_argument('--doc-len', type=int, default=512)
  parser.add_argument('--thought-tokens', type=int, default=32, help='T')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--family', choices=('dense', 'hybrid'), default='dense')
  args = parser.parse_args()
  print(f'jax {jax.__version__} on {jax.devices()[0].device_kind}; {args.family} model; '
        f'B={args.docs} doc_len={args.doc_len} K={args.positions} T={args.thought_tokens} '
        f'repeats={args.repeats}')
  header = ('| K·G | thought tokens | naive rollout tok/s | shared rollout tok/s | rollout × '
            '| naive update s | shared update s | update × | temporaries MiB naive → shared '
            '(rollout; update) | identical thoughts | max Δlogp |')
  rows = [header, '|' + '---|' * 11]
  for rollouts in (int(value) for value in args.rollouts.split(',')):
    r = measure(rollouts, args)
    (naive_r, shared_r, rollout_x), (naive_u, shared_u, update_x) = r['rollout_s'], r['update_s']
    tokens, mib = r['thought_tokens'], r['temp_mib']
    rows.append(f"| {rollouts} | {tokens:.0f} | {tokens / naive_r:.0f} | {tokens / shared_r:.0f} "
                f"| {rollout_x:.1f} | {naive_u:.3f} | {shared_u:.3f} | {update_x:.1f} | "
                f"{mib['naive'][0]:.0f} → {mib['shared'][0]:.0f}; "
                f"{mib['naive'][1]:.0f} → {mib['shared'][1]:.0f} | "
                f"{r['same_thoughts']:.3f} | {r['max_logp_error']:.1e} |")
    print(rows[-1], flush=True)
  print('\n'.join(rows))


if __name__ == '__main__':
  main()
