"""Command line: an rlp_jax training run → a complete Hugging Face model directory.

  python -m rlp_jax.interop.export --workdir=DIR --out=HF_DIR [--step=N] [--dtype=bfloat16]
      [--max_shard_size=5GB]

Reads the config the run wrote (`DIR/config.json`), restores θ of the latest (or given) step from
`DIR/checkpoints`, and writes into HF_DIR what transformers' `AutoTokenizer.from_pretrained` and
`AutoModelForCausalLM.from_pretrained` load:

- the weights: model.safetensors, or shards + model.safetensors.index.json (the weight files of an
  earlier export there are replaced; no other file is touched);
- config.json: the architecture, the run's pad/bos/eos ids and, when the run started from a
  Hugging Face directory (`model.init_from`), every other key of that directory's config.json
  (`max_position_embeddings`, `max_window_layers`, ... keep the source's values;
  models/hf_names/config_json.py); without one `max_position_embeddings` is the run's longest
  sequence, `data.seq_len` + `rlp.max_thought_tokens` + 2 (a thought and its two delimiters);
- the tokenizer (interop/tokenizer_export.py): an 'hf_json' run's tokenizer.json and the files
  beside it; a sentencepiece run's model converted to a tokenizer.json that encodes every text as
  rlp_jax does, with tokenizer_config.json and the model as tokenizer.model. It is read (and
  converted) before θ is restored and anything is written.

DIR and HF_DIR may be local or URLs (gs://bucket/run, ...): every file is read and written through
rlp_jax.paths. Every error is one line `rlp_jax.interop.export: error: ...` and exit status 2.
"""
from __future__ import annotations

from collections.abc import Callable
import functools
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections

from rlp_jax import paths
from rlp_jax.config.saved_run import saved_run_config
from rlp_jax.errors import DataError, UserInputError
from rlp_jax.interop.checkpoint_init import find_checkpoint_dir, restore_checkpoint_params
from rlp_jax.interop.hf_checkpoint import export_hf_checkpoint, is_hf_checkpoint, read_hf_config
from rlp_jax.interop.tokenizer_export import tokenizer_files

_WORKDIR = flags.DEFINE_string('workdir', None, 'rlp_jax run dir (config.json, checkpoints/).')
_OUT = flags.DEFINE_string('out', None, 'Directory to write the Hugging Face checkpoint into.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'],
                           'Stored dtype (default: the parameters\' dtype).')
_MAX_SHARD_SIZE = flags.DEFINE_string('max_shard_size', '5GB',
                                      'Shard the safetensors above this size (e.g. 5GB, 500MB).')

# Groups of the run's config.json the export reads: every key of the first two must be known; of
# the others (where the cached tokenizer is, the context length) unknown keys are left out.
_STRICT_GROUPS = ('model', 'tokenizer')
_LENIENT_GROUPS = ('data', 'rlp')


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved in `workdir`/config.json, over `base_config()` defaults: its
  model and tokenizer groups (every key must be known), and of its data and rlp groups what this
  version knows (where the cached tokenizer is, the context length)."""
  try:
    return saved_run_config(workdir, groups=_STRICT_GROUPS + _LENIENT_GROUPS,
                            lenient=_LENIENT_GROUPS)
  except DataError as e:
    raise DataError(f'--workdir: {e}') from None


def context_length(config: ml_collections.ConfigDict) -> int:
  """The longest sequence the run's model processed: a row, with RLP plus a thought of
  `rlp.max_thought_tokens` tokens and its `<think>`/`</think>`."""
  thought = config.rlp.max_thought_tokens + 2 if config.rlp.enabled else 0
  return int(config.data.seq_len + thought)


def source_config(init_from: str) -> dict[str, Any] | None:
  """The config.json of the Hugging Face directory the run started from (None: none, or an
  rlp_jax checkpoint; a source that is gone is logged and left out)."""
  if not init_from:
    return None
  try:
    path = paths.resolve_str(init_from, 'model.init_from')
    if not is_hf_checkpoint(path):
      return None
    return read_hf_config(path)
  except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
    logging.warning('model.init_from %s: cannot read its config.json (%s); config.json gets the '
                    "run's values only", init_from, paths.reason(e))
    return None


def _check_out_dir(out_dir: str, workdir: str) -> None:
  """One line when `out_dir` is a file, the run directory, or cannot be created."""
  if out_dir.rstrip('/') == workdir.rstrip('/'):
    raise DataError(f'--out: {out_dir} is the run directory (its config.json would be replaced); '
                    'name another directory')
  try:
    if paths.exists(out_dir) and not paths.is_dir(out_dir):
      raise DataError(f'--out: {out_dir} is a file, not a directory')
    paths.makedirs(out_dir)
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
    raise DataError(f'--out: cannot write {out_dir}: {paths.reason(e)}') from None


def export_run(workdir: str, out_dir: str, step: int | None = None, dtype: str | None = None,
               max_shard_size: str | None = '5GB') -> tuple[int, list[str]]:
  """Exports θ of `step` (default latest) of the run in `workdir` with its tokenizer to `out_dir`
  (either local or a URL); returns (step, written file names)."""
  workdir = paths.resolve_str(workdir, '--workdir')
  out_dir = paths.resolve_str(out_dir, '--out')
  config = run_config(workdir)
  checkpoint_dir = find_checkpoint_dir(workdir)
  if checkpoint_dir is None:
    raise DataError(f'--workdir: {workdir} has no checkpoints')
  _check_out_dir(out_dir, workdir)
  special_ids, tokenizer = tokenizer_files(config.tokenizer, config.data, config.model.init_from)
  params, step = restore_checkpoint_params(checkpoint_dir, config.model, step=step)
  extra = {'max_position_embeddings': context_length(config), **special_ids}
  source = source_config(config.model.init_from)
  files = _writing(out_dir, lambda: export_hf_checkpoint(
      params, config.model, out_dir, dtype=dtype, max_shard_size=max_shard_size,
      extra_config=extra, source_config=source))
  for name, contents in tokenizer.items():
    _writing(out_dir, functools.partial(paths.write_atomically, paths.join(out_dir, name),
                                        contents))
  return step, files + list(tokenizer)


def _writing(out_dir: str, write: Callable[[], Any]) -> Any:
  """`write()`, its OSError (disk full, permissions, ...) as one line naming `out_dir`."""
  try:
    return write()
  except OSError as e:
    raise DataError(f'--out: cannot write {out_dir}: {paths.reason(e)}') from None


def _fail(message: str) -> None:
  print(f'rlp_jax.interop.export: error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}')
  if not _WORKDIR.value or not _OUT.value:
    _fail('--workdir and --out are required')
  try:
    step, files = export_run(_WORKDIR.value, _OUT.value, _STEP.value, _DTYPE.value,
                             _MAX_SHARD_SIZE.value)
    out_dir = paths.resolve_str(_OUT.value, '--out')
  except UserInputError as error:
    _fail(' '.join(str(error).splitlines()))
  print(f'[rlp_jax] exported step {step} of {_WORKDIR.value} to {out_dir}: {", ".join(files)}')


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main)
