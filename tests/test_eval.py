"""The evaluator: generation and information gain against slow references (full forwards, no
cache, float64 log-softmax), the CLI's report and one-line errors, and eval during training."""
import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlp_jax.data.corpora import load_documents
from rlp_jax.data.tokenizer import build_tokenizer
from rlp_jax.eval.generation import Generator, newline_stop_ids, pack_prompts
from rlp_jax.eval.heldout import HeldOut, answer_positions
from rlp_jax.models import registry
from rlp_jax.train.loop import train
from rlp_jax.train.metrics_writer import read_metrics
from rlp_jax.data.special_tokens import SpecialTokens
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _log_softmax64(logits):
  logits = np.asarray(logits, np.float64)
  top = logits.max(axis=-1, keepdims=True)
  return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


_REFERENCE_WIDTH = 64


def _full_logits(graphdef, params, ids):
  """Logits [len, V] of one unpadded sequence from a plain forward (no cache), right-padded to a
  fixed width so the jitted forward compiles once (causal: padding after the sequence changes
  none of its logits)."""
  assert len(ids) <= _REFERENCE_WIDTH
  tokens = np.zeros((1, _REFERENCE_WIDTH), np.int32)
  tokens[0, :len(ids)] = ids
  mask = np.arange(_REFERENCE_WIDTH)[None] < len(ids)
  positions = np.arange(_REFERENCE_WIDTH, dtype=np.int32)[None]
  logits = _plain_forward(graphdef)(params, tokens, positions, mask)
  return np.asarray(logits[0, :len(ids)])


@functools.lru_cache(maxsize=4)
def _plain_forward(graphdef):
  """The jitted plain forward of `graphdef` (a GraphDef is hashable: one compile per model)."""
  return jax.jit(lambda params, tokens, positions, mask: registry.forward(
      graphdef, params, tokens, positions, mask)[0])


@pytest.fixture
def model(small_config):
  small_config.model.init_std = 0.3  # a peaked random model: greedy choices are well separated
  tokenizer = build_tokenizer(small_config.tokenizer, small_config.data)
  graphdef, params = registry.init_params(small_config.model, seed=3)
  return small_config, tokenizer, graphdef, params


def test_pack_prompts_left_pads_and_numbers_positions_from_each_prompt():
  packed = pack_prompts([[5, 6, 7], [8], [1, 2, 3, 4, 9]], width=4, pad_id=0)
  np.testing.assert_array_equal(packed.tokens, [[0, 5, 6, 7], [0, 0, 0, 8], [2, 3, 4, 9]])
  np.testing.assert_array_equal(packed.mask, [[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1]])
  np.testing.assert_array_equal(packed.positions, [[0, 0, 1, 2], [0, 0, 0, 0], [0, 1, 2, 3]])
  np.testing.assert_array_equal(packed.last, [2, 0, 3])


@pytest.mark.slow
def test_greedy_answers_and_thoughts_match_a_full_forward_loop(model):
  config, tokenizer, graphdef, params = model
  generator = Generator(graphdef, config.model, tokenizer, rows_per_call=4, prompt_width=24,
                        max_thought_tokens=6, max_answer_tokens=5)
  texts = ['Question: What is 3 + 4?\nAnswer: ', 'Question: Mia has 7 pears.\nAnswer: ',
           'Question: Solve for x: 2x + 1 = 7.\nAnswer: ', 'Compute 9 * 2.', 'What is 1?']
  prompts = [[tokenizer.bos_id] + tokenizer.encode(t) for t in texts]  # 5 rows: 2 chunks of 4
  stops = set(newline_stop_ids(tokenizer).tolist())

  def reference(ids, limit, stop, banned):
    out = []
    for _ in range(limit):
      logits = _full_logits(graphdef, params, ids + out)[-1].astype(np.float64)
      logits[list(banned)] = -np.inf
      token = int(np.argmax(logits))
      out.append(token)
      if token in stop:
        break
    return out

  answers = generator.answers(params, prompts)
  for ids, answer in zip(prompts, answers):
    expected = reference(ids, 5, stops, {tokenizer.think_start_id})
    assert answer == tokenizer.decode(expected)
  thoughts = generator.thoughts(params, prompts, jax.random.key(0), 0.0)
  for ids, thought in zip(prompts, thoughts):
    expected = reference(ids + [tokenizer.think_start_id], 6, {tokenizer.think_end_id}, set())
    assert thought == [t for t in expected if t != tokenizer.think_end_id]
  _, think_answers = generator.think_then_answer(params, prompts, jax.random.key(0), 0.0)
  for ids, thought, answer in zip(prompts, thoughts, think_answers):
    closed = ids + [tokenizer.think_start_id] + thought + [tokenizer.think_end_id]
    assert answer == tokenizer.decode(reference(closed, 5, stops, {tokenizer.think_start_id}))


