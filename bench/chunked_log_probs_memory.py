"""XLA temporaries of the lm head's log-probs and their gradient (docs/performance.md, "Chunked
vocabulary log-probs (issue 16, item 2)"): unchunked, chunked by tokens with plain autodiff (each
chunk under jax.checkpoint, the head's gradient accumulated over the chunks), and
objective/chunked_log_probs.py (token chunks forward, vocabulary blocks backward), at several
`model.logits_chunk_tokens`.

One device holding what one device of the qwen3_1p7b recipe on 8×H100 holds (the head only:
vocab 151936, hidden 2048, tied, fp32 parameters, bf16 compute; or another head's sizes): the
next-token loss of one 1024-token document, the log-probs of 16 thought rows × 128 tokens, and
both in one gradient.
Only compiled (XLA CPU, the dry run's memory-minimising scheduler), nothing runs.

  python bench/chunked_log_probs_memory.py
  python bench/chunked_log_probs_memory.py --vocab 131072 --hidden 5120 --untied  # nano12b's head
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from rlp_jax.dry_run import use_memory_minimising_scheduler  # noqa: E402

use_memory_minimising_scheduler()

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rlp_jax.models import registry  # noqa: E402
from rlp_jax.objective import head_token_log_probs, next_token_loss_from_head  # noqa: E402
from rlp_jax.objective.chunked_log_probs import chunk_width  # noqa: E402
from rlp_jax.objective.log_probs import token_log_probs  # noqa: E402
from rlp_jax.objective.next_token import next_token_loss  # noqa: E402
from tests import helpers  # noqa: E402

GIB = 2**30


def token_chunked_log_probs(head, normed, targets, temperature, chunk_tokens):
  """The simple design: token chunks with autodiff (each under jax.checkpoint)."""
  rows, columns = targets.shape
  width = chunk_width(rows, columns, chunk_tokens)
  if width >= columns:
    return token_log_probs(head.logits(normed), targets, temperature)
  count = -(-columns // width)
  pad = count * width - columns
  normed = jnp.pad(normed, ((0, 0), (0, pad), (0, 0)))
  padded = jnp.pad(targets, ((0, 0), (0, pad)))
  split = lambda x: jnp.moveaxis(x.reshape((rows, count, width) + x.shape[2:]), 1, 0)
  body = jax.checkpoint(lambda pair: token_log_probs(head.logits(pair[0]), pair[1], temperature),
                        prevent_cse=False)
  out = jax.lax.map(body, (split(normed), split(padded)))
  return jnp.moveaxis(out, 0, 1).reshape(rows, -1)[:, :columns]


def temporaries(graphdef, params, which, design, chunk, hidden):
  documents = jax.ShapeDtypeStruct((1, 1024, hidden), jnp.bfloat16)
  thoughts = jax.ShapeDtypeStruct((16, 128, hidden), jnp.bfloat16)
  doc_tokens = jax.ShapeDtypeStruct((1, 1024), jnp.int32)
  thought_tokens = jax.ShapeDtypeStruct((16, 128), jnp.int32)
  mask = jax.ShapeDtypeStruct((1, 1024), jnp.bool_)

  def loss(params, documents, thoughts, doc_tokens, thought_tokens, mask):
    total = 0.0
    if 'ntp' in which:
      normed, head = registry.output_head(graphdef, params, documents)
      if design == 'tokens':
        log_probs = token_chunked_log_probs(head, normed[:, :-1], doc_tokens[:, 1:], 1.0, chunk)
        total += -jnp.mean(log_probs)
      elif chunk == 0:
        total += next_token_loss(head.logits(normed), doc_tokens, mask)[0]
      else:
        total += next_token_loss_from_head(head, normed, doc_tokens, mask, chunk_tokens=chunk)[0]
    if 'thoughts' in which:
      normed, head = registry.output_head(graphdef, params, thoughts)
      fn = token_chunked_log_probs if design == 'tokens' else head_token_log_probs
      total += jnp.sum(fn(head, normed, thought_tokens, 0.7, chunk))
    return total

  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(
      params, documents, thoughts, doc_tokens, thought_tokens, mask).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--vocab', type=int, default=151936)
  parser.add_argument('--hidden', type=int, default=2048)
  parser.add_argument('--chunks', default='0,1024,512,256')
  parser.add_argument('--untied', action='store_true', help='a separate lm head (nano12b)')
  args = parser.parse_args()
  config = helpers.dense_model_config(
      vocab_size=args.vocab, hidden_size=args.hidden, num_layers=1, tie_embeddings=not args.untied,
      compute_dtype='bfloat16', intermediate_size=64, num_heads=2, num_kv_heads=1, head_dim=8)
  graphdef, params = registry.abstract_params(config)
  chunks = [int(c) for c in args.chunks.split(',')]
  print(f"vocab {args.vocab}, hidden {args.hidden}, {'untied' if args.untied else 'tied'}: "
        f'temporaries GiB of the gradient at model.logits_chunk_tokens = {chunks}')
  print('| loss | design | ' + ' | '.join(str(c) for c in chunks) + ' |')
  print('|---|---|' + '---|' * len(chunks))
  for which in ('ntp', 'thoughts', 'ntp+thoughts'):
    for design in ('tokens', 'vocab'):
      cells = [temporaries(graphdef, params, which, design, chunk, args.hidden) / GIB
               for chunk in chunks]
      name = ('token chunks, autodiff' if design == 'tokens'
              else 'token chunks fwd, vocabulary blocks bwd')
      print(f'| {which} | {name} | ' + ' | '.join(f'{cell:.2f}' for cell in cells) + ' |',
            flush=True)


if __name__ == '__main__':
  main()
