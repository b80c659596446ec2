"""The memory tables of docs/scaling.md: dry runs of qwen3_1p7b and nano12b for 8×H100 and a TPU
v5p-64 slice (32 chips), each in its own process with the target's device count simulated on CPU.

Per case it reports, per device: θ, φ and optimizer state from shapes and shardings at full size
(exact), and the compiled rollout/update temporaries (XLA CPU buffer assignment). Where compiling
the full layer count on this machine is too slow, the step is compiled at two reduced layer counts
(whole repeats of the layer pattern) and the temporaries are extrapolated linearly in the number
of layers; the table says which.

  python bench/dry_run_table.py                 # every case (tens of minutes on 2 CPU cores)
  python bench/dry_run_table.py --only qwen     # the cases whose name contains 'qwen'
  python bench/dry_run_table.py --exact --only 'nano12b 8xH100 fsdp=8;nano12b v5p-64 data=4 fsdp=8'
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # for tests/
from tests import helpers  # noqa: E402  pylint: disable=wrong-import-position

GIB = 2**30

# The RLP workload of every case: one scored position per document, G = 16 thoughts of up to
# 128 tokens, documents of 1024 tokens, one document per batch shard; the naive prefix path unless
# the case says 'shared prefix' (the default of rlp.prefix_mode).
WORKLOAD = {'data.seq_len': 1024, 'rlp.positions_per_document': 1,
            'rlp.thoughts_per_position': 16, 'rlp.max_thought_tokens': 128,
            'rlp.min_context': 128, 'rlp.prefix_mode': 'naive'}
NANO12B_BLOCK = 'M-M-M-M*-'  # nano12b's pattern is 6 of these, then 'M-M-M-M-' (62 layers)


@dataclasses.dataclass
class Case:
  name: str
  config: str  # file under configs/
  devices: int
  mesh: tuple[int, int, int]  # data, fsdp, tensor
  batch: int
  reduced_layers: tuple[int, ...] = ()  # compile at these layer counts and extrapolate
  workload: dict = dataclasses.field(default_factory=dict)  # changes to WORKLOAD


CASES = [
    Case('qwen3_1p7b 8xH100 data=8', 'qwen3_1p7b', 8, (8, 1, 1), 8),
    Case('qwen3_1p7b 8xH100 fsdp=8', 'qwen3_1p7b', 8, (1, 8, 1), 8),
    Case('qwen3_1p7b v5p-64 data=32', 'qwen3_1p7b', 32, (32, 1, 1), 32),
    Case('qwen3_1p7b v5p-64 data=4 fsdp=8', 'qwen3_1p7b', 32, (4, 8, 1), 32),
    Case('qwen3_1p7b 8xH100 data=8, G=4 L=512', 'qwen3_1p7b', 8, (8, 1, 1), 8,
         workload={'data.seq_len': 512, 'rlp.thoughts_per_position': 4}),
    Case('qwen3_1p7b 8xH100 data=8, shared prefix', 'qwen3_1p7b', 8, (8, 1, 1), 8,
         workload={'rlp.prefix_mode': 'shared'}),
    Case('qwen3_1p7b 8xH100 fsdp=8, shared prefix', 'qwen3_1p7b', 8, (1, 8, 1), 8,
         workload={'rlp.prefix_mode': 'shared'}),
    Case('qwen3_1p7b v5p-64 data=4 fsdp=8, shared prefix', 'qwen3_1p7b', 32, (4, 8, 1), 32,
         workload={'rlp.prefix_mode': 'shared'}),
    Case('nano12b 8xH100 fsdp=8', 'nano12b', 8, (1, 8, 1), 8, (9, 18)),
    Case('nano12b 8xH100 fsdp=4 tensor=2', 'nano12b', 8, (1, 4, 2), 4, (9, 18)),
    Case('nano12b v5p-64 data=4 fsdp=8', 'nano12b', 32, (4, 8, 1), 32, (9, 18)),
    Case('nano12b 8xH100 fsdp=4 tensor=2, G=4 L=512', 'nano12b', 8, (1, 4, 2), 4, (9, 18),
         workload={'data.seq_len': 512, 'rlp.thoughts_per_position': 4}),
    Case('nano12b 8xH100 fsdp=8, G=4 L=512', 'nano12b', 8, (1, 8, 1), 8, (9, 18),
         workload={'data.seq_len': 512, 'rlp.thoughts_per_position': 4}),
    Case('nano12b v5p-64 data=4 fsdp=8, G=4 L=512', 'nano12b', 32, (4, 8, 1), 32, (9, 18),
         workload={'data.seq_len': 512, 'rlp.thoughts_per_position': 4}),
    Case('nano12b v5p-64 data=4 fsdp=4 tensor=2, G=4 L=512', 'nano12b', 32, (4, 4, 2), 16,
         (9, 18), workload={'data.seq_len': 512, 'rlp.thoughts_per_position': 4}),
    Case('nano12b v5p-64 fsdp=16 tensor=2, G=4 L=512', 'nano12b', 32, (1, 16, 2), 16, (9, 18),
         workload={'data.seq_len': 512, 'rlp.thoughts_per_position': 4}),
    Case('nano12b v5p-64 fsdp=16 tensor=2, G=8 L=512', 'nano12b', 32, (1, 16, 2), 16, (9, 18),
         workload={'data.seq_len': 512, 'rlp.thoughts_per_position': 8}),
    Case('nano12b v5p-64 fsdp=16 tensor=2, L=512', 'nano12b', 32, (1, 16, 2), 16, (9, 18),
         workload={'data.seq_len': 512}),
    Case('nano12b 8xH100 fsdp=4 tensor=2, shared prefix', 'nano12b', 8, (1, 4, 2), 4, (9, 18),
         workload={'rlp.prefix_mode': 'shared'}),
    Case('nano12b 8xH100 fsdp=8, shared prefix', 'nano12b', 8, (1, 8, 1), 8, (9, 18),
         workload={'rlp.prefix_mode': 'shared'}),
    Case('nano12b v5p-64 data=4 fsdp=8, shared prefix', 'nano12b', 32, (4, 8, 1), 32, (9, 18),
         workload={'rlp.prefix_mode': 'shared'}),
    Case('nano12b v5p-64 fsdp=16 tensor=2, shared prefix', 'nano12b', 32, (1, 16, 2), 16,
         (9, 18), workload={'rlp.prefix_mode': 'shared'}),
]


def case_config(case: Case, num_layers: int | None):
  config = helpers.load_config(case.config)
  for key, value in dict(WORKLOAD, **case.workload, **{'data.batch_size': case.batch}).items():
    group, name = key.split('.')
    config[group][name] = value
  config.mesh.update(dict(zip(('data', 'fsdp', 'tensor'), case.mesh)))
  if num_layers is not None:
    if config.model.family == 'hybrid':
      config.model.layer_pattern = (NANO12B_BLOCK * (num_layers // len(NANO12B_BLOCK)))
    config.model.num_layers = num_layers
  return config


def child(index: int, num_layers: int | None, compile_steps: bool) -> None:
  """Runs in a fresh process: simulate the devices, plan, print the plan as JSON."""
  from rlp_jax import dry_run  # pylint: disable=import-outside-toplevel
  case = CASES[index]
  dry_run.simulate_cpu_devices(case.devices)
  plan = dry_run.plan_memory(case_config(case, num_layers), compile_steps=compile_steps)
  print(json.dumps(dry_run.plan_as_dict(plan)))


def run_child(index: int, num_layers: int | None, compile_steps: bool) -> dict:
  args = [sys.executable, __file__, f'--case={index}', f'--compile={int(compile_steps)}']
  if num_layers is not None:
    args.append(f'--layers={num_layers}')
  result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=False,
                          env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3'))
  if result.returncode:
    raise RuntimeError(result.stderr[-3000:])
  return json.loads(result.stdout.strip().splitlines()[-1])


def measure(index: int) -> dict:
  """State bytes at full size; temporaries compiled at full size or extrapolated."""
  case = CASES[index]
  full = run_child(index, None, compile_steps=not case.reduced_layers)
  row = {'case': case.name, 'num_params': full['num_params'], 'state': full['state_bytes']}
  if not case.reduced_layers:
    row['temporaries'] = {k: v['temporaries'] for k, v in full['compiled'].items()}
    row['compile_seconds'] = sum(v['compile_seconds'] for v in full['compiled'].values())
    row['how'] = 'compiled at full size'
    return row
  small, large = case.reduced_layers
  plans = {n: run_child(index, n, compile_steps=True) for n in (small, large)}
  layers = case_config(case, None).model.num_layers
  row['temporaries'] = {}
  for name in plans[small]['compiled']:
    t_small = plans[small]['compiled'][name]['temporaries']
    t_large = plans[large]['compiled'][name]['temporaries']
    row['temporaries'][name] = t_small + (t_large - t_small) * (layers - small) / (large - small)
  row['measured'] = {n: {k: v['temporaries'] for k, v in p['compiled'].items()}
                     for n, p in plans.items()}
  row['compile_seconds'] = sum(v['compile_seconds'] for p in plans.values()
                               for v in p['compiled'].values())
  row['how'] = f'extrapolated from {small} and {large} layers'
  return row


def markdown(rows: list[dict]) -> list[str]:
  gib = lambda b: f'{b / GIB:.1f}'  # noqa: E731
  lines = ['| case | θ | φ | optimizer | θ+φ+opt | rollout temp | update temp | peak ≈ | how |',
           '|---' * 9 + '|']
  for row in rows:
    state = row['state']
    resident = state['params'] + state['teacher'] + state['optimizer']
    temps = row['temporaries']
    peak = resident + max(temps.values()) + state['batch'] + state.get('rollout', 0)
    lines.append(f"| {row['case']} | {gib(state['params'])} | {gib(state['teacher'])} | "
                 f"{gib(state['optimizer'])} | {gib(resident)} | {gib(temps['rollout'])} | "
                 f"{gib(temps['update'])} | {gib(peak)} | {row['how']} |")
  return lines


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--case', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--layers', type=int, help=argparse.SUPPRESS)
  parser.add_argument('--compile', type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument('--only', default='', help='run the cases whose name contains this')
  parser.add_argument('--exact', action='store_true',
                      help='--only names whole cases, separated by ";"')
  args = parser.parse_args()
  if args.case is not None:
    child(args.case, args.layers, bool(args.compile))
    return
  rows = []
  for index, case in enumerate(CASES):
    wanted = (case.name in args.only.split(';')) if args.exact else args.only in case.name
    if wanted:
      rows.append(measure(index))
      print(json.dumps(rows[-1]), flush=True)
  print('\n'.join(markdown(rows)))


if __name__ == '__main__':
  main()
