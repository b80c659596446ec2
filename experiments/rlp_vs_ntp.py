"""RLP vs next-token pretraining at matched training FLOPs, on the embedded reasoning corpus (CPU).

  python experiments/rlp_vs_ntp.py                 # the full study (≈ 45 min on 2 CPU cores)
  python experiments/rlp_vs_ntp.py --smoke         # every stage on a toy budget (≈ 2 min)
  python experiments/rlp_vs_ntp.py --ablation      # one knob at a time (ABLATIONS), ≈ 35 min
  python experiments/rlp_vs_ntp.py --base_steps=3000 --settings=answer_only \
      --arms=rlp_paper,rlp_paper_answer_positions,ntp --out=/tmp/strong --docs=/tmp/strong
                                                    # the same arms from a longer-trained base

Stages:
  a. base: next-token pretraining of the tiny model on the corpus (half its documents show worked
     `<think> … </think>` steps, half only the answer) until it has learnt the format; saved once.
  b. arms, each from that same base checkpoint, per seed:
       rlp_paper     RLP with the paper's objective (ntp_weight 0)
       rlp_paper_loss_positions   the same with rlp.position_rule='teacher_loss' (positions drawn
                     where the no-think teacher is surprised)
       rlp_combined  RLP with the combined update (ntp_weight 1)
       ntp           next-token loss only, for as many steps as give it the FLOPs of the more
                     expensive RLP arm (train/flops.py: 2N per forward token, 6N per trained one)
     in two settings of what the arms read:
       mix           the base's corpus (the next-token arm keeps reading worked thoughts)
       answer_only   answer-only documents (the paper's setting: after the base has learnt the
                     format, the continued text has no written thoughts)
  c. evaluation (rlp_jax.eval) of the base and of every arm at 1/3, 2/3 and all of its budget;
     the table (mean and 95% t-interval over seeds) and plots go to docs/results.md between the
     `study` markers and to docs/img/ (with --smoke: under --out only).

Everything a stage writes lives under --out (default /tmp/rlp_vs_ntp); a rerun reuses finished
runs (each is an ordinary rlp_jax workdir, resumed by train()).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from rlp_jax.config import base_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN, END = '<!-- study:begin -->', '<!-- study:end -->'
ABLATION_BEGIN, ABLATION_END = '<!-- ablation:begin -->', '<!-- ablation:end -->'

ARMS = ('rlp_paper', 'rlp_paper_loss_positions', 'rlp_combined', 'ntp')
# What each RLP arm changes in settings['rlp'] (`--arms` may name any of these and 'ntp').
ARM_RLP = {
    'rlp_paper': {'ntp_weight': 0.0},
    'rlp_paper_loss_positions': {'ntp_weight': 0.0, 'position_rule': 'teacher_loss'},
    'rlp_combined': {'ntp_weight': 1.0},
    'rlp_paper_answer_positions': {'ntp_weight': 0.0, 'position_rule': 'after_marker',
                                   'position_marker': 'Answer: ',
                                   'truncated_thoughts': 'no_gradient'},
}
# The study's settings (the full run). Every number here is what docs/results.md reports.
STUDY = dict(
    seeds=(0, 1, 2),
    num_documents=20000,  # of the embedded corpus (the default data.num_documents)
    base_steps=800, base_batch=16, base_lr=3e-3,
    rlp_steps=36, batch=8, lr=3e-4,
    rlp=dict(positions_per_document=2, thoughts_per_position=8, max_thought_tokens=32,
             sample_temperature=0.7, ema_decay=0.999, kl_weight=0.0, updates_per_rollout=1),
    eval=dict(num_documents=48, num_problems=64, vote_samples=4, thoughts_per_position=4),
    eval_points=3,
    settings=('mix', 'answer_only'),
    arms=ARMS,
    model={},  # model keys set over the declared defaults (none: the default tiny model)
)
SMOKE = dict(seeds=(0,), num_documents=1000, base_steps=8, rlp_steps=2, settings=('answer_only',),
             eval=dict(num_documents=8, num_problems=8, vote_samples=2, thoughts_per_position=2),
             rlp=dict(thoughts_per_position=2, max_thought_tokens=8), eval_points=1,
             # One layer of half the default width (compiles and runs faster): the smoke shows
             # that every stage runs, not what the model learns.
             model=dict(num_layers=1, hidden_size=64, intermediate_size=128, head_dim=16))
# --ablation: the paper-objective arm (answer_only setting, same base, same seeds) with one knob
# changed at a time; `reference` reuses the main study's rlp_paper runs.
ABLATIONS = {
    'lr 3e-5': {'lr': 3e-5},
    'G 16': {'rlp': {'thoughts_per_position': 16}},
    'T 16': {'rlp': {'max_thought_tokens': 16}},
    'temperature 1.0': {'rlp': {'sample_temperature': 1.0}},
    'advantage group_std': {'rlp': {'advantage_estimator': 'group_std'}},
    'positions after "Answer: "': {'rlp': {'position_rule': 'after_marker',
                                           'position_marker': 'Answer: '}},
    'positions after "Answer: ", ntp_weight 1': {
        'rlp': {'position_rule': 'after_marker', 'position_marker': 'Answer: '},
        'ntp_weight': 1.0},
    'positions after "Answer: ", cut thoughts no gradient': {
        'rlp': {'position_rule': 'after_marker', 'position_marker': 'Answer: ',
                'truncated_thoughts': 'no_gradient'}},
    'reference': {},  # last: it reads the main study's runs
}
WORKED_FRACTION = {'mix': 0.5, 'answer_only': 0.0}
# Reported metrics: (metrics key, label).
REPORTED = (('acc/corpus/think_greedy', 'think acc'), ('acc/corpus/think_vote', 'think vote acc'),
            ('acc/corpus/direct', 'direct acc'), ('gain/answer/sampled_mean', 'gain @answer'),
            ('gain/answer/sampled_positive', 'gain>0 @answer'),
            ('gain/all/sampled_mean', 'gain @all'), ('gain/gold/mean', 'gold-thought gain'),
            ('ntp_loss', 'held-out NTP'), ('train_reward_first', 'train reward, first third'),
            ('train_reward_last', 'last third'), ('cut_at_t_first', 'cut at T, first third'),
            ('cut_at_t_last', 'last third'))


def _settings(smoke: bool) -> dict[str, Any]:
  settings = copy.deepcopy(STUDY)
  if smoke:
    for key, value in SMOKE.items():
      if isinstance(value, dict):
        settings[key].update(value)
      else:
        settings[key] = value
  return settings


def _base_config(settings: dict[str, Any], data_dir: str):
  config = base_config()
  config.data.data_dir = data_dir
  config.data.num_documents = settings['num_documents']
  config.data.batch_size = settings['base_batch']
  config.model.update(settings['model'])
  config.rlp.enabled = False
  config.optimizer.learning_rate = settings['base_lr']
  config.train.num_steps = settings['base_steps']
  config.train.checkpoint_every = settings['base_steps']
  config.train.keep_checkpoints = 1
  config.train.progress_bar = False
  return config


def _arm_config(settings, data_dir, base_dir, tokenizer_path, setting, arm, seed, steps):
  config = base_config()
  config.seed = seed
  config.data.data_dir = data_dir
  config.data.num_documents = settings['num_documents']
  config.data.batch_size = settings['batch']
  config.data.worked_fraction = WORKED_FRACTION[setting]
  config.tokenizer.path = tokenizer_path  # the base's tokenizer, whatever the arm reads
  config.model.update(settings['model'])
  config.model.init_from = base_dir
  config.optimizer.update(dict(learning_rate=settings['lr'], schedule='constant', warmup_steps=0))
  config.rlp.update(settings['rlp'])
  config.rlp.enabled = arm != 'ntp'
  config.rlp.update(ARM_RLP.get(arm, {}))
  config.rlp.ntp_weight = settings.get('ntp_weight', config.rlp.ntp_weight)
  config.eval.update(settings['eval'])
  config.train.num_steps = steps
  config.train.eval_every = max(1, steps // settings['eval_points'])
  config.train.checkpoint_every = steps
  config.train.keep_checkpoints = 1
  config.train.progress_bar = False
  return config


def _eval_rows(workdir: str) -> list[dict[str, float]]:
  """(cumulative FLOPs, eval metrics) at each evaluated step of a finished run."""
  from rlp_jax.train.metrics_writer import read_metrics  # pylint: disable=import-outside-toplevel
  rows, flops = [], 0.0
  for row in read_metrics(workdir):
    flops += row['step_flops']
    if 'eval/ntp_loss' in row:
      rows.append({'step': row['step'], 'flops': flops,
                   **{k[5:]: v for k, v in row.items() if k.startswith('eval/')}})
  return rows


def _training_trends(workdir: str) -> dict[str, float]:
  """Training reward (S_pred − S_ema, nats) and share of thoughts cut at T, mean over the first
  and the last third of the run's steps."""
  from rlp_jax.train.metrics_writer import read_metrics  # pylint: disable=import-outside-toplevel
  rows = [row for row in read_metrics(workdir) if 'reward_mean' in row]
  third = max(1, len(rows) // 3)
  trends = {}
  for key, name in (('reward_mean', 'train_reward'), ('thought_hit_limit_fraction', 'cut_at_t')):
    trends[f'{name}_first'] = float(np.mean([row[key] for row in rows[:third]]))
    trends[f'{name}_last'] = float(np.mean([row[key] for row in rows[-third:]]))
  return trends


def _run(config, workdir: str, label: str) -> float:
  """Trains `config` in `workdir` and returns the seconds its training took; a finished run is
  not retrained, and its recorded seconds (workdir/study_seconds.json) are returned."""
  from rlp_jax.train.loop import train  # pylint: disable=import-outside-toplevel
  record = os.path.join(workdir, 'study_seconds.json')
  if os.path.exists(record):
    with open(record, encoding='utf-8') as f:
      return float(json.load(f)['seconds'])
  start = time.perf_counter()
  print(f'[study] {label}: {config.train.num_steps} steps in {workdir}', flush=True)
  train(config, workdir)
  seconds = time.perf_counter() - start
  with open(record, 'w', encoding='utf-8') as f:
    json.dump({'seconds': seconds}, f)
  return seconds


def _ntp_steps_for(flops: float, config, tokenizer) -> int:
  """Next-token steps whose FLOPs equal `flops`: 6N per document token of the arm's batches."""
  from rlp_jax.data.batches import DocumentBatches  # pylint: disable=import-outside-toplevel
  from rlp_jax.data.corpora import load_documents  # pylint: disable=import-outside-toplevel
  from rlp_jax.train.flops import (  # pylint: disable=import-outside-toplevel
      next_token_step_flops, non_embedding_params)
  batches = DocumentBatches(load_documents(config.data), tokenizer, config.data.batch_size,
                            config.data.seq_len, seed=config.seed)
  tokens = np.mean([batches.batch(p)['mask'].sum() for p in range(20)])
  per_step = next_token_step_flops(non_embedding_params(config.model), float(tokens))
  return max(1, round(flops / per_step))


def run_study(out: str, smoke: bool, docs_dir: str | None,
              overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs every stage (reusing finished runs under `out`); returns the collected results."""
  from rlp_jax.data.corpora import load_documents  # pylint: disable=import-outside-toplevel
  from rlp_jax.data.tokenizer import build_tokenizer  # pylint: disable=import-outside-toplevel
  from rlp_jax.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
  from rlp_jax.models import registry  # pylint: disable=import-outside-toplevel
  from rlp_jax.interop.checkpoint_init import (  # pylint: disable=import-outside-toplevel
      load_init_params)
  import jax  # pylint: disable=import-outside-toplevel
  # The arms share shapes: compiled steps and evaluators are reused across runs from this cache.
  jax.config.update('jax_compilation_cache_dir', os.path.join(out, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  settings = dict(_settings(smoke), **(overrides or {}))
  data_dir = os.path.join(out, 'data')
  timings = {}
  base = _base_config(settings, data_dir)
  base_dir = os.path.join(out, 'base')
  timings['base'] = _run(base, base_dir, 'base (next-token pretraining)')
  tokenizer = build_tokenizer(base.tokenizer, base.data)
  results: dict[str, Any] = {'settings': settings, 'runs': {}, 'base': {}}
  for setting in settings['settings']:
    probe = _arm_config(settings, data_dir, base_dir, tokenizer.model_path, setting, 'ntp', 0, 1)
    graphdef, _ = registry.abstract_params(probe.model)
    base_eval_path = os.path.join(out, setting, 'base_eval.json')
    if not os.path.exists(base_eval_path):
      params, _ = load_init_params(base_dir, probe.model)
      evaluator = Evaluator(probe, graphdef, tokenizer, load_documents(probe.data, 'validation'),
                            progress_bar=False)
      os.makedirs(os.path.dirname(base_eval_path), exist_ok=True)
      with open(base_eval_path, 'w', encoding='utf-8') as f:
        json.dump(evaluator.evaluate(params)['metrics'], f)
    with open(base_eval_path, encoding='utf-8') as f:
      results['base'][setting] = json.load(f)
    for seed in settings['seeds']:
      budget = 0.0
      for arm in settings['arms']:
        workdir = os.path.join(out, setting, f'{arm}_seed{seed}')
        steps = settings['rlp_steps']
        if arm == 'ntp':
          config = _arm_config(settings, data_dir, base_dir, tokenizer.model_path, setting, arm,
                               seed, 1)
          steps = _ntp_steps_for(budget, config, tokenizer)
        config = _arm_config(settings, data_dir, base_dir, tokenizer.model_path, setting, arm,
                             seed, steps)
        timings[f'{setting}/{arm}/{seed}'] = _run(config, workdir, f'{setting} {arm} seed {seed}')
        rows = _eval_rows(workdir)
        if arm != 'ntp':
          rows[-1].update(_training_trends(workdir))
        results['runs'][f'{setting}/{arm}/{seed}'] = rows
        if arm != 'ntp':
          budget = max(budget, rows[-1]['flops'])
  results['timings'] = timings
  with open(os.path.join(out, 'results.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1)
  write_report(results, docs_dir or out, smoke)
  return results


def run_ablation(out: str, smoke: bool, docs_dir: str,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
  """The ABLATIONS variants of the paper arm; needs the main study's base under `out`."""
  from rlp_jax.data.tokenizer import build_tokenizer  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update('jax_compilation_cache_dir', os.path.join(out, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  settings = dict(_settings(smoke), **(overrides or {}))
  settings['eval_points'] = 1  # the ablation reads the final evaluation only
  data_dir, base_dir = os.path.join(out, 'data'), os.path.join(out, 'base')
  base = _base_config(settings, data_dir)
  _run(base, base_dir, 'base (next-token pretraining)')  # reused when finished
  tokenizer = build_tokenizer(base.tokenizer, base.data)
  results: dict[str, Any] = {'settings': settings, 'variants': {}}
  for name, change in ABLATIONS.items():
    variant = copy.deepcopy(settings)
    for key, value in change.items():
      if isinstance(value, dict):
        variant[key].update(value)
      else:
        variant[key] = value
    for seed in settings['seeds']:
      if name == 'reference':
        workdir = os.path.join(out, 'answer_only', f'rlp_paper_seed{seed}')
      else:
        workdir = os.path.join(out, 'ablation', f"{name.replace(' ', '_')}_seed{seed}")
      config = _arm_config(variant, data_dir, base_dir, tokenizer.model_path, 'answer_only',
                           'rlp_paper', seed, variant['rlp_steps'])
      _run(config, workdir, f'ablation {name} seed {seed}')
      rows = _eval_rows(workdir)
      rows[-1].update(_training_trends(workdir))
      results['variants'].setdefault(name, []).append(rows[-1])
  with open(os.path.join(out, 'ablation.json'), 'w', encoding='utf-8') as f:
    json.dump(results, f, indent=1)
  census = position_census(out, settings, tokenizer)
  results['position_census'] = census
  order = ['reference'] + [name for name in results['variants'] if name != 'reference']
  results['variants'] = {name: results['variants'][name] for name in order}
  lines = [ABLATION_BEGIN, '', '_Generated by `python experiments/rlp_vs_ntp.py --ablation`: the '
           'rlp_paper arm in the answer_only setting, one knob changed at a time, mean ± 95% '
           f"t-interval over seeds {list(settings['seeds'])}._", '',
           '| variant | ' + ' | '.join(label for _, label in ABLATION_REPORTED) + ' |',
           '|---|' + '---|' * len(ABLATION_REPORTED)]
  for name, finals in results['variants'].items():
    cells = []
    for key, _ in ABLATION_REPORTED:
      mean, half = mean_interval([row[key] for row in finals])
      cells.append(f'{mean:.3f} ± {half:.3f}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  lines += ['', 'Where the scored positions fall (the base as teacher, answer-only validation '
            'documents, K = 2 per document, 10 draws): the share of scored positions that are the '
            'first token of an answer, and that are a digit.', '',
            '| position_rule | positions | first answer token | digit |', '|---|---|---|---|']
  for rule, row in census.items():
    lines.append(f"| {rule} | {row['positions']} | {row['answer_start']:.3f} | "
                 f"{row['digit']:.3f} |")
  _replace_section(os.path.join(docs_dir, 'results.md'), ABLATION_BEGIN, ABLATION_END,
                   lines + ['', ABLATION_END])
  return results


def position_census(out: str, settings: dict[str, Any], tokenizer) -> dict[str, dict[str, float]]:
  """Per position rule, the share of scored positions at answer starts and at digits, drawn with
  the base as the teacher on answer-only validation documents."""
  import jax  # pylint: disable=import-outside-toplevel
  from rlp_jax.data.batches import DocumentBatches  # pylint: disable=import-outside-toplevel
  from rlp_jax.data.corpora import load_documents  # pylint: disable=import-outside-toplevel
  from rlp_jax.eval.heldout import answer_positions  # pylint: disable=import-outside-toplevel
  from rlp_jax.interop.checkpoint_init import (  # pylint: disable=import-outside-toplevel
      load_init_params)
  from rlp_jax.models import registry  # pylint: disable=import-outside-toplevel
  from rlp_jax.data.special_tokens import marker_token_ids  # pylint: disable=import-outside-toplevel
  from rlp_jax.rollout.baseline_evidence import (  # pylint: disable=import-outside-toplevel
      scored_positions_and_baseline)
  base_dir = os.path.join(out, 'base')
  config = _arm_config(settings, os.path.join(out, 'data'), base_dir, tokenizer.model_path,
                       'answer_only', 'rlp_paper', 0, 1)
  config.rlp.position_marker = 'Answer: '
  graphdef, _ = registry.abstract_params(config.model)
  params, _ = load_init_params(base_dir, config.model)
  documents = load_documents(config.data, 'validation')
  rows = DocumentBatches(documents, tokenizer, 8, config.data.seq_len, seed=0)
  digits = np.array([tokenizer.decode([i]).strip().isdigit() for i in range(tokenizer.vocab_size)]
                    + [False] * (config.model.vocab_size - tokenizer.vocab_size))
  marker = marker_token_ids(tokenizer, config.rlp.position_marker)
  census = {}
  for rule in ('uniform', 'teacher_loss', 'teacher_entropy', 'after_marker'):
    config.rlp.position_rule = rule
    choose = jax.jit(lambda key, tokens, mask, rlp=config.rlp: scored_positions_and_baseline(
        graphdef, params, key, tokens, mask, rlp, marker)[:2])
    counts = np.zeros(3)
    for draw in range(10):
      for start in range(0, min(len(documents), 64), 8):
        indices = list(range(start, min(start + 8, len(documents))))
        tokens = np.full((8, config.data.seq_len), tokenizer.pad_id, np.int32)
        mask = np.zeros_like(tokens, bool)
        for r, i in enumerate(indices):
          ids = rows.document_tokens(i)
          tokens[r, :len(ids)], mask[r, :len(ids)] = ids, True
        positions, valid = choose(jax.random.key(draw * 1000 + start), tokens, mask)
        positions, valid = np.asarray(positions), np.asarray(valid)
        for r, i in enumerate(indices):
          starts = set(answer_positions(tokenizer, rows.document_tokens(i), documents[i]))
          for t in positions[r][valid[r]]:
            counts += (1, t in starts, digits[tokens[r, t]])
    census[rule] = {'positions': int(counts[0]), 'answer_start': counts[1] / max(counts[0], 1),
                    'digit': counts[2] / max(counts[0], 1)}
  return census


ABLATION_REPORTED = (('acc/corpus/think_greedy', 'think acc'), ('acc/corpus/direct', 'direct acc'),
                     ('gain/answer/sampled_mean', 'gain @answer'),
                     ('gain/all/sampled_mean', 'gain @all'),
                     ('gain/gold/mean', 'gold-thought gain'), ('ntp_loss', 'held-out NTP'),
                     ('train_reward_first', 'train reward, first third'),
                     ('train_reward_last', 'last third'),
                     ('cut_at_t_first', 'cut at T, first third'), ('cut_at_t_last', 'last third'))


def _replace_section(path: str, begin: str, end: str, body: list[str]) -> None:
  """Writes `body` (which starts with `begin` and ends with `end`) over that section of `path`,
  keeping everything else; appends the section when it is missing."""
  text = open(path, encoding='utf-8').read() if os.path.exists(path) else ''
  if begin not in text or end not in text:
    text += f'\n{begin}\n{end}\n'
  head, rest = text.split(begin, 1)
  tail = rest.split(end, 1)[1]
  with open(path, 'w', encoding='utf-8') as f:
    f.write(head + '\n'.join(body) + tail)


def mean_interval(values: list[float]) -> tuple[float, float]:
  """Mean and the half-width of its 95% t-interval (0 for a single value)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return float(values.mean()), 0.0
  half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
  return float(values.mean()), float(half)


def _final(results, setting, arm, key) -> list[float]:
  return [rows[-1][key] for name, rows in results['runs'].items()
          if name.startswith(f'{setting}/{arm}/') and key in rows[-1]]


def results_table(results: dict[str, Any]) -> list[str]:
  """Markdown tables: per setting, the base and each arm at its full budget."""
  lines = []
  for setting in results['settings']['settings']:
    lines += ['', f'**{setting}** (mean ± 95% t-interval over seeds '
                  f"{list(results['settings']['seeds'])}; base = the shared start, one value)", '',
              '| arm | FLOPs | ' + ' | '.join(label for _, label in REPORTED) + ' |',
              '|---|---|' + '---|' * len(REPORTED)]
    base = results['base'][setting]
    lines.append('| base | 0 | ' + ' | '.join(
        f'{base[key]:.3f}' if key in base else '–' for key, _ in REPORTED) + ' |')
    for arm in results['settings']['arms']:
      flops = _final(results, setting, arm, 'flops')
      if not flops:
        continue
      cells = []
      for key, _ in REPORTED:
        values = _final(results, setting, arm, key)
        if values:
          mean, half = mean_interval(values)
          cells.append(f'{mean:.3f} ± {half:.3f}')
        else:
          cells.append('–')
      lines.append(f'| {arm} | {np.mean(flops):.2e} | ' + ' | '.join(cells) + ' |')
  return lines


def plot(results: dict[str, Any], image_dir: str) -> list[str]:
  """Think-mode accuracy and gain at answer positions vs FLOPs, per setting; returns file names."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(image_dir, exist_ok=True)
  names = []
  for setting in results['settings']['settings']:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, (key, label) in zip(axes, (('acc/corpus/think_greedy', 'think-mode accuracy'),
                                       ('gain/answer/sampled_mean',
                                        'information gain at answers (nats)'))):
      base = results['base'][setting].get(key, float('nan'))
      for arm in results['settings']['arms']:
        runs = [rows for name, rows in results['runs'].items()
                if name.startswith(f'{setting}/{arm}/')]
        if not runs:
          continue
        points = min(len(rows) for rows in runs)
        x = [0.0] + [np.mean([rows[i]['flops'] for rows in runs]) for i in range(points)]
        stats = [mean_interval([rows[i].get(key, float('nan')) for rows in runs])
                 for i in range(points)]
        y = np.array([base] + [m for m, _ in stats])
        h = np.array([0.0] + [w for _, w in stats])
        ax.plot(x, y, marker='o', label=arm)
        ax.fill_between(x, y - h, y + h, alpha=0.2)
      ax.set_xlabel('training FLOPs (2N/forward token, 6N/trained token)')
      ax.set_title(f'{setting}: {label}')
      ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    name = f'rlp_vs_ntp_{setting}.png'
    fig.savefig(os.path.join(image_dir, name), dpi=110)
    plt.close(fig)
    names.append(name)
  return names


def write_report(results: dict[str, Any], docs_dir: str, smoke: bool) -> str:
  """Writes the tables and plots into docs_dir/results.md between the study markers."""
  images = plot(results, os.path.join(docs_dir, 'img'))
  settings = results['settings']
  command = 'python experiments/rlp_vs_ntp.py' + (' --smoke' if smoke else '')
  body = [BEGIN, '', f"_Generated by `{command}`"
          f" ({sum(results['timings'].values()) / 60:.1f} min of runs)._", '',
          f"Base: {settings['base_steps']} next-token steps, batch {settings['base_batch']}, lr "
          f"{settings['base_lr']} cosine. Arms: {settings['rlp_steps']} RLP steps, batch "
          f"{settings['batch']}, constant lr {settings['lr']}, rlp {settings['rlp']}; the ntp arm "
          'runs until its FLOPs equal the larger RLP arm\'s. FLOPs = 2N·(forward tokens) + '
          '6N·(trained tokens), N = non-embedding parameters (rlp_jax/train/flops.py).']
  body += results_table(results)
  body += [''] + [f'![{name}](img/{name})' for name in images] + ['', END]
  path = os.path.join(docs_dir, 'results.md')
  _replace_section(path, BEGIN, END, body)
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='/tmp/rlp_vs_ntp', help='where every run is written')
  parser.add_argument('--smoke', action='store_true', help='every stage on a toy budget')
  parser.add_argument('--ablation', action='store_true', help='the ABLATIONS variants of the '
                      'paper arm (after the main study, from its base and runs under --out)')
  parser.add_argument('--base_steps', type=int, default=None, help='override the base\'s steps '
                      '(a stronger or weaker base; use another --out)')
  parser.add_argument('--settings', default=None, help='comma-separated subset of mix,answer_only')
  parser.add_argument('--arms', default=None, help=f"comma-separated arms (of {', '.join(ARM_RLP)}, "
                      'ntp; ntp last)')
  parser.add_argument('--docs', default=None, help='directory of results.md and img/ (default: '
                      'the repository docs/ for the full study, --out for --smoke)')
  args = parser.parse_args()
  docs_dir = args.docs or (args.out if args.smoke else os.path.join(REPO, 'docs'))
  overrides = {}
  if args.base_steps is not None:
    overrides['base_steps'] = args.base_steps
  if args.settings:
    overrides['settings'] = tuple(args.settings.split(','))
  if args.arms:
    overrides['arms'] = tuple(args.arms.split(','))
  if args.ablation:
    run_ablation(args.out, args.smoke, docs_dir, overrides)
  else:
    run_study(args.out, args.smoke, docs_dir, overrides)
  print(f'[study] report: {os.path.join(docs_dir, "results.md")}')


if __name__ == '__main__':
  main()
