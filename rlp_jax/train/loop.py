"""The training loop: build everything from the config, resume if the workdir has a checkpoint,
run jitted steps with a progress bar, write metrics and checkpoints."""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from rlp_jax.config_schema import validate_config
from rlp_jax.data.batches import DocumentBatches
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.data.tfds_builders import load_documents
from rlp_jax.errors import ConfigError
from rlp_jax.models import registry
from rlp_jax.train.checkpointing import Checkpointer
from rlp_jax.train.metrics_writer import MetricsWriter
from rlp_jax.train.optimizer import make_optimizer
from rlp_jax.train.state import TrainState, create_train_state
from rlp_jax.train.step import make_train_step


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  workdir: str
  metrics_path: str
  tensorboard_dir: str
  checkpoint_dir: str
  first_step: int  # step the run started (resumed) from


def _say(message: str) -> None:
  tqdm.write(f'[rlp_jax] {message}')


def train(config: ml_collections.ConfigDict, workdir: str,
          stop_at_step: int | None = None) -> TrainResult:
  """Trains `config` in `workdir` up to `config.train.num_steps`, resuming from its checkpoints.

  `stop_at_step` ends the run early (after a checkpoint at that step), as a preemption would; the
  schedule still follows `num_steps`, so a later call resumes exactly where this one stopped.
  """
  validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2))

  documents = load_documents(config.data)
  tokenizer = build_tokenizer(config.tokenizer, config.data)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(f'config key `model.vocab_size` ({config.model.vocab_size}) is smaller than '
                      f'the tokenizer vocabulary ({tokenizer.vocab_size})')
  batches = DocumentBatches(documents, tokenizer, config.data.batch_size, config.data.seq_len,
                            seed=config.seed)

  num_steps = config.train.num_steps
  graphdef, params = registry.init_params(config.model, config.seed)
  tx, schedule = make_optimizer(config.optimizer, num_steps)
  state = create_train_state(params, tx, config.seed)

  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'),
                              every=config.train.checkpoint_every,
                              keep=config.train.keep_checkpoints)
  first_step = 0
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    first_step = int(state.step)
    _say(f'resumed from {checkpointer.directory} at step {first_step} '
         f'(data position {int(state.data_position)})')
  writer = MetricsWriter(workdir, resume_step=first_step)
  _say(f'{registry.count_params(config.model):,} parameters; {len(documents):,} documents; '
       f'writing to {workdir}')

  train_step = make_train_step(graphdef, tx, schedule)
  last_step = num_steps if stop_at_step is None else min(stop_at_step, num_steps)
  position = int(state.data_position)
  step = first_step
  progress = tqdm(total=num_steps, initial=first_step, desc='train', unit='step',
                  disable=not config.train.progress_bar, dynamic_ncols=True)
  try:
    while step < last_step:
      batch = batches.batch(position)
      start = time.perf_counter()
      state, metrics = train_step(state, batch)
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - start
      step, position = step + 1, position + 1
      metrics['update_tokens_per_s'] = float(np.sum(batch['mask'])) / seconds
      if step % config.train.log_every == 0 or step == last_step:
        writer.write(step, metrics)
      progress.set_postfix(loss=f"{float(metrics['ntp_loss']):.3f}",
                           lr=f"{float(metrics['learning_rate']):.1e}", refresh=False)
      progress.update(1)
      checkpointer.maybe_save(step, state, force=step == last_step)
  except KeyboardInterrupt:
    checkpointer.maybe_save(step, state, force=True)
    _say(f'interrupted at step {step}; checkpoint saved, rerun the same command to resume')
    raise
  finally:
    progress.close()
    checkpointer.close()
    writer.close()

  _say(f'done at step {step}.')
  _say(f'metrics:     {writer.jsonl_path}')
  _say(f'tensorboard: {writer.tensorboard_dir}')
  _say(f'checkpoints: {checkpointer.directory} (steps {checkpointer.all_steps()})')
  return TrainResult(state=state, workdir=workdir, metrics_path=writer.jsonl_path,
                     tensorboard_dir=writer.tensorboard_dir,
                     checkpoint_dir=checkpointer.directory, first_step=first_step)
