"""The Mamba2 mixer of Nemotron-H (order of operations as transformers' NemotronHMamba2Mixer).

  z, x, B, C, dt = projections of the (normed) input        (HF: one fused in_proj)
  x, B, C = silu(depthwise causal conv1d(·) + bias)         (HF: one conv1d over x|B|C)
  dt = clamp(softplus(dt + dt_bias), dt_limit_min, dt_limit_max);  A = −exp(A_log)
  y = SSD(x, dt, A, B, C) + D · x                           (ssd.py, fp32 states)
  out = out_proj(scale · rmsnorm_per_group(y · silu(z)))

Parameters and their logical axes (E hidden, H Mamba heads, P head_dim, G groups, N state,
K conv kernel):
  z_proj, x_proj.kernel [E, H, P]   ('embed', 'mamba_heads', 'mamba_head_dim')
  b_proj, c_proj.kernel [E, G, N]   ('embed', 'mamba_groups', 'ssm_state')
  dt_proj.kernel        [E, H]      ('embed', 'mamba_heads')
  conv_x.kernel [K, H, P], .bias [H, P]   ('conv_kernel', 'mamba_heads', 'mamba_head_dim')
  conv_b, conv_c.kernel [K, G, N], .bias [G, N]   ('conv_kernel', 'mamba_groups', 'ssm_state')
  dt_bias, A_log, D     [H]         ('mamba_heads',)
  norm.scale            [H, P]      ('mamba_heads', 'mamba_head_dim')
  out_proj.kernel       [H, P, E]   ('mamba_heads', 'mamba_head_dim', 'embed')
Keeping the fused HF tensors apart lets heads and groups shard without slicing a fused axis.

Masked tokens (token_mask False) get zero conv inputs, zero x/B/C after the conv and dt = 0, so
they leave the SSM state untouched; a one-token step also keeps the conv window of a masked row.
Within an L > 1 call the conv window still slides over masked tokens (as zeros), so there only
leading masked tokens (left padding, from a fresh state) are exact no-ops.

Packed rows (`segment_ids`, models/segments.py; no cache): the conv takes no tap from another
segment and the SSD scan zeroes the state at each document start (its log-decay there is −inf),
so every document runs as it would alone from a fresh state.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.models.hybrid_cache import MambaState
from rlp_jax.models.layers import (RESIDUAL_AXES, LogicalAxes, Projection, logical_param,
                                   normal_param)
from rlp_jax.models.segments import segment_at, segment_resets
from rlp_jax.models.ssd import ssd_chunked_scan, ssd_step
from rlp_jax.parallel.activation_sharding import constrain

# Logical axes of the mixer's activations (rules in rlp_jax/config/axis_rules.py).
_HEAD_STREAM_AXES = ('batch', 'length', 'activation_mamba_heads', 'mamba_head_dim')  # [B,L,H,P]
_GROUP_STREAM_AXES = ('batch', 'length', 'activation_mamba_groups', 'ssm_state')  # [B,L,G,N]
_STEP_SIZE_AXES = ('batch', 'length', 'activation_mamba_heads')  # [B, L, H]


def _resets(segment_ids: jax.Array | None) -> jax.Array | None:
  """Where the SSD scan zeroes its state: each document start of a packed row (None: nowhere)."""
  return None if segment_ids is None else segment_resets(segment_ids)


class CausalConv(nnx.Module):
  """Depthwise causal conv1d over time with bias: kernel [K, *channels], bias [*channels].

  kernel[K-1] weighs the current token (HF conv1d.weight[c, 0, k] → kernel[k, c]).
  """

  def __init__(self, kernel_size: int, channels: tuple[int, ...], channel_axes: LogicalAxes, *,
               param_dtype: Any, rngs: nnx.Rngs):
    self.kernel = normal_param(rngs, (kernel_size,) + channels, kernel_size ** -0.5, param_dtype,
                               ('conv_kernel',) + tuple(channel_axes))
    self.bias = logical_param(jnp.zeros(channels, param_dtype), channel_axes)

  def __call__(self, inputs: jax.Array, window: jax.Array, segment_ids: jax.Array | None = None,
               ) -> tuple[jax.Array, jax.Array]:
    """inputs [B, L, *channels], window [B, K-1, *channels] (previous inputs, oldest first) →
    (silu(conv + bias) [B, L, *channels] in fp32, the new window: the last K-1 inputs).

    With `segment_ids` [B, L] (packed rows) a tap from an input of another segment is left out,
    so a document's first K-1 outputs see only zeros before it, as at the start of a row (the
    window counts as the first token's segment)."""
    kernel_size, length = self.kernel.shape[0], inputs.shape[1]
    padded = jnp.concatenate([window.astype(inputs.dtype), inputs], axis=1).astype(jnp.float32)
    kernel = self.kernel[...].astype(jnp.float32)
    out = self.bias[...].astype(jnp.float32)
    if segment_ids is not None:
      first = jnp.broadcast_to(segment_ids[:, :1], (segment_ids.shape[0], kernel_size - 1))
      padded_segments = jnp.concatenate([first, segment_ids], axis=1)
      channel_axes = (None,) * (inputs.ndim - 2)
    for k in range(kernel_size):
      taken = padded[:, k:k + length]  # the inputs K-1-k tokens back
      if segment_ids is not None and k < kernel_size - 1:  # zero those of another segment
        same = padded_segments[:, k:k + length] == segment_ids
        taken = jnp.where(same[(...,) + channel_axes], taken, 0.0)
      out = out + kernel[k] * taken
    new_window = padded[:, padded.shape[1] - (kernel_size - 1):].astype(window.dtype)
    return jax.nn.silu(out), new_window


