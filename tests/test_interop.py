"""Hugging Face interop: safetensors ↔ params (Qwen3 and Nemotron-H), export → transformers,
`model.init_from`, the Qwen3 configs. Every checkpoint is a random-weight model written here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlp_jax.config import base_config, validate_config
from rlp_jax.data.hf_tokenizer import HFJsonTokenizer
from rlp_jax.data.loader import DataIterator, build_pipeline
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.errors import ConfigError, DataError
from rlp_jax.interop import hf_checkpoint
from rlp_jax.interop.checkpoint_init import initial_params, load_init_params
from rlp_jax.interop.export import export_run
from rlp_jax.models import registry
from rlp_jax.objective.next_token import next_token_loss
from rlp_jax.rollout.thought_sampler import build_prompts, sample_thoughts
from rlp_jax.train.checkpointing import Checkpointer
from rlp_jax.train.loop import train
from rlp_jax.train.state import create_train_state
from tests import helpers

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
safetensors_torch = pytest.importorskip('safetensors.torch')

REPO = helpers.REPO
train_byte_level_bpe = helpers.train_byte_level_bpe
dense_config = helpers.dense_model_config
hybrid_config = helpers.hybrid_model_config
relative_error = helpers.relative_error


def randomise_params(params, seed: int):
  """Every rlp_jax parameter random (norm scales around 1)."""
  rng = np.random.default_rng(seed)

  def perturb(path, leaf):
    name = str(getattr(path[-1], 'key', ''))
    if name == 'scale':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name in ('A_log', 'dt_bias', 'D'):
      value = rng.uniform(-1.0, 1.0, leaf.shape)
    else:
      value = rng.normal(0.0, 0.2, leaf.shape)
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(perturb, params)


# Seeded transformers models with every weight random (helpers.randomise_torch, std 0.2).
qwen3_model = helpers.qwen3_model
nemotron_h_model = helpers.nemotron_h_model
torch_logits = helpers.torch_logits


_jitted_forward = jax.jit(registry.forward, static_argnums=0)


def our_logits(graphdef, params, tokens) -> np.ndarray:
  tokens = jnp.asarray(tokens, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  return np.asarray(_jitted_forward(graphdef, params, tokens, positions)[0])


def shard_files(directory: str) -> list[str]:
  return sorted(f for f in os.listdir(directory) if f.endswith('.safetensors'))


def state_dicts_equal(model_a, model_b) -> None:
  a, b = model_a.state_dict(), model_b.state_dict()
  assert set(a) == set(b)
  for name in a:
    assert torch.equal(a[name], b[name]), name


# ---------------------------------------------------------------------------------------------
# 1. Hugging Face → rlp_jax: logits equal transformers'.


@pytest.mark.parametrize('tie_embeddings,sharded', [(True, False), (False, True), (True, True)])
@pytest.mark.parity
def test_qwen3_checkpoint_loads_with_transformers_logits(tmp_path, tie_embeddings, sharded):
  config = dense_config(tie_embeddings=tie_embeddings)
  model = qwen3_model(config)
  model.save_pretrained(tmp_path, max_shard_size='20KB' if sharded else '5GB')
  assert os.path.isfile(tmp_path / 'model.safetensors.index.json') == sharded
  assert (len(shard_files(tmp_path)) > 1) == sharded

  assert hf_checkpoint.model_config_from_hf(str(tmp_path)) == {
      key: config[key] for key in ('family', 'vocab_size', 'hidden_size', 'intermediate_size',
                                   'num_layers', 'num_heads', 'num_kv_heads', 'head_dim',
                                   'rope_theta', 'norm_eps', 'tie_embeddings')}
  params = hf_checkpoint.load_hf_params(str(tmp_path), config)
  graphdef, abstract = registry.abstract_params(config)
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), params)
          == jax.tree.map(lambda x: (x.shape, x.dtype), abstract))
  state = model.state_dict()
  np.testing.assert_array_equal(  # a transposed, head-split kernel equals the file's tensor
      np.asarray(params['layers'][1]['attention']['q_proj']['kernel']),
      state['model.layers.1.self_attn.q_proj.weight'].numpy().T.reshape(64, 4, 16))

  tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, 11))
  error = relative_error(our_logits(graphdef, params, tokens), torch_logits(model, tokens))
  print(f'qwen3 load (tied={tie_embeddings}, sharded={sharded}): max rel error {error:.2e}')
  assert error <= 1e-4


def test_loading_casts_to_the_configured_param_dtype(tmp_path):
  config = dense_config()
  qwen3_model(config).save_pretrained(tmp_path)
  fp32 = hf_checkpoint.load_hf_params(str(tmp_path), config)
  bf16 = hf_checkpoint.load_hf_params(str(tmp_path), dense_config(param_dtype='bfloat16'))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))
  for a, b in zip(jax.tree.leaves(fp32), jax.tree.leaves(bf16)):
    np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16)), np.asarray(b))


@pytest.mark.parity
def test_nemotron_h_checkpoint_loads_with_transformers_logits(tmp_path):
  config = hybrid_config()
  model = nemotron_h_model(config)
  model.save_pretrained(tmp_path, max_shard_size='30KB')
  assert len(shard_files(tmp_path)) > 1
  with open(tmp_path / 'model.safetensors.index.json', encoding='utf-8') as f:
    assert all(name.startswith(('backbone.', 'lm_head.')) for name in json.load(f)['weight_map'])
  keys = hf_checkpoint.model_config_from_hf(str(tmp_path))
  assert keys['layer_pattern'] == 'M*-M-' and keys['mamba_dt_limit_max'] == float('inf')
  assert all(config[key] == value for key, value in keys.items())

  params = hf_checkpoint.load_hf_params(str(tmp_path), config)
  graphdef, abstract = registry.abstract_params(config)
  assert (jax.tree.map(lambda x: (x.shape, x.dtype), params)
          == jax.tree.map(lambda x: (x.shape, x.dtype), abstract))
  tokens = np.random.default_rng(2).integers(0, config.vocab_size, (2, 13))
  error = relative_error(our_logits(graphdef, params, tokens), torch_logits(model, tokens))
  print(f'nemotron_h load (sharded): max rel error {error:.2e}')
  assert error <= 1e-4

  # transformers-5 state dict names ('model.' trunk) load too, from memory.
  state = {name: value.numpy() for name, value in model.state_dict().items()}
  assert 'model.embeddings.weight' in state
  from_memory = hf_checkpoint.params_from_tensors(state, config)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(from_memory)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------------
# 2. rlp_jax → Hugging Face: transformers loads it and generates what our sampler generates.


def greedy_rollouts(graphdef, params, config, documents, positions, think_start_id, steps):
  """Our greedy thoughts after `x_<t <think>` (temperature 0, a `</think>` that never occurs)."""
  prompts = build_prompts(jnp.asarray(documents, jnp.int32), jnp.asarray(positions, jnp.int32),
                          group_size=1, think_start_id=think_start_id)
  thoughts = sample_thoughts(graphdef, params, config, prompts, jax.random.key(0), steps,
                             temperature=0.0, think_end_id=config.vocab_size, pad_id=0)
  assert np.all(np.asarray(thoughts.length) == steps)
  return np.asarray(thoughts.tokens)


def transformers_greedy(model, documents, positions, think_start_id, steps):
  rows = []
  for document, row_positions in zip(documents, positions):
    for t in row_positions:
      prompt = list(document[:t]) + [think_start_id]
      with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=steps,
                             min_new_tokens=steps, pad_token_id=0, eos_token_id=None)
      rows.append(out[0, len(prompt):].numpy())
  return np.stack(rows)


@pytest.mark.parametrize('family,tie_embeddings', [('dense', True), ('dense', False),
                                                   ('hybrid', False)])
@pytest.mark.parity
@pytest.mark.slow
def test_export_then_transformers_generates_like_our_sampler(tmp_path, family, tie_embeddings):
  config = (dense_config if family == 'dense' else hybrid_config)(tie_embeddings=tie_embeddings)
  graphdef, params = registry.init_params(config, seed=0)
  params = randomise_params(params, seed=1)
  files = hf_checkpoint.export_hf_checkpoint(params, config, str(tmp_path),
                                             max_shard_size=None if tie_embeddings else '40KB')
  assert files[0] == 'config.json' and set(files[1:]) == set(shard_files(tmp_path))
  assert (len(files) > 2) == (not tie_embeddings)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  assert model.config.tie_word_embeddings == tie_embeddings
  assert hf_checkpoint.model_config_from_hf(str(tmp_path)) == {
      key: config[key] for key in hf_checkpoint.model_config_from_hf(str(tmp_path))}

  tokens = np.random.default_rng(3).integers(0, config.vocab_size, (2, 12))
  error = relative_error(our_logits(graphdef, params, tokens), torch_logits(model, tokens))
  print(f'{family} export (tied={tie_embeddings}): transformers logits max rel error {error:.2e}')
  assert error <= 1e-4

  think_start_id, steps = 5, 8
  positions = np.array([[7], [11]])  # ragged prompts: our sampler left-pads the shorter one
  ours = greedy_rollouts(graphdef, params, config, tokens, positions, think_start_id, steps)
  theirs = transformers_greedy(model, tokens, positions, think_start_id, steps)
  print(f'{family} greedy tokens: ours {ours.tolist()} transformers {theirs.tolist()}')
  np.testing.assert_array_equal(ours, theirs)

  reloaded = hf_checkpoint.load_hf_params(str(tmp_path), config)  # and back, exactly
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bf16_export_is_stored_in_bf16(tmp_path):
  config = dense_config()
  _, params = registry.init_params(config, seed=0)
  hf_checkpoint.export_hf_checkpoint(params, config, str(tmp_path), dtype='bfloat16')
  with open(tmp_path / 'config.json', encoding='utf-8') as f:
    assert json.load(f)['torch_dtype'] == 'bfloat16'
  state = safetensors_torch.load_file(str(tmp_path / 'model.safetensors'))
  assert {t.dtype for t in state.values()} == {torch.bfloat16}
  reloaded = hf_checkpoint.load_hf_params(str(tmp_path), config)  # read back into fp32 params
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(np.asarray(a.astype(jnp.bfloat16).astype(jnp.float32)),
                                  np.asarray(b))


# ---------------------------------------------------------------------------------------------
# 3. Errors name the tensor, the file, the key or the path.


@pytest.fixture
def qwen3_dir(tmp_path):
  config = dense_config()
  model = qwen3_model(config)
  model.save_pretrained(tmp_path / 'hf')
  return config, model, tmp_path / 'hf'


def test_missing_tensor_names_the_tensor_and_directory(qwen3_dir):
  config, model, directory = qwen3_dir
  state = {k: v.contiguous() for k, v in model.state_dict().items()
           if k != 'model.layers.1.mlp.up_proj.weight'}
  safetensors_torch.save_file(state, str(directory / 'model.safetensors'),
                              metadata={'format': 'pt'})
  with pytest.raises(DataError, match=r'model\.layers\.1\.mlp\.up_proj\.weight.*' + str(directory)):
    hf_checkpoint.load_hf_params(str(directory), config)


def test_wrong_shape_names_the_tensor_and_its_shard(tmp_path):
  config = dense_config()
  qwen3_model(config).save_pretrained(tmp_path, max_shard_size='20KB')
  with open(tmp_path / 'model.safetensors.index.json', encoding='utf-8') as f:
    shard = json.load(f)['weight_map']['model.layers.0.mlp.gate_proj.weight']
  state = safetensors_torch.load_file(str(tmp_path / shard))
  state['model.layers.0.mlp.gate_proj.weight'] = state['model.layers.0.mlp.gate_proj.weight'][:100]
  safetensors_torch.save_file(state, str(tmp_path / shard), metadata={'format': 'pt'})
  with pytest.raises(DataError, match=r'model\.layers\.0\.mlp\.gate_proj\.weight in .*'
                     + shard + r' has shape \[100, 64\], expected \[128, 64\]'):
    hf_checkpoint.load_hf_params(str(tmp_path), config)


def test_a_config_that_does_not_match_the_checkpoint_names_the_key(qwen3_dir):
  config, _, directory = qwen3_dir
  with pytest.raises(ConfigError, match=r'`model\.intermediate_size` is 96 .* has 128'):
    hf_checkpoint.load_hf_params(str(directory), dense_config(intermediate_size=96))
  with pytest.raises(ConfigError, match=r'`model\.tie_embeddings`'):
    load_init_params(str(directory), dense_config(tie_embeddings=True))
  # Without config.json, shapes still catch it, and tensors without a place are reported.
  os.remove(directory / 'config.json')
  with pytest.raises(DataError, match=r'gate_proj\.weight .* has shape \[128, 64\], expected'):
    hf_checkpoint.load_hf_params(str(directory), dense_config(intermediate_size=96))
  with pytest.raises(DataError, match=r'11 tensors .* no place .*model\.layers\.1\.'):
    hf_checkpoint.load_hf_params(str(directory), dense_config(num_layers=1))


def test_missing_files_and_directories_are_data_errors(qwen3_dir, tmp_path):
  config, _, directory = qwen3_dir
  missing = tmp_path / 'nowhere'
  with pytest.raises(DataError, match=str(missing)):
    hf_checkpoint.load_hf_params(str(missing), config)
  with pytest.raises(DataError, match=f'model.init_from: no such directory {missing}'):
    load_init_params(str(missing), config)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(DataError, match=f'{empty} is neither a Hugging Face model directory'):
    load_init_params(str(empty), config)
  with pytest.raises(DataError, match=f'{empty} has neither model.safetensors'):
    hf_checkpoint.load_hf_params(str(empty), config)
  index = {'weight_map': {'model.embed_tokens.weight': 'model-00009-of-00009.safetensors'}}
  with open(directory / 'model.safetensors.index.json', 'w', encoding='utf-8') as f:
    json.dump(index, f)
  with pytest.raises(DataError, match='model-00009-of-00009.safetensors'):
    hf_checkpoint.load_hf_params(str(directory), config)


def test_unsupported_hf_configs_are_data_errors(tmp_path):
  config = {'model_type': 'qwen3', 'vocab_size': 10, 'hidden_size': 8, 'intermediate_size': 8,
            'num_hidden_layers': 1, 'num_attention_heads': 2,
            'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(DataError, match=r"config\.json: RoPE scaling 'yarn' is not supported"):
    hf_checkpoint.model_config_from_hf(str(tmp_path))
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'llama'}))
  with pytest.raises(DataError, match="model_type 'llama' is not supported"):
    hf_checkpoint.model_config_from_hf(str(tmp_path))
  moe = {'model_type': 'nemotron_h', 'hybrid_override_pattern': 'ME*'}
  (tmp_path / 'config.json').write_text(json.dumps(moe))
  with pytest.raises(DataError, match='mixture-of-experts'):
    hf_checkpoint.model_config_from_hf(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# 4. model.init_from and the export command.


def save_run_checkpoints(workdir, config, params_by_step, tokenizer_path='', run_config=None):
  """A workdir as train() leaves it: config.json (`run_config`, default `base_config()` with model
  `config`) and train states at the given steps."""
  os.makedirs(workdir, exist_ok=True)
  if run_config is None:
    run_config = base_config()
    run_config.model = config
  if tokenizer_path:
    run_config.tokenizer.update(dict(kind='hf_json', path=tokenizer_path))
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(run_config.to_json_best_effort(indent=2))
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'), every=1, keep=5)
  for step, params in params_by_step.items():
    state = create_train_state(params, optax.adamw(1e-3), seed=0, with_teacher=True)
    checkpointer.maybe_save(step, state.replace(step=jnp.asarray(step, jnp.int32)), force=True)
  checkpointer.close()


def test_init_from_an_rlp_jax_checkpoint_restores_theta_of_the_latest_step(tmp_path):
  config = dense_config()
  _, early = registry.init_params(config, seed=1)
  _, late = registry.init_params(config, seed=2)
  workdir = str(tmp_path / 'run')
  save_run_checkpoints(workdir, config, {2: early, 5: late})
  for path in (workdir, os.path.join(workdir, 'checkpoints')):
    params, source = load_init_params(path, config)
    assert 'step 5' in source
    assert jax.tree.structure(params) == jax.tree.structure(late)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(late)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  bf16, _ = load_init_params(workdir, dense_config(param_dtype='bfloat16'))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))
  with pytest.raises(DataError, match='cannot restore params of step 5'):
    load_init_params(workdir, dense_config(hidden_size=32))

  graphdef, params, source = initial_params(dense_config(init_from=workdir), seed=0)
  assert 'rlp_jax checkpoint' in source and graphdef == registry.init_params(config, 0)[0]
  _, _, source = initial_params(config, seed=0)
  assert source.startswith('random weights')


@pytest.mark.parity
@pytest.mark.subprocess
@pytest.mark.slow
def test_export_command_writes_what_transformers_loads(tmp_path):
  config = dense_config(tie_embeddings=True, vocab_size=300)
  _, params = registry.init_params(config, seed=3)
  params = randomise_params(params, seed=4)
  workdir = str(tmp_path / 'run')
  tokenizer_dir = tmp_path / 'tokenizer'
  tokenizer_dir.mkdir()
  train_byte_level_bpe(tokenizer_dir / 'tokenizer.json', vocab_size=300)
  (tokenizer_dir / 'tokenizer_config.json').write_text(json.dumps(
      {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': None, 'eos_token': '</s>',
       'pad_token': '<pad>'}))
  save_run_checkpoints(workdir, config, {4: params}, tokenizer_path=str(tokenizer_dir))
  out = tmp_path / 'hf'
  result = subprocess.run(
      [sys.executable, '-m', 'rlp_jax.interop.export', f'--workdir={workdir}', f'--out={out}',
       '--dtype=float32'], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert 'exported step 4' in result.stdout
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
  ours = HFJsonTokenizer(str(tokenizer_dir))
  assert (model.config.eos_token_id, model.config.bos_token_id, model.config.pad_token_id) == (
      ours.eos_id, ours.eos_id, ours.pad_id)  # no bos: bos = eos
  theirs = transformers.AutoTokenizer.from_pretrained(str(out))
  text = 'Question: 2 + 2?\n<think> 2 + 2 = 4 </think>\nAnswer: 4.'
  assert theirs.encode(text, add_special_tokens=False) == ours.encode(text)
  reloaded = hf_checkpoint.load_hf_params(str(out), config)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  tokens = np.random.default_rng(5).integers(0, config.vocab_size, (1, 9))
  graphdef, _ = registry.abstract_params(config)
  assert relative_error(our_logits(graphdef, params, tokens), torch_logits(model, tokens)) <= 1e-4

  step, _ = export_run(workdir, str(tmp_path / 'again'), step=4)
  assert step == 4
  with pytest.raises(DataError, match='no finished checkpoint of step 7'):
    export_run(workdir, str(tmp_path / 'never'), step=7)
  bad = subprocess.run([sys.executable, '-m', 'rlp_jax.interop.export',
                        f'--workdir={tmp_path}', f'--out={out}'], cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
  assert bad.returncode == 2 and f'no config.json in {tmp_path}' in bad.stderr


@pytest.mark.parity
@pytest.mark.slow
def test_train_starts_from_a_hugging_face_checkpoint(small_config, tmp_path, capsys):
  config = small_config
  model = qwen3_model(config.model, seed=6)
  model.save_pretrained(tmp_path / 'hf')
  config.model.init_from = str(tmp_path / 'hf')
  config.rlp.enabled = False
  config.train.num_steps = 1
  result = train(config, str(tmp_path / 'run'))
  assert f'starting from Hugging Face checkpoint {tmp_path / "hf"}' in capsys.readouterr().out
  with open(result.metrics_path, encoding='utf-8') as f:
    first_loss = json.loads(f.readline())['ntp_loss']

  # The run's first batch: the loader's, rebuilt with the same config (data/loader.py).
  tokenizer = build_tokenizer(config.tokenizer, config.data)
  data = DataIterator(build_pipeline(config.data, tokenizer, seed=config.seed, process_index=0,
                                     process_count=1, local_rows=config.data.batch_size))
  batch = data.next_batch()[0]
  data.close()
  with torch.no_grad():
    logits = model(input_ids=torch.from_numpy(batch['tokens'].astype(np.int64)),
                   attention_mask=torch.from_numpy(batch['mask'].astype(np.int64))).logits
  expected, _ = next_token_loss(jnp.asarray(logits.numpy()), jnp.asarray(batch['tokens']),
                                jnp.asarray(batch['mask']))
  print(f'first-step ntp loss {first_loss:.6f}, transformers {float(expected):.6f}')
  assert abs(first_loss - float(expected)) <= 1e-4 * abs(float(expected))


# ---------------------------------------------------------------------------------------------
# 5. The Qwen3 configs.


load_config = helpers.load_config


# The published config.json files (Qwen/Qwen3-0.6B-Base, Qwen/Qwen3-1.7B-Base), model keys only.
_PUBLISHED_QWEN3 = {
    'qwen3_0p6b': dict(hidden_size=1024, intermediate_size=3072),
    'qwen3_1p7b': dict(hidden_size=2048, intermediate_size=6144),
}


@pytest.mark.parametrize('name,billions,digits', [('qwen3_0p6b', 0.596, 3),
                                                  ('qwen3_1p7b', 1.7206, 4)])
def test_qwen3_configs_have_the_published_sizes(tmp_path, name, billions, digits):
  config = load_config(name)
  validate_config(config)
  count = registry.count_params(config.model)  # eval_shape: nothing allocated
  print(f'{name}: {count:,} parameters')
  assert round(count / 1e9, digits) == billions
  assert config.tokenizer.kind == 'hf_json' and config.model.compute_dtype == 'bfloat16'

  published = {'architectures': ['Qwen3ForCausalLM'], 'model_type': 'qwen3',
               'attention_bias': False, 'head_dim': 128, 'hidden_act': 'silu',
               'num_attention_heads': 16, 'num_hidden_layers': 28, 'num_key_value_heads': 8,
               'rms_norm_eps': 1e-06, 'rope_scaling': None, 'rope_theta': 1000000,
               'sliding_window': None, 'use_sliding_window': False,
               'tie_word_embeddings': True, 'torch_dtype': 'bfloat16', 'vocab_size': 151936,
               **_PUBLISHED_QWEN3[name]}
  (tmp_path / 'config.json').write_text(json.dumps(published))
  keys = hf_checkpoint.model_config_from_hf(str(tmp_path))
  assert {key: config.model[key] for key in keys} == keys
  hf_checkpoint.check_model_config_matches(config.model, str(tmp_path))
