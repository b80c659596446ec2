"""Answer normalisation, extraction and matching; benchmark files and held-out corpus problems."""

import json

import pytest

from rlp_jax.data.reasoning_corpus import (ANSWER_PREFIX, WORK_INTRO, WORK_OUTRO,
                                           document_problems, reasoning_document, render_prompt)
from rlp_jax.data.tfds_builders import validation_size
from rlp_jax.errors import ConfigError, DataError
from rlp_jax.eval.answers import (answers_match, extract_final_answer, majority_vote,
                                  normalize_answer)
from rlp_jax.eval.benchmarks import EvalProblem, corpus_problems, load_benchmark


def write_lines(tmp_path, name: str, lines: list) -> str:
  """Writes `lines` (dicts as JSON, strings as they are) to tmp_path/name; returns its path."""
  path = tmp_path / name
  path.write_text(''.join((json.dumps(l) if isinstance(l, dict) else l) + '\n' for l in lines))
  return str(path)


# --- normalize_answer -----------------------------------------------------------------------------

@pytest.mark.parametrize('text, expected', [
    ('1,234', '1234'),
    ('1,234,567', '1234567'),
    ('1,234.50', '1234.5'),
    ('1,23', '1,23'),
    ('(1,2)', '(1,2)'),
    ('12.0', '12'),
    ('12.00', '12'),
    ('2.50', '2.5'),
    ('-0', '0'),
    ('-0.0', '0'),
    ('-3', '-3'),
    (r'\frac{1}{2}', '1/2'),
    (r'\dfrac{3}{4}', '3/4'),
    (r'\tfrac{5}{6}', '5/6'),
    (r'\frac12', '1/2'),
    (r'\frac ab', 'a/b'),
    (r'\frac{x+1}{2}', '(x+1)/2'),
    ('$5$', '5'),
    ('$5$.', '5'),
    ('  42.  ', '42'),
    ('x = 5', 'x = 5'),
    ('14 Apples', '14 apples'),
    (r'\text{14 apples}', '14 apples'),
    (r'\left( 3, 4 \right)', '( 3, 4 )'),
    (r'1\,000\!', '1000'),
    ('a  b\n c', 'a b c'),
    ('', ''),
])
def test_normalize_answer(text, expected):
  assert normalize_answer(text) == expected


# --- answers_match --------------------------------------------------------------------------------

@pytest.mark.parametrize('predicted, gold', [
    ('0.5', r'\frac{1}{2}'),
    ('1,000', '1000.0'),
    ('14 apples', '14 Apples.'),
    ('x = 5', 'x = 5'),
    ('-1/2', '-0.5'),
    ('2/4', '1/2'),
    ('$12$', '12.00'),
])
def test_answers_match(predicted, gold):
  assert answers_match(predicted, gold)
  assert answers_match(gold, predicted)


@pytest.mark.parametrize('predicted, gold', [
    ('14', '15'),
    ('14 apples', '14 pears'),
    ('14', '14 apples'),
    ('5', 'x = 5'),
    ('0.333', '1/3'),
    ('', ''),
    ('', '0'),
    ('1/0', '0'),
])
def test_answers_do_not_match(predicted, gold):
  assert not answers_match(predicted, gold)


# --- extract_final_answer -------------------------------------------------------------------------

@pytest.mark.parametrize('generated, expected', [
    (' 57.\n\nQuestion: What is 2 + 2?', '57'),
    (' 14 apples. Mia is happy.', '14 apples'),
    (' 3.5 km.', '3.5 km'),
    (' 3.5', '3.5'),
    ('\n\n42\nmore', '42'),
    (' x = 5.', 'x = 5'),
    (r'so \boxed{1} then \boxed{\frac{1}{2}}.', r'\frac{1}{2}'),
    (r'\boxed{a{b{c}}d} done', 'a{b{c}}d'),
    (r'\boxed{7} and \boxed{unfinished', '7'),
    ('steps\n#### 12\n#### 1,234\nQuestion: next', '1,234'),
    (f'{WORK_INTRO} 12 + 7 = 19. {WORK_OUTRO}19.\n\nQuestion: Q?\n{ANSWER_PREFIX} {WORK_INTRO} '
     f'{WORK_OUTRO}8.', '19'),
    ('', ''),
])
def test_extract_final_answer(generated, expected):
  assert extract_final_answer(generated) == expected


# --- majority_vote --------------------------------------------------------------------------------

def test_majority_vote_counts_normalised_answers():
  assert majority_vote(['5', '7', '7.0', '5.', '$7$']) == '7'


def test_majority_vote_ties_go_to_the_first_seen():
  assert majority_vote(['b', 'a', 'a', 'b']) == 'b'
  assert majority_vote(['', ' ', 'x', 'y']) == 'x'


def test_majority_vote_without_answers_is_empty():
  assert majority_vote([]) == ''
  assert majority_vote(['', ' $ ']) == ''


# --- load_benchmark -------------------------------------------------------------------------------

