"""Float64 reference runs of the library's own code (docs/architecture.md, "fp32 tolerances
derived from float64 runs")."""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlp_jax.models import layers


@contextlib.contextmanager
def float64_run():
  """The library's own code traced in float64: x64 enabled, and every float32 it names
  (`jnp.float32`, the config dtype table's 'float32') read as float64 while the context is open.
  Build the graphdef inside (registry.abstract_params) and pass `to_float64` inputs; the run is
  then the same path as the fp32 one with float64 rounding (random draws are not redone: the
  rollouts' sampled tokens are inputs)."""
  with jax.enable_x64(True), pytest.MonkeyPatch.context() as patch:
    patch.setattr(jnp, 'float32', jnp.float64)
    patch.setitem(layers.DTYPES, 'float32', jnp.float64)
    yield


def to_float64(tree):
  """Every floating leaf of `tree` cast to float64 (exact from fp32); other leaves unchanged."""
  return jax.tree.map(
      lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def max_abs(x) -> float:
  return float(np.max(np.abs(np.asarray(x, np.float64))))


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
