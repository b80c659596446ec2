"""Shared parameter-holding layers: projections, embedding, RMSNorm, MLPs (SwiGLU, squared ReLU)
and RoPE.

Every parameter is an `nnx.Param` carrying its logical axis names as the custom metadata field
`logical_axes` (not flax's `sharding_names`, which flax shards eagerly and which needs a mesh).
Parameters are stored in `param_dtype`; every layer computes in `compute_dtype`.
Activations are pinned with `constrain` (a no-op outside a step's activation layout; see
parallel/activation_sharding.py) under the logical names below.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rlp_jax.errors import ConfigError
from rlp_jax.parallel.activation_sharding import constrain

LogicalAxes = tuple[str, ...]

# Logical axes of activations (rules in rlp_jax/config/axis_rules.py).
RESIDUAL_AXES = ('batch', 'length', 'activation_embed')  # [B, L, E]
MLP_HIDDEN_AXES = ('batch', 'length', 'activation_mlp')  # [B, L, M]
QUERY_AXES = ('batch', 'length', 'activation_heads', 'head_dim')  # [B, L, H, D]
KV_AXES = ('batch', 'length', 'activation_kv_heads', 'head_dim')  # [B, L, K, D]
LOGITS_AXES = ('batch', 'length', 'activation_vocab')  # [B, L, V]

REMAT_POLICIES = ('full', 'save_matmuls', 'none')

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def resolve_dtype(name: str, key: str) -> Any:
  """Maps a config dtype name ('float32' | 'bfloat16') to a jnp dtype; `key` names the config key."""
  if name not in DTYPES:
    raise ConfigError(f'{key} must be one of {sorted(DTYPES)}, got {name!r}')
  return DTYPES[name]


def logical_param(value: jax.Array, logical_axes: LogicalAxes) -> nnx.Param:
  """Wraps `value` as a parameter annotated with one logical axis name per dimension."""
  if len(logical_axes) != value.ndim:
    raise ValueError(f'logical_axes {logical_axes} do not match the parameter shape {value.shape}')
  return nnx.Param(value, logical_axes=tuple(logical_axes))


def normal_param(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype: Any,
                 logical_axes: LogicalAxes) -> nnx.Param:
  """A parameter drawn from N(0, std^2) (sampled in fp32, stored in `dtype`)."""
  value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return logical_param(value.astype(dtype), logical_axes)


class Projection(nnx.Module):
  """A bias-free linear map written as one einsum, e.g. 'ble,ehd->blhd' with kernel [E, H, D].

  Inputs and kernel are cast to `compute_dtype`; the result has `output_dtype` (default: compute).
  """

  def __init__(self, einsum: str, kernel_shape: tuple[int, ...], logical_axes: LogicalAxes, *,
               init_std: float, param_dtype: Any, compute_dtype: Any, rngs: nnx.Rngs,
               output_dtype: Any | None = None):
    self.einsum = einsum
    self.compute_dtype = compute_dtype
    self.output_dtype = compute_dtype if output_dtype is None else output_dtype
    self.kernel = normal_param(rngs, kernel_shape, init_std, param_dtype, logical_axes)

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(self.compute_dtype)
    return jnp.einsum(self.einsum, x.astype(self.compute_dtype), kernel,
                      preferred_element_type=self.output_dtype)


class Embedding(nnx.Module):
  """Token embedding table [vocab, embed]; tied, it is also the output head (decoder.OutputHead)."""

  def __init__(self, vocab_size: int, hidden_size: int, *, init_std: float, param_dtype: Any,
               compute_dtype: Any, rngs: nnx.Rngs):
    self.compute_dtype = compute_dtype
    self.embedding = normal_param(rngs, (vocab_size, hidden_size), init_std, param_dtype,
                                  ('vocab', 'embed'))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    embedded = jnp.take(self.embedding[...], tokens, axis=0).astype(self.compute_dtype)
    return constrain(embedded, RESIDUAL_AXES)


class RMSNorm(nnx.Module):
  """RMSNorm normalising in fp32. Qwen3 casts back to the input dtype, then multiplies by the
  scale; with `scale_in_fp32` (Nemotron-H) the scale multiplies in fp32 and the product is cast."""

  def __init__(self, dim: int, *, eps: float, param_dtype: Any, scale_in_fp32: bool = False):
    self.eps = eps
    self.scale_in_fp32 = scale_in_fp32
    self.scale = logical_param(jnp.ones((dim,), param_dtype), ('norm',))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = x32 * jax.lax.rsqrt(variance + self.eps)
    if self.scale_in_fp32:
      return (self.scale[...].astype(jnp.float32) * normed).astype(x.dtype)
    return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x))."""

  def __init__(self, hidden_size: int, intermediate_size: int, *, init_std: float,
               param_dtype: Any, compute_dtype: Any, rngs: nnx.Rngs):
    common = dict(init_std=init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    self.gate_proj = Projection('ble,em->blm', (hidden_size, intermediate_size),
                                ('embed', 'mlp'), **common)
    self.up_proj = Projection('ble,em->blm', (hidden_size, intermediate_size),
                              ('embed', 'mlp'), **common)
    self.down_proj = Projection('blm,me->ble', (intermediate_size, hidden_size),
                                ('mlp', 'embed'), **common)

  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = constrain(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x), MLP_HIDDEN_AXES)
    return constrain(self.down_proj(hidden), RESIDUAL_AXES)


