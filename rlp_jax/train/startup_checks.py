"""Start-up checks of the training loop that need more than the config: the workdir and the loaded
documents. Each failure is one line naming the path or the config key, raised before anything is
compiled (docs/failure_modes.md lists them)."""
from __future__ import annotations

import os
import tempfile
from typing import Any
import uuid

from rlp_jax import paths
from rlp_jax.data.batches import DocumentBatches
from rlp_jax.errors import ConfigError, UserInputError, WorkdirError


def check_workdir(workdir: str) -> str:
  """The workdir as the one path type resolves it (local: absolute; a URL: as given); WorkdirError
  when it, or (local) a directory above it, is not a directory, or a URL names an unknown scheme.
  Reads only (a workdir that does not exist yet is fine)."""
  try:
    resolved = paths.resolve_str(workdir, '--workdir')
  except UserInputError as error:
    raise WorkdirError(str(error)) from None
  if paths.is_url(resolved):  # an object store: only the workdir itself can be a file
    try:
      if paths.exists(resolved) and not paths.is_dir(resolved):
        raise WorkdirError(f'--workdir {resolved} is a file, not a directory')
    except WorkdirError:
      raise
    except Exception as error:  # pylint: disable=broad-exception-caught
      raise WorkdirError(f'--workdir {resolved} is not usable: {paths.reason(error)}') from None
    return resolved
  path = resolved
  while True:
    if os.path.lexists(path) and not os.path.isdir(path):
      if path == resolved:
        raise WorkdirError(f'--workdir {resolved} is a file, not a directory')
      raise WorkdirError(f'--workdir {resolved}: {path} is a file, not a directory')
    parent = os.path.dirname(path)
    if parent == path:
      return resolved
    path = parent


PROBE_PREFIX = '.rlp_jax_write_probe_'


def prepare_workdir(workdir: str) -> str:
  """Creates the workdir (and its parents) and proves it writable with a probe file; returns the
  resolved path. WorkdirError, naming the path and the reason, when it cannot be used (a bucket
  that does not exist, no permission, no backend for the scheme)."""
  workdir = check_workdir(workdir)
  try:
    if paths.is_url(workdir):
      paths.makedirs(workdir)
      probe = paths.as_path(paths.join(workdir, f'{PROBE_PREFIX}{uuid.uuid4().hex}'))
      probe.write_bytes(b'')
      probe.unlink(missing_ok=True)
    else:
      os.makedirs(workdir, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=workdir, prefix=PROBE_PREFIX):
        pass
  except Exception as error:  # pylint: disable=broad-exception-caught  # any backend's error
    raise WorkdirError(f'--workdir {workdir} is not usable: {paths.reason(error)}') from None
  return workdir


def check_documents(batches: DocumentBatches, description: str, rlp_enabled: bool,
                    min_context: int) -> None:
  """ConfigError when the documents cannot fill a batch without repeating one, or (RLP) when no
  document's row (bos + text + eos, cut to data.seq_len) reaches past `rlp.min_context` tokens, so
  no position could ever be scored. Stops at the first long enough document."""
  if batches.num_documents < batches.batch_size:
    raise ConfigError(f'config key `data.batch_size` ({batches.batch_size}) is larger than the '
                      f'{batches.num_documents} documents of {description}: every batch would '
                      'repeat documents; lower data.batch_size or add documents')
  if not rlp_enabled:
    return
  for index in range(batches.num_documents):
    if len(batches.document_tokens(index)) > min_context:
      return
  raise ConfigError(f'config key `rlp.min_context` ({min_context}): every document of '
                    f'{description} has at most {min_context} tokens with bos and eos, so no '
                    'position can be scored; lower rlp.min_context or use longer documents')


_BASE_MODEL_EXAMPLES = {'dense': '/path/to/Qwen3-1.7B-Base',
                        'hybrid': '/path/to/NVIDIA-Nemotron-Nano-12B-v2-Base'}


def check_base_model(model_config: Any) -> None:
  """A config that continues a pretrained base (`model.allow_random_init=False`, the recipes)
  and names none: one line naming the key and an example, before anything is built. Called only
  when the workdir has no checkpoint to resume."""
  if model_config.init_from or model_config.allow_random_init:
    return
  example = _BASE_MODEL_EXAMPLES.get(model_config.family, '/path/to/base-model')
  raise ConfigError(
      'config key `model.init_from` is required: this config continues a pretrained base model '
      f'(e.g. --config.model.init_from={example}, a Hugging Face safetensors directory or an '
      'rlp_jax checkpoint); --config.model.allow_random_init=True trains from random weights '
      'instead')
