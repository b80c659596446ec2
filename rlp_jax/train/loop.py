"""The training loop: build everything from the config, resume if the workdir has a checkpoint,
run jitted steps with a progress bar, write metrics and checkpoints.

On several processes (after `parallel.distributed.initialize`) every process runs this same loop:
each reads and tokenizes only its rows of the batch, all of them save and restore the checkpoint
(orbax writes each process's shards), and only process 0 prints and writes metrics.
"""
from __future__ import annotations

import dataclasses
import functools
import contextlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from tqdm import tqdm

from rlp_jax import paths
from rlp_jax.config import validate_config
from rlp_jax.data.batches import DocumentBatches
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.data.corpora import load_documents
from rlp_jax.data.loader import (DataIterator, build_pipeline, training_corpus,
                                 training_fingerprint_items)
from rlp_jax.errors import ConfigError, NonFiniteError
from rlp_jax.interop.checkpoint_init import load_init_params
from rlp_jax.models import registry
from rlp_jax.parallel.distributed import describe_process, is_primary_process, say
from rlp_jax.parallel.mesh import make_mesh
from rlp_jax.parallel.batch_sharding import (batch_sharding, check_batch_divides, process_rows,
                                             put_batch, replicated, resolve_batch_size)
from rlp_jax.train import signal_points
from rlp_jax.train.state_sharding import create_sharded_state
from rlp_jax.train.stop_request import StopRequest
from rlp_jax.train.startup_checks import (check_base_model, check_documents, check_workdir,
                                          prepare_workdir)
from rlp_jax.train.checkpointing import Checkpointer
from rlp_jax.train.flops import next_token_step_flops, non_embedding_params, rlp_step_flops
from rlp_jax.train.metrics_writer import MetricsWriter
from rlp_jax.train.optimizer import make_optimizer
from rlp_jax.data.special_tokens import special_tokens
from rlp_jax.train.rlp_step import make_rlp_step
from rlp_jax.train.state import TrainState
from rlp_jax.train.sample_text import samples_markdown
from rlp_jax.train.thought_samples import thought_sampler
from rlp_jax.train.ntp_step import make_ntp_step
from rlp_jax.train.run_identity import check_resume, run_identity


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  workdir: str
  metrics_path: str
  tensorboard_dir: str
  checkpoint_dir: str
  first_step: int  # step the run started (resumed) from


def _process_zero_first(build: Callable[[], Any]) -> Any:
  """Runs `build` on process 0, then on the others: a corpus or tokenizer built on first use under
  a shared data dir is written once, not raced by every process."""
  if jax.process_count() == 1:
    return build()
  if not is_primary_process():
    multihost_utils.sync_global_devices('rlp_jax: data prepared')
    return build()
  try:
    return build()
  finally:  # an error here reaches the others too: they build next and meet it themselves
    multihost_utils.sync_global_devices('rlp_jax: data prepared')


def train(config: ml_collections.ConfigDict, workdir: str, stop_at_step: int | None = None,
          stop: StopRequest | None = None) -> TrainResult:
  """Trains `config` in `workdir` up to `config.train.num_steps`, resuming from its checkpoints.

  `stop_at_step` ends the run early (after a checkpoint at that step), as a preemption would; the
  schedule still follows `num_steps`, so a later call resumes exactly where this one stopped.
  SIGTERM / SIGINT stop the run at the next step boundary with a checkpoint and raise
  `RunStopped` (train/stop_request.py); `stop` is the handler the command line installed at its
  start, else `train` installs one for its own duration.
  """
  with contextlib.ExitStack() as stack:
    if stop is None:
      stop = stack.enter_context(StopRequest())
    return _train(config, workdir, stop_at_step, stop)


def _train(config: ml_collections.ConfigDict, workdir: str, stop_at_step: int | None,
           stop: StopRequest) -> TrainResult:
  validate_config(config)
  workdir = check_workdir(workdir)  # one line for a file / under a file / unwritable workdir
  tqdm.write(f'[rlp_jax] {describe_process()}')  # once per host
  if is_primary_process():
    prepare_workdir(workdir)
    paths.write_atomically(paths.join(workdir, 'config.json'),
                           config.to_json_best_effort(indent=2))

  checkpointer = Checkpointer(paths.join(workdir, 'checkpoints'),
                              every=config.train.checkpoint_every,
                              keep=config.train.keep_checkpoints)
  if checkpointer.latest_step() is None:
    check_base_model(config.model)  # a recipe without its base model: one line, nothing built
  stop.latest_checkpoint = checkpointer.latest_step
  stop.save_in_flight = checkpointer.save_in_progress
  stop.wait_for_saves = checkpointer.wait_until_finished
  try:
    return _train_with(config, workdir, stop_at_step, stop, checkpointer)
  finally:
    checkpointer.close()


