"""`base_config()` and `validate_config()`, both derived from the declarations in keys.py.

Config files under configs/ start from `base_config()` and change values; they never add keys.
`validate_config` runs before anything is built and raises `ConfigError` with a one-line message
naming the dotted key, so the command line can report it on one line.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from rlp_jax.config.keys import KEYS, KEYS_BY_NAME, SECTIONS
from rlp_jax.config.relations import validate_relations
from rlp_jax.errors import ConfigError


def _section() -> ml_collections.ConfigDict:
  # Not type-safe: a config file that assigns a wrong type reaches validate_config, which names
  # the full dotted key (ConfigDict's own error names only the leaf).
  return ml_collections.ConfigDict(type_safe=False)


def base_config() -> ml_collections.ConfigDict:
  """All keys with their defaults (the tiny CPU model, RLP on the embedded reasoning corpus)."""
  config = _section()
  for key in KEYS:
    if key.section and key.section not in config:
      config[key.section] = _section()
    (config[key.section] if key.section else config)[key.leaf] = key.default
  return config


def _flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict[str, Any]:
  flat = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    flat[name] = value
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(_flatten(value, name + '.'))
  return flat


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first bad key: unknown, wrong type, or a value outside its
  declared choices or range, or two keys that do not fit together (relations.py)."""
  values = _flatten(config)
  for name, value in values.items():
    if name in SECTIONS:
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'config key `{name}` must be of type ConfigDict, '
                          f'got {type(value).__name__} {value!r}')
    elif name not in KEYS_BY_NAME:
      raise ConfigError(f'unknown config key `{name}`')
    else:
      message = KEYS_BY_NAME[name].type_error(value)
      if message:
        raise ConfigError(message)
  for key in KEYS:
    if key.name not in values:
      raise ConfigError(f'config key `{key.name}` is missing (start config files from '
                        'base_config())')
  for key in KEYS:
    message = key.value_error(values[key.name])
    if message:
      raise ConfigError(message)
  validate_relations(config)
