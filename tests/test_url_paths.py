"""URL paths (`gs://…`) for --workdir, data.data_dir, data.files, tokenizer.path,
model.init_from, export --out and eval benchmarks, through rlp_jax.paths.

No network here: tests/local_gcs.py maps `gs://<bucket>/…` to a local directory below fsspec
(gcsfs's place) and below orbax's tensorstore spec, so rlp_jax, etils.epath's gs:// path class and
fsspec backend, and orbax's gs:// branches run as they do against a bucket. The stand-in logs every
read (`record_reads`), which shows what a process fetched from the bucket.

The 8-device check runs in a fresh interpreter started on this file (`python -m
tests.test_url_paths eight DIR`), which prints one JSON line for the test to check."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import jax
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file

from rlp_jax import paths
from rlp_jax.config import base_config
from rlp_jax.data.corpora import load_documents
from rlp_jax.data.tfds_builders import resolve_files
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.errors import DataError, UserInputError, WorkdirError
from rlp_jax.eval.benchmarks import load_benchmark
from rlp_jax.eval.checkpoint_eval import load_evaluated_params
from rlp_jax.interop import hf_checkpoint
from rlp_jax.interop.checkpoint_init import load_init_params
from rlp_jax.interop.export import export_run
from rlp_jax.interop.param_slices import normalise
from rlp_jax.interop.safetensors_io import SafetensorsReader, write_safetensors
from rlp_jax.models import registry
from rlp_jax.train.checkpointing import Checkpointer
from rlp_jax.train.loop import train
from rlp_jax.train.metrics_writer import MetricsWriter, read_metrics
from rlp_jax.train.startup_checks import check_workdir, prepare_workdir
from rlp_jax.train.state import create_train_state
from rlp_jax.train.state_sharding import param_shardings

from tests import helpers
from tests.local_gcs import make_bucket, record_reads, use_local_gcs
from tests.test_init_loading import mesh_and_rules, tiny_config, write_hf_dir


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


# ---------------------------------------------------------------------------------------------
# model.init_from, export --out, data.files and benchmarks at gs:// URLs.


def _write_hf_dirs(root: str, config: Any) -> dict[str, str]:
  """The same random tensors as a single-file and as a sharded HF directory in bucket `models`
  (written locally under the stand-in's root); {kind: its gs:// URL}."""
  sharded = os.path.join(root, 'models', 'sharded')
  write_hf_dir(sharded, config, seed=3)  # shards of at most 20 kB + the index
  tensors: dict[str, np.ndarray] = {}
  for name in sorted(os.listdir(sharded)):
    if name.endswith('.safetensors'):
      tensors.update(load_file(os.path.join(sharded, name)))
  single = os.path.join(root, 'models', 'single')
  write_safetensors(single, [(name, array.shape, array.dtype) for name, array in tensors.items()],
                    tensors.__getitem__)
  with open(os.path.join(sharded, 'config.json'), 'rb') as f:
    paths.write_bytes(os.path.join(single, 'config.json'), f.read())
  return {'single': 'gs://models/single', 'sharded': 'gs://models/sharded'}


def _bucket_path(root: str, url: str) -> str:
  return os.path.join(root, url[len('gs://'):])


def _safetensors_bytes(directory: str) -> int:
  return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory)
             if name.endswith('.safetensors'))


class SliceAttribution:
  """Wraps jax.make_array_from_callback: the bytes read from the bucket while each distinct slice
  of each parameter was built, then, per device, the bytes its slices cost. In one process every
  device is local, so this is what a process holding only that device would fetch, plus what no
  slice caused (config.json, the index, the safetensors headers: every process reads those)."""

  def __init__(self, log: list, monkeypatch: Any):
    self.log = log
    self.per_device: dict[Any, int] = {}
    self.attributed = 0
    original = jax.make_array_from_callback
    attribution = self

    def make_array(shape, sharding, callback, dtype=None):
      costs: dict[Any, int] = {}

      def measured(index):
        before = len(log)
        block = callback(index)
        cost = sum(size for _, _, size in log[before:])
        key = normalise(index, tuple(shape))
        costs[key] = costs.get(key, 0) + cost
        attribution.attributed += cost
        return block
      array = original(shape, sharding, measured, dtype=dtype)
      for device, index in sharding.addressable_devices_indices_map(tuple(shape)).items():
        attribution.per_device[device] = (attribution.per_device.get(device, 0)
                                          + costs[normalise(index, tuple(shape))])
      return array
    monkeypatch.setattr(jax, 'make_array_from_callback', make_array)

  def device_bytes(self) -> list[int]:
    """Per device, sorted: its slices' bytes plus the bytes no slice caused."""
    shared = sum(size for _, _, size in self.log) - self.attributed
    return sorted(own + shared for own in self.per_device.values())


