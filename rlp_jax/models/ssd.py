"""Mamba2 state-space duality (SSD): the chunked scan over a sequence and the one-token step.

Per head h (of group g = h // (H / G)), with the state S_t [P, N]:
  S_t = exp(dt_t · A_h) S_{t-1} + dt_t · x_t ⊗ B_t        y_t = S_t C_t
The chunked form splits the L tokens into chunks of Q: inside a chunk y is a masked
attention-like product (C Bᵀ ∘ decay) x; across chunks the states are passed along with their
decays. Everything here is fp32 (DESIGN §4: SSM states in fp32); B and C stay per group (they are
never repeated per head). The D skip connection and the gate are applied by the caller.

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
                     ) -> tuple[jax.Array, jax.Array]:
  """The SSD recurrence over a whole sequence, chunk by chunk.

  Args:
    x: [B, L, H, P] inputs.
    dt: [B, L, H] step sizes (after softplus and clamp; 0 leaves the state untouched).
    a: [H] the (negative) continuous-time decay A.
    b, c: [B, L, G, N] input and output projections of the state, per group.
    chunk_size: Q; sequences are zero-padded (dt = 0) to a multiple of min(Q, L).
    initial_state: [B, H, P, N] state before the first token (None: zeros).

  Returns:
    y [B, L, H, P] and the final state [B, H, P, N], both fp32.
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
  cumulative = jnp.cumsum(log_decay, axis=-1)  # [b, c, g, r, l]

  # 1. Within each chunk: y_l = Σ_{s ≤ l} (C_l · B_s) exp(Σ_{s<k≤l} dt_k A) dt_s x_s.
  scores = jnp.einsum('bclgn,bcsgn->bcgls', c, b)
  decay = jnp.exp(segment_sum(log_decay))  # [b, c, g, r, l, s]
  y_within = jnp.einsum('bcgls,bcgrls,bcsgrp->bclgrp', scores, decay, x_dt)

  # 2. The state each chunk adds by its end, starting from zero.
  decay_to_end = jnp.exp(cumulative[..., -1:] - cumulative)  # [b, c, g, r, l]
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
  return y, final_state.reshape(batch, heads, head_dim, state_size)


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
