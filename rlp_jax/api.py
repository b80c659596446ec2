"""The public functional API (docs/api.md): what a notebook or a script needs, without a workdir.

  import rlp_jax
  model, params, tokenizer, config = rlp_jax.load_model('tiny')  # or a HF dir, or a run dir
  batch = rlp_jax.document_batch(tokenizer, ['2 + 3 = 5'], seq_len=32)
  thoughts = rlp_jax.sample_thoughts(model, params, batch['tokens'], batch['mask'], positions,
                                     key, num_thoughts=4, max_thought_tokens=8, temperature=1.0)
  gains = rlp_jax.information_gain(model, params, batch['tokens'], batch['mask'], positions,
                                   thoughts)
  state = rlp_jax.init_state(config); step = rlp_jax.make_train_step(config, tokenizer)

`model` (a `ModelDef`) is hashable: the jitted functions take it as a static argument, the
parameters as arrays. Every function here is pure; the jitted ones say which arguments are static.
The heavy lifting is the same code the training loop runs (rollout/, objective/, train/).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlp_jax import cli, paths
from rlp_jax.config import base_config, validate_config
from rlp_jax.config.saved_run import saved_run_config
from rlp_jax.data import corpora
from rlp_jax.data.batches import document_row, padded_rows
from rlp_jax.data.special_tokens import SpecialTokens, special_tokens
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.dry_run import abstract_state
from rlp_jax.errors import ConfigError, DataError
from rlp_jax.interop import hf_checkpoint
from rlp_jax.interop.checkpoint_init import (find_checkpoint_dir, initial_params,
                                             restore_checkpoint_params)
from rlp_jax.models import registry
from rlp_jax.objective import information_gain as gain_of
from rlp_jax.objective.chunked_log_probs import chunk_tokens_of
from rlp_jax.parallel.batch_sharding import batch_sharding, resolve_batch_size
from rlp_jax.parallel.mesh import make_mesh
from rlp_jax.rollout.baseline_evidence import baseline_evidence, teacher_next_token_stats
from rlp_jax.rollout.prefix_strategies import prefix_strategy
from rlp_jax.rollout.reasoned_evidence import build_scored_sequences
from rlp_jax.rollout.rlp_rollout import Rollout, rollout_batch
from rlp_jax.rollout.thought_sampler import Thoughts
from rlp_jax.train.ntp_step import make_ntp_step
from rlp_jax.train.optimizer import make_optimizer
from rlp_jax.train.rlp_loss import rlp_loss as _rlp_loss
from rlp_jax.train.rlp_step import make_rlp_step
from rlp_jax.train.state import TrainState
from rlp_jax.train.state_sharding import create_sharded_state

Params = Any
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ModelDef:
  """What a model is apart from its parameters: hashable, so a static argument of jit.

  graphdef: the Flax NNX graph; config: the frozen `model.*` keys; special: the think/pad ids.
  """
  graphdef: Any
  config: ml_collections.FrozenConfigDict
  special: SpecialTokens


class LoadedModel(NamedTuple):
  model: ModelDef
  params: Params
  tokenizer: Any  # rlp_jax.data.tokenizer.Tokenizer: encode, decode, pad/bos/eos/think ids
  config: ml_collections.ConfigDict  # the whole run config (model, tokenizer, data, rlp, ...)


@flax.struct.dataclass
class SampledThoughts:
  """G thoughts at each of K positions of B documents.

  tokens int32 [B, K, G, T] (pad after each thought; `</think>` included when it was sampled),
  log_probs float32 [B, K, G, T] under the sampling distribution (0 where `mask` is False), mask
  bool [B, K, G, T] (the sampled tokens), length int32 [B, K, G], ended bool [B, K, G] (the thought
  closed itself with `</think>` before the limit T).
  """
  tokens: jax.Array
  log_probs: jax.Array
  mask: jax.Array
  length: jax.Array
  ended: jax.Array


@flax.struct.dataclass
class Gains:
  """information_gain [B, K, G] = s_pred − s_ema (nats): what each thought buys on x_t.

  s_pred [B, K, G] = log p_θ(x_t | x_<t <think> c </think>); s_ema [B, K] = log p_teacher(x_t | x_<t)
  (the no-think evidence; the teacher is θ itself unless `teacher_params` is given).
  """
  information_gain: jax.Array
  s_pred: jax.Array
  s_ema: jax.Array


# ----------------------------------------------------------------------------- configs and models


def load_config(source: str | ml_collections.ConfigDict = 'tiny',
                overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """A validated config: a shipped config by name ('tiny', 'tiny_hybrid', 'qwen3_0p6b', ...), a
  config file's path, or a ConfigDict (copied); `overrides` set dotted keys, as `--config.a.b=v`
  does on the command line ({'train.num_steps': 10}). ConfigError names a bad key or value."""
  if isinstance(source, ml_collections.ConfigDict):
    config = ml_collections.ConfigDict(source.to_dict())
  else:
    config = _config_from_file(_config_path(source))
  for name, value in (overrides or {}).items():
    _set_key(config, name, value)
  validate_config(config)
  return config


def _config_path(source: str) -> str:
  if os.path.isfile(source):
    return source
  name = source[:-3] if source.endswith('.py') else source
  path = os.path.join(cli.CONFIGS_DIR, os.path.basename(name) + '.py')
  if os.path.isfile(path):
    return path
  shipped = sorted(f[:-3] for f in os.listdir(cli.CONFIGS_DIR)
                   if f.endswith('.py') and not f.startswith('_'))
  raise ConfigError(f'no config {source!r}: neither a file nor a shipped config ({shipped})')


def _config_from_file(path: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location('_rlp_jax_config_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path} has no get_config()')
  return module.get_config()


def _set_key(config: ml_collections.ConfigDict, name: str, value: Any) -> None:
  *groups, key = name.split('.')
  node = config
  for group in groups:
    if group not in node or not isinstance(node[group], ml_collections.ConfigDict):
      raise ConfigError(f'unknown config key `{name}`')
    node = node[group]
  if key not in node:
    raise ConfigError(f'unknown config key `{name}`')
  try:
    node[key] = value
  except TypeError as e:
    raise ConfigError(f'config key `{name}`: {e}') from None


def load_model(source: str | ml_collections.ConfigDict = 'tiny', *,
               overrides: Mapping[str, Any] | None = None,
               step: int | None = None) -> LoadedModel:
  """(model, params, tokenizer, config) from one of:

  - a config (a shipped name such as 'tiny', a config file, a ConfigDict): θ from `model.init_from`
    when set, else a random init from `seed`; the tokenizer it configures (the sentencepiece one is
    trained on the corpus at first use and cached, as a training run does);
  - a Hugging Face model directory (config.json, safetensors, tokenizer.json);
  - an rlp_jax run directory (its config.json and checkpoints/): θ of `step` (default: latest).

  `overrides` set dotted config keys first. The params are whole arrays on the default device.
  """
  if isinstance(source, str) and _is_directory(source):
    directory = paths.resolve_str(source, 'load_model')
    if hf_checkpoint.is_hf_checkpoint(directory):
      config = base_config()
      config.model.update(hf_checkpoint.model_config_from_hf(directory))
      config.model.init_from = directory
      config.tokenizer.kind = 'hf_json'
      config.tokenizer.path = directory
      config.tokenizer.vocab_size = config.model.vocab_size  # its own; checked once loaded
      config = load_config(config, overrides)
    elif find_checkpoint_dir(directory) is not None:
      config = load_config(saved_run_config(directory), overrides)
      config.model.init_from = ''
      tokenizer = build_tokenizer(config.tokenizer, config.data)
      params, _ = restore_checkpoint_params(find_checkpoint_dir(directory), config.model,
                                            step=step)
      return _loaded(config, registry.abstract_params(config.model)[0], params, tokenizer)
    else:
      raise DataError(f'{directory} is neither a Hugging Face model directory nor an rlp_jax run '
                      'directory with checkpoints')
  else:
    config = load_config(source, overrides)
  tokenizer = build_tokenizer(config.tokenizer, config.data, base_model=config.model.init_from)
  graphdef, params, _ = initial_params(config.model, config.seed)
  return _loaded(config, graphdef, params, tokenizer)


def _is_directory(source: str) -> bool:
  return paths.is_url(source) or os.path.isdir(source)


def _loaded(config: ml_collections.ConfigDict, graphdef: Any, params: Params,
            tokenizer: Any) -> LoadedModel:
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(f'config key `model.vocab_size` ({config.model.vocab_size}) is smaller than '
                      f'the tokenizer vocabulary ({tokenizer.vocab_size})')
  model = ModelDef(graphdef=graphdef, config=ml_collections.FrozenConfigDict(config.model),
                   special=special_tokens(tokenizer, config.rlp.position_marker))
  return LoadedModel(model=model, params=params, tokenizer=tokenizer, config=config)


def documents(config: ml_collections.ConfigDict, split: str = 'train') -> Sequence[str]:
  """The random-access documents of the configured embedded or local corpus (`data.corpus`)."""
  return corpora.load_documents(config.data, split)


# ----------------------------------------------------------------------------------------- text


def encode(tokenizer: Any, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
  """Token ids of `text`; `<think>` and `</think>` in the text are one id each."""
  return (([tokenizer.bos_id] if bos else []) + list(tokenizer.encode(text))
          + ([tokenizer.eos_id] if eos else []))


def decode(tokenizer: Any, ids: Sequence[int] | np.ndarray | jax.Array) -> str:
  """The text of `ids` (think tokens written as `<think>`/`</think>`; pad, bos and eos dropped)."""
  return tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)])


def document_batch(tokenizer: Any, texts: Sequence[str], seq_len: int) -> dict[str, np.ndarray]:
  """Rows as training builds them: `bos text eos` cut to `seq_len`, right-padded.

  Returns {'tokens': int32 [N, seq_len], 'mask': bool [N, seq_len]}."""
  if isinstance(texts, str):
    raise TypeError('document_batch takes a sequence of texts, not one string')
  return padded_rows([document_row(tokenizer, text, seq_len) for text in texts], seq_len,
                     tokenizer.pad_id)


# --------------------------------------------------------------------------- model computations


@functools.partial(jax.jit, static_argnames=('model',))
def next_token_log_probs(model: ModelDef, params: Params, tokens: jax.Array,
                         mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(log p(x_t | x_<t), entropy of that prediction), both float32 [B, L], no thinking; column 0
  (nothing predicts it) is 0."""
  return teacher_next_token_stats(model.graphdef, params, tokens, mask,
                                  chunk_tokens=chunk_tokens_of(model.config))


