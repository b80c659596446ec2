"""`rlp_jax.interop.export`: a run → a complete Hugging Face directory (weights, config.json,
tokenizer) that transformers' AutoTokenizer and AutoModelForCausalLM load and that continues text
exactly as rlp_jax does; and the export's fixed cases (source config keys, the tied Nemotron-H
head, stale weight files, one-line errors, the Nemotron-H dt floor).

Every model is random and every tokenizer trained here; transformers (torch, CPU) is the
reference."""

from __future__ import annotations

import json
import os

from absl import flags
from absl.testing import flagsaver
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.config import base_config
from rlp_jax.data.hf_tokenizer import HFJsonTokenizer
from rlp_jax.data.tokenizer import (SentencePieceTokenizer, cached_tokenizer_path,
                                    train_sentencepiece_proto)
from rlp_jax.errors import DataError
from rlp_jax.eval.generation import pack_prompts
from rlp_jax.interop import export
from rlp_jax.interop import hf_checkpoint
from rlp_jax.interop.export import export_run
from rlp_jax.models import registry
from rlp_jax.rollout.thought_sampler import Prompts, sample_thoughts
from tests import helpers
from tests.test_interop import our_logits, randomise_params, save_run_checkpoints

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

VOCAB = 512  # ≥ both tokenizers here (sentencepiece: 505 pieces with byte fallback; BPE: 400)
TEXTS = ('Question: 2 + 2?\n<think> 2 + 2 = 4 </think>\nAnswer: 4.',
         '  leading and  double  spaces, trailing \n\n',
         'Unseen: héllo wörld, 世界, emoji 🙂, tab\tend, ß ∑ √2',
         'Literal specials: <s> </s> <pad> <unk> <|endoftext|>',
         'a<think>b</think>c 12345')
PROMPTS = ('Question: Tom has 3 apples and buys 4 more. How many?\n<think>', 'x = 7\n<think>')
GREEDY_STEPS = 8
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json')


def sentencepiece_model(path) -> str:
  """A sentencepiece model trained as rlp_jax trains one (tokenizer.py), written to `path`."""
  path.write_bytes(train_sentencepiece_proto(helpers.bpe_documents(), VOCAB))
  return str(path)


def run_config(model, **groups):
  """A run's full config: `model`, then the groups' keys changed (e.g. data=dict(seq_len=32))."""
  config = base_config()
  config.model = model
  for group, values in groups.items():
    config[group].update(values)
  return config


def model_config(family: str, tie_embeddings: bool):
  make = helpers.dense_model_config if family == 'dense' else helpers.hybrid_model_config
  return make(vocab_size=VOCAB, tie_embeddings=tie_embeddings)


def our_greedy(config, params, prompts: list[list[int]], steps: int, pad_id: int) -> np.ndarray:
  """rlp_jax's greedy continuation (the rollout sampler at temperature 0) of token prompts."""
  graphdef, _ = registry.abstract_params(config)
  packed = pack_prompts(prompts, max(map(len, prompts)), pad_id)
  rows = Prompts(tokens=jnp.asarray(packed.tokens), positions=jnp.asarray(packed.positions),
                 mask=jnp.asarray(packed.mask), scored_position=jnp.asarray(packed.last),
                 next_token=jnp.zeros_like(jnp.asarray(packed.last)))
  thoughts = sample_thoughts(graphdef, params, config, rows, jax.random.key(0), steps,
                             temperature=0.0, think_end_id=config.vocab_size, pad_id=pad_id)
  assert np.all(np.asarray(thoughts.length) == steps)
  return np.asarray(thoughts.tokens)


def their_greedy(model, prompts: list[list[int]], steps: int) -> np.ndarray:
  rows = []
  for prompt in prompts:
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=steps,
                           min_new_tokens=steps, eos_token_id=None)
    rows.append(out[0, len(prompt):].numpy())
  return np.stack(rows)


def read_json(path) -> dict:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# 1. The complete directory: text → the same ids → the same greedy tokens.


