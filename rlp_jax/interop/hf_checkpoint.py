"""Hugging Face checkpoint directories ↔ rlp_jax params, for every family whose record has HF names.

  load_hf_params(hf_dir, model_config)            safetensors → params pure dict
  params_from_tensors(tensors, model_config)       the same from a dict (e.g. a torch state dict)
  export_hf_checkpoint(params, model_config, out)  params → config.json + safetensors (sharded)
  model_config_from_hf(hf_dir)                     config.json → rlp_jax `model.*` keys

The parameter tree comes from `registry.abstract_params` (nothing allocated); every expected
tensor must be present with the right shape (checked from the file headers before any data is
read); parameters are made one at a time and cast to `model.param_dtype`. Given shardings, each
is created in its sharding by `jax.make_array_from_callback`, reading only the slices this
process's devices hold (interop/param_slices.py; interop/safetensors_io.py reads a slice of a
local file memory-mapped, of a file at a URL with ranged reads). Directories are local or URLs
(gs://, ...: rlp_jax.paths). The tensor names, layouts and config.json translation of each family
are its record's `hf` (models/hf_names/).
"""
from __future__ import annotations

from collections.abc import Mapping
import json
import math
import re
from typing import Any, Protocol

import jax
import ml_dtypes
import numpy as np

from rlp_jax import paths
from rlp_jax.errors import ConfigError, DataError
from rlp_jax.interop.param_slices import normalise, param_slice
from rlp_jax.interop.safetensors_io import SafetensorsReader, has_safetensors, write_safetensors
from rlp_jax.models import registry
from rlp_jax.models.family import HFNames
from rlp_jax.models.layer_stack import is_scanned_tree, unrolled_params
from rlp_jax.models.hf_names.config_json import merged_config_json
from rlp_jax.models.hf_names.tensor_map import (TensorMapping, check_covers, get_at,
                                                path_to_string, set_at)

CONFIG_FILE = 'config.json'
Params = dict[str, Any]


def hf_names_of(model_config: Any) -> HFNames:
  """The Hugging Face names of `model.family` (ConfigError when the family has none)."""
  family = registry.family_of(model_config)
  if family.hf is None:
    known = sorted(name for name, f in registry.FAMILIES.items() if f.hf is not None)
    raise ConfigError(f'model.family {family.name!r} has no Hugging Face mapping (known: {known})')
  return family.hf


def is_hf_checkpoint(directory: str) -> bool:
  """A directory with config.json and safetensors (single file or index)."""
  return paths.is_file(paths.join(directory, CONFIG_FILE)) and has_safetensors(directory)


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  directory = paths.resolve_str(hf_dir, 'Hugging Face directory')
  path = paths.join(directory, CONFIG_FILE)
  if not paths.is_file(path):
    raise DataError(f'no {CONFIG_FILE} in {directory}')
  try:
    return json.loads(paths.read_bytes(path))
  except (OSError, ValueError) as e:
    raise DataError(f'cannot read {path}: {e}') from e


def model_config_from_hf(hf_dir: str) -> dict[str, Any]:
  """rlp_jax `model.*` keys (family and architecture; not dtypes) from a HF config.json.

  Apply them with `config.model.update(model_config_from_hf(path))`.
  """
  hf_config = read_hf_config(hf_dir)
  where = paths.join(paths.resolve_str(hf_dir, 'Hugging Face directory'), CONFIG_FILE)
  model_type = hf_config.get('model_type')
  known = [family.hf for family in registry.FAMILIES.values() if family.hf is not None]
  for names in known:
    if names.model_type == model_type:
      return names.model_keys(hf_config, where)
  raise DataError(f'{where}: model_type {model_type!r} is not supported (known: '
                  f'{sorted(names.model_type for names in known)})')


# Keys model_config_from_hf reports that do not change the function the weights compute.
_COMPUTE_CHOICES = ('mamba_chunk_size',)