@functools.partial(jax.jit, static_argnames=('model', 'num_thoughts', 'max_thought_tokens',
                                             'temperature'))
def sample_thoughts(model: ModelDef, params: Params, tokens: jax.Array, mask: jax.Array,
                    positions: jax.Array, key: jax.Array, *, num_thoughts: int,
                    max_thought_tokens: int, temperature: float) -> SampledThoughts:
  """G = `num_thoughts` thoughts sampled after `x_<t <think>` at each position t of `positions`
  (int32 [B, K], columns of `tokens` [B, L]; 1 ≤ t < L), at most T = `max_thought_tokens`
  tokens each, at `temperature` (0: greedy). The document prefix is encoded once per row and
  shared by its thoughts (the `shared` prefix strategy training uses)."""
  graphdef, special = model.graphdef, model.special
  strategy = prefix_strategy('shared')
  _, context = strategy.encode(graphdef, params, tokens, mask, positions, need_hidden=False)
  prompts = strategy.prompts(tokens, positions, num_thoughts, special.think_start_id)
  thoughts = strategy.sample(graphdef, params, model.config, context, prompts, key,
                             max_thought_tokens, temperature, special.think_end_id,
                             special.pad_id)
  shape = positions.shape + (num_thoughts,)
  return SampledThoughts(
      tokens=thoughts.tokens.reshape(shape + (-1,)),
      log_probs=thoughts.log_probs.reshape(shape + (-1,)),
      mask=thoughts.mask.reshape(shape + (-1,)), length=thoughts.length.reshape(shape),
      ended=thoughts.ended.reshape(shape))


