"""The evaluator: held-out next-token loss, held-out information gain of thinking, and answer
accuracy, for one θ. Built once per run (jitted pieces compile once), called with parameters.

Metrics (names as written to eval/step_N.json and, under `eval/`, to metrics.jsonl):
  ntp_loss, perplexity                held-out next-token loss (nats/token) on the validation split
  gain/{all,answer}/{sampled,greedy}_{mean,positive}
                                      information gain log p_θ(x_t | x_<t, <think> c </think>) −
                                      log p_θ(x_t | x_<t) (heldout.py); `all`: uniform positions,
                                      `answer`: first answer token of answer-only documents;
  gain/gold/{mean,positive}           the same at the first answer token of held-out corpus
                                      problems with the corpus's own worked steps as the thought
  acc/{source}/{direct,think_greedy,think_vote}
                                      exact-match accuracy (answers.answers_match) on the held-out
                                      problems of the corpus (`corpus`) and of each benchmark file
"""
from __future__ import annotations

from collections.abc import Sequence
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from rlp_jax.data.batches import DocumentBatches
from rlp_jax.data.reasoning_corpus import render_prompt
from rlp_jax.data.special_tokens import special_tokens
from rlp_jax.eval.answers import answers_match, extract_final_answer, majority_vote
from rlp_jax.eval.benchmarks import EvalProblem, corpus_problems, load_benchmark
from rlp_jax.eval.generation import Generator
from rlp_jax.eval.heldout import HeldOut, answer_positions

EXAMPLES_KEPT = 3  # generated examples per source kept in the JSON report


def _limited(count: int, limit: int | None) -> int:
  return count if limit is None else min(count, limit)