def _stop_before_training(stop: StopRequest, checkpointer: Checkpointer) -> None:
  """A signal during start-up: nothing was trained, so nothing new is saved."""
  if stop.requested_everywhere():
    latest = checkpointer.latest_step()
    where = (f'checkpoint {latest} is the latest; rerun the same command to resume'
             if latest is not None else 'no checkpoint was written')
    raise stop.stopped(f'during start-up, before any step: nothing new to save; {where}')


def _train_with(config: ml_collections.ConfigDict, workdir: str, stop_at_step: int | None,
                stop: StopRequest, checkpointer: Checkpointer) -> TrainResult:
  """The run itself, once the checkpointer exists (`_train` closes it, waiting for saves)."""
  documents, tokenizer = _process_zero_first(lambda: (
      training_corpus(config.data),
      build_tokenizer(config.tokenizer, config.data, base_model=config.model.init_from)))
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(f'config key `model.vocab_size` ({config.model.vocab_size}) is smaller than '
                      f'the tokenizer vocabulary ({tokenizer.vocab_size})')
  mesh = make_mesh(config.mesh)
  config.data.batch_size = resolve_batch_size(config.data.batch_size, mesh, config.mesh.rules)
  if documents is not None:  # the embedded corpus: checked before anything compiles
    check_documents(DocumentBatches(documents, tokenizer, config.data.batch_size,
                                    config.data.seq_len, seed=config.seed),
                    getattr(documents, 'description', 'the configured corpus'),
                    config.rlp.enabled, config.rlp.min_context)
  _stop_before_training(stop, checkpointer)

  num_steps = config.train.num_steps
  use_rlp = config.rlp.enabled
  updates_per_batch = config.rlp.updates_per_rollout if use_rlp else 1
  check_batch_divides(config.data.batch_size, mesh, config.mesh.rules)
  graphdef, abstract_params = registry.abstract_params(config.model)
  # What the checkpoints depend on (config, model shape, tokenizer, data): saved with each step,
  # compared on resume (train/run_identity.py).
  identity = run_identity(config, tokenizer, training_fingerprint_items(config.data, documents),
                          params=abstract_params)
  tx, schedule = make_optimizer(config.optimizer, num_steps * updates_per_batch)
  state, state_sharding = create_sharded_state(config.model, tx, config.seed, use_rlp, mesh,
                                               config.mesh.rules)
  documents_sharding = batch_sharding(mesh, config.mesh.rules)
  local_rows = process_rows(documents_sharding, config.data.batch_size)  # this process's rows
  count_tokens = jax.jit(jnp.sum, out_shardings=replicated(mesh))  # over all processes' rows

  first_step = 0

  data_changed = []  # whether the restored step's documents differ (train.allow_data_change)

  def check_record(record: dict | None, step: int) -> None:
    for note in check_resume(record, identity, config.train.allow_data_change,
                             checkpoint=f'checkpoint {step} in {checkpointer.directory}'):
      say(note)
    data_changed[:] = [record is not None and 'data' in record
                       and record['data'] != identity['data']]

  # Verified (checksums), falling back past damaged steps; refused when what it depends on changed.
  # A step saved with the other `model.scan_layers` is moved into this run's layer layout.
  restored = checkpointer.restore_latest(state, check_record=check_record,
                                         layout=registry.layer_plan(config.model))
  if restored is not None:
    state, first_step, _ = restored  # loop steps (batches), as checkpoints are named
    say(f'resumed from {checkpointer.directory} at step {first_step} '
         f'(data position {int(state.data_position)})')
  elif config.model.init_from:  # `state` is abstract here: no random θ was made (state_sharding)
    params, weights_source = load_init_params(config.model.init_from, config.model,
                                              shardings=state_sharding.params)
    state, _ = create_sharded_state(config.model, tx, config.seed, use_rlp, mesh,
                                    config.mesh.rules, params=params)
    say(f'starting from {weights_source}')
  else:
    say(f'starting from random weights (seed {config.seed}; model.init_from is not set)')
  data = _data_iterator(config, tokenizer, len(local_rows), checkpointer,
                        first_step if restored is not None else None,
                        data_changed=bool(data_changed and data_changed[0]))
  writer = MetricsWriter(workdir, resume_step=first_step, enabled=is_primary_process())
  say(f'{registry.count_params(config.model):,} parameters; writing to {workdir}')

  flops_n = non_embedding_params(config.model)  # for the `step_flops` metric (train/flops.py)
  if use_rlp:
    special = special_tokens(tokenizer, config.rlp.position_marker)
    rlp_fns = make_rlp_step(graphdef, config.model, config.rlp, special, tx, schedule,
                            state_sharding, config.mesh.rules)
    train_step = functools.partial(_rlp_train_step, *rlp_fns, updates_per_batch, count_tokens,
                                   config.rlp.thoughts_per_position, flops_n)
  else:
    train_step = _timed(make_ntp_step(graphdef, tx, schedule, state_sharding, config.mesh.rules,
                                      config.model.logits_chunk_tokens), count_tokens, flops_n)
  evaluator = _make_evaluator(config, graphdef, tokenizer)
  # train.sample_every: a few rollout rows as text (train/thought_samples.py), read by process 0.
  sampler = thought_sampler(config.train, config.rlp, tokenizer) if is_primary_process() else None
  history = []
  last_step = num_steps if stop_at_step is None else min(stop_at_step, num_steps)
  step = first_step
  progress = tqdm(total=num_steps, initial=first_step, desc='train', unit='step',
                  disable=not (config.train.progress_bar and is_primary_process()),
                  dynamic_ncols=True)
  nonfinite_in_a_row = 0  # steps whose update was skipped as non-finite (train/nonfinite.py)
  diverged = stopped = False
  try:
    while step < last_step and not diverged:
      if stop.requested_everywhere():  # a signal: stop at this boundary (all processes agree)
        stopped = True
        break
      started = time.perf_counter()
      local_batch, data_stats = data.next_batch()  # `data_wait_s`: how long this waited
      batch = put_batch(local_batch, documents_sharding, config.data.batch_size)
      samples = []
      if sampler is not None and sampler.due(step + 1, num_steps):
        sample_step = step + 1
        state, metrics = train_step(state, batch, inspect_rollout=lambda rollout: samples.extend(
            sampler.rows(rollout, batch, sample_step)))
      else:
        state, metrics = train_step(state, batch)
      metrics.update(data_stats, step_s=time.perf_counter() - started)
      step += 1
      if samples:
        writer.write_samples(step, samples, samples_markdown(samples))
      history.append(metrics)
      nonfinite_in_a_row = nonfinite_in_a_row + 1 if metrics['nonfinite_step'] else 0
      diverged = nonfinite_in_a_row >= config.train.max_nonfinite_steps
      evaluated = evaluator is not None and (step % config.train.eval_every == 0
                                             or step == num_steps)
      if evaluated:
        progress.clear()
        eval_metrics = evaluator.evaluate(state.params)['metrics']
        metrics = dict(metrics, **{f'eval/{k}': v for k, v in eval_metrics.items()})
        say(f'eval at step {step}: ' + _eval_summary(eval_metrics))
      if (step % config.train.log_every == 0 or step == last_step or stop.requested
          or evaluated or diverged):
        writer.write(step, metrics)
      progress.set_postfix(_progress_fields(metrics), refresh=False)
      progress.update(1)
      # A skipped step leaves θ, φ and the optimizer state as they were: what is saved here is
      # always the last finite state.
      with stop.saving():
        if checkpointer.maybe_save(step, state, force=step == last_step or diverged,
                                   record=identity, data_state=data.get_state()):
          signal_points.reached('during_save', step)
      signal_points.reached('after_save_check', step)
    if stopped and step > first_step:
      with stop.saving():
        checkpointer.maybe_save(step, state, force=True,  # unless this step was just saved
                                record=identity, data_state=data.get_state())
      checkpointer.wait_until_finished()
  finally:
    progress.close()
    writer.close()
    data.close()

  if diverged:
    raise NonFiniteError(
        f'stopped at step {step}: the loss, gradient norm or update was not finite in the last '
        f'{nonfinite_in_a_row} steps (config key `train.max_nonfinite_steps`), which were skipped; '
        f'checkpoint {step} holds the last finite state (lower `optimizer.learning_rate`?)')
  if stopped:
    if step == first_step:
      _stop_before_training(stop, checkpointer)
    raise stop.stopped(f'at step {step}: checkpoint {checkpointer.latest_step()} saved; '
                       'rerun the same command to resume')
  say(f'done at step {step}.')
  for line in run_summary(history):
    say(line)
  say(f'metrics:     {writer.jsonl_path}')
  if sampler is not None:
    say(f'thoughts:    {writer.samples_path} (python -m rlp_jax.inspect --workdir={workdir})')
  say(f'tensorboard: {writer.tensorboard_dir}')
  say(f'checkpoints: {checkpointer.directory} (steps {checkpointer.all_steps()})')
  return TrainResult(state=state, workdir=workdir, metrics_path=writer.jsonl_path,
                     tensorboard_dir=writer.tensorboard_dir,
                     checkpoint_dir=checkpointer.directory, first_step=first_step)