@functools.partial(jax.jit, static_argnames=('model',))
def information_gain(model: ModelDef, params: Params, tokens: jax.Array, mask: jax.Array,
                     positions: jax.Array, thoughts: SampledThoughts,
                     teacher_params: Params | None = None) -> Gains:
  """What each thought of `sample_thoughts` buys on the real next token x_t (`Gains`).

  By default the no-think evidence uses θ itself (the evaluation convention: it measures what the
  thought buys, not how far θ has moved); pass the EMA teacher φ as `teacher_params` for the
  training reward."""
  graphdef, special = model.graphdef, model.special
  batch, k, g, limit = thoughts.tokens.shape
  teacher = params if teacher_params is None else teacher_params
  s_ema = baseline_evidence(graphdef, teacher, tokens, mask, positions)  # [B, K]
  strategy = prefix_strategy('shared')
  _, context = strategy.encode(graphdef, params, tokens, mask, positions, need_hidden=False)
  prompts = strategy.prompts(tokens, positions, g, special.think_start_id)
  rows = batch * k * g
  flat = Thoughts(tokens=thoughts.tokens.reshape(rows, limit),
                  log_probs=thoughts.log_probs.reshape(rows, limit),
                  mask=thoughts.mask.reshape(rows, limit), length=thoughts.length.reshape(rows),
                  ended=thoughts.ended.reshape(rows))
  sequences = build_scored_sequences(prompts, flat, special.think_end_id, special.pad_id)
  _, s_pred = strategy.score(graphdef, params, context, sequences, limit, 1.0,
                             chunk_tokens_of(model.config))
  s_pred = s_pred.reshape(batch, k, g)
  return Gains(information_gain=gain_of(s_pred, s_ema[:, :, None]), s_pred=s_pred, s_ema=s_ema)


# --------------------------------------------------------------------------------- the objective


def rlp_rollout(model: ModelDef, params: Params, teacher_params: Params, batch: Batch,
            key: jax.Array, rlp: ml_collections.ConfigDict) -> Rollout:
  """One RLP rollout, as a training step takes it: positions by `rlp.position_rule`, S_ema under
  `teacher_params`, G thoughts and S_pred under `params`, reward → advantage, metrics."""
  return _rollout(model, params, teacher_params, batch, key, _frozen(rlp))


