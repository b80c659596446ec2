"""rlp_jax's configuration: every key declared once (keys.py), `base_config()` and
`validate_config()` derived from the declarations (schema.py), model and objective presets
(presets.py), and the key table of docs/configuration.md (markdown.py)."""
from rlp_jax.config.axis_rules import DEFAULT_LOGICAL_AXIS_RULES
from rlp_jax.config.schema import base_config, validate_config

__all__ = ['DEFAULT_LOGICAL_AXIS_RULES', 'base_config', 'validate_config']
