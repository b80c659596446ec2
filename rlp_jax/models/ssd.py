"""Mamba2 state-space duality (SSD): the chunked scan over a sequence and the one-token step.

Per head h (of group g = h // (H / G)), with the state S_t [P, N]:
  S_t = exp(dt_t · A_h) S_{t-1} + dt_t · x_t ⊗ B_t        y_t = S_t C_t
The chunked form splits the L tokens into chunks of Q: inside a chunk y is a masked
attention-like product (C Bᵀ ∘ decay) x; across chunks the states are passed along with their
decays. Everything here is fp32 (the SSM states are kept in fp32 whatever `model.compute_dtype`,
see docs/architecture.md); B and C stay per group (they are never repeated per head). The D skip
connection and the gate are applied by the caller.

Packed rows: `resets` marks the first token of each document after the first; there the state
is zeroed before the token's input is added (S_t = dt_t · x_t ⊗ B_t), by making that token's
log-decay −inf. Every decay that spans the token — inside a chunk (segment_sum), to a chunk's
end, from chunk to chunk — is then exp(−inf) = 0: no document sees another's state, with no
extra [L, L] array and no change to a row without resets.

Letters in the einsums: b batch, c chunk, l/s positions in a chunk (target/source), g group,
r head within the group, p head_dim, n state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segment_sum(x: jax.Array) -> jax.Array:
  """[..., T] → [..., T, T]: out[i, j] = x[j+1] + … + x[i] for i ≥ j, −inf above the diagonal.

  Built from a masked cumulative sum (not a difference of cumsums), which stays exact for long
  runs of large negative values.
  """
  length = x.shape[-1]
  repeated = jnp.broadcast_to(x[..., :, None], x.shape + (length,))  # [..., i, j] = x[i]
  strictly_lower = jnp.tril(jnp.ones((length, length), jnp.bool_), k=-1)
  sums = jnp.cumsum(jnp.where(strictly_lower, repeated, 0.0), axis=-2)
  lower = jnp.tril(jnp.ones((length, length), jnp.bool_))
  return jnp.where(lower, sums, -jnp.inf)


def _by_group(x: jax.Array, groups: int, axis: int) -> jax.Array:
  """Splits the heads axis into (groups, heads per group)."""
  shape = x.shape
  return x.reshape(shape[:axis] + (groups, shape[axis] // groups) + shape[axis + 1:])


def ssd_chunked_scan(x: jax.Array, dt: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array,
                     chunk_size: int, initial_state: jax.Array | None = None,
                     state_ends: jax.Array | None = None, resets: jax.Array | None = None,
                     ) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array]:
  """The SSD recurrence over a whole sequence, chunk by chunk.

  Args:
    x: [B, L, H, P] inputs.
    dt: [B, L, H] step sizes (after softplus and clamp; 0 leaves the state untouched).
    a: [H] the (negative) continuous-time decay A.
    b, c: [B, L, G, N] input and output projections of the state, per group.
    chunk_size: Q; sequences are zero-padded (dt = 0) to a multiple of min(Q, L).
    initial_state: [B, H, P, N] state before the first token (None: zeros).
    state_ends: optional int32 [B, K]: also return the state after the first `state_ends[b, k]`
      tokens of row b (0 ≤ state_ends ≤ L; 0 gives the initial state), taken from the chunk
      states the scan computes anyway plus a partial sum inside one chunk per (b, k).
    resets: optional bool [B, L]: True where the state is zeroed before the token's own input
      (a document start of a packed row; see the module docstring). None: nowhere.

  Returns:
    y [B, L, H, P] and the final state [B, H, P, N], both fp32; with `state_ends` also the states
    [B, K, H, P, N] there.
  """
  batch, length, heads, head_dim = x.shape
  groups, state_size = b.shape[2], b.shape[3]
  chunk = min(chunk_size, length)
  pad = (-length) % chunk
  num_chunks = (length + pad) // chunk

  def chunked(t: jax.Array) -> jax.Array:
    t = jnp.pad(t.astype(jnp.float32), [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
    return t.reshape((batch, num_chunks, chunk) + t.shape[2:])

  x = _by_group(chunked(x), groups, axis=3)  # [b, c, l, g, r, p]
  dt = _by_group(chunked(dt), groups, axis=3)  # [b, c, l, g, r]
  b, c = chunked(b), chunked(c)  # [b, c, l, g, n]
  x_dt = x * dt[..., None]
  log_decay = jnp.moveaxis(dt * _by_group(a.astype(jnp.float32), groups, axis=0), 2, -1)
  if resets is not None:  # [b, c, l] → [b, c, 1, 1, l]: −inf forgets everything before
    reset = jnp.pad(resets, ((0, 0), (0, pad))).reshape(batch, num_chunks, 1, 1, chunk)
    log_decay = jnp.where(reset, -jnp.inf, log_decay)
  cumulative = jnp.cumsum(log_decay, axis=-1)  # [b, c, g, r, l]

  # 1. Within each chunk: y_l = Σ_{s ≤ l} (C_l · B_s) exp(Σ_{s<k≤l} dt_k A) dt_s x_s.
  scores = jnp.einsum('bclgn,bcsgn->bcgls', c, b)
  decay = jnp.exp(segment_sum(log_decay))  # [b, c, g, r, l, s]
  y_within = jnp.einsum('bcgls,bcgrls,bcsgrp->bclgrp', scores, decay, x_dt)

  # 2. The state each chunk adds by its end, starting from zero. The decay from token s to the
  # chunk end is exp(Σ_{s<k<Q} dt_k A): a sum of same-signed terms (an exclusive reverse cumsum),
  # not the difference cum[-1] − cum[s], which cancels badly in fp32 once |cum| is large.
  reverse_cumulative = jnp.flip(jnp.cumsum(jnp.flip(log_decay, -1), axis=-1), -1)
  after = jnp.concatenate([reverse_cumulative[..., 1:], jnp.zeros_like(log_decay[..., :1])], -1)
  decay_to_end = jnp.exp(after)  # [b, c, g, r, l]
  chunk_states = jnp.einsum('bclgn,bcgrl,bclgrp->bcgrpn', b, decay_to_end, x_dt)

  # 3. Pass states across chunks: the state entering chunk i, from the initial state and chunks < i.
  if initial_state is None:
    start = jnp.zeros((batch, groups, heads // groups, head_dim, state_size), jnp.float32)
  else:
    start = _by_group(initial_state.astype(jnp.float32), groups, axis=1)
  states = jnp.concatenate([start[:, None], chunk_states], axis=1)  # [b, c + 1, g, r, p, n]
  chunk_log_decay = jnp.pad(cumulative[..., -1], [(0, 0), (1, 0), (0, 0), (0, 0)])
  chunk_decay = jnp.exp(segment_sum(jnp.moveaxis(chunk_log_decay, 1, -1)))  # [b, g, r, i, j]
  entering = jnp.einsum('bgrij,bjgrpn->bigrpn', chunk_decay, states)
  entering, final_state = entering[:, :-1], entering[:, -1]

  # 4. What the entering state contributes to each token of the chunk.
  y_entering = jnp.einsum('bclgn,bcgrpn,bcgrl->bclgrp', c, entering, jnp.exp(cumulative))

  y = (y_within + y_entering).reshape(batch, num_chunks * chunk, heads, head_dim)[:, :length]
  final_state = final_state.reshape(batch, heads, head_dim, state_size)
  if state_ends is None:
    return y, final_state
  states_at = _states_after(state_ends, x_dt, b, cumulative, decay, entering, chunk)
  return y, final_state, states_at.reshape(state_ends.shape + (heads, head_dim, state_size))


def _states_after(ends: jax.Array, x_dt: jax.Array, b: jax.Array, cumulative: jax.Array,
                  decay: jax.Array, entering: jax.Array, chunk: int) -> jax.Array:
  """The state after the first ends[b, k] tokens: [B, K, G, R, P, N].

  With j = ends − 1 the last token taken, in chunk i = j // Q at offset l = j % Q:
    S = exp(cum_l) · entering_i + Σ_{s ≤ l} decay[l, s] dt_s x_s ⊗ B_s
  (decay = exp(segment_sum), the scan's own within-chunk decays). Only chunk i of each (b, k) is
  gathered, so the cost is one chunk per requested state.
  """
  last = jnp.maximum(ends - 1, 0)
  index, offset = last // chunk, last % chunk  # [B, K]
  take = lambda t: jax.vmap(lambda rows, i: rows[i])(t, index)  # [B, C, ...] -> [B, K, ...]
  x_dt, b, entering = take(x_dt), take(b), take(entering)  # [b,k,s,g,r,p] [b,k,s,g,n] [b,k,g,r,p,n]
  row = lambda t: jax.vmap(jax.vmap(lambda t, l: t[..., l, :]))(t, offset)  # decay row l
  weights = row(take(decay))  # [b, k, g, r, s]: 0 for s > l
  at_offset = jax.vmap(jax.vmap(lambda t, l: t[..., l]))(take(cumulative), offset)  # [b, k, g, r]
  state = (jnp.exp(at_offset)[..., None, None] * entering
           + jnp.einsum('bksgn,bkgrs,bksgrp->bkgrpn', b, weights, x_dt))
  return jnp.where((ends > 0)[:, :, None, None, None, None], state, entering)  # 0: chunk 0's


def ssd_step(state: jax.Array, x: jax.Array, dt: jax.Array, a: jax.Array, b: jax.Array,
             c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One token of the recurrence: state [B, H, P, N], x [B, H, P], dt [B, H], a [H],
  b/c [B, G, N] → (y [B, H, P], new state), fp32."""
  groups = b.shape[1]
  state = _by_group(state.astype(jnp.float32), groups, axis=1)  # [b, g, r, p, n]
  x = _by_group(x.astype(jnp.float32), groups, axis=1)
  dt = _by_group(dt.astype(jnp.float32), groups, axis=1)
  a = _by_group(a.astype(jnp.float32), groups, axis=0)
  b, c = b.astype(jnp.float32), c.astype(jnp.float32)
  decay = jnp.exp(dt * a)[..., None, None]
  state = decay * state + jnp.einsum('bgr,bgrp,bgn->bgrpn', dt, x, b)
  y = jnp.einsum('bgrpn,bgn->bgrp', state, c)
  batch, _, _, head_dim, state_size = state.shape
  heads = y.shape[1] * y.shape[2]
  return y.reshape(batch, heads, head_dim), state.reshape(batch, heads, head_dim, state_size)