def run_eight_devices(directory: str) -> dict:
  """8 CPU devices, mesh fsdp 4 × tensor 2: θ from the gs:// HF directories (single file and
  sharded) against the same directories read as local paths, and what was read from the bucket:
  in all, per read, and per device."""
  monkeypatch = pytest.MonkeyPatch()
  root = use_local_gcs(os.path.join(directory, 'gcs'), monkeypatch)
  make_bucket(root, 'models')
  config = tiny_config('dense')
  urls = _write_hf_dirs(root, config)
  mesh, rules = mesh_and_rules(4, 2)
  shardings = param_shardings(config, mesh, rules)
  results: dict = {'devices': jax.device_count(), 'cases': {}}
  for kind, url in urls.items():
    local = _bucket_path(root, url)
    expected, _ = load_init_params(local, config, shardings)
    with pytest.MonkeyPatch.context() as patch:
      log = record_reads(patch)
      attribution = SliceAttribution(log, patch)
      loaded, source = load_init_params(url, config, shardings)
    problems = []
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(loaded),
                                 jax.tree.leaves(expected)):
      if not (got.dtype == want.dtype and got.sharding == want.sharding
              and np.array_equal(np.asarray(got), np.asarray(want))):
        problems.append(jax.tree_util.keystr(path))
    tensor_reads = [size for name, _, size in log if name.endswith('.safetensors')]
    results['cases'][kind] = {
        'source': source, 'problems': problems, 'file_bytes': _safetensors_bytes(local),
        'tensor_bytes_read': sum(tensor_reads), 'reads': len(tensor_reads),
        'largest_read': max(tensor_reads), 'device_bytes': attribution.device_bytes(),
        'other_files': sorted({name.rsplit('/', 1)[-1] for name, _, _ in log
                               if not name.endswith('.safetensors')})}
  return results


def _python(args: list[str], env: dict) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, '-m', 'tests.test_url_paths', *args],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          cwd=helpers.REPO)


@pytest.mark.subprocess
def test_init_from_a_gs_hugging_face_directory_reads_only_each_devices_slices(tmp_path):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES='8', JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=helpers.REPO)
  process = _python(['eight', str(tmp_path)], env)
  output = process.communicate(timeout=300)[0]
  assert process.returncode == 0, output[-4000:]
  lines = [line for line in output.splitlines() if line.startswith('{')]
  assert lines, output[-4000:]
  results = json.loads(lines[-1])
  assert results['devices'] == 8
  for case, row in results['cases'].items():
    print(f"{case}: {row['reads']} reads, {row['tensor_bytes_read']} of {row['file_bytes']} "
          f"safetensors bytes; per device {row['device_bytes'][0]}..{row['device_bytes'][-1]}; "
          f"largest read {row['largest_read']}")
    # Bitwise the local load, in the same shardings.
    assert row['problems'] == [], (case, row['problems'][:5])
    assert row['source'] == f'Hugging Face checkpoint gs://models/{case}'
    # Every byte of the files read once, however many devices hold a slice: headers and the
    # distinct slices, which together are each tensor once.
    assert row['tensor_bytes_read'] == row['file_bytes'], (case, row)
    # No read is a whole tensor's worth of a sharded one: reads are runs of a slice (the largest
    # is a header).
    assert row['largest_read'] < 0.02 * row['file_bytes'], (case, row)
    # What a process holding one device fetches: its slices (1/8 or 1/4 of each sharded tensor,
    # the small replicated ones whole) plus config.json, the index and the headers.
    assert row['device_bytes'][-1] < 0.25 * row['file_bytes'], (case, row)
    assert 'config.json' in row['other_files']
  assert 'model.safetensors.index.json' in results['cases']['sharded']['other_files']