def _data_iterator(config: ml_collections.ConfigDict, tokenizer: Any, local_rows: int,
                   checkpointer: Checkpointer, resumed_step: int | None,
                   data_changed: bool = False) -> DataIterator:
  """This process's data iterator, at the record where checkpoint `resumed_step` left it.

  A checkpoint without this process's iterator state (another number of processes, or written
  before the state was saved) or with the state of another pipeline (the data config changed)
  either stops the run with one line or, with `data.on_process_count_change='restart'` (or
  `train.allow_data_change`), starts a fresh data order seeded by (seed, step). So does a resume
  on changed documents (`data_changed`, which `train.allow_data_change` let through): a saved
  position in the old files means nothing in the new ones."""
  def build(seed):
    return DataIterator(build_pipeline(config.data, tokenizer, seed=seed,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count(), local_rows=local_rows))
  data = build(config.seed)
  for line in data.pipeline.descriptions:
    say(f'data: {line}')
  if resumed_step is None:
    return data
  saved, reason = checkpointer.restore_data_state(resumed_step)
  if saved is not None and data_changed:
    saved, reason = None, f'the documents changed since checkpoint {resumed_step}'
  if saved is not None and saved.get('key') != data.pipeline.state_key:
    saved, reason = None, (f'checkpoint {resumed_step} holds the data loader state of another '
                           'data pipeline (the data.* config changed)')
  if saved is not None:
    data.set_state(saved)
    return data
  changed_count = 'processes and this job has' in reason
  allowed = (config.data.on_process_count_change == 'restart' if changed_count
             else config.train.allow_data_change or 'older rlp_jax' in reason)
  if not allowed:
    key = ('--config.data.on_process_count_change=restart' if changed_count
           else '--config.train.allow_data_change=True')
    data.close()
    raise ConfigError(f'{reason}: the run cannot continue at the record where it stopped; '
                      f'{key} continues with a fresh data order (records may repeat)')
  data.close()
  say(f'warning: {reason}; the data order restarts, seeded by seed {config.seed} and step '
      f'{resumed_step}')
  return build(int(np.random.SeedSequence([config.seed, resumed_step]).generate_state(1)[0]))


