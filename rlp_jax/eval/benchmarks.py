"""Evaluation problems: benchmark jsonl files and the held-out problems of the reasoning corpus.

A benchmark file holds one JSON object per line, in either of two formats (detected per line;
blank lines are skipped):
  * GSM8K: `{"question": ..., "answer": "... #### 42"}`; the gold answer is the text after the
    last `####`, stripped.
  * MATH: `{"problem": ..., "solution": "... \\boxed{42} ..."}`; the gold answer is the contents of
    the last `\\boxed{...}` (nested braces allowed), or the line's `"answer"` field when it has one.
Bad input raises `DataError` with one line naming the file and the 1-based line number. A file
may be local or a URL (gs://...; read through rlp_jax.paths).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from rlp_jax import paths
from rlp_jax.data.reasoning_corpus import WORKED_FRACTION, document_problems, worked_thought
from rlp_jax.errors import DataError
from rlp_jax.eval.answers import last_boxed

_GSM8K_FIELDS = 'GSM8K lines need "question" and "answer"'
_MATH_FIELDS = 'MATH lines need "problem" and "solution" or "answer"'


@dataclasses.dataclass(frozen=True)
class EvalProblem:
  """One problem to evaluate: the question, the gold answer text and where it came from.

  `source` is `'<file name>:<line number>'` for a benchmark file and `'reasoning[<document
  index>]#<problem number, from 1>'` for the corpus; `worked` is True for a problem of a worked
  corpus document (whose rendered text thinks through the steps before the answer).
  """
  question: str
  answer: str
  source: str
  worked: bool = False
  thought: str = ''  # corpus problems: the worked thought (`<think> … </think>`) of the problem


class _LineError(Exception):
  """A problem with one line; `load_benchmark` adds the file and line number."""


def _check_limit(limit: int | None) -> None:
  if limit is not None and (not isinstance(limit, int) or limit < 1):
    raise ValueError(f'limit must be None or an int >= 1, got {limit!r}')


def _text_field(record: dict[str, Any], field: str, requirement: str) -> str:
  """The non-empty text of `record[field]` (numbers are accepted and written as text)."""
  if field not in record:
    raise _LineError(f'no "{field}" field ({requirement})')
  value = record[field]
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = str(value)
  if not isinstance(value, str) or not value.strip():
    raise _LineError(f'"{field}" must be a non-empty string, got {json.dumps(value)[:40]}')
  return value


def _gsm8k_problem(record: dict[str, Any]) -> tuple[str, str]:
  question = _text_field(record, 'question', _GSM8K_FIELDS)
  answer = _text_field(record, 'answer', _GSM8K_FIELDS)
  if '####' not in answer:
    raise _LineError('"answer" has no "####" before the final answer (GSM8K format)')
  gold = answer.rsplit('####', 1)[1].strip()
  if not gold:
    raise _LineError('"answer" has nothing after its last "####"')
  return question, gold


def _math_problem(record: dict[str, Any]) -> tuple[str, str]:
  question = _text_field(record, 'problem', _MATH_FIELDS)
  if 'answer' in record:
    return question, _text_field(record, 'answer', _MATH_FIELDS).strip()
  solution = _text_field(record, 'solution', _MATH_FIELDS)
  gold = last_boxed(solution)
  if gold is None:
    raise _LineError('"solution" has no complete \\boxed{...} answer (MATH format)')
  if not gold.strip():
    raise _LineError('"solution" has an empty \\boxed{} answer')
  return question, gold.strip()


def _parse_line(raw: bytes) -> tuple[str, str] | None:
  """(question, gold answer) of one line, or None for a blank line."""
  try:
    line = raw.decode('utf-8')
  except UnicodeDecodeError as e:
    raise _LineError(f'not valid UTF-8 (byte {e.start + 1})') from None
  if not line.strip():
    return None
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise _LineError(f'invalid JSON ({e.msg} at column {e.colno})') from None
  if not isinstance(record, dict):
    raise _LineError(f'expected a JSON object, got {type(record).__name__}')
  if 'question' in record:
    return _gsm8k_problem(record)
  if 'problem' in record:
    return _math_problem(record)
  raise _LineError(f'no "question" or "problem" field ({_GSM8K_FIELDS}; {_MATH_FIELDS})')


def load_benchmark(path: str, limit: int | None = None) -> list[EvalProblem]:
  """The first `limit` (all if None) problems of the jsonl benchmark file at `path`.

  Reading stops once `limit` problems are read, so later lines are not checked.
  """
  _check_limit(limit)
  resolved = paths.resolve_str(path, 'eval.benchmarks')
  if paths.is_dir(resolved):
    raise DataError(f'benchmark path is a directory, not a jsonl file: {path}')
  if not paths.is_file(resolved):
    raise DataError(f'benchmark file not found: {path}')
  name = paths.as_path(resolved).name
  problems: list[EvalProblem] = []
  try:
    with paths.as_path(resolved).open('rb') as f:
      for number, raw in enumerate(f, start=1):
        if limit is not None and len(problems) == limit:
          break
        try:
          parsed = _parse_line(raw)
        except _LineError as e:
          raise DataError(f'{path} line {number}: {e}') from None
        if parsed is not None:
          problems.append(EvalProblem(parsed[0], parsed[1], f'{name}:{number}'))
  except OSError as e:
    raise DataError(f'cannot read benchmark file {path}: {paths.reason(e)}') from None
  if not problems:
    raise DataError(f'benchmark file has no problems: {path}')
  return problems


def corpus_problems(num_documents: int, seed: int, limit: int | None = None,
                    worked_fraction: float = WORKED_FRACTION) -> list[EvalProblem]:
  """The problems of the validation documents of the reasoning corpus (`num_documents`, `seed`).

  The validation split is documents `n_train .. num_documents - 1`, as built by the TFDS builder;
  problems come in document order, then problem order, the first `limit` of them (all if None).
  """
  _check_limit(limit)
  # Imported here: tfds_builders imports tensorflow_datasets.
  from rlp_jax.data.tfds_builders import (  # pylint: disable=import-outside-toplevel
      reasoning_corpus_config, validation_size)
  reasoning_corpus_config(num_documents, seed)  # checks both values (ConfigError)
  problems: list[EvalProblem] = []
  for index in range(num_documents - validation_size(num_documents), num_documents):
    document, worked = document_problems(index, seed, worked_fraction)
    for number, problem in enumerate(document, start=1):
      if limit is not None and len(problems) == limit:
        return problems
      problems.append(EvalProblem(problem.question, problem.answer, f'reasoning[{index}]#{number}',
                                  worked, thought=worked_thought(problem)))
  return problems
