"""Shared fixtures: a small config whose corpus and tokenizer are built once per test session;
a compilation cache shared by the session's in-process tests."""
import os
import shutil
import tempfile

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


_JIT_CACHE = pytest.StashKey[str]()


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


def pytest_configure(config):
  """One persistent JAX compilation cache for the session's in-process tests (`jax.config`, not
  the environment: subprocess tests compile for themselves). Many tests build the same small
  model and step: the second one loads the executable instead of compiling it again. Programs are
  keyed by their HLO, compile options and devices, so a hit is the same executable. Set
  RLP_JAX_TEST_JIT_CACHE=0 to compile everything afresh."""
  if os.environ.get('RLP_JAX_TEST_JIT_CACHE', '1') == '0':
    return
  import jax  # pylint: disable=import-outside-toplevel
  directory = tempfile.mkdtemp(prefix='rlp_jax_test_jit_cache_')
  config.stash[_JIT_CACHE] = directory
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_unconfigure(config):
  directory = config.stash.get(_JIT_CACHE, None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)