class SquaredReLUMLP(nnx.Module):
  """down(relu(up(x))^2), no gate (Nemotron-H)."""

  def __init__(self, hidden_size: int, intermediate_size: int, *, init_std: float,
               param_dtype: Any, compute_dtype: Any, rngs: nnx.Rngs):
    common = dict(init_std=init_std, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  rngs=rngs)
    self.up_proj = Projection('ble,em->blm', (hidden_size, intermediate_size),
                              ('embed', 'mlp'), **common)
    self.down_proj = Projection('blm,me->ble', (intermediate_size, hidden_size),
                                ('mlp', 'embed'), **common)

  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = constrain(jnp.square(jax.nn.relu(self.up_proj(x))), MLP_HIDDEN_AXES)
    return constrain(self.down_proj(hidden), RESIDUAL_AXES)


def remat_option(model_config: Any) -> str:
  """`model.remat_policy` ('full' when a hand-built config lacks the key), checked."""
  if 'remat' in model_config:
    raise ConfigError("config key `model.remat` was renamed `model.remat_policy` ('block' is now "
                      "'full')")
  policy = model_config.get('remat_policy', 'full')
  if policy not in REMAT_POLICIES:
    raise ConfigError(f'config key `model.remat_policy` must be one of {list(REMAT_POLICIES)}, '
                      f'got {policy!r}')
  return policy


def checkpoint_policy(policy: str) -> Callable[..., Any] | None:
  """The jax.checkpoint policy of a `model.remat_policy` (None for 'none': no remat)."""
  return {'full': jax.checkpoint_policies.nothing_saveable,
          'save_matmuls': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
          'none': None}[policy]


def layer_forward(layer: nnx.Module, *args: Any, remat: str,
                  call: Callable[..., Any] | None = None) -> Any:
  """`layer(*args)` (or `call(layer, *args)`) under a `model.remat_policy`: 'full' recomputes its
  forward in the backward pass, so only its inputs are kept (see `recomputed_in_backward`);
  'save_matmuls' keeps the matmul outputs (jax.checkpoint with that policy); 'none' keeps
  everything. The numbers are those of the plain call.

  `args` are arrays (or pytrees of arrays / None); the first is the residual stream.
  """
  call = call or (lambda module, *inputs: module(*inputs))
  if remat == 'none':
    return call(layer, *args)
  if remat not in REMAT_POLICIES:
    raise ConfigError(f'config key `model.remat_policy` must be one of {list(REMAT_POLICIES)}, '
                      f'got {remat!r}')
  graphdef, state = nnx.split(layer)

  def pure_forward(state: nnx.State, *args: Any) -> Any:
    return call(nnx.merge(graphdef, state), *args)

  if remat == 'save_matmuls':
    return jax.checkpoint(pure_forward, policy=checkpoint_policy(remat))(state, *args)
  return recomputed_in_backward(pure_forward)(state, *args)


def recomputed_in_backward(fn):
  """`fn(state, x, *rest)` whose backward pass recomputes the forward from the saved inputs
  (what `jax.checkpoint` does), with the recomputation tied to the incoming cotangent.

  `jax.checkpoint` keeps XLA from hoisting the recomputation with optimization barriers, which
  XLA CPU removes before it schedules, so there the recomputed forward of every layer runs early
  and everything stays live (the `--dry_run` estimate would show no saving). Here x enters the
  recomputation as `x + 0 · g` (g one element of the cotangent): exactly x for finite g, and the
  recomputation cannot start before layer i + 1's backward produced g, on any backend.
  """

  @jax.custom_vjp
  def run(state, x, *rest):
    return fn(state, x, *rest)

  def forward(state, x, *rest):
    return fn(state, x, *rest), (state, x, rest)

  def backward(saved, cotangent):
    state, x, rest = saved
    first = jax.tree.leaves(cotangent)[0]
    tie = (first.reshape(-1)[0] * 0).astype(x.dtype)
    _, vjp = jax.vjp(fn, state, x + tie, *rest)
    return vjp(cotangent)

  run.defvjp(forward, backward)
  return run


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos/sin [B, L, head_dim] in fp32 for integer positions [B, L] (frequencies repeated twice)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def rotate_half(x: jax.Array) -> jax.Array:
  """[x1, x2] -> [-x2, x1] over the last axis."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotary embedding (half-split) of x [B, L, heads, head_dim]; computed in fp32, cast back."""
  x32 = x.astype(jnp.float32)
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)