@pytest.mark.parametrize('family,tie_embeddings,tokenizer_kind', [
    ('dense', True, 'sentencepiece'), ('dense', False, 'hf_json'),
    ('hybrid', True, 'sentencepiece'), ('hybrid', False, 'hf_json')])
@pytest.mark.parity
@pytest.mark.slow
def test_export_is_a_directory_transformers_tokenizes_and_generates_like_rlp_jax(
    tmp_path, family, tie_embeddings, tokenizer_kind):
  config = model_config(family, tie_embeddings)
  _, params = registry.init_params(config, seed=0)
  params = randomise_params(params, seed=1)
  run = run_config(config, data=dict(data_dir=str(tmp_path / 'data')))
  if tokenizer_kind == 'hf_json':  # a tokenizer.json without tokenizer_config.json
    (tmp_path / 'bpe').mkdir()
    helpers.train_byte_level_bpe(tmp_path / 'bpe' / 'tokenizer.json')
    run.tokenizer.update(dict(kind='hf_json', path=str(tmp_path / 'bpe')))
    ours = HFJsonTokenizer(str(tmp_path / 'bpe'))
  elif family == 'dense':  # tokenizer.path names the model
    run.tokenizer.path = sentencepiece_model(tmp_path / 'sp.model')
    ours = SentencePieceTokenizer(run.tokenizer.path)
  else:  # tokenizer.path '': the model trained on the corpus, cached under the data dir
    cached = cached_tokenizer_path(run.tokenizer, run.data) + '.model'
    os.makedirs(os.path.dirname(cached))
    ours = SentencePieceTokenizer(sentencepiece_model(tmp_path / 'cached.model'))
    os.rename(tmp_path / 'cached.model', cached)
  workdir = tmp_path / 'run'
  save_run_checkpoints(str(workdir), config, {3: params}, run_config=run)
  out = tmp_path / 'hf'

  step, files = export_run(str(workdir), str(out))
  assert step == 3
  tokenizer_files = {'tokenizer.json', 'tokenizer_config.json'}
  if tokenizer_kind == 'sentencepiece':
    tokenizer_files.add('tokenizer.model')  # the sentencepiece model itself, beside its conversion
  assert set(files) == {'config.json', 'model.safetensors'} | tokenizer_files
  assert set(os.listdir(out)) == set(files)
  hf_config = read_json(out / 'config.json')
  assert (hf_config['bos_token_id'], hf_config['eos_token_id'], hf_config['pad_token_id']) == (
      ours.bos_id, ours.eos_id, ours.pad_id)
  assert hf_config['max_position_embeddings'] == (  # no source config: the run's longest row
      run.data.seq_len + run.rlp.max_thought_tokens + 2)

  theirs = transformers.AutoTokenizer.from_pretrained(str(out))
  for text in TEXTS:
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(text), text
  assert theirs.encode('<think>', add_special_tokens=False) == [ours.think_start_id]
  assert theirs.encode('</think>', add_special_tokens=False) == [ours.think_end_id]
  # A sentencepiece export adds bos like an rlp_jax document row; a tokenizer.json keeps its own
  # post-processor (this one adds nothing).
  start = [ours.bos_id] if tokenizer_kind == 'sentencepiece' else []
  prompts = [theirs(text)['input_ids'] for text in PROMPTS]
  assert prompts == [start + ours.encode(text) for text in PROMPTS]

  model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
  assert model.config.tie_word_embeddings == tie_embeddings
  assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
      ours.bos_id, ours.eos_id, ours.pad_id)
  expected = our_greedy(config, params, prompts, GREEDY_STEPS, ours.pad_id)
  generated = their_greedy(model, prompts, GREEDY_STEPS)
  print(f'{family} tied={tie_embeddings} {tokenizer_kind}: ours {expected.tolist()} '
        f'transformers {generated.tolist()}')
  np.testing.assert_array_equal(generated, expected)


# ---------------------------------------------------------------------------------------------
# 2. config.json: the source's keys (model.init_from), else the run's values.