@pytest.mark.slow
def test_information_gain_under_theta_matches_plain_forwards(model):
  config, tokenizer, graphdef, params = model
  config.rlp.max_thought_tokens = 5
  special = SpecialTokens(tokenizer.think_start_id, tokenizer.think_end_id, tokenizer.pad_id)
  heldout = HeldOut(graphdef, config.model, config.rlp, special, thoughts_per_position=3)
  documents = load_documents(config.data, 'validation')
  rows = [[tokenizer.bos_id] + tokenizer.encode(documents[i])[:30] for i in range(2)]
  tokens = np.full((2, 32), tokenizer.pad_id, np.int32)
  mask = np.zeros((2, 32), bool)
  for r, ids in enumerate(rows):
    tokens[r, :len(ids)], mask[r, :len(ids)] = ids, True
  positions = np.array([[9, 20], [12, len(rows[1]) - 1]], np.int32)
  for group, temperature in ((3, 0.7), (1, 0.0)):
    gains, thoughts = heldout.gains(params, jax.random.key(1), tokens, mask, positions, group,
                                    temperature)
    gains = np.asarray(gains)
    for b in range(2):
      for k in range(2):
        t = int(positions[b, k])
        plain = _log_softmax64(_full_logits(graphdef, params, rows[b][:t]))[-1, rows[b][t]]
        for g in range(group):
          r = (b * 2 + k) * group + g
          n = int(thoughts.length[r])
          thought = np.asarray(thoughts.tokens[r, :n]).tolist()
          if not bool(thoughts.ended[r]):
            thought.append(tokenizer.think_end_id)
          ids = rows[b][:t] + [tokenizer.think_start_id] + thought
          think = _log_softmax64(_full_logits(graphdef, params, ids))[-1, rows[b][t]]
          np.testing.assert_allclose(gains[b, k, g], think - plain, rtol=1e-4, atol=1e-4)


def test_answer_positions_point_at_the_first_answer_token(small_config):
  tokenizer = build_tokenizer(small_config.tokenizer, small_config.data)
  text = 'Question: What is 12 + 7?\nAnswer: 19.\n\nQuestion: What is 2 * 3?\nAnswer: 6.'
  row = np.asarray([tokenizer.bos_id] + tokenizer.encode(text), np.int32)
  positions = answer_positions(tokenizer, row, text)
  assert len(positions) == 2
  for t, answer in zip(positions, ('19', '6')):
    assert tokenizer.decode(row[t:].tolist()).startswith(answer)
    assert tokenizer.decode(row[:t].tolist()).endswith('Answer: ')
  worked = 'Question: What is 1 + 1?\nAnswer: <think> 1 + 1 = 2. </think>2.'
  assert answer_positions(tokenizer, np.asarray([tokenizer.bos_id] + tokenizer.encode(worked)),
                          worked) == []


