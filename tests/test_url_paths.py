"""URL paths (`gs://…`) for --workdir, data.data_dir and tokenizer.path, through rlp_jax.paths.

No network here: tests/local_gcs.py maps `gs://<bucket>/…` to a local directory below fsspec
(gcsfs's place) and below orbax's tensorstore spec, so rlp_jax, etils.epath's gs:// path class and
fsspec backend, and orbax's gs:// branches run as they do against a bucket."""
from __future__ import annotations

import json
import os

import pytest

from rlp_jax import paths
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.errors import UserInputError, WorkdirError
from rlp_jax.train.loop import train
from rlp_jax.train.metrics_writer import MetricsWriter, read_metrics
from rlp_jax.train.startup_checks import check_workdir, prepare_workdir

from tests.local_gcs import make_bucket, use_local_gcs


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  root = use_local_gcs(tmp_path / 'gcs', monkeypatch)
  make_bucket(root, 'runs')
  make_bucket(root, 'data')
  return root


def test_a_gs_workdir_and_data_dir_train_resume_and_repair_there(gcs, small_config, tmp_path,
                                                                  monkeypatch):
  config = small_config
  config.rlp.enabled = False
  config.data.data_dir = 'gs://data/corpora'
  workdir = 'gs://runs/run1'
  monkeypatch.setenv('RLP_JAX_STAGING_DIR', str(tmp_path / 'staging1'))
  first = train(config, workdir, stop_at_step=4)
  assert first.workdir == workdir and first.checkpoint_dir == 'gs://runs/run1/checkpoints'
  local_run = os.path.join(gcs, 'runs', 'run1')
  assert json.loads(open(os.path.join(local_run, 'config.json')).read())['seed'] == config.seed
  assert os.path.isdir(os.path.join(local_run, 'checkpoints', '4'))
  assert os.listdir(os.path.join(local_run, 'tensorboard'))  # event files copied up
  assert [row['step'] for row in read_metrics(workdir)] == [1, 2, 3, 4]
  # The corpus and its tokenizer were built in staging and copied to the bucket.
  tokenizers = os.listdir(os.path.join(gcs, 'data', 'corpora', 'tokenizers'))
  assert len(tokenizers) == 1 and tokenizers[0].endswith('.model')
  assert any(name == 'dataset_info.json'
             for _, _, files in os.walk(os.path.join(gcs, 'data', 'corpora')) for name in files)

  # A crash after step 4's checkpoint: a logged step 5 and a torn line; the resume drops both.
  metrics = os.path.join(local_run, 'metrics.jsonl')
  with open(metrics, 'a', encoding='utf-8') as f:
    f.write(json.dumps({'step': 5, 'ntp_loss': 1.0}) + '\n{"step": 6, "ntp')
  # A fresh staging directory (another host): the corpus comes down from the bucket.
  monkeypatch.setenv('RLP_JAX_STAGING_DIR', str(tmp_path / 'staging2'))
  second = train(config, workdir)
  assert second.first_step == 4
  assert [row['step'] for row in read_metrics(workdir)] == list(range(1, 9))
  assert sorted(int(s) for s in os.listdir(os.path.join(local_run, 'checkpoints'))
                if s.isdigit())[-1] == 8
  assert not [name for name in os.listdir(local_run) if '.tmp' in name or 'probe' in name]

  # The cached tokenizer read back by its gs:// path.
  config.tokenizer.path = f'gs://data/corpora/tokenizers/{tokenizers[0]}'
  tokenizer = build_tokenizer(config.tokenizer, config.data)
  assert tokenizer.decode(tokenizer.encode('12 + 3')) == '12 + 3'


def test_url_metrics_writer_never_appends_and_flushes_whole_files(gcs):
  writer = MetricsWriter('gs://runs/m', flush_seconds=0.0)
  writer.write(1, {'ntp_loss': 2.0})
  assert [row['step'] for row in read_metrics('gs://runs/m')] == [1]
  writer.write(2, {'ntp_loss': float('nan')})
  writer.close()
  assert [row['ntp_loss'] for row in read_metrics('gs://runs/m')] == [2.0, None]
  assert os.listdir(os.path.join(gcs, 'runs', 'm', 'tensorboard'))
  resumed = MetricsWriter('gs://runs/m', resume_step=1)
  resumed.close()
  assert [row['step'] for row in read_metrics('gs://runs/m')] == [1]


def test_bad_url_workdirs_are_one_line_naming_the_path(gcs):
  with pytest.raises(WorkdirError, match='unknown URL scheme') as raised:
    check_workdir('nosuchscheme://bucket/run')
  assert 'nosuchscheme://bucket/run' in str(raised.value)
  with pytest.raises(WorkdirError) as raised:
    prepare_workdir('gs://no-such-bucket/run')
  message = str(raised.value)
  assert message.startswith('--workdir gs://no-such-bucket/run is not usable')
  assert '\n' not in message
  with open(os.path.join(gcs, 'runs', 'afile'), 'w', encoding='utf-8') as f:
    f.write('x')
  with pytest.raises(WorkdirError, match='is a file'):
    check_workdir('gs://runs/afile')
  assert prepare_workdir('gs://runs/fresh') == 'gs://runs/fresh'
  assert os.listdir(os.path.join(gcs, 'runs', 'fresh')) == []  # the probe is gone


def test_local_paths_resolve_as_before(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert paths.resolve_str('run', '--workdir') == str(tmp_path / 'run')
  assert paths.resolve_str('~/x', '--workdir') == os.path.expanduser('~/x')
  assert paths.join('gs://b/run', 'checkpoints') == 'gs://b/run/checkpoints'
  with pytest.raises(UserInputError, match='data.data_dir'):
    paths.resolve('ftpx://h/d', 'data.data_dir')
