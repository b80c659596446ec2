"""Shared fixtures: a small config whose corpus and tokenizer are built once per test session."""
import pytest

from rlp_jax.config import base_config


@pytest.fixture(scope='session')
def shared_data_dir(tmp_path_factory):
  """One data dir for the session: the small corpus and its tokenizer are built on first use."""
  return str(tmp_path_factory.mktemp('rlp_data'))


@pytest.fixture
def small_config(shared_data_dir):
  """A model and corpus small enough for a CPU test to take seconds."""
  config = base_config()
  config.data.data_dir = shared_data_dir
  config.data.num_documents = 600
  config.data.seq_len = 64
  config.data.batch_size = 8
  config.tokenizer.vocab_size = 256
  config.model.vocab_size = 256
  config.model.hidden_size = 64
  config.model.intermediate_size = 128
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.head_dim = 16
  config.optimizer.warmup_steps = 2
  config.train.num_steps = 8
  config.train.checkpoint_every = 4
  config.train.progress_bar = False
  return config


def pytest_addoption(parser):
  parser.addoption('--pod', action='store_true',
                   help='also run the full-depth dry runs of the pod recipes (marker `pod`; '
                        'about 20 minutes on 2 CPU cores, so the CI run leaves them out)')


def pytest_collection_modifyitems(config, items):
  if config.getoption('--pod'):
    return
  skip = pytest.mark.skip(reason='a full-depth recipe dry run: run with --pod')
  for item in items:
    if 'pod' in item.keywords:
      item.add_marker(skip)
