"""What one config key declaration holds, and the checks it implies.

A `Key` is the single place a key's default, type (the default's), allowed values or range and
one-line doc are written. `base_config()`, `validate_config()` and the key table of
docs/configuration.md are all derived from the `Key`s in keys.py.
"""
from __future__ import annotations

from collections.abc import Collection
import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Range:
  """Allowed numbers: low (inclusive unless low_open) .. high (inclusive unless high_open),
  plus `or_value` (e.g. −1 for "fill with the devices left over")."""
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  or_value: int | None = None

  def contains(self, value: Any) -> bool:
    # Written as `not (value > low)` rather than `value <= low` so that NaN is rejected.
    if self.or_value is not None and value == self.or_value:
      return True
    if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
      return False
    if self.high is not None and not (value < self.high if self.high_open else value <= self.high):
      return False
    return True

  def describe(self) -> str:
    """'> 0', '>= 2', 'in [0, 1)', '>= 1 or -1' (the wording of error messages)."""
    if self.low is not None and self.high is not None:
      text = (f"in {'(' if self.low_open else '['}{_number(self.low)}, "
              f"{_number(self.high)}{')' if self.high_open else ']'}")
    elif self.low is not None:
      text = f"{'>' if self.low_open else '>='} {_number(self.low)}"
    else:
      text = f"{'<' if self.high_open else '<='} {_number(self.high)}"
    return text if self.or_value is None else f'{text} or {self.or_value}'


def _number(value: float) -> str:
  return str(int(value)) if float(value).is_integer() else str(value)


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
FRACTION = Range(low=0, high=1)
MESH_SIZE = Range(low=1, or_value=-1)


def at_least(low: float) -> Range:
  return Range(low=low)


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key: dotted name, default, one-line doc, and choices or bounds (or neither).

  `choices` is kept by reference, so a registry dict (e.g. the advantage estimators) that gains
  an entry after import is seen by validation. `shown_default` replaces the default in the docs
  table when the value is too long to print there. A float key takes finite values only (NaN and
  ±inf are rejected) unless `infinity_ok`, which admits +inf (e.g. "no upper limit").
  """
  name: str
  default: Any
  doc: str
  choices: Collection[Any] | None = None
  bounds: Range | None = None
  shown_default: str | None = None
  infinity_ok: bool = False

  def __post_init__(self):
    if self.name.count('.') > 1:
      raise ValueError(f'config key `{self.name}`: sections are one level deep (section.key)')
    if self.choices is not None and self.bounds is not None:
      raise ValueError(f'config key `{self.name}` declares both choices and bounds')
    if self.choices is not None and self.default not in self.choices:
      raise ValueError(f'config key `{self.name}`: default {self.default!r} is not a choice')
    if self.bounds is not None and not self.bounds.contains(self.default):
      raise ValueError(f'config key `{self.name}`: default {self.default!r} is out of bounds')
    if self._not_finite(self.default):
      raise ValueError(f'config key `{self.name}`: default {self.default!r} is not finite')

  @property
  def section(self) -> str:
    """'model' for 'model.hidden_size'; '' for a top-level key such as 'seed'."""
    return self.name.rpartition('.')[0]

  @property
  def leaf(self) -> str:
    return self.name.rpartition('.')[2]

  @property
  def type(self) -> type:
    return type(self.default)

  def type_error(self, value: Any) -> str | None:
    """The one-line message when `value` has the wrong type for this key, else None."""
    if _type_ok(value, self.default):
      return None
    return (f'config key `{self.name}` must be of type {self.type.__name__}, '
            f'got {type(value).__name__} {value!r}')

  def value_error(self, value: Any) -> str | None:
    """The one-line message when `value` (of the right type) is not allowed, else None."""
    if self._not_finite(value):
      return (f'config key `{self.name}` must be a finite number'
              f"{' or inf' if self.infinity_ok else ''}, got {value!r}")
    if self.choices is not None and value not in self.choices:
      return f'config key `{self.name}` must be one of {list(self.choices)}, got {value!r}'
    if self.bounds is not None and not self.bounds.contains(value):
      return f'config key `{self.name}` must be {self.bounds.describe()}, got {value!r}'
    return None

  def _not_finite(self, value: Any) -> bool:
    """NaN or ±inf, except +inf on an `infinity_ok` key."""
    if not isinstance(value, float) or math.isfinite(value):
      return False
    return not (self.infinity_ok and value == math.inf)


def _type_ok(value: Any, default: Any) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):  # an int is a fine float (lr=1 on the command line)
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  return isinstance(value, type(default))