def _make_evaluator(config: ml_collections.ConfigDict, graphdef: Any, tokenizer: Any):
  """The evaluator of `train.eval_every` (None when it is 0)."""
  if not config.train.eval_every:
    return None
  if jax.process_count() > 1:
    say('train.eval_every: evaluation during training runs in single-process runs only; '
         'evaluate the checkpoints with `python -m rlp_jax.eval` instead')
    return None
  from rlp_jax.eval.evaluator import Evaluator  # pylint: disable=import-outside-toplevel
  return Evaluator(config, graphdef, tokenizer, load_documents(config.data, 'validation'),
                   progress_bar=config.train.progress_bar)


def _eval_summary(metrics: dict[str, float]) -> str:
  """One line: held-out loss, gain at answer positions, think-mode accuracy on the corpus."""
  parts = [f"ntp {metrics['ntp_loss']:.3f}"]
  for name in ('all', 'answer'):
    if f'gain/{name}/sampled_mean' in metrics:
      parts.append(f"gain[{name}] {metrics[f'gain/{name}/sampled_mean']:+.3f}")
  for key, value in sorted(metrics.items()):
    if key.startswith('acc/') and key.rsplit('/', 1)[1] in ('direct', 'think_greedy'):
      parts.append(f'{key[4:]} {value:.3f}')
  return ', '.join(parts)