def _right_padded(rows: Sequence[Sequence[int]], size: int, width: int,
                  pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """tokens int32 [size, width] and mask bool [size, width] of token lists (at most `size` of
  them, each at most `width` long), right-padded; rows past the lists are empty."""
  tokens = np.full((size, width), pad_id, np.int32)
  mask = np.zeros((size, width), np.bool_)
  for row, ids in enumerate(rows):
    tokens[row, :len(ids)], mask[row, :len(ids)] = ids, True
  return tokens, mask


class Evaluator:
  """Evaluates parameters of `config.model` on the held-out data named by `config.eval`."""

  def __init__(self, config: ml_collections.ConfigDict, graphdef: Any, tokenizer: Any,
               validation_documents: Sequence[str], limit: int | None = None,
               progress_bar: bool = True):
    self.config, self.tokenizer = config, tokenizer
    ev, rlp, data = config.eval, config.rlp, config.data
    self.progress_bar = progress_bar
    # data.batch_size −1 (one document per batch shard of a run's mesh): one per device here.
    self.batch_size = data.batch_size if data.batch_size > 0 else jax.device_count()
    self.rows = DocumentBatches(validation_documents, tokenizer, self.batch_size, data.seq_len,
                                seed=ev.seed)
    count = _limited(min(ev.num_documents, len(validation_documents)), limit)
    self.documents = list(range(count))
    self.texts = [validation_documents[i] for i in self.documents]
    special = special_tokens(tokenizer)
    self.heldout = HeldOut(graphdef, config.model, rlp, special, ev.thoughts_per_position)
    self.generator = Generator(graphdef, config.model, tokenizer, ev.rows_per_call,
                               data.seq_len, rlp.max_thought_tokens, ev.max_answer_tokens)
    self.sources = self._problem_sources(_limited(ev.num_problems, limit))
    # The held-out inputs are the same at every evaluation: built once here.
    key = jax.random.key(ev.seed)
    self._document_batches = self._batches(self.documents)
    self._uniform_batches = [
        (batch, *self.heldout.uniform_positions(jax.random.fold_in(key, i), batch['mask']))
        for i, batch in enumerate(self._document_batches)]
    self._answer_batches = (self._answer_position_batches() if data.corpus == 'reasoning'
                            else [])
    self._gold_batches = self._gold_pairs() if 'corpus' in self.sources else []
    self._prompts = {name: [[tokenizer.bos_id] + tokenizer.encode(render_prompt(p.question) + ' ')
                            for p in problems] for name, problems in self.sources.items()}

  def _problem_sources(self, count: int) -> dict[str, list[EvalProblem]]:
    sources = {}
    data = self.config.data
    if data.corpus == 'reasoning' and count:
      sources['corpus'] = corpus_problems(data.num_documents, data.corpus_seed, count,
                                          data.worked_fraction)
    for path in filter(None, (p.strip() for p in self.config.eval.benchmarks.split(','))):
      name = os.path.splitext(os.path.basename(path))[0]
      sources[name] = load_benchmark(path, count or None)
    return sources

  def _batches(self, indices: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Rows of validation documents `indices`, `data.batch_size` per batch (last one padded
    with empty rows, which carry no tokens and no positions)."""
    size, length = self.batch_size, self.config.data.seq_len
    batches = []
    for start in range(0, len(indices), size):
      rows = [self.rows.document_tokens(index) for index in indices[start:start + size]]
      tokens, mask = _right_padded(rows, size, length, self.tokenizer.pad_id)
      batches.append({'tokens': tokens, 'mask': mask})
    return batches

  def _answer_position_batches(self):
    """(batch, positions, valid) of the answer-only documents' first answer tokens."""
    k, min_context = self.config.rlp.positions_per_document, self.config.rlp.min_context
    chosen, slots = [], []
    for index in self.documents:
      row = self.rows.document_tokens(index)
      found = [t for t in answer_positions(self.tokenizer, row, self.texts[index])
               if t >= min_context][:k]
      if found:
        chosen.append(index)
        slots.append(found)
    out = []
    for b, batch in enumerate(self._batches(chosen)):
      size = batch['tokens'].shape[0]
      positions = np.full((size, k), min_context, np.int32)
      valid = np.zeros((size, k), np.bool_)
      for row, found in enumerate(slots[b * size:(b + 1) * size]):
        positions[row, :len(found)], valid[row, :len(found)] = found, True
      out.append((batch, positions, valid))
    return out

  def evaluate(self, params: Any) -> dict[str, Any]:
    """All metrics for `params` (a flat dict of floats) plus `examples` (generated text)."""
    key = jax.random.key(self.config.eval.seed)
    document_batches, uniform = self._document_batches, self._uniform_batches
    answer = self._answer_batches
    calls = self._generation_calls()
    total = len(document_batches) + len(uniform) + len(answer) + calls
    with tqdm(total=total, desc='eval', unit='call', leave=False,
              disable=not self.progress_bar) as bar:
      tick = lambda: bar.update(1)  # pylint: disable=unnecessary-lambda-assignment
      metrics = dict(self.heldout.next_token(params, document_batches))
      bar.update(len(document_batches))
      for name, batches in (('all', uniform), ('answer', answer)):
        if batches:
          gain = self.heldout.information_gain(params, jax.random.fold_in(key, 1000), batches,
                                               tick)
          metrics.update({f'gain/{name}/{k}': v for k, v in gain.items()})
      if self._gold_batches:
        metrics.update({f'gain/gold/{k}': v for k, v in self._gold_gain(params).items()})
      examples = {}
      for name, problems in self.sources.items():
        accuracy, examples[name] = self._accuracy(params, problems, self._prompts[name],
                                                  jax.random.fold_in(key, 7), tick)
        metrics.update({f'acc/{name}/{k}': v for k, v in accuracy.items()})
    return {'metrics': metrics, 'examples': examples}

  def _gold_pairs(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Batches (tokens, mask, positions [B, 1], rows) of the corpus problems read plainly
    (`prompt answer.`) and with their worked thought (`prompt <think> steps </think>answer.`),
    in alternate rows, with the position of the answer's first token."""
    tok, size = self.tokenizer, self.batch_size
    pairs = []
    for p in self.sources['corpus']:
      prompt = render_prompt(p.question) + ' '
      for text in (prompt, prompt + p.thought):
        head = [tok.bos_id] + tok.encode(text)
        full = [tok.bos_id] + tok.encode(text + p.answer + '.')
        if full[:len(head)] != head or len(full) > self.config.data.seq_len + 64:
          break
        pairs.append((full, len(head)))
      if len(pairs) % 2:
        pairs.pop()  # the plain and the worked reading are scored as a pair, or not at all
    width = max((len(full) for full, _ in pairs), default=1)
    batches = []
    for start in range(0, len(pairs), size):
      chunk = pairs[start:start + size]
      tokens, mask = _right_padded([full for full, _ in chunk], size, width, tok.pad_id)
      positions = np.ones((size, 1), np.int32)
      positions[:len(chunk), 0] = [t for _, t in chunk]
      batches.append((tokens, mask, positions, len(chunk)))
    return batches

  def _gold_gain(self, params: Any) -> dict[str, float]:
    """What a correct thought buys: log p_θ(first answer token | prompt <think> gold steps
    </think>) − log p_θ(first answer token | prompt), on the corpus's held-out problems, with the
    worked steps the corpus writes (not sampled). A large value with a small sampled gain means θ
    uses thoughts but does not yet write correct ones."""
    log_probs = []
    for tokens, mask, positions, rows in self._gold_batches:
      values = self.heldout.log_prob_at(params, tokens, mask, positions)
      log_probs.extend(np.asarray(values)[:rows, 0].tolist())
    gains = np.asarray(log_probs[1::2]) - np.asarray(log_probs[0::2])
    if not gains.size:
      return {}
    return {'mean': float(gains.mean()), 'positive': float((gains > 0).mean()),
            'pairs': float(gains.size)}

  def _generation_calls(self) -> int:
    per_call = self.config.eval.rows_per_call
    calls = 0
    for problems in self.sources.values():
      n = len(problems)
      vote = n * self.config.eval.vote_samples
      calls += 3 * -(-n // per_call) + 2 * -(-vote // per_call)  # direct, greedy ×2, vote ×2
    return calls

  def _accuracy(self, params: Any, problems: Sequence[EvalProblem],
                prompts: Sequence[Sequence[int]], key: jax.Array, tick,
                ) -> tuple[dict[str, float], list[dict[str, str]]]:
    direct = self.generator.answers(params, prompts, tick)
    thoughts, greedy = self.generator.think_then_answer(params, prompts, key, 0.0, tick)
    k = self.config.eval.vote_samples
    repeated = [p for p in prompts for _ in range(k)]
    _, sampled = self.generator.think_then_answer(params, repeated, jax.random.fold_in(key, 1),
                                                  float(self.config.rlp.sample_temperature), tick)
    votes = [majority_vote([extract_final_answer(a) for a in sampled[i * k:(i + 1) * k]])
             for i in range(len(problems))]
    scored = {'direct': [extract_final_answer(a) for a in direct],
              'think_greedy': [extract_final_answer(a) for a in greedy], 'think_vote': votes}
    accuracy = {mode: float(np.mean([answers_match(pred, p.answer)
                                     for pred, p in zip(preds, problems)]))
                for mode, preds in scored.items()}
    accuracy['problems'] = float(len(problems))
    examples = [{'source': p.source, 'question': p.question, 'gold': p.answer,
                 'direct': direct[i], 'thought': thoughts[i], 'think_answer': greedy[i]}
                for i, p in enumerate(problems[:EXAMPLES_KEPT])]
    return accuracy, examples


def format_table(metrics: dict[str, float]) -> list[str]:
  """The printed table of an evaluation: one line per metric group."""
  lines = []
  if 'ntp_loss' in metrics:
    lines.append(f"held-out next-token loss {metrics['ntp_loss']:.4f} nats/token "
                 f"(perplexity {metrics['perplexity']:.3f}, {int(metrics['ntp_tokens'])} tokens)")
  lines.append(f"{'information gain (θ)':<24}{'positions':>10}{'sampled mean':>14}"
               f"{'> 0':>7}{'greedy mean':>13}{'> 0':>7}")
  for name in ('all', 'answer'):
    prefix = f'gain/{name}/'
    if prefix + 'positions' in metrics:
      lines.append(f'  {name:<22}{int(metrics[prefix + "positions"]):>10}'
                   f'{metrics[prefix + "sampled_mean"]:>+14.4f}'
                   f'{metrics[prefix + "sampled_positive"]:>7.2f}'
                   f'{metrics[prefix + "greedy_mean"]:>+13.4f}'
                   f'{metrics[prefix + "greedy_positive"]:>7.2f}')
  if 'gain/gold/mean' in metrics:
    lines.append(f"  {'gold thought @answer':<22}{int(metrics['gain/gold/pairs']):>10}"
                 f"{metrics['gain/gold/mean']:>+14.4f}{metrics['gain/gold/positive']:>7.2f}"
                 '   (the corpus\'s worked steps, teacher-forced)')
  sources = sorted({k.split('/')[1] for k in metrics if k.startswith('acc/')})
  if sources:
    lines.append(f"{'answer accuracy':<24}{'problems':>10}{'direct':>10}{'think':>10}"
                 f"{'think vote':>12}")
  for name in sources:
    p = f'acc/{name}/'
    lines.append(f'  {name:<22}{int(metrics[p + "problems"]):>10}{metrics[p + "direct"]:>10.3f}'
                 f'{metrics[p + "think_greedy"]:>10.3f}{metrics[p + "think_vote"]:>12.3f}')
  return lines