@functools.partial(jax.jit, static_argnames=('model', 'rlp'))
def _rollout(model, params, teacher_params, batch, key, rlp):
  return rollout_batch(model.graphdef, params, teacher_params, key, batch, model.config, rlp,
                       model.special)


def rlp_loss(model: ModelDef, params: Params, teacher_params: Params, batch: Batch,
             rollout_data: Rollout, rlp: ml_collections.ConfigDict,
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(loss, metrics) of one update on a rollout: clipped surrogate of the information-gain
  advantage + `rlp.ntp_weight` · next-token loss (+ `rlp.kl_weight` · KL to the teacher).
  Differentiable in `params` (`jax.grad(rlp_loss, argnums=1, has_aux=True)`)."""
  return _loss(model, params, teacher_params, batch, rollout_data, _frozen(rlp))


@functools.partial(jax.jit, static_argnames=('model', 'rlp'))
def _loss(model, params, teacher_params, batch, rollout_data, rlp):
  return _rlp_loss(params, teacher_params, model.graphdef, batch, rollout_data, rlp,
                   chunk_tokens_of(model.config))


def _frozen(section: Any) -> ml_collections.FrozenConfigDict:
  return (section if isinstance(section, ml_collections.FrozenConfigDict)
          else ml_collections.FrozenConfigDict(section))


# -------------------------------------------------------------------------------------- training


def init_state(config: ml_collections.ConfigDict, params: Params | None = None) -> TrainState:
  """θ (`params`, else `model.init_from`, else a random init from `seed`), the EMA teacher φ (RLP)
  and the optimizer state, each created in its sharding over the mesh of `config.mesh` (all
  devices by default: a Colab TPU's cores, a GPU, or the CPU)."""
  tx, _ = _optimizer(config)
  mesh = make_mesh(config.mesh)
  if params is None and not config.model.init_from:
    state, _ = create_sharded_state(config.model, tx, config.seed, config.rlp.enabled, mesh,
                                    config.mesh.rules)
    return state
  shardings = abstract_state(config, tx, mesh)[1]
  if params is None:
    _, params, _ = initial_params(config.model, config.seed, shardings.params)
  else:
    params = jax.device_put(params, shardings.params)
  state, _ = create_sharded_state(config.model, tx, config.seed, config.rlp.enabled, mesh,
                                  config.mesh.rules, params=params)
  return state


def make_train_step(config: ml_collections.ConfigDict, tokenizer: Any,
                    ) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, dict]]:
  """`step(state, batch) -> (state, metrics)`: what one loop step of `python -m rlp_jax.main` does.

  RLP (`rlp.enabled`): one rollout, then `rlp.updates_per_rollout` updates on it, each followed by
  the EMA update of φ; otherwise one next-token update. `batch` is {'tokens', 'mask'} of
  `data.batch_size` rows (`document_batch`); metrics are scalars on the device (rollout and the
  mean over the updates). The state is donated: use the returned one."""
  tx, schedule = _optimizer(config)
  mesh = make_mesh(config.mesh)
  rules = config.mesh.rules
  graphdef, _ = registry.abstract_params(config.model)
  shardings = abstract_state(config, tx, mesh)[1]
  documents = batch_sharding(mesh, rules)
  if not config.rlp.enabled:
    ntp_step = make_ntp_step(graphdef, tx, schedule, shardings, rules,
                             config.model.logits_chunk_tokens)
    return lambda state, batch: ntp_step(state, jax.device_put(dict(batch), documents))
  special = special_tokens(tokenizer, config.rlp.position_marker)
  rollout_fn, update_fn = make_rlp_step(graphdef, config.model, config.rlp, special, tx, schedule,
                                        shardings, rules)
  updates = config.rlp.updates_per_rollout

  def step(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, dict]:
    batch = jax.device_put(dict(batch), documents)
    state, rollout_data = rollout_fn(state, batch)
    per_update = []
    for _ in range(updates):
      state, metrics = update_fn(state, batch, rollout_data)
      per_update.append(metrics)
    mean = jax.tree.map(lambda *values: jnp.mean(jnp.stack(values)), *per_update)
    return state, dict(rollout_data.metrics, **mean)

  return step


def _optimizer(config: ml_collections.ConfigDict):
  updates = config.rlp.updates_per_rollout if config.rlp.enabled else 1
  return make_optimizer(config.optimizer, config.train.num_steps * updates)


def batch_size(config: ml_collections.ConfigDict) -> int:
  """`data.batch_size` with −1 resolved (one document per batch shard of the mesh)."""
  return resolve_batch_size(config.data.batch_size, make_mesh(config.mesh), config.mesh.rules)
