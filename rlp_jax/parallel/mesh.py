"""The device mesh from the config: axes `data`, `fsdp`, `tensor` (−1 fills with what is left)."""
from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh

from rlp_jax.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor')


def mesh_shape(requested: dict[str, int], num_devices: int) -> tuple[int, ...]:
  """Sizes of (data, fsdp, tensor) with a single −1 filled; errors name the mesh key."""
  sizes = [requested[a] for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError('config keys `mesh.data/fsdp/tensor`: at most one may be -1')
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ConfigError(f'config key `mesh.{axis}` must be a positive size or -1, got {size}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f'mesh {dict(zip(MESH_AXES, sizes))} does not divide the '
                        f'{num_devices} devices')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, '
                      f'{num_devices} are present (set one of `mesh.data/fsdp/tensor` to -1)')
  return tuple(sizes)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh laid out for the physical topology (jax.make_mesh) with Auto axis types: shardings are
  given at jit boundaries (in/out shardings) and GSPMD propagates them inside.

  jax.make_mesh would default to Explicit axes; Auto is the deliberate choice here because the
  model code carries no per-op sharding annotations.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape({a: mesh_config[a] for a in MESH_AXES}, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)
