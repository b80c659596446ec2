"""The reasoning corpus generator, the TFDS builders and load_documents."""

from fractions import Fraction
import ast
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from rlp_jax.config import base_config
from rlp_jax.data import corpora
from rlp_jax.data.reasoning_corpus import (ANSWER_PREFIX, WORK_INTRO, WORK_OUTRO,
                                           generate_documents)
from rlp_jax.data.reasoning_corpus import reasoning_document
from rlp_jax.errors import ConfigError, DataError

N = 300


def data_config(data_dir, **overrides) -> ml_collections.ConfigDict:
  config = base_config().data
  config.update(dict(corpus='reasoning', data_dir=str(data_dir), num_documents=N, corpus_seed=0,
                     files='', text_field='text'))
  config.update(overrides)
  return config


def _evaluate(expression: str) -> Fraction:
  """Exact value of an expression of ints, + - * / and parentheses."""
  ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
         ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}

  def walk(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
      return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
      return ops[type(node.op)](walk(node.left), walk(node.right))
    raise AssertionError(f'unexpected expression {expression!r}')

  return walk(ast.parse(expression, mode='eval').body)


_STEP = re.compile(r'\b(\d+) ([-+*/]) (\d+) = (\d+)\b')
# (question pattern, check(question groups, answer text) -> bool)
_KINDS = [
    (r'(?:What is|Compute|Evaluate) ([\d ()+*/-]+)[?.]$',
     lambda g, a: _evaluate(g[0]) == int(a)),
    (r'(\w+) has (\d+) (\w+)\. \w+ buys (\d+) more and gives (\d+) to \w+\.',
     lambda g, a: a == f'{int(g[1]) + int(g[3]) - int(g[4])} {g[2]}'),
    (r'travels at (\d+) km per hour for (\d+) hours',
     lambda g, a: a == f'{int(g[0]) * int(g[1])} km'),
    (r'covers (\d+) km at (\d+) km per hour', lambda g, a: a == f'{int(g[0]) // int(g[1])} hours'
     and int(g[0]) % int(g[1]) == 0),
    (r'costs (\d+) dollars and a \w+ costs (\d+) dollars\. How much do (\d+) \w+ and (\d+) \w+',
     lambda g, a: a == f'{int(g[2]) * int(g[0]) + int(g[3]) * int(g[1])} dollars'),
    (r'is (\d+) years old\. .* is (\d+) times as old\. .* in (\d+) years\?',
     lambda g, a: a == f'{int(g[0]) * int(g[1]) + int(g[2])} years'),
    (r'Which is larger, (\d+ \* \d+) or (\d+ \* \d+)\?',
     lambda g, a: a == max(g, key=_evaluate) and _evaluate(g[0]) != _evaluate(g[1])),
    (r'Is (\d+ \* \d+) equal to (\d+ \* \d+)\?',
     lambda g, a: a == 'yes' and _evaluate(g[0]) == _evaluate(g[1])),
    (r'Solve for x: (\d+)x ([-+]) (\d+) = (\d+)\.',
     lambda g, a: _evaluate(f'{g[0]} * {a[4:]} {g[1]} {g[2]}') == int(g[3])),
]


def _check_problem(block: str) -> tuple[bool, str]:
  """Asserts the answer (and any worked steps) of one problem; returns (worked, kind pattern)."""
  lines = block.split('\n')
  assert len(lines) == 2, block
  assert lines[0].startswith('Question: ') and lines[1].startswith(ANSWER_PREFIX + ' '), block
  question, answer = lines[0][len('Question: '):], lines[1][len(ANSWER_PREFIX) + 1:-1]
  worked = answer.startswith(WORK_INTRO + ' ')
  assert not re.search(r'-\d', block), block  # numbers stay non-negative
  if worked:
    thought, _, answer = answer.partition(' ' + WORK_OUTRO)
    assert answer and answer[0] != ' ', block  # the answer follows `</think>` directly
    steps = _STEP.findall(thought)
    assert steps, block
    for a, op, b, c in steps:
      assert _evaluate(f'{a} {op} {b}') == int(c), block
    for big, small in re.findall(r'(\d+) > (\d+)', thought):
      assert int(big) > int(small), block
  assert WORK_INTRO not in answer and WORK_OUTRO not in answer, block
  for pattern, check in _KINDS:
    match = re.search(pattern, question)
    if match:
      assert check(match.groups(), answer), block
      return worked, pattern
  raise AssertionError(f'no checker for {block!r}')


def test_documents_are_seeded_and_deterministic():
  first = list(generate_documents(50, seed=3))
  assert first == [reasoning_document(i, 3) for i in range(50)]
  assert first == list(generate_documents(50, seed=3))
  other = list(generate_documents(50, seed=4))
  assert sum(a != b for a, b in zip(first, other)) > 45
  assert len(set(first)) == 50


@pytest.mark.subprocess
def test_documents_in_a_fresh_process_are_identical():
  code = ('from rlp_jax.data.reasoning_corpus import generate_documents;'
          'import json; print(json.dumps(list(generate_documents(20, 7))))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env={**os.environ, 'PYTHONHASHSEED': '123'})
  assert json.loads(out.stdout) == list(generate_documents(20, 7))


def test_answers_and_steps_are_correct_and_both_styles_occur():
  worked_docs = answer_only_docs = 0
  kinds = set()
  for doc in generate_documents(1000, seed=0):
    assert 30 <= len(doc) <= 400, doc
    results = [_check_problem(block) for block in doc.split('\n\n')]
    assert 1 <= len(results) <= 4
    styles = {worked for worked, _ in results}
    assert len(styles) == 1, doc  # a document is worked or answer-only throughout
    worked_docs += styles == {True}
    answer_only_docs += styles == {False}
    kinds.update(kind for _, kind in results)
  assert worked_docs > 300 and answer_only_docs > 300
  assert len(kinds) == len(_KINDS)


def test_reasoning_dataset_is_reproducible_across_data_dirs(tmp_path):
  splits = []
  for name in ('a', 'b'):
    config = data_config(tmp_path / name)
    splits.append((list(corpora.load_documents(config, 'train')),
                   list(corpora.load_documents(config, 'validation'))))
  assert splits[0] == splits[1]
  train, validation = splits[0]
  assert len(validation) == 6 and len(train) == N - 6
  assert train + validation == list(generate_documents(N, seed=0))
  other = corpora.load_documents(data_config(tmp_path / 'a', corpus_seed=1), 'train')
  assert list(other) != train
  assert os.path.isdir(tmp_path / 'a' / 'reasoning_corpus' / f'n{N}_s1')


def test_text_source_is_a_random_access_sequence(tmp_path):
  docs = corpora.load_documents(data_config(tmp_path))
  assert isinstance(docs[0], str) and docs[-1] == docs[len(docs) - 1]
  assert docs[2:5] == [reasoning_document(i, 0) for i in range(2, 5)]
  with pytest.raises(IndexError):
    docs[len(docs)]  # pylint: disable=pointless-statement


def test_data_dir_default_and_environment(monkeypatch, tmp_path):
  monkeypatch.delenv(corpora.DATA_DIR_ENV, raising=False)
  config = data_config('')
  assert corpora.resolve_data_dir(config) == os.path.expanduser('~/.cache/rlp_jax/data')
  monkeypatch.setenv(corpora.DATA_DIR_ENV, str(tmp_path / 'env'))
  assert corpora.resolve_data_dir(config) == str(tmp_path / 'env')
  assert corpora.resolve_data_dir(data_config(tmp_path / 'x')) == str(tmp_path / 'x')


def test_bad_corpus_settings_name_the_key(tmp_path):
  with pytest.raises(ConfigError, match='data.corpus'):
    corpora.load_documents(data_config(tmp_path, corpus='wiki'))
  with pytest.raises(ConfigError, match='data.num_documents'):
    corpora.load_documents(data_config(tmp_path, num_documents=1))


def _write_local_files(root):
  (root / 'texts').mkdir()
  (root / 'texts' / 'a.txt').write_text('First document.\nTwo lines.', encoding='utf-8')
  (root / 'texts' / 'b.txt').write_text('Second document: héllo 世界', encoding='utf-8')
  lines = [json.dumps({'body': 'json one', 'id': 1}), '', json.dumps({'body': 'json two'}),
           json.dumps({'body': 'json three'})]
  (root / 'docs.jsonl').write_text('\n'.join(lines) + '\n', encoding='utf-8')
  return ['First document.\nTwo lines.', 'Second document: héllo 世界', 'json one', 'json two',
          'json three']


def local_config(root, files, text_field='body'):
  return data_config(root / 'data', corpus='local_text', files=files, text_field=text_field)


def test_local_text_round_trip_and_rebuild_on_change(tmp_path):
  expected = _write_local_files(tmp_path)
  config = local_config(tmp_path, f'{tmp_path}/texts/*.txt, {tmp_path}/docs.jsonl')
  train = corpora.load_documents(config, 'train')
  validation = corpora.load_documents(config, 'validation')
  assert list(train) + list(validation) == expected
  assert len(validation) == 1
  identity = corpora.corpus_identity(config)
  (tmp_path / 'texts' / 'b.txt').write_text('Changed.', encoding='utf-8')
  assert corpora.corpus_identity(config) != identity
  assert list(corpora.load_documents(config, 'train'))[1] == 'Changed.'


def test_local_text_missing_path_names_it(tmp_path):
  _write_local_files(tmp_path)
  missing = tmp_path / 'nope.txt'
  with pytest.raises(DataError, match=re.escape(str(missing))):
    corpora.load_documents(local_config(tmp_path, f'{tmp_path}/docs.jsonl,{missing}'))
  empty_glob = f'{tmp_path}/texts/*.md'
  with pytest.raises(DataError, match=re.escape(empty_glob)):
    corpora.load_documents(local_config(tmp_path, empty_glob))


def test_local_text_jsonl_without_field_names_line_and_field(tmp_path):
  _write_local_files(tmp_path)
  jsonl = tmp_path / 'docs.jsonl'
  with pytest.raises(DataError, match=re.escape(f'{jsonl}:1') + ".*'text'"):
    corpora.load_documents(local_config(tmp_path, str(jsonl), text_field='text'))
  (tmp_path / 'bad.jsonl').write_text('{"body": "ok"}\n{"other": 1}\n', encoding='utf-8')
  with pytest.raises(DataError, match=re.escape(f'{tmp_path / "bad.jsonl"}:2')):
    corpora.load_documents(local_config(tmp_path, str(tmp_path / 'bad.jsonl')))


@pytest.mark.subprocess
def test_package_imports_do_not_import_tfds():
  code = ('import sys, rlp_jax.data.corpora, rlp_jax.data.tokenizer, rlp_jax.data.batches;'
          'assert "tensorflow_datasets" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True)


def test_worked_fraction_keeps_the_problems_and_changes_only_the_rendering():
  from rlp_jax.data.reasoning_corpus import document_problems, reasoning_document
  from rlp_jax.data.tfds_builders import reasoning_corpus_config
  worked_counts = {}
  for fraction in (0.0, 0.5, 1.0):
    worked_counts[fraction] = 0
    for index in range(200):
      problems, worked = document_problems(index, 3, fraction)
      # The same draws; a worked rendering is longer, so it may keep fewer of them.
      mine = [p.question for p in problems]
      plain = [p.question for p in document_problems(index, 3, 0.0)[0]]
      assert plain[:len(mine)] == mine
      text = reasoning_document(index, 3, fraction)
      assert ('<think>' in text) == worked
      worked_counts[fraction] += worked
  assert worked_counts[0.0] == 0 and worked_counts[1.0] == 200
  assert 60 < worked_counts[0.5] < 140
  assert reasoning_corpus_config(100, 3).name == 'n100_s3'  # the default keeps its dataset name
  assert reasoning_corpus_config(100, 3, 0.0).name == 'n100_s3_w0'
  with pytest.raises(ConfigError, match='worked_fraction'):
    reasoning_corpus_config(100, 3, 1.5)