def test_load_gsm8k(tmp_path):
  path = write_lines(tmp_path, 'gsm8k.jsonl', [
      {'question': 'How many?', 'answer': 'Add <<2+3=5>>5.\n#### 5'},
      '',
      {'question': 'How much?', 'answer': 'x #### 1 #### 1,234 '},
  ])
  assert load_benchmark(path) == [EvalProblem('How many?', '5', 'gsm8k.jsonl:1'),
                                  EvalProblem('How much?', '1,234', 'gsm8k.jsonl:3')]
  assert load_benchmark(path, limit=1) == [EvalProblem('How many?', '5', 'gsm8k.jsonl:1')]


def test_load_math(tmp_path):
  path = write_lines(tmp_path, 'math.jsonl', [
      {'problem': 'Half?', 'solution': r'It is \boxed{2} no, \boxed{\frac{1}{2}}.'},
      {'problem': 'Set?', 'solution': r'So \boxed{\{1, {2}\}}'},
      {'problem': 'Given?', 'solution': r'\boxed{3}', 'answer': '4'},
      {'question': 'Mixed?', 'answer': '#### 7'},
  ])
  problems = load_benchmark(path)
  assert [p.answer for p in problems] == [r'\frac{1}{2}', r'\{1, {2}\}', '4', '7']
  assert [p.source for p in problems] == [f'math.jsonl:{n}' for n in range(1, 5)]
  assert answers_match('0.5', problems[0].answer)


@pytest.mark.parametrize('bad_line, message', [
    ('{"question": "Q?"}', 'no "answer" field'),
    ('{"question": "Q?", "answer": "42"}', '"####"'),
    ('{"question": "Q?", "answer": "#### "}', 'nothing after'),
    ('{"problem": "P?", "solution": "It is 42."}', r'\boxed'),
    ('{"problem": "P?"}', 'no "solution" field'),
    ('{"text": "hello"}', 'no "question" or "problem" field'),
    ('{"question": "Q?", "answer": "x\n#### 1"', 'invalid JSON'),
    ('[1, 2]', 'expected a JSON object'),
    ('{"question": "", "answer": "#### 1"}', 'non-empty string'),
])
def test_bad_benchmark_lines(tmp_path, bad_line, message):
  good = {'question': 'Q?', 'answer': '#### 1'}
  path = write_lines(tmp_path, 'bench.jsonl', [good, '', bad_line, good])
  with pytest.raises(DataError) as error:
    load_benchmark(path)
  text = str(error.value)
  assert 'bench.jsonl line 3: ' in text
  assert message in text
  assert '\n' not in text


def test_bad_utf8_line(tmp_path):
  path = tmp_path / 'bench.jsonl'
  path.write_bytes(b'{"question": "Q?", "answer": "#### 1"}\n{"question": "\xff"}\n')
  with pytest.raises(DataError, match=r'bench\.jsonl line 2: not valid UTF-8'):
    load_benchmark(str(path))


def test_missing_or_empty_benchmark_file(tmp_path):
  missing = str(tmp_path / 'gsm8k.jsonl')
  with pytest.raises(DataError, match='^benchmark file not found: .*gsm8k.jsonl$'):
    load_benchmark(missing)
  with pytest.raises(DataError, match='has no problems'):
    load_benchmark(write_lines(tmp_path, 'empty.jsonl', ['', '  ']))
  with pytest.raises(DataError, match='directory'):
    load_benchmark(str(tmp_path))


def test_bad_limit(tmp_path):
  with pytest.raises(ValueError, match='limit'):
    load_benchmark(write_lines(tmp_path, 'b.jsonl', [{'question': 'Q', 'answer': '#### 1'}]), 0)


# --- the reasoning corpus -------------------------------------------------------------------------

def test_render_prompt_is_the_text_before_the_answer():
  problems, _ = document_problems(3, seed=0)
  document = reasoning_document(3, seed=0)
  assert document.startswith(render_prompt(problems[0].question) + ' ')
  assert render_prompt('Q?') == f'Question: Q?\n{ANSWER_PREFIX}'


@pytest.mark.parametrize('seed', [0, 5])
def test_document_problems_match_the_rendered_document(seed):
  for index in range(200):
    problems, worked = document_problems(index, seed)
    document = reasoning_document(index, seed)
    assert 1 <= len(problems) <= 4
    assert worked == (WORK_INTRO in document)
    assert document.count('Question: ') == len(problems)
    position = 0
    for problem in problems:
      position = document.index(render_prompt(problem.question), position)
      position = document.index(f'{problem.answer}.', position)


def test_corpus_problems_come_from_validation_documents():
  num_documents, seed = 600, 0
  n_train = num_documents - validation_size(num_documents)
  problems = corpus_problems(num_documents, seed)
  indices = [int(p.source.split('[')[1].split(']')[0]) for p in problems]
  assert indices == sorted(indices)
  assert set(indices) == set(range(n_train, num_documents))
  for problem, index in zip(problems, indices):
    document = reasoning_document(index, seed)
    prompt = render_prompt(problem.question)
    assert prompt in document
    after_prompt = document[document.index(prompt) + len(prompt):]
    assert extract_final_answer(after_prompt) == problem.answer
    assert problem.worked == (WORK_INTRO in document)
  assert corpus_problems(num_documents, seed, limit=3) == problems[:3]


def test_corpus_problems_check_their_arguments():
  with pytest.raises(ConfigError, match='num_documents'):
    corpus_problems(1, 0)
  with pytest.raises(ConfigError, match='corpus_seed'):
    corpus_problems(100, -1)