def check_model_config_matches(model_config: Any, hf_dir: str,
                               tensor_names: set[str] | None = None) -> None:
  """ConfigError naming the first `model.*` key that differs from the checkpoint's config.json.

  A checkpoint whose config.json says tied also loads untied when transformers computes with its
  stored head (the family exports a tied head as a copy: NemotronH) and it stores every tensor of
  the untied model (`tensor_names`, when given).
  """
  expected = model_config_from_hf(hf_dir)
  for key, value in expected.items():
    if key in _COMPUTE_CHOICES:
      continue
    ours = model_config[key]
    same = (math.isclose(float(ours), float(value), rel_tol=1e-9)
            if isinstance(value, float) else ours == value)
    if key == 'tie_embeddings' and value and not ours and tensor_names is not None:
      same = _loads_untied(model_config, tensor_names)
    if not same:
      raise ConfigError(f'config key `model.{key}` is {ours!r} but the checkpoint {hf_dir} has '
                        f'{value!r} (set --config.model.{key}={value})')


def _loads_untied(model_config: Any, tensor_names: set[str]) -> bool:
  """Whether a checkpoint of `tensor_names` whose config.json says tied loads into the untied
  `model_config` (see check_model_config_matches)."""
  hf = hf_names_of(model_config)
  tied = model_config.copy_and_resolve_references()
  tied.tie_embeddings = True
  head_copies = [m for m in hf.mappings(tied) if m.copy]
  return bool(head_copies) and all(_resolve_name(m.hf_name, tensor_names, hf) is not None
                                   for m in hf.mappings(model_config))


class TensorSource(Protocol):
  """Named tensors with shapes known before reading (a `SafetensorsReader`, `InMemoryTensors`)."""
  directory: str

  def names(self) -> list[str]: ...

  def __contains__(self, name: str) -> bool: ...

  def file_of(self, name: str) -> str: ...

  def shape(self, name: str) -> tuple[int, ...]: ...

  def read(self, name: str) -> np.ndarray: ...

  def read_slice(self, name: str, box: tuple[slice, ...]) -> np.ndarray: ...


