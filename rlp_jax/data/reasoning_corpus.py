"""A seeded generator of small reasoning documents (arithmetic, word problems, algebra).

Each document holds 1-4 problems. A document is either *worked* (each problem thinks through its
steps right before the answer: "Answer: <think> 12 + 7 = 19. 19 * 3 = 57. </think>57.") or
*answer-only* ("Answer: 57."), so a model that thinks before the answer can predict the answer
tokens better. The worked documents teach the format RLP rollouts sample in — a thought inserted
before the next token (`<think>` and `</think>` are single tokenizer symbols) — and the answer-only
documents are where a rollout's thought can help.
Every step and answer is arithmetically correct; the same (seed, index) always gives the same text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses

import numpy as np

from rlp_jax.errors import ConfigError

WORK_INTRO = '<think>'
WORK_OUTRO = '</think>'
ANSWER_PREFIX = 'Answer:'
MAX_DOCUMENT_CHARS = 400
WORKED_FRACTION = 0.5  # default share of worked documents (data.worked_fraction)

_NAMES = ('Mia', 'Tom', 'Ava', 'Leo', 'Sara', 'Omar', 'Lina', 'Ben', 'Nora', 'Ivan', 'Priya', 'Kai')
_FRUITS = ('apples', 'pears', 'oranges', 'plums', 'lemons', 'peaches')
_ITEMS = (('pen', 'pens'), ('notebook', 'notebooks'), ('cup', 'cups'), ('ticket', 'tickets'),
          ('book', 'books'), ('ball', 'balls'))
_OPS = {'+': lambda a, b: a + b, '-': lambda a, b: a - b, '*': lambda a, b: a * b,
        '/': lambda a, b: a // b}


class _Draws:
  """Cheap integer draws from a numpy Generator (uniforms drawn in blocks)."""

  def __init__(self, rng: np.random.Generator):
    self._rng = rng
    self._block = rng.random(64)
    self._next = 0

  def uniform(self) -> float:
    if self._next == len(self._block):
      self._block = self._rng.random(64)
      self._next = 0
    self._next += 1
    return float(self._block[self._next - 1])

  def int(self, low: int, high: int) -> int:
    """An integer in [low, high] (inclusive)."""
    return low + min(int(self.uniform() * (high - low + 1)), high - low)

  def pick(self, options):
    return options[self.int(0, len(options) - 1)]


@dataclasses.dataclass
class Problem:
  """One problem: the question, its worked steps ("a op b = c") and the answer text."""
  question: str
  steps: list[str]
  answer: str


def _step(a: int, op: str, b: int, steps: list[str]) -> int:
  c = _OPS[op](a, b)
  steps.append(f'{a} {op} {b} = {c}')
  return c


def _arithmetic(d: _Draws) -> Problem:
  """A left-to-right chain of 2-4 operations, parenthesised where precedence needs it."""
  value = d.int(2, 60)
  expr, top_op, steps = str(value), None, []
  for _ in range(d.int(1, 3)):
    op = d.pick(('+', '-', '*', '/'))
    divisors = [k for k in range(2, 10) if value % k == 0 and value // k > 1]
    if op == '/' and not divisors:
      op = '+'
    if op == '*' and value > 150:
      op = '-'
    if op == '+':
      b = d.int(1, 50)
    elif op == '-':
      b = d.int(0, value)
    elif op == '*':
      b = d.int(2, 9)
    else:
      b = d.pick(divisors)
    if op in ('*', '/') and top_op in ('+', '-'):
      expr = f'({expr})'
    expr = f'{expr} {op} {b}'
    top_op = op
    value = _step(value, op, b, steps)
  question = d.pick(('What is {e}?', 'Compute {e}.', 'Evaluate {e}.')).format(e=expr)
  return Problem(question, steps, str(value))


def _fruit(d: _Draws) -> Problem:
  name, friend = d.pick(_NAMES), d.pick(_NAMES)
  while friend == name:
    friend = d.pick(_NAMES)
  fruit = d.pick(_FRUITS)
  have, bought = d.int(3, 40), d.int(2, 30)
  given = d.int(1, have + bought)
  steps = []
  total = _step(have, '+', bought, steps)
  left = _step(total, '-', given, steps)
  question = (f'{name} has {have} {fruit}. {name} buys {bought} more and gives {given} to '
              f'{friend}. How many {fruit} does {name} have now?')
  return Problem(question, steps, f'{left} {fruit}')


def _train(d: _Draws) -> Problem:
  speed, hours = 10 * d.int(3, 15), d.int(2, 6)
  steps = []
  if d.uniform() < 0.5:
    distance = _step(speed, '*', hours, steps)
    question = f'A train travels at {speed} km per hour for {hours} hours. How far does it go?'
    return Problem(question, steps, f'{distance} km')
  distance = speed * hours
  time = _step(distance, '/', speed, steps)
  question = (f'A train covers {distance} km at {speed} km per hour. '
              'How many hours does the trip take?')
  return Problem(question, steps, f'{time} hours')


def _prices(d: _Draws) -> Problem:
  (a, a_plural), (b, b_plural) = d.pick(_ITEMS), d.pick(_ITEMS)
  while b == a:
    b, b_plural = d.pick(_ITEMS)
  price_a, price_b, n_a, n_b = d.int(1, 12), d.int(1, 12), d.int(2, 9), d.int(2, 9)
  steps = []
  cost_a = _step(n_a, '*', price_a, steps)
  cost_b = _step(n_b, '*', price_b, steps)
  total = _step(cost_a, '+', cost_b, steps)
  question = (f'A {a} costs {price_a} dollars and a {b} costs {price_b} dollars. '
              f'How much do {n_a} {a_plural} and {n_b} {b_plural} cost?')
  return Problem(question, steps, f'{total} dollars')


def _ages(d: _Draws) -> Problem:
  name = d.pick(_NAMES)
  age, times, years = d.int(3, 15), d.int(2, 5), d.int(1, 20)
  relative = d.pick(('mother', 'father', 'aunt', 'uncle'))
  steps = []
  now = _step(age, '*', times, steps)
  later = _step(now, '+', years, steps)
  question = (f"{name} is {age} years old. {name}'s {relative} is {times} times as old. "
              f'How old will the {relative} be in {years} years?')
  return Problem(question, steps, f'{later} years')


def _comparison(d: _Draws) -> Problem:
  a, b, c, e = d.int(2, 12), d.int(2, 30), d.int(2, 12), d.int(2, 30)
  steps = []
  left = _step(a, '*', b, steps)
  right = _step(c, '*', e, steps)
  if left == right:
    return Problem(f'Is {a} * {b} equal to {c} * {e}?', steps, 'yes')
  larger = f'{a} * {b}' if left > right else f'{c} * {e}'
  steps.append(f'{max(left, right)} > {min(left, right)}')
  return Problem(f'Which is larger, {a} * {b} or {c} * {e}?', steps, larger)


def _algebra(d: _Draws) -> Problem:
  """Solve a*x + b = c (or a*x - b = c) for a positive integer x."""
  a, x = d.int(2, 9), d.int(1, 20)
  steps = []
  if d.uniform() < 0.5:
    b = d.int(1, 30)
    c = a * x + b
    question = f'Solve for x: {a}x + {b} = {c}.'
    rest = _step(c, '-', b, steps)
  else:
    b = d.int(1, min(30, a * x - 1))  # keeps c positive
    c = a * x - b
    question = f'Solve for x: {a}x - {b} = {c}.'
    rest = _step(c, '+', b, steps)
  _step(rest, '/', a, steps)
  return Problem(question, steps, f'x = {x}')


PROBLEM_KINDS: tuple[Callable[[_Draws], Problem], ...] = (
    _arithmetic, _arithmetic, _fruit, _train, _prices, _ages, _comparison, _algebra)


def render_prompt(question: str) -> str:
  """The text that precedes a problem's thought or answer in a document (no trailing space)."""
  return f'Question: {question}\n{ANSWER_PREFIX}'