def _timed(train_step, count_tokens, flops_n: int):
  """Next-token step with host-side throughput and FLOP metrics."""

  def step(state, batch):
    start = time.perf_counter()
    state, metrics = train_step(state, batch)
    metrics = jax.device_get(metrics)
    tokens = float(count_tokens(batch['mask']))
    metrics['update_tokens_per_s'] = tokens / (time.perf_counter() - start)
    metrics['step_flops'] = next_token_step_flops(flops_n, tokens)
    return state, metrics

  return step


def _rlp_train_step(rollout_fn, update_fn, updates_per_batch: int, count_tokens,
                    thoughts_per_position: int, flops_n: int,
                    state: TrainState, batch: dict[str, Any],
                    inspect_rollout: Callable[[Any], None] | None = None,
                    ) -> tuple[TrainState, dict[str, float]]:
  """One rollout, then `updates_per_batch` updates on it; update metrics averaged over them.
  `inspect_rollout(rollout)` runs after the updates (outside the timed spans): the thought
  samples."""
  start = time.perf_counter()
  state, rollout = rollout_fn(state, batch)
  rollout_metrics = jax.device_get(rollout.metrics)
  rollout_seconds = time.perf_counter() - start
  start = time.perf_counter()
  per_update = []
  for _ in range(updates_per_batch):
    state, update_metrics = update_fn(state, batch, rollout)
    per_update.append(jax.device_get(update_metrics))
  update_seconds = time.perf_counter() - start
  if inspect_rollout is not None:
    inspect_rollout(rollout)
  metrics = {k: float(v) for k, v in rollout_metrics.items()}
  for name in per_update[0]:
    metrics[name] = float(np.mean([m[name] for m in per_update]))
  # Skipped when any update of the batch was; the running count after the last update.
  metrics['nonfinite_step'] = float(max(m['nonfinite_step'] for m in per_update))
  metrics['nonfinite_steps'] = float(per_update[-1]['nonfinite_steps'])
  metrics['clip_fraction_last_update'] = float(per_update[-1]['clip_fraction'])
  metrics['rollout_tokens_per_s'] = metrics['thought_tokens'] / rollout_seconds
  document_tokens = float(count_tokens(batch['mask']))
  trained_tokens = metrics['thought_tokens'] + document_tokens
  metrics['update_tokens_per_s'] = trained_tokens * updates_per_batch / update_seconds
  metrics['step_flops'] = rlp_step_flops(
      flops_n, document_tokens, metrics['thought_tokens'],
      metrics['scored_positions'] * thoughts_per_position, updates_per_batch)
  return state, metrics


def _progress_fields(metrics: dict[str, float]) -> dict[str, str]:
  fields = {'ntp': f"{metrics['ntp_loss']:.3f}"}
  if 'reward_mean' in metrics:
    fields['gain'] = f"{metrics['reward_mean']:+.3f}"
    fields['think'] = f"{metrics['thought_length_mean']:.1f}"
    fields['clip'] = f"{metrics['clip_fraction']:.2f}"
  fields['lr'] = f"{metrics['learning_rate']:.1e}"
  return fields


def run_summary(history: list[dict[str, float]]) -> list[str]:
  """First steps vs last steps of this run, for the metrics that show what thinking buys."""
  history = [m for m in history if not m.get('nonfinite_step')]  # skipped steps carry NaN
  if not history:
    return []
  span = max(1, len(history) // 10)
  names = [('reward_mean', 'information gain (nats)'),
           ('thought_length_mean', 'thought length (tokens)'), ('ntp_loss', 'next-token loss')]
  lines = [f'summary over {len(history)} steps (mean of first {span} vs last {span}):']
  for key, label in names:
    if key in history[0]:
      first = float(np.mean([m[key] for m in history[:span]]))
      last = float(np.mean([m[key] for m in history[-span:]]))
      lines.append(f'  {label:<26} {first:9.4f} -> {last:9.4f}')
  return lines