class GatedGroupRMSNorm(nnx.Module):
  """scale · rmsnorm(y · silu(z)) with the RMS taken per group of heads; fp32 inside."""

  def __init__(self, num_heads: int, head_dim: int, num_groups: int, *, eps: float,
               param_dtype: Any):
    self.eps = eps
    self.num_groups = num_groups
    self.scale = logical_param(jnp.ones((num_heads, head_dim), param_dtype),
                               ('mamba_heads', 'mamba_head_dim'))

  def __call__(self, y: jax.Array, z: jax.Array) -> jax.Array:
    """y, z [B, L, H, P] → fp32 [B, L, H, P]."""
    gated = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
    batch, length, heads, head_dim = gated.shape
    grouped = gated.reshape(batch, length, self.num_groups, heads // self.num_groups, head_dim)
    variance = jnp.mean(jnp.square(grouped), axis=(-2, -1), keepdims=True)
    normed = (grouped * jax.lax.rsqrt(variance + self.eps)).reshape(gated.shape)
    return self.scale[...].astype(jnp.float32) * normed


def _dt_bias_init(rngs: nnx.Rngs, num_heads: int, dtype: Any) -> jax.Array:
  """softplus⁻¹ of dt drawn log-uniformly in [1e-3, 0.1] (the Mamba2 initialisation)."""
  u = jax.random.uniform(rngs.params(), (num_heads,), jnp.float32)
  dt = jnp.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
  return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)