def worked_thought(problem: Problem) -> str:
  """The thought a worked document writes before the answer: `<think> a + b = c. … </think>`."""
  return f'{WORK_INTRO} ' + ' '.join(f'{s}.' for s in problem.steps) + f' {WORK_OUTRO}'


def _render(problem: Problem, worked: bool) -> str:
  thought = worked_thought(problem) if worked else ''
  return f'{render_prompt(problem.question)} {thought}{problem.answer}.'


def _check_index_and_seed(index: int, seed: int) -> None:
  if seed < 0:
    raise ConfigError(f'data.corpus_seed must be >= 0, got {seed}')
  if index < 0:
    raise ValueError(f'document index must be >= 0, got {index}')


def _document_parts(index: int, seed: int, worked_fraction: float = WORKED_FRACTION,
                    ) -> tuple[list[Problem], list[str], bool]:
  """The problems of document `index`, their rendered texts and whether it is worked.

  `worked_fraction` only moves the threshold of the document's first draw: a document draws the
  same problems for every fraction (a worked rendering is longer, so it may keep fewer of them);
  0 gives answer-only text, 1 worked text throughout.

  A document draws 1-4 problems but stops at the first one that would take it past
  MAX_DOCUMENT_CHARS (its first problem is always kept).
  """
  _check_index_and_seed(index, seed)
  d = _Draws(np.random.default_rng([seed, index]))
  worked = d.uniform() < worked_fraction
  problems: list[Problem] = []
  parts: list[str] = []
  for _ in range(d.int(1, 4)):
    problem = d.pick(PROBLEM_KINDS)(d)
    part = _render(problem, worked)
    if parts and sum(len(p) + 2 for p in parts) + len(part) > MAX_DOCUMENT_CHARS:
      break
    problems.append(problem)
    parts.append(part)
  return problems, parts, worked


def document_problems(index: int, seed: int, worked_fraction: float = WORKED_FRACTION,
                      ) -> tuple[list[Problem], bool]:
  """The problems that document `index` renders (in order) and whether the document is worked."""
  problems, _, worked = _document_parts(index, seed, worked_fraction)
  return problems, worked


def reasoning_document(index: int, seed: int, worked_fraction: float = WORKED_FRACTION) -> str:
  """The document at `index` of the corpus with `seed` (deterministic across runs)."""
  _, parts, _ = _document_parts(index, seed, worked_fraction)
  return '\n\n'.join(parts)


def generate_documents(num_documents: int, seed: int,
                       worked_fraction: float = WORKED_FRACTION) -> Iterator[str]:
  """Documents 0..num_documents-1 of the corpus with `seed`."""
  for index in range(num_documents):
    yield reasoning_document(index, seed, worked_fraction)
