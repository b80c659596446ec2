"""One slice of one parameter, read from the Hugging Face tensor that holds it.

`model.init_from` builds every parameter with `jax.make_array_from_callback`: the callback gets
the slice of the parameter one device holds and reads only the elements of the HF tensor that
slice needs. Each layout of models/hf_names/tensor_map.py is a transpose + reshape, so every axis
of the HF tensor is a row-major flattening of a group of parameter axes:

  Same              hf axis i      = param axis i
  LinearKernel(k)   hf axes (out, in) = param axes (k, …, n−1), (0, …, k−1)
  ConvKernel        hf axes (C, 1, K) = param axes (1, …, n−1), (), (0)
  Flattened         hf axis 0      = param axes (0, …, n−1)

A slice of the parameter is then, along each HF axis, a few contiguous ranges (one when the
slice splits only the group's first axis, as the sharding rules do); the block read is the
product of those ranges, and a fused HF tensor (several parameters concatenated along one axis)
shifts the ranges of each part by the parts before it. A layout this module does not know is
read whole and sliced afterwards (correct, not minimal).
"""
from __future__ import annotations

from collections.abc import Callable
import itertools
import math
from typing import Any

import numpy as np

from rlp_jax.models.hf_names.tensor_map import (ConvKernel, Flattened, LinearKernel, Same,
                                                TensorMapping, get_at)

Box = tuple[slice, ...]  # a block of a tensor: one (start, stop) slice per axis
Groups = tuple[tuple[int, ...], ...]  # per HF axis, the parameter axes it flattens (row-major)


def hf_axis_groups(layout: Any, ndim: int) -> Groups | None:
  """Per HF axis, the parameter axes it holds; None for a layout not known here."""
  axes = tuple(range(ndim))
  if isinstance(layout, Same):
    return tuple((a,) for a in axes)
  if isinstance(layout, LinearKernel):
    return (axes[layout.in_dims:], axes[:layout.in_dims])
  if isinstance(layout, ConvKernel):
    return (axes[1:], (), (0,))
  if isinstance(layout, Flattened):
    return (axes,)
  return None


def normalise(index: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
  """(start, stop) per axis of a `make_array_from_callback` index (slices of step 1)."""
  bounds = []
  for item, size in zip(tuple(index) + (slice(None),) * (len(shape) - len(index)), shape):
    start, stop, step = item.indices(size)
    if step != 1:
      raise ValueError(f'index {index} of shape {shape}: only slices of step 1 are read')
    bounds.append((start, stop))
  return tuple(bounds)


def flat_runs(sizes: tuple[int, ...], bounds: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
  """Contiguous ranges of the row-major flattening of axes `sizes` whose concatenation is the
  block `bounds`, in row-major order. A group without axes (a size-1 HF axis) is [(0, 1)]."""
  if not sizes:
    return [(0, 1)]
  if any(stop <= start for start, stop in bounds):
    return []
  strides = [math.prod(sizes[i + 1:]) for i in range(len(sizes))]
  last = len(sizes) - 1  # the last axis the block does not take whole (or axis 0)
  while last > 0 and bounds[last] == (0, sizes[last]):
    last -= 1
  start, stop = bounds[last]
  runs = []
  for outer in itertools.product(*(range(b, e) for b, e in bounds[:last])):
    base = sum(i * strides[axis] for axis, i in enumerate(outer))
    runs.append((base + start * strides[last], base + stop * strides[last]))
  return runs


def read_block(read_box: Callable[[Box], np.ndarray], groups: Groups,
               param_shape: tuple[int, ...], bounds: tuple[tuple[int, int], ...],
               offset: tuple[int, int] = (0, 0)) -> np.ndarray:
  """The block `bounds` of a parameter of `param_shape` stored as the HF axes `groups`.

  `read_box(box)` reads a box of the HF tensor; `offset` = (axis, start) shifts reads along one
  HF axis (the parameter's place in a fused tensor)."""
  runs = [flat_runs(tuple(param_shape[a] for a in group), tuple(bounds[a] for a in group))
          for group in groups]
  lengths = [sum(stop - start for start, stop in axis_runs) for axis_runs in runs]
  shift_axis, shift = offset

  def box(ranges: tuple[tuple[int, int], ...]) -> Box:
    return tuple(slice(start + (shift if axis == shift_axis else 0),
                       stop + (shift if axis == shift_axis else 0))
                 for axis, (start, stop) in enumerate(ranges))

  combinations = list(itertools.product(*runs))
  if len(combinations) == 1:
    block = np.asarray(read_box(box(combinations[0])))
  else:
    block = None
    starts = [np.cumsum([0] + [stop - start for start, stop in axis_runs])[:-1]
              for axis_runs in runs]
    for choice in itertools.product(*(range(len(axis_runs)) for axis_runs in runs)):
      ranges = tuple(runs[axis][i] for axis, i in enumerate(choice))
      piece = np.asarray(read_box(box(ranges)))
      if block is None:
        block = np.empty(lengths, piece.dtype)
      block[tuple(slice(starts[axis][i], starts[axis][i] + stop - start)
                  for axis, (i, (start, stop)) in enumerate(zip(choice, ranges)))] = piece
    if block is None:  # an empty slice
      block = np.empty(lengths, np.float32)
  # Each HF axis → the extents of its group, then the parameter's axis order.
  order = [a for group in groups for a in group]
  block = block.reshape([bounds[a][1] - bounds[a][0] for a in order])
  return block.transpose(np.argsort(order)) if order else block.reshape(())


def part_offsets(mapping: TensorMapping, abstract: dict) -> list[int]:
  """Where each part of `mapping` starts along its concatenation axis in the HF tensor."""
  sizes = [layout.hf_shape(tuple(get_at(abstract, path).shape))[mapping.axis]
           for path, layout in mapping.parts]
  return [int(x) for x in np.cumsum([0] + sizes)[:-1]]


def param_slice(mapping: TensorMapping, part: int, abstract: dict, index: tuple[Any, ...],
                read_box: Callable[[Box], np.ndarray],
                read_whole: Callable[[], np.ndarray]) -> np.ndarray:
  """Slice `index` of the `part`-th parameter of `mapping`, in the HF tensor's stored dtype.

  `read_box(box)` reads a block of the HF tensor, `read_whole()` all of it (used only for a
  layout not known here)."""
  path, layout = mapping.parts[part]
  shape = tuple(get_at(abstract, path).shape)
  bounds = normalise(index, shape)
  groups = hf_axis_groups(layout, len(shape))
  if groups is None:
    whole = dict(mapping.to_params(read_whole(), abstract))[path]
    return np.asarray(whole)[tuple(slice(b, e) for b, e in bounds)]
  return read_block(read_box, groups, shape, bounds,
                    (mapping.axis, part_offsets(mapping, abstract)[part]))