def _scalar_steps(directory, tag):
  """Steps of the scalar `tag` in the TensorBoard event files of `directory` (TFRecord framing:
  length u64, crc u32, payload, crc u32; payloads are Event protos)."""
  import struct  # pylint: disable=import-outside-toplevel
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  steps = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack('<Q', data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      steps += [event.step for value in event.summary.value if value.tag == tag]
  return steps


def _cli(*args, cwd=REPO):
  """`python -m rlp_jax.eval`, with the session's compilation cache (what the in-process run
  compiled for the same config is loaded, not compiled again)."""
  env = dict(os.environ, **helpers.compilation_cache_environment())
  return subprocess.run([sys.executable, '-m', 'rlp_jax.eval', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


def _overrides(config):
  """The flags that make configs/tiny.py `config` for everything an evaluation reads."""
  keys = ('data.data_dir', 'data.num_documents', 'data.seq_len', 'data.batch_size',
          'tokenizer.vocab_size', 'model.vocab_size', 'model.hidden_size',
          'model.intermediate_size', 'model.num_layers', 'model.num_heads', 'model.num_kv_heads',
          'model.head_dim', 'rlp.max_thought_tokens', 'eval.num_documents', 'eval.num_problems',
          'eval.vote_samples', 'eval.thoughts_per_position', 'eval.max_answer_tokens',
          'eval.rows_per_call')
  out = []
  for key in keys:
    group, name = key.split('.')
    out.append(f'--config.{key}={config[group][name]}')
  return out


@pytest.mark.subprocess
@pytest.mark.slow
def test_eval_during_training_then_cli_report_and_errors(small_config, tmp_path):
  small_config.model.num_layers = 1  # nothing here depends on depth; each step compiles less
  small_config.train.num_steps = 4
  small_config.train.eval_every = 2
  small_config.rlp.max_thought_tokens = 4
  small_config.eval.update(dict(num_documents=8, num_problems=4, vote_samples=2,
                                thoughts_per_position=2, max_answer_tokens=3, rows_per_call=8))
  workdir = str(tmp_path / 'run')
  train(small_config, workdir)
  rows = read_metrics(workdir)
  evaluated = [row['step'] for row in rows if 'eval/ntp_loss' in row]
  assert evaluated == [2, 4]
  for row in rows:
    assert row['step_flops'] > 0
    if row['step'] in evaluated:
      for key in ('eval/perplexity', 'eval/gain/all/sampled_mean', 'eval/gain/all/greedy_positive',
                  'eval/acc/corpus/direct', 'eval/acc/corpus/think_greedy',
                  'eval/acc/corpus/think_vote'):
        assert np.isfinite(row[key]), key
      assert row['eval/acc/corpus/problems'] == 4
  assert _scalar_steps(os.path.join(workdir, 'tensorboard'), 'eval/ntp_loss') == [2, 4]

  bench = tmp_path / 'gsm8k.jsonl'
  bench.write_text('{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\\n#### 4"}\n'
                   '{"question": "What is 3 + 3?", "answer": "#### 6"}\n', encoding='utf-8')
  args = ['--config=configs/tiny.py', f'--workdir={workdir}', '--limit=3',
          f'--config.eval.benchmarks={bench}', *_overrides(small_config)]
  done = _cli(*args, '--step=4')
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads((tmp_path / 'run' / 'eval' / 'step_4.json').read_text(encoding='utf-8'))
  assert report['step'] == 4 and report['limit'] == 3
  assert report['metrics']['acc/gsm8k/problems'] == 2
  assert report['metrics']['acc/corpus/problems'] == 3
  assert 'answer accuracy' in done.stdout and 'gsm8k' in done.stdout

  # A Hugging Face directory given as model.init_from (no checkpoints in the workdir) is the
  # same θ: the same report as the checkpoint it was exported from, the command line's report of
  # step 4 above (`_overrides` gives it this config's evaluation settings).
  from rlp_jax.eval.checkpoint_eval import (  # pylint: disable=import-outside-toplevel
      evaluate_checkpoint, load_evaluated_params)
  from rlp_jax.interop.hf_checkpoint import (  # pylint: disable=import-outside-toplevel
      export_hf_checkpoint)
  params, step, _ = load_evaluated_params(small_config, workdir, None)
  assert step == 4
  export_hf_checkpoint(params, small_config.model, str(tmp_path / 'hf'))
  small_config.eval.benchmarks = str(bench)
  small_config.model.init_from = str(tmp_path / 'hf')
  from_hf = evaluate_checkpoint(small_config, str(tmp_path / 'empty'), limit=3,
                                progress_bar=False)
  assert from_hf['step'] == 0 and 'Hugging Face' in from_hf['weights']
  assert os.path.exists(tmp_path / 'empty' / 'eval' / 'step_0.json')
  assert sorted(from_hf['metrics']) == sorted(report['metrics'])
  for key, value in report['metrics'].items():
    np.testing.assert_allclose(from_hf['metrics'][key], value, rtol=1e-5, atol=1e-6,
                               err_msg=key)

  missing = _cli(*args, '--step=3')
  assert missing.returncode == 2
  assert missing.stderr.strip().count('\n') == 0 and 'step 3' in missing.stderr
  bench.write_text('{"question": "What is 2 + 2?", "answer": "#### 4"}\n{"question": "x"}\n',
                   encoding='utf-8')
  bad = _cli(*args)
  assert bad.returncode == 2
  message = bad.stderr.strip()
  assert message.count('\n') == 0 and 'gsm8k.jsonl line 2' in message, message


@pytest.mark.subprocess
@pytest.mark.slow
def test_study_smoke_runs_every_stage(tmp_path):
  out = tmp_path / 'study'
  done = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'rlp_vs_ntp.py'),
                         '--smoke', f'--out={out}'], capture_output=True, text=True, timeout=900,
                        check=False, cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  assert os.path.isdir(out / 'base' / 'checkpoints')
  results = json.loads((out / 'results.json').read_text(encoding='utf-8'))
  runs = results['runs']
  for arm in ('rlp_paper', 'rlp_paper_loss_positions', 'rlp_combined', 'ntp'):
    rows = runs[f'answer_only/{arm}/0']
    assert rows and rows[-1]['flops'] > 0 and 'acc/corpus/think_greedy' in rows[-1]
  budget = max(runs[f'answer_only/{a}/0'][-1]['flops'] for a in ('rlp_paper', 'rlp_combined'))
  ntp = runs['answer_only/ntp/0'][-1]['flops']
  assert abs(ntp - budget) / budget < 0.25  # matched up to one next-token step's rounding
  report = (out / 'results.md').read_text(encoding='utf-8')
  for arm in ('| base |', '| rlp_paper |', '| rlp_combined |', '| ntp |'):
    assert arm in report
  assert (out / 'img' / 'rlp_vs_ntp_answer_only.png').stat().st_size > 1000


def test_after_marker_positions_are_the_evaluators_answer_positions(small_config):
  """The training rule 'after_marker' with marker 'Answer: ' (token matching) and the evaluator's
  answer positions (character offsets) find the same tokens in answer-only documents."""
  from rlp_jax.data.special_tokens import marker_token_ids  # pylint: disable=import-outside-toplevel
  from rlp_jax.rollout.positions import after_marker  # pylint: disable=import-outside-toplevel
  tokenizer = build_tokenizer(small_config.tokenizer, small_config.data)
  small_config.rlp.position_marker = 'Answer: '
  marker = marker_token_ids(tokenizer, small_config.rlp.position_marker)
  assert tokenizer.decode(list(marker)) == 'Answer: '
  text = ('Question: What is 12 + 7?\nAnswer: 19.\n\nQuestion: Mia has 3 plums. How many?\n'
          'Answer: 3 plums.\n\nQuestion: Compute 9 * 2.\nAnswer: 18.')
  row = np.asarray([tokenizer.bos_id] + tokenizer.encode(text), np.int32)
  found = np.nonzero(np.asarray(after_marker(jax.numpy.asarray(row[None]), marker))[0])[0]
  assert found.tolist() == answer_positions(tokenizer, row, text)
  assert len(found) == 3