class InMemoryTensors:
  """A `TensorSource` over a dict of arrays (e.g. a torch state dict converted to numpy)."""

  def __init__(self, tensors: Mapping[str, Any], label: str = '<in-memory tensors>'):
    self._tensors = dict(tensors)
    self.directory = label

  def names(self) -> list[str]:
    return sorted(self._tensors)

  def __contains__(self, name: str) -> bool:
    return name in self._tensors

  def file_of(self, name: str) -> str:
    if name not in self._tensors:
      raise DataError(f'tensor {name} is missing from {self.directory}')
    return self.directory

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(np.shape(self._tensors[name]))

  def read(self, name: str) -> np.ndarray:
    return np.asarray(self._tensors[name])

  def read_slice(self, name: str, box: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(self._tensors[name])[box]


def _resolve_name(name: str, source: TensorSource | set[str], hf: HFNames) -> str | None:
  if name in source:
    return name
  for stored, alternative in hf.prefix_aliases:
    for a, b in ((stored, alternative), (alternative, stored)):
      if name.startswith(a) and b + name[len(a):] in source:
        return b + name[len(a):]
  return None


def load_hf_params(hf_dir: str, model_config: Any, shardings: Params | None = None) -> Params:
  """Params pure dict of `model_config` read from a HF safetensors checkpoint directory.

  ConfigError naming the `model.*` key that differs from the directory's config.json (when it
  has one); DataError (naming the tensor and file) when a tensor is missing, has the wrong shape,
  or the checkpoint holds tensors the model has no place for. `shardings` (a pytree like the
  params, of `jax.sharding.Sharding`): each parameter is created in its sharding and this process
  reads only the slices its devices hold; default: read whole, on the default device.
  """
  with SafetensorsReader(hf_dir) as reader:
    if paths.is_file(paths.join(reader.directory, CONFIG_FILE)):
      check_model_config_matches(model_config, reader.directory, set(reader.names()))
    return params_from_tensors(reader, model_config, shardings)


def params_from_tensors(source: TensorSource | Mapping[str, Any], model_config: Any,
                        shardings: Params | None = None) -> Params:
  """Params of `model_config` from HF-named tensors (a reader, or a dict such as a state dict)."""
  if not hasattr(source, 'read'):
    source = InMemoryTensors(source)
  hf = hf_names_of(model_config)
  _, abstract = registry.abstract_params(model_config)
  mappings = hf.mappings(model_config)
  check_covers(mappings, abstract, hf.model_type)
  names = {m.hf_name: _resolve_name(m.hf_name, source, hf) for m in mappings}
  missing = [m.hf_name for m in mappings if names[m.hf_name] is None and not m.copy]
  if missing:
    raise DataError(f'tensor {missing[0]} is missing from the checkpoint in {source.directory}'
                    + (f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''))
  present = [m for m in mappings if names[m.hf_name] is not None]
  unexpected = sorted(set(source.names()) - set(names.values()) - hf.ignored(model_config))
  if unexpected:
    raise DataError(f'{len(unexpected)} tensors in {source.directory} have no place in the '
                    f'{model_config.family} model (first: {unexpected[0]} in '
                    f'{source.file_of(unexpected[0])}); does the model config match the '
                    'checkpoint (e.g. model.tie_embeddings, model.num_layers)?')
  for m in present:  # every shape, from the headers, before reading any data
    name, expected = names[m.hf_name], m.hf_shape(abstract)
    found = source.shape(name)
    if found != expected:
      raise DataError(f'tensor {name} in {source.file_of(name)} has shape {list(found)}, '
                      f'expected {list(expected)} for '
                      f'{", ".join(map(path_to_string, m.param_paths))} of the configured model')
  for m in present:
    if m.copy:
      _check_copy(source, names, m, mappings)
  params: Params = {}
  for m in mappings:
    if m.copy:
      continue
    for part, (path, _) in enumerate(m.parts):
      sharding = None if shardings is None else get_at(shardings, path)
      set_at(params, path, _read_param(source, names[m.hf_name], m, part, abstract, sharding))
  return _in_tree_order(abstract, params)


def _check_copy(source: TensorSource, names: dict[str, str | None], copy: TensorMapping,
                mappings: list[TensorMapping]) -> None:
  """DataError unless the stored copy `copy` equals the tensor of the mapping that holds its
  parameter (as stored: both read whole, in the file's dtype)."""
  original = next(m for m in mappings if not m.copy and m.parts == copy.parts)
  name, original_name = names[copy.hf_name], names[original.hf_name]
  if not np.array_equal(source.read(name), source.read(original_name)):
    raise DataError(f'{name} in {source.file_of(name)} differs from {original_name}: the '
                    f'checkpoint computes with its own {name}, which the configured tied model '
                    'cannot hold (set model.tie_embeddings=False to load both)')


def _read_param(source: TensorSource, name: str, mapping: TensorMapping, part: int,
                abstract: Params, sharding: jax.sharding.Sharding | None) -> jax.Array:
  """One parameter from HF tensor `name`, cast to its dtype. With a sharding it is created in
  that layout by `jax.make_array_from_callback`: only the slices this process's devices hold are
  read, each once (devices holding the same slice share the read). Without, it is read whole and
  put on the default device."""
  path = mapping.parts[part][0]
  leaf = get_at(abstract, path)
  read_box = getattr(source, 'read_slice', None) or (lambda n, box: source.read(n)[box])

  def read(index: tuple[slice, ...]) -> np.ndarray:
    block = param_slice(mapping, part, abstract, index, lambda box: read_box(name, box),
                        lambda: source.read(name))
    return np.asarray(block).astype(leaf.dtype)

  full = tuple(slice(None) for _ in leaf.shape)
  if sharding is None:
    return jax.device_put(read(full))
  blocks: dict[tuple[tuple[int, int], ...], np.ndarray] = {}

  def read_once(index: tuple[slice, ...]) -> np.ndarray:
    key = normalise(index, tuple(leaf.shape))
    if key not in blocks:
      blocks[key] = read(index)
    return blocks[key]
  array = jax.make_array_from_callback(tuple(leaf.shape), sharding, read_once, dtype=leaf.dtype)
  blocks.clear()
  return array


def _in_tree_order(reference: Params, params: Params) -> Params:
  """`params` rebuilt with the key order of `reference` (pytree structures then compare equal)."""
  if not isinstance(reference, dict):
    return params
  return {key: _in_tree_order(reference[key], params[key]) for key in reference}


_EXPORT_DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}
_SIZE = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*$', re.IGNORECASE)
_UNITS = {None: 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9}


