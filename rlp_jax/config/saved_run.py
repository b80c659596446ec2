"""The config a training run saved in its workdir (`config.json`), read back over `base_config()`.

The training loop writes the whole config there when it starts; export, the evaluator and the
public API (`rlp_jax.load_model(RUN)`) read it back with `saved_run_config`. Keys the code no longer
declares are an error naming the key (the run was made by another version).
"""
from __future__ import annotations

import json
from typing import Any

import ml_collections

from rlp_jax import paths
from rlp_jax.config.schema import base_config
from rlp_jax.errors import ConfigError, DataError

CONFIG_FILE = 'config.json'


def read_saved_config(workdir: str) -> dict[str, Any]:
  """The JSON a run wrote to `workdir`/config.json (DataError: missing or unreadable)."""
  path = paths.join(workdir, CONFIG_FILE)
  try:
    found = paths.is_file(path)
    saved = json.loads(paths.read_bytes(path)) if found else None
  except ValueError as e:
    raise DataError(f'cannot read {path}: {e}') from e
  except Exception as e:  # pylint: disable=broad-exception-caught  # any backend's error
    raise DataError(f'cannot read {path}: {paths.reason(e)}') from None
  if not found:
    raise DataError(f'no {CONFIG_FILE} in {workdir} (not an rlp_jax run directory)')
  return saved


def saved_run_config(workdir: str, groups: tuple[str, ...] | None = None,
                     lenient: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """`base_config()` with the values `workdir`/config.json holds (all groups, or `groups`).

  A key this version does not declare is a ConfigError naming it, except in the `lenient` groups,
  where it is left out (a reader that needs only some of their keys)."""
  saved = read_saved_config(workdir)
  path = paths.join(workdir, CONFIG_FILE)
  config = base_config()
  for group, values in saved.items():
    if groups is not None and group not in groups:
      continue
    if group not in config:
      raise ConfigError(f'{path}: unknown key `{group}`')
    if not isinstance(values, dict):
      config[group] = values
      continue
    for key, value in values.items():
      if key not in config[group]:
        if group in lenient:
          continue
        raise ConfigError(f'{path}: unknown key `{group}.{key}`')
      if isinstance(config[group][key], tuple) and isinstance(value, list):
        value = _as_tuple(value)  # JSON has no tuples (e.g. `mesh.rules`)
      config[group][key] = value
  return config


def _as_tuple(value: list) -> tuple:
  return tuple(_as_tuple(v) if isinstance(v, list) else v for v in value)
