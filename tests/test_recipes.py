"""The pod recipes of configs/ (`presets.pod_recipe`): the paper's objective, a mesh for their
named target, a real corpus location, and a required base model."""
import json
import os
import subprocess
import sys

import pytest

from rlp_jax.config import presets, validate_config
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.errors import ConfigError, DataError
from rlp_jax.train.loop import train
from tests import helpers

# recipe → (its named target, family, tensor-parallel size)
RECIPES = {'nano12b': ('v5p-64', 'hybrid', 2), 'nano9b': ('v5p-64', 'hybrid', 2),
           'qwen3_1p7b': ('8xH100', 'dense', 1), 'qwen3_0p6b': ('8xH100', 'dense', 1)}


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_carries_the_paper_objective_its_target_mesh_and_a_real_corpus(name):
  config = helpers.load_config(name)
  validate_config(config)
  _, family, tensor = RECIPES[name]
  assert config.model.family == family and config.model.scan_layers
  rlp, opt = config.rlp, config.optimizer
  assert (rlp.thoughts_per_position, rlp.sample_temperature, rlp.ema_decay) == (16, 0.7, 0.999)
  assert (rlp.ntp_weight, rlp.kl_weight) == (0.0, 0.0)
  assert (opt.learning_rate, opt.schedule, opt.warmup_steps) == (1e-6, 'constant', 0)
  # The scaling rule of presets.pod_recipe: one 1024-token document per batch shard, K 1, T 128.
  assert (config.data.seq_len, rlp.positions_per_document, rlp.max_thought_tokens) == (
      presets.RECIPE_SEQ_LEN, 1, presets.RECIPE_THOUGHT_TOKENS)
  # fsdp over the devices (tensor where needed), one document per batch shard: on any target.
  mesh = config.mesh
  assert (mesh.data, mesh.fsdp, mesh.tensor) == (1, -1, tensor)
  assert config.data.batch_size == -1
  assert config.data.corpus == 'local_text' and config.data.files == presets.RECIPE_DATA_FILES
  assert config.model.init_from == '' and not config.model.allow_random_init
  assert config.tokenizer.kind == 'hf_json' and config.tokenizer.path == ''


def test_a_recipe_without_its_base_model_stops_with_one_line_before_anything_is_built(tmp_path):
  config = helpers.load_config('qwen3_0p6b')
  config.data.data_dir = str(tmp_path / 'data')
  with pytest.raises(ConfigError) as error:
    train(config, str(tmp_path / 'run'))
  message = str(error.value)
  assert '\n' not in message
  assert 'model.init_from' in message and '--config.model.init_from=/path/to/Qwen3' in message
  assert 'model.allow_random_init=True' in message
  assert not (tmp_path / 'data').exists()  # the corpus was not touched


def test_allow_random_init_is_the_explicit_opt_out(tmp_path):
  config = helpers.load_config('qwen3_0p6b')
  config.model.allow_random_init = True
  config.data.files = str(tmp_path / 'corpus-*.jsonl')
  config.data.data_dir = str(tmp_path / 'data')
  # Past the base-model check, the next thing a recipe needs is its corpus (none here).
  with pytest.raises(DataError, match=r'data\.files: no file matches .*corpus-\*\.jsonl'):
    train(config, str(tmp_path / 'run'))


def test_an_hf_json_tokenizer_without_a_path_is_read_from_the_base_model(tmp_path):
  base = tmp_path / 'Base'
  base.mkdir()
  helpers.train_byte_level_bpe(base / 'tokenizer.json')
  config = helpers.load_config('qwen3_0p6b')
  tokenizer = build_tokenizer(config.tokenizer, config.data, base_model=str(base))
  assert tokenizer.decode(tokenizer.encode('3 + 4 = 7')) == '3 + 4 = 7'
  with pytest.raises(ConfigError, match='tokenizer.path'):
    build_tokenizer(config.tokenizer, config.data, base_model='')


@pytest.mark.pod
@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize('name', sorted(RECIPES))
def test_full_depth_dry_run_of_the_recipe_fits_the_smallest_target(name):
  """`--dry_run --dry_run_target=8xH100` (8 devices, the smallest target) of the recipe as
  shipped: every layer compiled (scanned), and the estimated peak per device under the usable
  HBM. docs/scaling.md has every recipe on every target. 1–10 minutes each on 2 CPU cores: run
  with `python -m pytest tests/test_recipes.py --pod` (the CI run skips them)."""
  result = subprocess.run(
      [sys.executable, '-m', 'rlp_jax.main', f'--config={helpers.CONFIGS_DIR}/{name}.py',
       '--dry_run', '--dry_run_target=8xH100'],
      capture_output=True, text=True, timeout=900, cwd=helpers.REPO,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 0, result.stdout + result.stderr
  plan = json.loads(result.stdout.split('memory plan (json): ')[1])
  assert plan['target'] == '8xH100' and plan['num_devices'] == 8
  assert set(plan['compiled']) == {'rollout', 'update'}
  assert plan['fits'], result.stdout
  assert '8xH100: fits: peak' in result.stdout
