"""Thought rollouts, naive prefix path: each rollout re-encodes its own document prefix.

Row r of a rollout batch is (b, k, g) flattened as r = (b * K + k) * G + g. Its prompt is the
document prefix x_<t followed by `<think>`, left-padded to the document length L so that every row
decodes at the same cache column; RoPE positions count from the document start. In a packed row
(segment ids, models/segments.py) the prefix is t's own document before t: the columns of earlier
documents become left padding and positions count from t's document start.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from rlp_jax.models import registry
from rlp_jax.models.segments import prefix_starts
from rlp_jax.objective.log_probs import token_log_probs
from rlp_jax.rollout.decode_inputs import decode_params


@flax.struct.dataclass
class Prompts:
  """Left-padded prompts `x_<t <think>`: tokens/positions int32 [R, P], mask bool [R, P].

  `positions` are RoPE positions (within the document); the last column's is where decoding
  continues from. `scored_position` is t as a column of the batch row (in a packed row not the
  same as `<think>`'s RoPE position t − document start)."""
  tokens: jax.Array
  positions: jax.Array
  mask: jax.Array
  scored_position: jax.Array  # int32 [R]: t, the column whose token the thought should predict
  next_token: jax.Array  # int32 [R]: x_t


@flax.struct.dataclass
class Thoughts:
  """Sampled thoughts; token u of row r is a policy action iff mask[r, u].

  tokens int32 [R, T] (pad after the thought), log_probs float32 [R, T] under the sampling
  distribution (0 where masked), mask bool [R, T], length int32 [R] (sampled tokens, `</think>`
  included when sampled), ended bool [R] (sampled `</think>` before the limit T; otherwise
  `</think>` is forced after the T tokens and is not an action).
  """
  tokens: jax.Array
  log_probs: jax.Array
  mask: jax.Array
  length: jax.Array
  ended: jax.Array


def build_prompts(tokens: jax.Array, positions: jax.Array, group_size: int,
                  think_start_id: int, segment_ids: jax.Array | None = None) -> Prompts:
  """Prompts for every (row, position, thought): [B, L] rows, [B, K] positions; with
  `segment_ids` (packed rows) each prompt holds only its own document's tokens before t."""
  batch, length = tokens.shape
  num_positions = positions.shape[1]
  t = jnp.repeat(positions.reshape(-1), group_size)  # [R]
  start = jnp.repeat(prefix_starts(segment_ids, positions).reshape(-1), group_size)  # [R]
  doc = jnp.repeat(jnp.arange(batch), num_positions * group_size)  # [R]
  columns = jnp.arange(length)[None, :]
  source = columns - (length - 1 - t[:, None])  # row column shown at each prompt column
  gathered = tokens[doc[:, None], jnp.clip(source, 0, length - 1)]
  prompt_tokens = jnp.where(source == t[:, None], think_start_id, gathered)
  mask = source >= start[:, None]
  prompt_tokens = jnp.where(mask, prompt_tokens, 0).astype(jnp.int32)
  return Prompts(tokens=prompt_tokens,
                 positions=jnp.maximum(source - start[:, None], 0).astype(jnp.int32),
                 mask=mask, scored_position=t.astype(jnp.int32),
                 next_token=tokens[doc, t].astype(jnp.int32))


def pick_tokens(key: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """One token per row of logits [R, V]: argmax at temperature 0, else a draw from
  softmax(logits / temperature) by Gumbel-max (`jax.random.categorical`).

  Not by inverse CDF, although that needs one uniform per row instead of R·V random numbers (on
  CPU ≈ 0.6 ms of a ≈ 3 ms decode step at R 16, V 2048): an fp32 cumulative sum is off by
  ≈ 1.5e-7 at every boundary, which at V = 131k moves ≈ 2e-3 of the probability mass onto tail
  tokens (measured), so the thoughts would not come from the policy whose log-probs are recorded.
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits.astype(jnp.float32) / temperature).astype(jnp.int32)


def sample_thoughts(graphdef: Any, params: Any, model_config: Any, prompts: Prompts,
                    key: jax.Array, max_thought_tokens: int, temperature: float,
                    think_end_id: int | jax.Array, pad_id: int,
                    banned_ids: jax.Array | None = None) -> Thoughts:
  """Samples up to T tokens per row after `<think>`, stopping a row at `</think>`.

  Prefill once (logits of its last column only), then one cached decode step per token inside
  a `lax.while_loop` that also stops when every row has ended: fixed shapes, compiled once.
  temperature 0 decodes greedily (its recorded log-probs are then untempered).
  `think_end_id` may be an array of stop ids and `banned_ids` ids never drawn (the evaluator's
  answer generation: stop at a newline or eos, never open a thought; see decode_thoughts).
  The weights the model uses in its compute dtype are cast to it once, before prefill and loop
  (`decode_inputs.decode_params`: the same numbers, half the bytes per step for fp32 weights).
  """
  rows, prompt_len = prompts.tokens.shape
  limit = max_thought_tokens
  params = decode_params(graphdef, params)  # bf16 weights read per step (decode_inputs.py)
  cache = registry.init_cache(model_config, rows, prompt_len + limit)
  hidden, cache = registry.forward_hidden(graphdef, params, prompts.tokens, prompts.positions,
                                          prompts.mask, cache)
  first_logits = registry.logits_from_hidden(graphdef, params, hidden[:, -1:])[:, 0]  # [R, V]

  def step_forward(token, positions, active, cache):
    step_logits, cache = registry.forward(graphdef, params, token, positions, active, cache)
    return step_logits[:, -1], cache

  return decode_thoughts(step_forward, first_logits, cache, prompts.positions[:, -1], key,
                         limit, temperature, think_end_id, pad_id, banned_ids)


def decode_thoughts(step_forward: Callable, first_logits: jax.Array, cache: Any,
                    last_position: jax.Array, key: jax.Array, max_thought_tokens: int,
                    temperature: float, think_end_id: int | jax.Array, pad_id: int,
                    banned_ids: jax.Array | None = None) -> Thoughts:
  """The sampling loop both prefix modes share, after their prefill.

  `step_forward(token [R, 1], positions [R, 1], active [R, 1], cache) -> (logits [R, V], cache)`
  runs one cached decode step; `first_logits` [R, V] predict the first thought token;
  `last_position` int32 [R] is the RoPE position of the prompt's last token (`<think>`: t less
  its document's start), so decode step u is at last_position + 1 + u. One key split per step,
  so both modes draw the same tokens from the same key.
  A row stops after drawing `think_end_id` (one id, or any id of a 1-D array of stop ids);
  `banned_ids` (1-D ids, optional) get no probability.
  """
  rows, limit = first_logits.shape[0], max_thought_tokens
  logprob_temperature = temperature if temperature > 0 else 1.0
  stop_ids = jnp.atleast_1d(jnp.asarray(think_end_id, jnp.int32))

  def allowed(logits):
    if banned_ids is None:
      return logits
    vocab = jnp.arange(logits.shape[-1])
    return jnp.where(jnp.isin(vocab, banned_ids)[None, :], -jnp.inf, logits)

  def body(carry):
    u, cache, last_logits, done, key, out_tokens, out_logp, out_mask = carry
    key, sub = jax.random.split(key)
    last_logits = allowed(last_logits)
    token = pick_tokens(sub, last_logits, temperature)
    logp = token_log_probs(last_logits, token, logprob_temperature)
    active = ~done
    token = jnp.where(active, token, pad_id)
    out_tokens = out_tokens.at[:, u].set(token)
    out_logp = out_logp.at[:, u].set(jnp.where(active, logp, 0.0))
    out_mask = out_mask.at[:, u].set(active)
    done = done | jnp.isin(token, stop_ids)
    step_positions = (last_position + 1 + u)[:, None]
    step_logits, cache = step_forward(token[:, None], step_positions, active[:, None], cache)
    return u + 1, cache, step_logits, done, key, out_tokens, out_logp, out_mask

  def cond(carry):
    u, done = carry[0], carry[3]
    return (u < limit) & ~jnp.all(done)

  init = (jnp.zeros((), jnp.int32), cache, first_logits, jnp.zeros((rows,), jnp.bool_), key,
          jnp.full((rows, limit), pad_id, jnp.int32), jnp.zeros((rows, limit), jnp.float32),
          jnp.zeros((rows, limit), jnp.bool_))
  _, _, _, done, _, out_tokens, out_logp, out_mask = jax.lax.while_loop(cond, body, init)
  return Thoughts(tokens=out_tokens, log_probs=out_logp, mask=out_mask,
                  length=out_mask.sum(axis=1).astype(jnp.int32), ended=done)