def parse_size(size: int | str | None) -> int | None:
  """Bytes from an int or a string like '5GB' / '200MB' (decimal units, as transformers uses)."""
  if size is None or isinstance(size, int):
    return size
  match = _SIZE.match(size)
  if not match:
    raise ConfigError(f"shard size must look like '5GB' or '200MB', got {size!r}")
  unit = match.group(2).upper() if match.group(2) else None
  return int(float(match.group(1)) * _UNITS[unit])


def export_hf_checkpoint(params: Params, model_config: Any, out_dir: str,
                         dtype: str | None = None,
                         max_shard_size: int | str | None = '5GB',
                         extra_config: Mapping[str, Any] | None = None,
                         source_config: Mapping[str, Any] | None = None) -> list[str]:
  """Writes `params` as a HF checkpoint (`from_pretrained` loads it): config.json + safetensors.

  `dtype` ('float32' | 'bfloat16'; default: the params' own) is the stored dtype. Checkpoints over
  `max_shard_size` are sharded with `model.safetensors.index.json`; the weight files of an earlier
  export there are replaced (safetensors_io.write_safetensors). Tensors are fetched from the
  devices one at a time. `extra_config` adds config.json keys (e.g. `eos_token_id`);
  `source_config` is the config.json of the checkpoint the run started from, whose keys the
  export keeps (models/hf_names/config_json.py). `out_dir` is local or a URL (gs://...). Returns
  the written file names.
  """
  if is_scanned_tree(params):  # HF checkpoints hold one tensor per layer: the unrolled layout
    params = unrolled_params(params, registry.layer_plan(model_config))
    model_config = registry.with_layout(model_config, False)
  hf = hf_names_of(model_config)
  mappings = hf.mappings(model_config)
  check_covers(mappings, params, hf.model_type)
  by_name = {m.hf_name: m for m in mappings}
  if dtype not in (None, *_EXPORT_DTYPES):
    raise ConfigError(f"export dtype must be 'float32' or 'bfloat16', got {dtype!r}")
  stored = np.dtype(_EXPORT_DTYPES[dtype] if dtype else jax.tree.leaves(params)[0].dtype)
  specs = [(m.hf_name, m.hf_shape(params), stored) for m in mappings]

  def produce(name: str) -> np.ndarray:
    m = by_name[name]
    host = {}
    for path in m.param_paths:
      set_at(host, path, np.asarray(jax.device_get(get_at(params, path))))
    return m.to_hf(host).astype(stored)

  out_dir = paths.resolve_str(out_dir, 'export directory')
  files = write_safetensors(out_dir, specs, produce, parse_size(max_shard_size))
  torch_dtype = 'bfloat16' if stored == np.dtype(ml_dtypes.bfloat16) else 'float32'
  hf_config = hf.hf_config(model_config, torch_dtype)
  hf_config.update(extra_config or {})
  hf_config = merged_config_json(hf_config, source_config)
  paths.write_atomically(paths.join(out_dir, CONFIG_FILE), json.dumps(hf_config, indent=2))
  return [CONFIG_FILE] + files
