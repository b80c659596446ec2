"""The key table of docs/configuration.md, rendered from the declarations in keys.py.

The table sits between `BEGIN_MARKER` and `END_MARKER`; `python -m rlp_jax.config --update-docs`
rewrites it there, and tests/test_config_declaration.py fails when the two differ.
"""
from __future__ import annotations

import pathlib
from typing import Any

from rlp_jax.config.axis_rules import DEFAULT_LOGICAL_AXIS_RULES
from rlp_jax.config.declaration import Key
from rlp_jax.config.keys import KEYS, SECTIONS

BEGIN_MARKER = '<!-- keys:begin -->'
END_MARKER = '<!-- keys:end -->'
DOCS_PATH = pathlib.Path(__file__).resolve().parents[2] / 'docs' / 'configuration.md'


def _cell(text: str) -> str:
  return text.replace('|', '\\|')


def _default(key: Key) -> str:
  return key.shown_default or f'`{key.default!r}`'


def _allowed(key: Key) -> str:
  if key.choices is not None:
    return ', '.join(f'`{choice}`' for choice in key.choices)
  if key.bounds is not None:
    return key.bounds.describe()
  return ''


def _mesh_axes(axes: Any) -> str:
  if axes is None:
    return 'replicated'
  return ', '.join(f'`{axis}`' for axis in ((axes,) if isinstance(axes, str) else axes))


def _rules_table() -> list[str]:
  lines = ['', '`DEFAULT_LOGICAL_AXIS_RULES` (the default of `mesh.rules`, '
           'rlp_jax/config/axis_rules.py):', '', '| logical axis | mesh axes |', '|---|---|']
  lines += [f'| `{name}` | {_mesh_axes(axes)} |' for name, axes in DEFAULT_LOGICAL_AXIS_RULES]
  return lines


def render_markdown() -> str:
  """One table per section (key, type, default, allowed values or range, meaning)."""
  lines = []
  for section, doc in SECTIONS.items():
    title = f'`{section}`' if section else 'Top level'
    lines += ['', f'### {title}: {doc}', '',
              '| key | type | default | allowed | meaning |', '|---|---|---|---|---|']
    for key in KEYS:
      if key.section == section:
        lines.append(f'| `{key.name}` | {key.type.__name__} | {_cell(_default(key))} | '
                     f'{_cell(_allowed(key))} | {_cell(key.doc)} |')
    if section == 'mesh':
      lines += _rules_table()
  return '\n'.join(lines[1:]) + '\n'


def generated_block(text: str) -> str:
  """The text between the markers of a docs page (ValueError when a marker is missing)."""
  start, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
  if start < 0 or end < start:
    raise ValueError(f'the page has no {BEGIN_MARKER} … {END_MARKER} block')
  return text[start + len(BEGIN_MARKER):end].strip('\n') + '\n'


def update_docs(path: pathlib.Path = DOCS_PATH) -> bool:
  """Rewrites the table between the markers of `path`; True when it changed."""
  text = path.read_text(encoding='utf-8')
  old = generated_block(text)
  new = render_markdown()
  if old == new:
    return False
  start = text.find(BEGIN_MARKER) + len(BEGIN_MARKER)
  path.write_text(text[:start] + '\n' + new + text[text.find(END_MARKER):], encoding='utf-8')
  return True
