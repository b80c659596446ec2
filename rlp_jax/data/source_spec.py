"""`data.sources`: the training mixture written as one string, parsed into `SourceSpec`s.

The grammar is small on purpose, so a whole mixture fits one `--config.data.sources=...` flag:

```
SOURCES := ENTRY (';' ENTRY)*          blank entries are ignored
ENTRY   := KIND ['(' ARGS ')'] ['@' WEIGHT]
ARGS    := ARG (',' ARG)*               ARG: `key=value` (an option) or a positional value
```

- `embedded`: the embedded reasoning generator (`data.num_documents`, `data.corpus_seed`, ...).
- `files(PATTERN, ..., field=text, shuffle_window=1024, cycle_length=8)`: the positional
  arguments are paths or globs of `.txt`, `.jsonl` (each optionally `.gz` / `.zst`) and
  `.parquet` files, local or URLs.
- `tfds(NAME, split=train, field=text, data_dir=DIR)`: a prepared TFDS dataset (array_record);
  NAME may be `name/config:version`.

An argument is an option only when it reads `identifier=value` with a plain identifier before
the `=`, so a path with `=` in it (`gs://b/lang=en/*.parquet`, Hive-style directories) stays a
path. The weight is relative (the mixture normalises), default 1.

Each spec gets a short `name`, unique within the mixture and stable for the same string, which
the loader uses for metrics and as the key of the mixture. This module imports nothing heavy.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from rlp_jax.errors import ConfigError

SOURCE_KINDS = ('embedded', 'files', 'tfds')
# data.on_bad_record: stop with one line naming file and line, or skip and count.
BAD_RECORD_POLICIES = ('error', 'skip')
KEY = 'data.sources'

# The options of each kind with their defaults ('' for "the library's default").
OPTION_DEFAULTS: dict[str, dict[str, str]] = {
    'embedded': {},
    'files': {'field': 'text', 'shuffle_window': '1024', 'cycle_length': '8'},
    'tfds': {'split': 'train', 'field': 'text', 'data_dir': ''},
}
_POSITIVE_INT_OPTIONS = ('shuffle_window', 'cycle_length')

_ENTRY = re.compile(r'^(?P<kind>[A-Za-z_]\w*)\s*(?:\((?P<args>.*)\))?\s*(?:@(?P<weight>[^@()]*))?$',
                    re.DOTALL)
_OPTION = re.compile(r'^(?P<key>[A-Za-z_]\w*)\s*=(?P<value>.*)$', re.DOTALL)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """One entry of `data.sources`.

  `target`: the comma-joined paths/globs of `files`, the dataset name of `tfds`, '' for
  `embedded`. `options`: the options given, as (key, value) pairs in the order written (use
  `option` to read one with its default)."""
  kind: str
  target: str
  options: tuple[tuple[str, str], ...]
  weight: float
  name: str

  def option(self, key: str) -> str:
    """The value of option `key`, or its default for this kind."""
    for given, value in self.options:
      if given == key:
        return value
    return OPTION_DEFAULTS[self.kind][key]

  def int_option(self, key: str) -> int:
    return int(self.option(key))

  def __str__(self) -> str:
    args = ([self.target] if self.target else []) + [f'{k}={v}' for k, v in self.options]
    text = f"{self.kind}({', '.join(args)})" if args else self.kind
    return f'{text}@{self.weight:g}'


def _fail(entry: str, why: str) -> ConfigError:
  return ConfigError(f'{KEY}: {entry!r}: {why}')


def _split_args(args: str) -> list[str]:
  return [arg.strip() for arg in args.split(',')] if args.strip() else []


def _parse_weight(entry: str, text: str | None) -> float:
  if text is None:
    return 1.0
  try:
    weight = float(text.strip())
  except ValueError:
    raise _fail(entry, f'weight {text.strip()!r} is not a number') from None
  if not math.isfinite(weight) or weight <= 0:
    raise _fail(entry, f'weight must be a finite number > 0, got {text.strip()!r}')
  return weight


def _parse_entry(entry: str) -> tuple[str, str, tuple[tuple[str, str], ...], float]:
  match = _ENTRY.match(entry)
  if not match:
    raise _fail(entry, f"not of the form KIND(ARGS)@WEIGHT with KIND one of "
                       f"{', '.join(SOURCE_KINDS)}")
  kind = match['kind']
  if kind not in SOURCE_KINDS:
    raise _fail(entry, f"unknown kind {kind!r}; use one of {', '.join(SOURCE_KINDS)}")
  positional, options = [], []
  for arg in _split_args(match['args'] or ''):
    if not arg:
      raise _fail(entry, 'an empty argument (two commas in a row?)')
    option = _OPTION.match(arg)
    if option is None:
      if options:
        raise _fail(entry, f'positional argument {arg!r} after an option')
      positional.append(arg)
      continue
    key, value = option['key'], option['value'].strip()
    if key not in OPTION_DEFAULTS[kind]:
      known = ', '.join(OPTION_DEFAULTS[kind]) or 'none'
      raise _fail(entry, f'unknown option {key!r} for {kind} (options: {known})')
    if any(key == given for given, _ in options):
      raise _fail(entry, f'option {key!r} given twice')
    if not value and key != 'data_dir':
      raise _fail(entry, f'option {key!r} is empty')
    if key in _POSITIVE_INT_OPTIONS and not (value.isdigit() and int(value) >= 1):
      raise _fail(entry, f'option {key!r} must be an integer >= 1, got {value!r}')
    options.append((key, value))
  if kind == 'embedded' and positional:
    raise _fail(entry, 'embedded takes no arguments')
  if kind == 'files' and not positional:
    raise _fail(entry, 'files needs at least one path or glob')
  if kind == 'tfds' and len(positional) != 1:
    raise _fail(entry, 'tfds needs exactly one dataset name, e.g. tfds(my_corpus, split=train)')
  return kind, ','.join(positional), tuple(options), _parse_weight(entry, match['weight'])


def _base_name(kind: str, target: str, files_seen: int) -> str:
  if kind == 'files':
    return f'files{files_seen}'
  if kind == 'tfds':
    return f'tfds:{target}'
  return kind


def parse_sources(text: str) -> list[SourceSpec]:
  """The specs of a `data.sources` string (module doc); a one-line ConfigError naming
  `data.sources` for anything malformed.

  Names: `embedded`, `files0`, `files1`, ... (counting `files` entries), `tfds:NAME`; a name
  already taken gets `_2`, `_3`, ... appended, so names depend only on the string."""
  if not isinstance(text, str) or not text.strip():
    raise ConfigError(f"{KEY} is empty; give e.g. 'embedded' or 'files(data/*.jsonl)@1'")
  specs, names, files_seen = [], set(), 0
  for entry in text.split(';'):
    entry = entry.strip()
    if not entry:
      continue
    kind, target, options, weight = _parse_entry(entry)
    name = base = _base_name(kind, target, files_seen)
    files_seen += kind == 'files'
    copy = 2
    while name in names:
      name, copy = f'{base}_{copy}', copy + 1
    names.add(name)
    specs.append(SourceSpec(kind, target, options, weight, name))
  if not specs:
    raise ConfigError(f'{KEY} holds no source ({text!r})')
  return specs


def legacy_sources(data_config: Any) -> str:
  """The `data.sources` string equivalent to the older keys: `data.corpus='reasoning'` →
  `embedded`, `'local_text'` → `files(<data.files>, field=<data.text_field>)` (the caller uses
  it only when `data.sources` is '')."""
  corpus = data_config.corpus
  if corpus == 'reasoning':
    return 'embedded'
  if corpus == 'local_text':
    files = ','.join(p.strip() for p in str(data_config.files).split(',') if p.strip())
    if not files:
      raise ConfigError("data.files is empty; give comma-separated paths or globs for "
                        "data.corpus='local_text' (or set data.sources)")
    if any(c in files for c in ';()'):
      raise ConfigError(f'data.files {files!r}: a path with `;`, `(` or `)` cannot be written '
                        'as a source; set data.sources instead')
    field = data_config.text_field or 'text'
    return f'files({files}, field={field})'
  raise ConfigError(f"data.corpus must be 'reasoning' or 'local_text', got {corpus!r}")


def configured_sources(data_config: Any) -> list[SourceSpec]:
  """The specs of `data.sources`, or of the older keys when it is ''."""
  text = getattr(data_config, 'sources', '') or legacy_sources(data_config)
  return parse_sources(text)