@pytest.mark.parity
def test_qwen3_export_keeps_the_source_config_keys(tmp_path):
  config = model_config('dense', True)
  source = tmp_path / 'source'
  helpers.qwen3_model(config, max_position_embeddings=1234, max_window_layers=1,
                      bos_token_id=7, eos_token_id=8).save_pretrained(source)
  source_config = read_json(source / 'config.json')
  config.init_from = str(source)
  _, params = registry.init_params(config, seed=0)
  run = run_config(config, tokenizer=dict(path=sentencepiece_model(tmp_path / 'sp.model')))
  save_run_checkpoints(str(tmp_path / 'run'), config, {1: params}, run_config=run)
  export_run(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  written = read_json(tmp_path / 'hf' / 'config.json')
  assert (written['max_position_embeddings'], written['max_window_layers']) == (1234, 1)
  bookkeeping = {'transformers_version', 'dtype', 'torch_dtype', '_name_or_path'}
  assert set(source_config) - bookkeeping <= set(written)
  assert (written['bos_token_id'], written['eos_token_id'], written['pad_token_id']) == (2, 3, 0)
  loaded = transformers.AutoConfig.from_pretrained(str(tmp_path / 'hf'))
  assert (loaded.max_position_embeddings, loaded.max_window_layers) == (1234, 1)

  run.model.init_from = ''  # no source: the run's values
  save_run_checkpoints(str(tmp_path / 'fresh'), run.model, {1: params}, run_config=run)
  export_run(str(tmp_path / 'fresh'), str(tmp_path / 'hf_fresh'))
  written = read_json(tmp_path / 'hf_fresh' / 'config.json')
  assert written['max_position_embeddings'] == 96 + 24 + 2  # data.seq_len + T + 2 (defaults)
  assert written['max_window_layers'] == config.num_layers


# ---------------------------------------------------------------------------------------------
# 3. Nemotron-H: the tied head, the dt floor.


@pytest.mark.parity
def test_tied_nemotron_h_checkpoint_saved_by_transformers_loads(tmp_path):
  config = helpers.hybrid_model_config(tie_embeddings=True)
  model = helpers.nemotron_h_model(config, tie_word_embeddings=True)
  with torch.no_grad():  # transformers' NemotronH does not tie: make its head the embedding
    model.lm_head.weight.copy_(model.model.embeddings.weight)
  model.save_pretrained(tmp_path / 'tied')
  params = hf_checkpoint.load_hf_params(str(tmp_path / 'tied'), config)
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 10))
  graphdef, _ = registry.abstract_params(config)
  error = helpers.relative_error(our_logits(graphdef, params, tokens),
                                 helpers.torch_logits(model, tokens))
  print(f'tied nemotron_h saved by transformers: max rel error {error:.2e}')
  assert error <= 1e-4

  with torch.no_grad():  # a head that is not the embedding cannot load as a tied model
    model.lm_head.weight.mul_(2.0)
  model.save_pretrained(tmp_path / 'untied_head')
  with pytest.raises(DataError, match=r'lm_head\.weight in .* differs from '
                     r'backbone\.embeddings\.weight'):
    hf_checkpoint.load_hf_params(str(tmp_path / 'untied_head'), config)
  untied = helpers.hybrid_model_config(tie_embeddings=False)  # what transformers computes
  params = hf_checkpoint.load_hf_params(str(tmp_path / 'untied_head'), untied)
  graphdef, _ = registry.abstract_params(untied)
  error = helpers.relative_error(our_logits(graphdef, params, tokens),
                                 helpers.torch_logits(model, tokens))
  print(f'its own head, loaded untied: max rel error {error:.2e}')
  assert error <= 1e-4


