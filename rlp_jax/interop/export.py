"""Command line: an rlp_jax training run → a Hugging Face checkpoint directory.

  python -m rlp_jax.interop.export --workdir=DIR --out=HF_DIR [--step=N] [--dtype=bfloat16]
      [--max_shard_size=5GB]

Reads the model config the run wrote (`DIR/config.json`), restores θ of the latest (or given)
step from `DIR/checkpoints`, and writes config.json + safetensors that transformers'
`AutoModelForCausalLM.from_pretrained(HF_DIR)` loads. With an 'hf_json' tokenizer, its
tokenizer.json (and tokenizer_config.json) are copied next to the weights and the pad/bos/eos ids
written into config.json. DIR and HF_DIR may be local or URLs (gs://bucket/run, ...): every file
is read and written through rlp_jax.paths.
"""
from __future__ import annotations

import json
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections

from rlp_jax import paths
from rlp_jax.config import base_config
from rlp_jax.data import hf_tokenizer
from rlp_jax.errors import ConfigError, DataError, UserInputError
from rlp_jax.interop.checkpoint_init import find_checkpoint_dir, restore_checkpoint_params
from rlp_jax.interop.hf_checkpoint import export_hf_checkpoint

_WORKDIR = flags.DEFINE_string('workdir', None, 'rlp_jax run dir (config.json, checkpoints/).')
_OUT = flags.DEFINE_string('out', None, 'Directory to write the Hugging Face checkpoint into.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the latest).')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'],
                           'Stored dtype (default: the parameters\' dtype).')
_MAX_SHARD_SIZE = flags.DEFINE_string('max_shard_size', '5GB',
                                      'Shard the safetensors above this size (e.g. 5GB, 500MB).')


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run saved in `workdir`/config.json, over `base_config()` defaults."""
  path = paths.join(workdir, 'config.json')
  try:
    found = paths.is_file(path)
    saved = json.loads(paths.read_bytes(path)) if found else None
  except ValueError as e:
    raise DataError(f'cannot read {path}: {e}') from e
  except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
    raise DataError(f'cannot read {path}: {paths.reason(e)}') from None
  if not found:
    raise DataError(f'--workdir: no config.json in {workdir} (not an rlp_jax run directory)')
  config = base_config()
  for group in ('model', 'tokenizer'):
    for key, value in saved.get(group, {}).items():
      if key not in config[group]:
        raise ConfigError(f'{path}: unknown key `{group}.{key}`')
      config[group][key] = value
  return config


def export_run(workdir: str, out_dir: str, step: int | None = None, dtype: str | None = None,
               max_shard_size: str | None = '5GB') -> tuple[int, list[str]]:
  """Exports θ of `step` (default latest) of the run in `workdir` to `out_dir` (either local or
  a URL); returns (step, files)."""
  workdir = paths.resolve_str(workdir, '--workdir')
  out_dir = paths.resolve_str(out_dir, '--out')
  config = run_config(workdir)
  checkpoint_dir = find_checkpoint_dir(workdir)
  if checkpoint_dir is None:
    raise DataError(f'--workdir: {workdir} has no checkpoints')
  params, step = restore_checkpoint_params(checkpoint_dir, config.model, step=step)
  extra, tokenizer_files = _tokenizer_extras(config.tokenizer)
  files = export_hf_checkpoint(params, config.model, out_dir, dtype=dtype,
                               max_shard_size=max_shard_size, extra_config=extra)
  for source in tokenizer_files:
    name = paths.as_path(source).name
    paths.write_bytes(paths.join(out_dir, name), paths.read_bytes(source))
    files.append(name)
  return step, files


def _tokenizer_extras(tokenizer_config: Any) -> tuple[dict[str, Any], list[str]]:
  """config.json special-token ids and the files to copy, for an 'hf_json' tokenizer."""
  if tokenizer_config.kind != 'hf_json':
    return {}, []
  tokenizer = hf_tokenizer.HFJsonTokenizer(tokenizer_config.path)
  extra = {'pad_token_id': tokenizer.pad_id, 'bos_token_id': tokenizer.bos_id,
           'eos_token_id': tokenizer.eos_id}
  files = [tokenizer.path]
  config_file = paths.join(paths.as_path(tokenizer.path).parent,
                           hf_tokenizer.TOKENIZER_CONFIG_FILE)
  if paths.is_file(config_file):
    files.append(config_file)
  return extra, files


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
    _fail(str(error))
  print(f'[rlp_jax] exported step {step} of {_WORKDIR.value} to {out_dir}: {", ".join(files)}')


if __name__ == '__main__':
  logging.set_verbosity(logging.WARNING)
  app.run(main)