class Mamba2Mixer(nnx.Module):
  """Mamba2 mixer; `__call__` maps normed hidden states [B, L, E] to [B, L, E]."""

  def __init__(self, config: Any, *, param_dtype: Any, compute_dtype: Any, rngs: nnx.Rngs):
    e, h, p = config.hidden_size, config.mamba_num_heads, config.mamba_head_dim
    g, n, k = config.mamba_n_groups, config.ssm_state_size, config.mamba_conv_kernel
    self.chunk_size = int(config.mamba_chunk_size)
    self.dt_limits = (float(config.mamba_dt_limit_min), float(config.mamba_dt_limit_max))
    common = dict(init_std=config.init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    head_axes, group_axes = ('mamba_heads', 'mamba_head_dim'), ('mamba_groups', 'ssm_state')
    self.z_proj = Projection('ble,ehp->blhp', (e, h, p), ('embed',) + head_axes, **common)
    self.x_proj = Projection('ble,ehp->blhp', (e, h, p), ('embed',) + head_axes, **common)
    self.b_proj = Projection('ble,egn->blgn', (e, g, n), ('embed',) + group_axes, **common)
    self.c_proj = Projection('ble,egn->blgn', (e, g, n), ('embed',) + group_axes, **common)
    self.dt_proj = Projection('ble,eh->blh', (e, h), ('embed', 'mamba_heads'), **common)
    conv = dict(param_dtype=param_dtype, rngs=rngs)
    self.conv_x = CausalConv(k, (h, p), head_axes, **conv)
    self.conv_b = CausalConv(k, (g, n), group_axes, **conv)
    self.conv_c = CausalConv(k, (g, n), group_axes, **conv)
    self.dt_bias = logical_param(_dt_bias_init(rngs, h, param_dtype), ('mamba_heads',))
    self.A_log = logical_param(jnp.log(jnp.arange(1, h + 1, dtype=jnp.float32)).astype(param_dtype),
                               ('mamba_heads',))
    self.D = logical_param(jnp.ones((h,), param_dtype), ('mamba_heads',))
    self.norm = GatedGroupRMSNorm(h, p, g, eps=config.norm_eps, param_dtype=param_dtype)
    self.out_proj = Projection('blhp,hpe->ble', (h, p, e), head_axes + ('embed',), **common)

  def _empty_windows(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    batch, window = x.shape[0], self.conv_x.kernel.shape[0] - 1
    return tuple(jnp.zeros((batch, window) + conv.bias.shape, x.dtype)
                 for conv in (self.conv_x, self.conv_b, self.conv_c))

  def _streams(self, x: jax.Array, token_mask: jax.Array, windows: tuple[jax.Array, ...],
               segment_ids: jax.Array | None = None) -> tuple[list, list, list]:
    """Masked conv inputs, fp32 conv outputs (x, B, C streams) and the new conv windows."""
    keep = token_mask[:, :, None, None]
    inputs, streams, new_windows = [], [], []
    for proj, conv, window, axes in zip(
        (self.x_proj, self.b_proj, self.c_proj), (self.conv_x, self.conv_b, self.conv_c), windows,
        (_HEAD_STREAM_AXES, _GROUP_STREAM_AXES, _GROUP_STREAM_AXES)):
      conv_input = constrain(jnp.where(keep, proj(x), 0), axes)
      convolved, new_window = conv(conv_input, window, segment_ids)
      inputs.append(conv_input)
      streams.append(jnp.where(keep, convolved, 0.0))
      new_windows.append(new_window)
    return inputs, streams, new_windows

  def _step_sizes(self, x: jax.Array, token_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(dt [B, L, H] fp32, 0 on masked tokens; A [H])."""
    dt = jax.nn.softplus(self.dt_proj(x).astype(jnp.float32)
                         + self.dt_bias[...].astype(jnp.float32))
    dt = jnp.where(token_mask[:, :, None], jnp.clip(dt, *self.dt_limits), 0.0)
    return constrain(dt, _STEP_SIZE_AXES), -jnp.exp(self.A_log[...].astype(jnp.float32))

  def _output(self, y: jax.Array, xs: jax.Array, x: jax.Array) -> jax.Array:
    """out_proj(gated norm(y + D x)) [B, L, E]."""
    y = y + self.D[...].astype(jnp.float32)[:, None] * xs
    z = constrain(self.z_proj(x), _HEAD_STREAM_AXES)
    return constrain(self.out_proj(self.norm(y, z)), RESIDUAL_AXES)

  def __call__(self, x: jax.Array, token_mask: jax.Array, state: MambaState | None = None,
               segment_ids: jax.Array | None = None) -> tuple[jax.Array, MambaState | None]:
    """x [B, L, E], token_mask bool [B, L], state: the layer's cache entry (None: no cache),
    segment_ids int32 [B, L] (packed rows, without a state only): restart at each document.

    With a state, L == 1 takes one recurrent step and L > 1 runs the chunked scan from it.
    Returns the output [B, L, E] and the new state (None without a cache).
    """
    if segment_ids is not None and state is not None:
      raise ValueError('segment_ids (packed rows) apply to a Mamba2 forward without a cache')
    windows = self._empty_windows(x) if state is None else (state.conv_x, state.conv_b,
                                                            state.conv_c)
    _, (xs, bs, cs), new_windows = self._streams(x, token_mask, windows, segment_ids)
    dt, a = self._step_sizes(x, token_mask)
    if state is not None and x.shape[1] == 1:
      y, ssm = ssd_step(state.ssm, xs[:, 0], dt[:, 0], a, bs[:, 0], cs[:, 0])
      y = y[:, None]
      keep_row = token_mask[:, 0, None, None, None]
      new_windows = [jnp.where(keep_row, new, old) for new, old in zip(new_windows, windows)]
    else:
      y, ssm = ssd_chunked_scan(xs, dt, a, bs, cs, self.chunk_size,
                                None if state is None else state.ssm,
                                resets=_resets(segment_ids))
    out = self._output(y, xs, x)
    if state is None:
      return out, None
    return out, MambaState(conv_x=new_windows[0], conv_b=new_windows[1], conv_c=new_windows[2],
                           ssm=ssm)

  def document_scan(self, x: jax.Array, token_mask: jax.Array, state_ends: jax.Array,
                    segment_ids: jax.Array | None = None) -> tuple[jax.Array, MambaState]:
    """The no-cache forward over documents [B, L, E] plus the layer's state after the first
    `state_ends[b, k]` tokens of each row (int32 [B, K], ≥ 1): a MambaState whose arrays lead
    with [B, K]. The SSM states come from the chunked scan (one partial chunk per state, no
    re-scan); the conv windows are the conv inputs at positions state_ends − (K_conv − 1) … − 1
    (zeros before the document start), exactly what a cache holds after that many tokens.

    Packed rows (`segment_ids`): the scan restarts at each document, so the state after token
    t − 1 holds only its own document; window inputs of another segment than token t − 1's are
    zeros. A thought at t thus starts from what a cache holds after t's document prefix alone.
    """
    inputs, (xs, bs, cs), _ = self._streams(x, token_mask, self._empty_windows(x), segment_ids)
    dt, a = self._step_sizes(x, token_mask)
    y, _, ssm = ssd_chunked_scan(xs, dt, a, bs, cs, self.chunk_size, state_ends=state_ends,
                                 resets=_resets(segment_ids))
    window = self.conv_x.kernel.shape[0] - 1
    columns = state_ends[:, :, None] + jnp.arange(window)  # in inputs left-padded by `window`
    if segment_ids is not None:  # keep window inputs of token t − 1's segment only
      padded_segments = jnp.pad(segment_ids, ((0, 0), (window, 0)), constant_values=-1)
      window_segments = jax.vmap(lambda rows, at: rows[at])(padded_segments, columns)
      own = segment_at(segment_ids, state_ends - 1)[:, :, None]  # [B, K, 1]
      in_document = window_segments == own  # [B, K, window]
    else:
      in_document = None

    def window_at(conv_input: jax.Array) -> jax.Array:  # [B, L, ...] -> [B, K, window, ...]
      padded = jnp.pad(conv_input, [(0, 0), (window, 0)] + [(0, 0)] * (conv_input.ndim - 2))
      taken = jax.vmap(lambda rows, at: rows[at])(padded, columns)
      if in_document is None:
        return taken
      keep = in_document.reshape(in_document.shape + (1,) * (taken.ndim - 3))
      return jnp.where(keep, taken, jnp.zeros((), taken.dtype))

    conv_x, conv_b, conv_c = (window_at(t) for t in inputs)
    return self._output(y, xs, x), MambaState(conv_x=conv_x, conv_b=conv_b, conv_c=conv_c,
                                              ssm=ssm)