@pytest.mark.parity
def test_tied_nemotron_h_export_writes_its_head(tmp_path):
  config = helpers.hybrid_model_config(tie_embeddings=True)
  graphdef, params = registry.init_params(config, seed=0)
  params = randomise_params(params, seed=1)
  hf_checkpoint.export_hf_checkpoint(params, config, str(tmp_path))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(),
                                np.asarray(params['token_embedding']['embedding']))
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 10))
  error = helpers.relative_error(our_logits(graphdef, params, tokens),
                                 helpers.torch_logits(model, tokens))
  print(f'tied nemotron_h export: transformers logits max rel error {error:.2e}')
  assert error <= 1e-4
  reloaded = hf_checkpoint.load_hf_params(str(tmp_path), config)  # and back, exactly
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parity
def test_nemotron_h_export_keeps_a_dt_below_transformers_default_floor(tmp_path):
  """The run's dt floor is 0; dt_bias −9 puts every dt near softplus(−9) ≈ 1.2e-4 < 0.001."""
  config = helpers.hybrid_model_config()
  graphdef, params = registry.init_params(config, seed=0)
  params = randomise_params(params, seed=1)
  for layer in params['layers'].values():
    if 'dt_bias' in layer['mixer']:
      layer['mixer']['dt_bias'] = jnp.full_like(layer['mixer']['dt_bias'], -9.0)
  hf_checkpoint.export_hf_checkpoint(params, config, str(tmp_path))
  assert read_json(tmp_path / 'config.json')['time_step_min'] == 0.0
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 12))
  error = helpers.relative_error(our_logits(graphdef, params, tokens),
                                 helpers.torch_logits(model, tokens))
  print(f'nemotron_h export with dt < 0.001: transformers prefill logits max rel error '
        f'{error:.2e}')
  assert error <= 1e-4


# ---------------------------------------------------------------------------------------------
# 4. Re-exports and errors.


def test_reexport_leaves_no_stale_weight_files(tmp_path):
  config = model_config('dense', False)
  _, first = registry.init_params(config, seed=0)
  _, second = registry.init_params(config, seed=1)
  out = tmp_path / 'hf'
  hf_checkpoint.export_hf_checkpoint(first, config, str(out), max_shard_size=None)
  (out / 'README.md').write_text('kept')
  (out / 'model-extra.safetensors.bak').write_text('kept: not a weight file name')
  others = {'README.md', 'model-extra.safetensors.bak'}
  files = hf_checkpoint.export_hf_checkpoint(second, config, str(out), max_shard_size='60KB')
  shards = [name for name in files if name.startswith('model-')]
  assert len(shards) > 2
  assert set(os.listdir(out)) == set(files) | {'model.safetensors.index.json'} | others
  _, third = registry.init_params(config, seed=2)  # fewer shards, then one file again
  for size in ('200KB', None):
    files = hf_checkpoint.export_hf_checkpoint(third, config, str(out), max_shard_size=size)
    index = {'model.safetensors.index.json'} if size else set()
    assert set(os.listdir(out)) == set(files) | index | others
    assert (files == ['config.json', 'model.safetensors']) == (size is None)
  reloaded = hf_checkpoint.load_hf_params(str(out), config)
  for a, b in zip(jax.tree.leaves(third), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def run_main(capsys, **flag_values) -> tuple[int, str]:
  """(exit status, stderr) of the export command's main() with these flags, in process."""
  flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(**flag_values), pytest.raises(SystemExit) as exit_info:
    export.main(['export'])
  return exit_info.value.code, capsys.readouterr().err


def test_export_errors_are_one_line(tmp_path, capsys):
  config = model_config('dense', True)
  _, params = registry.init_params(config, seed=0)
  workdir = tmp_path / 'run'
  run = run_config(config, tokenizer=dict(path=sentencepiece_model(tmp_path / 'sp.model')))
  save_run_checkpoints(str(workdir), config, {1: params}, run_config=run)
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a directory')
  cases = [(dict(out=str(a_file)), f'--out: {a_file} is a file, not a directory'),
           (dict(out=str(a_file / 'below')), f'--out: cannot write {a_file / "below"}'),
           (dict(out=str(workdir)), f'--out: {workdir} is the run directory')]
  for values, message in cases:
    code, err = run_main(capsys, workdir=str(workdir), **values)
    assert code == 2 and err.count('\n') == 1, err
    assert err.startswith(f'rlp_jax.interop.export: error: {message}'), err
  assert a_file.read_text() == 'not a directory'
