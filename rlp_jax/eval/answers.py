"""Reading a model's final answer and comparing it with the gold answer (exact match).

`normalize_answer(text)` puts an answer into a canonical form, step by step:
  1. `\\text{..}` (also `\\textbf`, `\\textrm`, `\\mathrm`, `\\mbox`) wrappers are replaced by their
     contents; `\\left`, `\\right`, `\\!` and `\\,` are removed;
  2. surrounding whitespace, a trailing `.` and surrounding `$` signs are stripped;
  3. `\\frac{a}{b}`, `\\dfrac{a}{b}`, `\\tfrac{a}{b}` (braces without nested braces) and `\\frac ab`
     (single characters) become `a/b`; a part that is not a plain number, word or command is
     parenthesised (`\\frac{x+1}{2}` -> `(x+1)/2`, `\\frac{\\pi}{2}` -> `\\pi/2`);
  4. thousands separators are dropped when every comma sits at a thousands position
     (`1,234,567` -> `1234567`; `1,23` and `(1,2)` are kept);
  5. every number loses trailing fractional zeros and a bare decimal point (`12.00` -> `12`,
     `2.50` -> `2.5`) and `-0` becomes `0`;
  6. runs of whitespace become one space and the text is lower-cased.

Exact-match rule (`answers_match(predicted, gold)`): both answers are normalised as above. An empty
normalised prediction or gold never matches. Otherwise they match when the normalised strings are
equal, or when both normalised strings are numbers and their values are equal exactly. A number is
an integer (`-12`), a decimal (`0.5`, `-3.25`) or a fraction of two integers (`1/2`, `-7/4`, with a
non-zero denominator, e.g. from `\\frac{1}{2}`); values are compared as exact rationals
(`fractions.Fraction`), so `0.5` matches `\\frac{1}{2}` and `1,000` matches `1000.0`, while
`0.333` does not match `1/3`. Nothing else matches: `14` does not match `14 apples`, and `x = 5`
does not match `5`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
import re

from rlp_jax.data.reasoning_corpus import WORK_OUTRO

_TEXT_WRAPPER = re.compile(r'\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}')
_SPACING_COMMANDS = re.compile(r'\\(?:left|right)(?![A-Za-z])|\\!|\\,')
_BRACED_FRACTION = re.compile(r'\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}')
_SHORT_FRACTION = re.compile(r'\\[dt]?frac\s*([A-Za-z0-9])\s*([A-Za-z0-9])')
_ATOM = re.compile(r'-?\\?[A-Za-z0-9.]+')
_THOUSANDS = re.compile(r'(?<![\d,.])\d{1,3}(?:,\d{3})+(?!,?\d)')
_NUMBER_IN_TEXT = re.compile(r'(?<![\w.])(-?)(\d+)(?:\.(\d*))?(?![\w.])')
_NUMBER = re.compile(r'-?(?:\d+(?:\.\d+)?|\.\d+)')
_FRACTION = re.compile(r'(-?\d+)/(\d+)')
_SENTENCE_END = re.compile(r'\.(?=\s|$)')


def _strip_latex_wrappers(text: str) -> str:
  """Step 1: unwrap text commands (innermost first) and drop spacing commands."""
  previous = None
  while previous != text:
    previous, text = text, _TEXT_WRAPPER.sub(r'\1', text)
  return _SPACING_COMMANDS.sub('', text)


def _strip_edges(text: str) -> str:
  """Step 2: surrounding whitespace, a trailing '.' and surrounding '$' (in either order)."""
  text = text.strip()
  text = text[:-1].strip() if text.endswith('.') else text
  text = text.strip('$').strip()
  return text[:-1].strip() if text.endswith('.') else text


def _fraction_part(part: str) -> str:
  part = part.strip()
  return part if _ATOM.fullmatch(part) else f'({part})'


def _fractions_to_slashes(text: str) -> str:
  """Step 3: `\\frac{a}{b}` and `\\frac ab` -> `a/b`."""
  text = _BRACED_FRACTION.sub(
      lambda m: f'{_fraction_part(m[1])}/{_fraction_part(m[2])}', text)
  return _SHORT_FRACTION.sub(r'\1/\2', text)


def _canonical_number(match: re.Match) -> str:
  """Step 5 for one number: no trailing fractional zeros, no sign on zero."""
  sign, whole, fraction = match[1], match[2], (match[3] or '').rstrip('0')
  number = f'{whole}.{fraction}' if fraction else whole
  if sign and Fraction(number) != 0:
    return sign + number
  return number


def normalize_answer(text: str) -> str:
  """The canonical form of an answer (see the module docstring for the steps)."""
  text = _strip_latex_wrappers(text)
  text = _strip_edges(text)
  text = _fractions_to_slashes(text)
  text = _THOUSANDS.sub(lambda m: m[0].replace(',', ''), text)
  text = _NUMBER_IN_TEXT.sub(_canonical_number, text)
  return ' '.join(text.split()).lower()


def last_boxed(text: str) -> str | None:
  """The contents of the last complete `\\boxed{...}` in `text` (nested braces allowed), or None."""
  start = text.rfind('\\boxed')
  while start != -1:
    contents = _braced_contents(text, start + len('\\boxed'))
    if contents is not None:
      return contents
    start = text.rfind('\\boxed', 0, start)
  return None


def _braced_contents(text: str, position: int) -> str | None:
  """The contents of the `{...}` group that starts at `position` (after spaces), or None."""
  while position < len(text) and text[position] == ' ':
    position += 1
  if position >= len(text) or text[position] != '{':
    return None
  depth = 0
  for end in range(position, len(text)):
    if text[end] == '{':
      depth += 1
    elif text[end] == '}':
      depth -= 1
      if depth == 0:
        return text[position + 1:end]
  return None


def extract_final_answer(text: str) -> str:
  """What a model's generated answer text means as a final answer (not yet normalised).

  Only the text after the first `</think>` counts (a thought is not the answer; a later one belongs
  to a next problem the model went on to write). Then the first rule
  that applies: the contents of the last complete `\\boxed{...}`; the rest of the line after the
  last `####`; the first line (leading whitespace skipped) up to its first sentence-final `.` (a
  `.` followed by whitespace or the end of the line, so never a decimal point). The result is
  stripped.
  """
  text = text.split(WORK_OUTRO, 1)[-1]
  boxed = last_boxed(text)
  if boxed is not None:
    return boxed.strip()
  if '####' in text:
    return text.rsplit('####', 1)[1].lstrip().split('\n', 1)[0].strip()
  first_line = text.lstrip().split('\n', 1)[0]
  return _SENTENCE_END.split(first_line, 1)[0].strip()


def parse_number(normalized: str) -> Fraction | None:
  """The exact value of a normalised answer that is an integer, a decimal or `a/b`; else None."""
  if _NUMBER.fullmatch(normalized):
    return Fraction(normalized)
  fraction = _FRACTION.fullmatch(normalized)
  if fraction and int(fraction[2]) != 0:
    return Fraction(int(fraction[1]), int(fraction[2]))
  return None


def answers_match(predicted: str, gold: str) -> bool:
  """Whether `predicted` matches `gold` under the exact-match rule of the module docstring."""
  predicted, gold = normalize_answer(predicted), normalize_answer(gold)
  if not predicted or not gold:
    return False
  if predicted == gold:
    return True
  predicted_value, gold_value = parse_number(predicted), parse_number(gold)
  return predicted_value is not None and predicted_value == gold_value


def majority_vote(answers: Sequence[str]) -> str:
  """The most frequent normalised non-empty answer (ties: first seen), or '' if there is none."""
  normalized = [a for a in (normalize_answer(a) for a in answers) if a]
  if not normalized:
    return ''
  counts = Counter(normalized)
  return max(counts, key=counts.__getitem__)
