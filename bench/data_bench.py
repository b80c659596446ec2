"""The data loader's tokens/s beside what the training step consumes, measured in one run.

For two shapes, the tiny CPU config and qwen3_1p7b (the recipe's 1024-token rows, a byte-level BPE
tokenizer.json of 32k pieces trained here on the same corpus), this writes a corpus of jsonl
shards (synthetic web-like text, lognormal document lengths, many of them longer than a row) and
measures, side by side:

- the loader (rlp_jax/data/loader.py, `files(...)` source, batched tokenization, windows; with and
  without packing; 0 and 2 worker processes): real (non-padding) tokens per second over repeated
  spans of batches, median;
- the training step through `rlp_jax.train.loop.train` on the same shards: document tokens per
  second (tokens of a batch / `step_s`), and `data_wait_s`, the time the step waited for the
  iterator (both in metrics.jsonl). tiny: the RLP step as configured. qwen3_1p7b at full width
  cannot run 28 layers on 2 cores in a bench: its next-token step (which consumes document tokens
  faster than the RLP step, whose rollouts add compute per document token) is timed at 1 and 4
  layers and extrapolated linearly to 28 (`t1 + 27 × (t4 − t1) / 3`).

The ratio loader / step is the target of issue 14 (≥ 5). The last lines say what an accelerator
host would need instead: tokens per second per chip of a next-token step at 45% MFU on an H100
(6N FLOPs per token, N non-embedding parameters), times 8 chips, against one loader worker's rate.

  python bench/data_bench.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

H100_BF16_FLOPS = 989e12
TARGET_MFU = 0.45


def write_corpus(directory: str, shards: int, documents: int, seed: int = 0) -> str:
  """`shards` jsonl files of `documents` web-like documents each; returns the glob."""
  rng = np.random.default_rng(seed)
  letters = np.array(list('etaoinshrdlucmfwypvbgkjqxz'))
  vocabulary = [''.join(rng.choice(letters, size=int(n))) for n in rng.integers(2, 10, 20000)]
  weights = 1.0 / np.arange(1, len(vocabulary) + 1)  # Zipf-like word frequencies
  weights /= weights.sum()
  os.makedirs(directory, exist_ok=True)
  for shard in range(shards):
    with open(os.path.join(directory, f'web-{shard:03d}.jsonl'), 'w', encoding='utf-8') as f:
      for _ in range(documents):
        words = rng.choice(len(vocabulary), size=int(rng.lognormal(5.5, 0.8)) + 5, p=weights)
        text = ' '.join(vocabulary[w] for w in words) + '.'
        f.write(json.dumps({'text': text}) + '\n')
  return os.path.join(directory, '*.jsonl')


def corpus_texts(pattern: str, limit: int) -> list[str]:
  import glob  # pylint: disable=import-outside-toplevel
  texts = []
  for path in sorted(glob.glob(pattern)):
    with open(path, encoding='utf-8') as f:
      for line in f:
        texts.append(json.loads(line)['text'])
        if len(texts) >= limit:
          return texts
  return texts


def bpe_tokenizer_json(path: str, texts: list[str], vocab_size: int) -> str:
  """A byte-level BPE tokenizer.json (the kind Qwen3 ships) with the think and special tokens."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=['<|endoftext|>', '<think>', '</think>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer=trainer)
  tok.save(path)
  return path


def loader_rate(config, tokenizer, rows: int, workers: int, packing: bool, span_s: float,
                repeats: int) -> tuple[float, float]:
  """(median real tokens/s over `repeats` spans of at least `span_s` seconds each, mean fill of
  the rows). Spans of seconds, not of a few batches: a batch may come from documents tokenized
  in an earlier chunk, so only spans over many chunks measure the tokenization."""
  from rlp_jax.data.loader import DataIterator, build_pipeline  # pylint: disable=import-outside-toplevel
  data_config = config.data.copy_and_resolve_references()
  data_config.update(dict(workers=workers, packing=packing, prefetch=0))
  data = DataIterator(build_pipeline(data_config, tokenizer, seed=0, process_index=0,
                                     process_count=1, local_rows=rows))
  try:
    data.next_batch()  # start-up: workers spawned, first chunk tokenized
    rates, fills = [], []
    for _ in range(repeats):
      start, tokens = time.perf_counter(), 0
      while time.perf_counter() - start < span_s:
        batch, _ = data.next_batch()
        tokens += int(batch['mask'].sum())
        fills.append(float(batch['mask'].mean()))
      rates.append(tokens / (time.perf_counter() - start))
  finally:
    data.close()
  return statistics.median(rates), float(np.mean(fills))


