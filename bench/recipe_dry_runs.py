"""Full-depth dry runs of the pod recipes (configs/nano12b.py, nano9b.py, qwen3_1p7b.py,
qwen3_0p6b.py) as shipped, on each simulated target (rlp_jax/dry_run.TARGETS: 8xH100, v5p-64,
v6e-64), each in its own process; prints the table of docs/scaling.md.

  python bench/recipe_dry_runs.py                        # every recipe on every target
  python bench/recipe_dry_runs.py --only nano12b --targets v5p-64 --layouts scanned,unrolled

Per run: the mesh the recipe resolves to, θ+φ+optimizer and the compiled rollout/update
temporaries per device, the estimated peak against the target's usable HBM, the compile seconds of
each step (XLA CPU, this machine) and the wall time of the whole process.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ('nano12b', 'nano9b', 'qwen3_1p7b', 'qwen3_0p6b')
TARGETS = ('8xH100', 'v5p-64', 'v6e-64')
GIB = 2**30


def dry_run(recipe: str, target: str, scanned: bool, timeout: float) -> dict:
  """One dry run in a fresh process: its JSON plan plus its wall seconds."""
  command = [sys.executable, '-m', 'rlp_jax.main', f'--config={REPO}/configs/{recipe}.py',
             '--dry_run', f'--dry_run_target={target}', f'--config.model.scan_layers={scanned}']
  start = time.perf_counter()
  try:
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout,
                            env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  except subprocess.TimeoutExpired:
    return {'error': f'not compiled within {timeout:.0f} s (killed)', 'wall_seconds': timeout}
  wall = time.perf_counter() - start
  if result.returncode != 0 or 'memory plan (json): ' not in result.stdout:
    last = (result.stderr.strip() or result.stdout.strip() or '?').splitlines()[-1]
    return {'error': last, 'wall_seconds': wall}
  plan = json.loads(result.stdout.split('memory plan (json): ')[1])
  plan['wall_seconds'] = wall
  return plan


def row(recipe: str, target: str, layout: str, plan: dict) -> str:
  if 'error' in plan:
    return f'| {recipe} | {target} | {layout} | error: {plan["error"]} |||||||'
  mesh = ' '.join(f'{k}={v}' for k, v in plan['mesh'].items() if k != 'rules')
  state = sum(plan['state_bytes'].get(k, 0) for k in ('params', 'teacher', 'optimizer')) / GIB
  rollout, update = plan['compiled']['rollout'], plan['compiled']['update']
  verdict = 'fits' if plan['fits'] else '**does not fit**'
  return (f'| {recipe} | {target} | {layout} | {mesh} | {state:.1f} | '
          f'{rollout["temporaries"] / GIB:.1f} | {update["temporaries"] / GIB:.1f} | '
          f'{plan["peak_estimate"] / GIB:.1f} of {plan["usable_bytes"] / GIB:.1f}: {verdict} | '
          f'{rollout["compile_seconds"]:.0f} + {update["compile_seconds"]:.0f} | '
          f'{plan["wall_seconds"]:.0f} |')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--only', default=','.join(RECIPES), help='recipes, comma-separated')
  parser.add_argument('--targets', default=','.join(TARGETS), help='targets, comma-separated')
  parser.add_argument('--layouts', default='scanned', help='scanned and/or unrolled')
  parser.add_argument('--timeout', type=float, default=1800, help='seconds per dry run')
  args = parser.parse_args()
  print('| recipe | target | layers | mesh | θ+φ+opt GiB | rollout temp GiB | update temp GiB '
        '| peak ≈ GiB of usable | compile s (rollout + update) | wall s |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  for recipe in args.only.split(','):
    for target in args.targets.split(','):
      for layout in args.layouts.split(','):
        plan = dry_run(recipe, target, layout == 'scanned', args.timeout)
        print(row(recipe, target, layout, plan), flush=True)


if __name__ == '__main__':
  main()
