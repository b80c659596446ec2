"""Step time with and without a checkpoint save in flight (orbax's asynchronous saves).

The loop saves through `train/checkpointing.Checkpointer`, whose orbax CheckpointManager writes in
a background thread: `maybe_save` returns once the arrays are copied off the devices, and the next
steps run while the files are written. This bench measures, in one run and side by side:
- the step time of a next-token step with no save anywhere near it;
- the time of the step that starts right after an asynchronous save was started (the save is in
  flight while it runs), plus the time `maybe_save` itself blocked the loop;
- a synchronous save (`maybe_save` then `wait_until_finished`), what the loop would block for
  without asynchronous saves.

  python bench/checkpoint_bench.py [--hidden 384 --layers 6 --repeats 5]

On 2 CPU cores the writer thread competes with the step for the same cores, so the in-flight
step is slower here than on an accelerator host, where the step runs on the device.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from rlp_jax.config import base_config  # noqa: E402
from rlp_jax.models import registry  # noqa: E402
from rlp_jax.parallel.mesh import make_mesh  # noqa: E402
from rlp_jax.parallel.batch_sharding import batch_sharding, put_batch  # noqa: E402
from rlp_jax.train.checkpointing import Checkpointer  # noqa: E402
from rlp_jax.train.ntp_step import make_ntp_step  # noqa: E402
from rlp_jax.train.optimizer import make_optimizer  # noqa: E402
from rlp_jax.train.state_sharding import create_sharded_state  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--hidden', type=int, default=384)
  parser.add_argument('--layers', type=int, default=6)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--seq_len', type=int, default=128)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()

  config = base_config()
  config.model.update(dict(hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                           num_layers=args.layers, num_heads=8, num_kv_heads=4,
                           head_dim=args.hidden // 8))
  config.data.update(dict(batch_size=args.batch, seq_len=args.seq_len))
  mesh = make_mesh(config.mesh)
  graphdef, _ = registry.abstract_params(config.model)
  tx, schedule = make_optimizer(config.optimizer, 1000)
  state, shardings = create_sharded_state(config.model, tx, 0, False, mesh, config.mesh.rules)
  step_fn = make_ntp_step(graphdef, tx, schedule, shardings, config.mesh.rules)
  rng = np.random.default_rng(0)
  sharding = batch_sharding(mesh, config.mesh.rules)
  batch = put_batch({'tokens': rng.integers(0, config.model.vocab_size,
                                            (args.batch, args.seq_len), dtype=np.int32),
                     'mask': np.ones((args.batch, args.seq_len), np.bool_)},
                    sharding, args.batch)
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

  def step(state):
    start = time.perf_counter()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    return state, time.perf_counter() - start

  for _ in range(3):  # compile and warm up
    state, _ = step(state)
  plain, in_flight, save_call, sync = [], [], [], []
  with tempfile.TemporaryDirectory() as directory:
    checkpointer = Checkpointer(os.path.join(directory, 'checkpoints'), every=1, keep=2)
    number = 0
    for _ in range(args.repeats):
      for _ in range(3):  # no save near these
        state, seconds = step(state)
        plain.append(seconds)
      number += 1
      start = time.perf_counter()
      checkpointer.maybe_save(number, state, force=True, record={'bench': True})
      save_call.append(time.perf_counter() - start)
      state, seconds = step(state)  # runs while the save is written
      in_flight.append(seconds)
      checkpointer.wait_until_finished()
      number += 1
      start = time.perf_counter()
      checkpointer.maybe_save(number, state, force=True, record={'bench': True})
      checkpointer.wait_until_finished()
      sync.append(time.perf_counter() - start)
    checkpointer.close()

  median = statistics.median
  print(f'model: {registry.count_params(config.model):,} parameters, train state '
        f'{state_bytes / 2**20:.0f} MiB; batch {args.batch}×{args.seq_len}; '
        f'{args.repeats} repeats, medians; jax {jax.__version__} on {jax.default_backend()}')
  print(f'  step, no save in flight          {median(plain) * 1e3:8.1f} ms')
  print(f'  step, async save in flight       {median(in_flight) * 1e3:8.1f} ms   '
        f'({median(in_flight) / median(plain):.2f}× the plain step)')
  print(f'  loop blocked by the async save   {median(save_call) * 1e3:8.1f} ms   '
        f'({median(save_call) / median(sync):.2f}× a synchronous save)')
  print(f'  synchronous save (save + wait)   {median(sync) * 1e3:8.1f} ms   '
        f'({median(sync) / median(plain):.2f}× the plain step)')


if __name__ == '__main__':
  main()