def step_rate(config, workdir: str) -> dict[str, float]:
  """Median step_s and data_wait_s (steps after the first, which compiles) of a short run, and
  the mean real tokens per batch."""
  from rlp_jax.train.loop import train  # pylint: disable=import-outside-toplevel
  result = train(config, workdir)
  with open(result.metrics_path, encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  steady = rows[1:] or rows
  return {'step_s': statistics.median(r['step_s'] for r in steady),
          'data_wait_s': statistics.median(r['data_wait_s'] for r in steady),
          'max_data_wait_s': max(r['data_wait_s'] for r in steady)}


def load_config_file(path: str):
  """`get_config()` of a config file under configs/."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def tiny_config(pattern: str, data_dir: str):
  config = load_config_file(os.path.join(REPO, 'configs', 'tiny.py'))
  config.data.update(dict(sources=f'files({pattern})', data_dir=data_dir))
  config.train.update(dict(progress_bar=False, eval_every=0, checkpoint_every=1000))
  return config


def qwen_config(pattern: str, data_dir: str, tokenizer_path: str, layers: int):
  config = load_config_file(os.path.join(REPO, 'configs', 'qwen3_1p7b.py'))
  config.data.update(dict(sources=f'files({pattern})', data_dir=data_dir, batch_size=1))
  config.tokenizer.update(dict(path=tokenizer_path))
  config.model.update(dict(allow_random_init=True, num_layers=layers, scan_layers=False))
  config.rlp.enabled = False
  config.train.update(dict(progress_bar=False, eval_every=0, checkpoint_every=1000))
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true', help='fewer documents, batches, steps')
  args = parser.parse_args()
  shards, documents = (4, 300) if args.quick else (8, 1500)
  span_s, repeats, steps = (1.0, 3, 3) if args.quick else (3.0, 5, 5)
  from rlp_jax.data.hf_tokenizer import HFJsonTokenizer  # pylint: disable=import-outside-toplevel
  from rlp_jax.data.tokenizer import build_tokenizer  # pylint: disable=import-outside-toplevel
  from rlp_jax.train.flops import non_embedding_params  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as tmp:
    pattern = write_corpus(os.path.join(tmp, 'corpus'), shards, documents)
    data_dir = os.path.join(tmp, 'cache')
    tokenizer_json = bpe_tokenizer_json(os.path.join(tmp, 'tokenizer.json'),
                                        corpus_texts(pattern, 3000), 32000)
    print(f'corpus: {shards} jsonl shards × {documents} documents; {os.cpu_count()} CPUs')
    report = {}
    for shape in ('tiny', 'qwen3_1p7b'):
      if shape == 'tiny':
        config = tiny_config(pattern, data_dir)
        config.train.num_steps = steps
        tokenizer = build_tokenizer(config.tokenizer, config.data)
        rows = config.data.batch_size
      else:
        config = qwen_config(pattern, data_dir, tokenizer_json, 1)
        tokenizer = HFJsonTokenizer(tokenizer_json)
        rows = 8  # one host of 8 chips, one 1024-token row each (the recipe on 8×H100)
      print(f'\n{shape}: rows of {config.data.seq_len} tokens, {rows} rows per host batch')
      rates = {}
      for packing in (False, True):
        for workers in (0, 2):
          rate, fill = loader_rate(config, tokenizer, rows, workers, packing, span_s, repeats)
          rates[(packing, workers)] = rate
          print(f'  loader packing={packing!s:<5} workers={workers}: {rate:12,.0f} tokens/s '
                f'(rows {fill:.0%} full)')
      fill = loader_rate(config, tokenizer, rows, 0, False, 0.5, 1)[1]  # unpacked rows' fill
      if shape == 'tiny':
        timing = step_rate(config, os.path.join(tmp, 'run_tiny'))
        what = 'RLP step, one device'
      else:
        timings = []
        for layers in (1, 4):
          cfg = qwen_config(pattern, data_dir, tokenizer_json, layers)
          cfg.train.num_steps = steps
          timings.append(step_rate(cfg, os.path.join(tmp, f'run_qwen_{layers}')))
        per_layer = (timings[1]['step_s'] - timings[0]['step_s']) / 3
        step_s = timings[0]['step_s'] + 27 * per_layer
        timing = dict(timings[1], step_s=step_s)
        what = (f'next-token step of one row per device, 28 layers extrapolated from '
                f'{timings[0]["step_s"]:.1f} s (1 layer) and {timings[1]["step_s"]:.1f} s (4); '
                '8 devices per host in parallel')
      # Real tokens a host's step consumes per second: its rows per step, as full as the loader
      # fills them unpacked, over the step time.
      consumed = rows * config.data.seq_len * fill / timing['step_s']
      best = max(rates.values())
      slowest = min(rates.values())
      print(f'  step ({what}): {timing["step_s"]:.2f} s per step, {consumed:,.0f} document '
            f'tokens/s per host; waited on data {timing["data_wait_s"] * 1e3:.2f} ms median, '
            f'{timing["max_data_wait_s"] * 1e3:.2f} ms max')
      print(f'  loader / step: {slowest / consumed:,.1f}× (slowest setting) to '
            f'{best / consumed:,.1f}× (fastest)')
      report[shape] = dict(loader=slowest, step=consumed)
      if shape == 'qwen3_1p7b':
        n = non_embedding_params(qwen_config(pattern, data_dir, tokenizer_json, 28).model)
        per_chip = TARGET_MFU * H100_BF16_FLOPS / (6 * n)
        per_worker = rates[(False, 0)]
        print(f'  on an 8×H100 host at {TARGET_MFU:.0%} MFU a next-token step would consume '
              f'{per_chip:,.0f} tokens/s per chip (N = {n / 1e9:.2f}B), {8 * per_chip:,.0f} per '
              f'host: {8 * per_chip / per_worker:.1f} loader workers at this CPU\'s '
              f'{per_worker:,.0f} tokens/s each (an RLP step consumes far fewer)')


if __name__ == '__main__':
  main()