def test_export_to_a_gs_out_and_init_from_gs_checkpoints(gcs, tmp_path):
  """export --workdir=gs://… --out=gs://… writes the same files as a local --out; the export,
  sharded, loads back bitwise from gs://; the run's checkpoint loads as model.init_from and for
  rlp_jax.eval from its gs:// workdir."""
  make_bucket(gcs, 'exports')
  config = tiny_config('dense')
  _, abstract = registry.abstract_params(config)
  rng = np.random.default_rng(5)
  params = jax.tree.map(lambda leaf: jax.numpy.asarray(
      rng.normal(0.0, 0.2, leaf.shape).astype(leaf.dtype)), abstract)
  # A run as train() leaves it, in the bucket, with an hf_json tokenizer in the bucket too.
  run = os.path.join(gcs, 'runs', 'w')
  os.makedirs(os.path.join(gcs, 'data', 'tok'))
  helpers.train_byte_level_bpe(os.path.join(gcs, 'data', 'tok', 'tokenizer.json'), vocab_size=300)
  with open(os.path.join(gcs, 'data', 'tok', 'tokenizer_config.json'), 'w') as f:
    json.dump({'eos_token': '</s>', 'pad_token': '<pad>', 'bos_token': None}, f)
  run_config = base_config()
  run_config.model = config
  run_config.tokenizer.update(dict(kind='hf_json', path='gs://data/tok'))
  os.makedirs(run)
  with open(os.path.join(run, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(run_config.to_json_best_effort(indent=2))
  checkpointer = Checkpointer(os.path.join(run, 'checkpoints'), every=1, keep=2)
  state = create_train_state(params, optax.adamw(1e-3), seed=0, with_teacher=True)
  checkpointer.maybe_save(2, state.replace(step=jax.numpy.asarray(2, jax.numpy.int32)),
                          force=True)
  checkpointer.close()

  step, files = export_run('gs://runs/w', 'gs://exports/q', max_shard_size='20KB')
  local_step, local_files = export_run('gs://runs/w', str(tmp_path / 'q'), max_shard_size='20KB')
  assert step == local_step == 2 and files == local_files
  written = sorted(os.listdir(os.path.join(gcs, 'exports', 'q')))
  assert written == sorted(files + ['model.safetensors.index.json'])  # sharded, + the index
  assert 'tokenizer.json' in written and 'tokenizer_config.json' in written
  for name in written:  # byte for byte what a local --out gets
    with open(os.path.join(gcs, 'exports', 'q', name), 'rb') as a, open(tmp_path / 'q' / name,
                                                                         'rb') as b:
      assert a.read() == b.read(), name

  reloaded = hf_checkpoint.load_hf_params('gs://exports/q', config)
  restored, source = load_init_params('gs://runs/w', config)
  assert source == 'rlp_jax checkpoint gs://runs/w/checkpoints (θ of step 2)'
  evaluated, eval_step, _ = load_evaluated_params(run_config, 'gs://runs/w', None)
  assert eval_step == 2
  for tree in (reloaded, restored, evaluated):
    assert jax.tree.structure(tree) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
      assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(DataError, match='^model.init_from: no such directory gs://exports/none$'):
    load_init_params('gs://exports/none', config)


def test_data_files_and_benchmarks_at_gs_urls(gcs, tmp_path):
  texts = os.path.join(gcs, 'data', 'texts')
  os.makedirs(os.path.join(texts, 'more'))
  documents = [f'Document {i}: {i} + {i} = {2 * i}.' for i in range(6)]
  for i, text in enumerate(documents[:3]):
    with open(os.path.join(texts, f'd{i}.txt'), 'w', encoding='utf-8') as f:
      f.write(text)
  with open(os.path.join(texts, 'more', 'rest.jsonl'), 'w', encoding='utf-8') as f:
    f.write(''.join(json.dumps({'text': text}) + '\n' for text in documents[3:]))
  with open(os.path.join(texts, 'notes.md'), 'w', encoding='utf-8') as f:
    f.write('not a corpus file')

  pattern = 'gs://data/texts/d*.txt,gs://data/texts/*/rest.jsonl'
  assert resolve_files(pattern) == ['gs://data/texts/d0.txt', 'gs://data/texts/d1.txt',
                                    'gs://data/texts/d2.txt', 'gs://data/texts/more/rest.jsonl']
  config = base_config()
  config.data.update(dict(corpus='local_text', files=pattern, data_dir=str(tmp_path / 'data')))
  loaded = list(load_documents(config.data, 'train')) + list(load_documents(config.data,
                                                                            'validation'))
  assert loaded == documents
  with pytest.raises(DataError, match='^data.files: no file matches gs://data/texts/x'):
    resolve_files('gs://data/texts/x*.txt')
  with pytest.raises(UserInputError, match='`\\*\\*` is not supported in a URL'):
    resolve_files('gs://data/**/*.txt')
  with pytest.raises(DataError, match='gs://data/texts/notes.md is neither .txt nor .jsonl'):
    resolve_files('gs://data/texts/*.*')

  with open(os.path.join(gcs, 'data', 'gsm.jsonl'), 'w', encoding='utf-8') as f:
    f.write(json.dumps({'question': 'What is 2 + 3?', 'answer': 'It is 5. #### 5'}) + '\n')
  problems = load_benchmark('gs://data/gsm.jsonl')
  assert [(p.answer, p.source) for p in problems] == [('5', 'gsm.jsonl:1')]


def test_a_damaged_safetensors_file_at_a_url_is_one_line_naming_it(gcs):
  make_bucket(gcs, 'models')
  config = tiny_config('dense')
  directory = os.path.join(gcs, 'models', 'cut')
  write_hf_dir(directory, config)
  shard = 'model-00001-of-00014.safetensors'
  with open(os.path.join(directory, shard), 'rb') as f:
    data = f.read()
  with open(os.path.join(directory, shard), 'wb') as f:
    f.write(data[:-100])  # an upload cut short
  with pytest.raises(DataError) as raised:
    hf_checkpoint.load_hf_params('gs://models/cut', config)
  message = str(raised.value)
  assert f'gs://models/cut/{shard} ends before the data of tensor' in message
  assert '\n' not in message
  with open(os.path.join(directory, shard), 'wb') as f:
    f.write(b'\xff' * 16)  # not a safetensors file
  with SafetensorsReader('gs://models/cut') as reader:
    with pytest.raises(DataError, match=f'^cannot open safetensors file gs://models/cut/{shard}'):
      reader.shape('model.embed_tokens.weight')


def _main(argv: list[str]) -> None:
  if argv[0] != 'eight':
    raise SystemExit(f'unknown mode {argv[0]}')
  print(json.dumps(run_eight_devices(argv[1])), flush=True)


if __name__ == '__main__':
  _main(sys.argv[1:])
