"""Hugging Face tensors ↔ rlp_jax parameters: names, layouts and conversions both ways.

A family's name module (qwen3.py, nemotron_h.py) lists a `TensorMapping` per HF
tensor covering every parameter leaf; the layouts here convert between the HF tensor and our
arrays in both directions. One HF tensor may hold several of our parameters (Nemotron-H's fused
Mamba2 `in_proj` = z | x | B | C | dt): those are split on load and concatenated on export.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import numpy as np

ParamPath = tuple[Any, ...]  # keys into the params pure dict (str, or int for list entries)


class Layout(Protocol):
  """How a parameter of shape `param_shape` is stored in the HF checkpoint."""

  def hf_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]: ...

  def to_param(self, hf: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray: ...

  def to_hf(self, param: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Same:
  """Stored as is (embeddings, norm scales, per-head vectors)."""

  def hf_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(param_shape)

  def to_param(self, hf: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray:
    return hf.reshape(param_shape)

  def to_hf(self, param: np.ndarray) -> np.ndarray:
    return param


@dataclasses.dataclass(frozen=True)
class LinearKernel:
  """A torch Linear weight [out, in] ↔ our einsum kernel whose first `in_dims` axes are the input.

  E.g. q_proj: kernel [embed, heads, head_dim] (in_dims=1) ↔ weight [heads * head_dim, embed];
  o_proj: kernel [heads, head_dim, embed] (in_dims=2) ↔ weight [embed, heads * head_dim].
  """
  in_dims: int = 1

  def hf_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (math.prod(param_shape[self.in_dims:]), math.prod(param_shape[:self.in_dims]))

  def to_param(self, hf: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray:
    return hf.T.reshape(param_shape)

  def to_hf(self, param: np.ndarray) -> np.ndarray:
    in_size = math.prod(param.shape[:self.in_dims])
    return param.reshape(in_size, -1).T


@dataclasses.dataclass(frozen=True)
class ConvKernel:
  """A depthwise torch Conv1d weight [C, 1, K] ↔ our kernel [K, *channels], C = prod(channels)."""

  def hf_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (math.prod(param_shape[1:]), 1, param_shape[0])

  def to_param(self, hf: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray:
    return hf[:, 0, :].T.reshape(param_shape)

  def to_hf(self, param: np.ndarray) -> np.ndarray:
    return param.reshape(param.shape[0], -1).T[:, None, :]


@dataclasses.dataclass(frozen=True)
class Flattened:
  """Stored as one flat vector (a conv bias or gated-norm scale of [heads, head_dim])."""

  def hf_shape(self, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (math.prod(param_shape),)

  def to_param(self, hf: np.ndarray, param_shape: tuple[int, ...]) -> np.ndarray:
    return hf.reshape(param_shape)

  def to_hf(self, param: np.ndarray) -> np.ndarray:
    return param.reshape(-1)


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """HF tensor `hf_name` holds the parameters of `parts` ((path, layout) pairs); with several
  parts (a fused HF projection) their HF-layout tensors are concatenated along `axis`.

  A `copy` holds a parameter another mapping already holds (a tied head written for readers that
  do not tie, such as transformers' NemotronH): written on export; on load optional, and when
  present it must equal what the other mapping loads. `check_covers` does not count it.
  """
  hf_name: str
  parts: tuple[tuple[ParamPath, Layout], ...]
  axis: int = 0
  copy: bool = False

  @property
  def param_paths(self) -> list[ParamPath]:
    return [path for path, _ in self.parts]

  def hf_shape(self, params: dict) -> tuple[int, ...]:
    """The HF tensor's shape for parameters (or abstract parameters) `params`."""
    shapes = [layout.hf_shape(tuple(get_at(params, path).shape)) for path, layout in self.parts]
    total = sum(shape[self.axis] for shape in shapes)
    return shapes[0][:self.axis] + (total,) + shapes[0][self.axis + 1:]

  def to_params(self, hf: np.ndarray, params: dict) -> list[tuple[ParamPath, np.ndarray]]:
    """Our arrays (path, array) from the HF tensor; `params` gives the shapes."""
    shapes = [tuple(get_at(params, path).shape) for path, _ in self.parts]
    sizes = [layout.hf_shape(shape)[self.axis] for (_, layout), shape in zip(self.parts, shapes)]
    pieces = np.split(hf, np.cumsum(sizes)[:-1], axis=self.axis) if len(sizes) > 1 else [hf]
    return [(path, layout.to_param(piece, shape))
            for (path, layout), piece, shape in zip(self.parts, pieces, shapes)]

  def to_hf(self, params: dict) -> np.ndarray:
    """The HF tensor from our (host) arrays."""
    pieces = [layout.to_hf(np.asarray(get_at(params, path))) for path, layout in self.parts]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=self.axis)


def one(hf_name: str, param_path: ParamPath, layout: Layout = Same()) -> TensorMapping:
  """A HF tensor holding exactly one parameter."""
  return TensorMapping(hf_name, ((tuple(param_path), layout),))


def copy_of(hf_name: str, param_path: ParamPath, layout: Layout = Same()) -> TensorMapping:
  """A HF tensor holding a second copy of a parameter (see `TensorMapping.copy`)."""
  return TensorMapping(hf_name, ((tuple(param_path), layout),), copy=True)


def fused(hf_name: str, parts: list[tuple[ParamPath, Layout]], axis: int = 0) -> TensorMapping:
  """A HF tensor holding several parameters concatenated along `axis` (in HF layout)."""
  return TensorMapping(hf_name, tuple((tuple(path), layout) for path, layout in parts), axis)


def path_to_string(path: ParamPath) -> str:
  return '/'.join(str(key) for key in path)


def get_at(tree: dict, path: ParamPath) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def set_at(tree: dict, path: ParamPath, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def leaf_paths(tree: Any, prefix: ParamPath = ()) -> list[ParamPath]:
  """Paths of every leaf of a nested dict (the params pure dict)."""
  if not isinstance(tree, dict):
    return [prefix]
  paths = []
  for key in tree:
    paths.extend(leaf_paths(tree[key], prefix + (key,)))
  return paths


def check_covers(mappings: list[TensorMapping], params: dict, family: str) -> None:
  """Every parameter leaf has exactly one mapping (copies aside) and every mapping names a leaf
  (a bug if not)."""
  mapped = [path for m in mappings if not m.copy for path in m.param_paths]
  leaves = set(leaf_paths(params))
  missing = leaves - set(mapped)
  extra = {path for m in mappings for path in m.param_paths} - leaves
  if missing or extra or len(mapped) != len(set(mapped)):
    raise AssertionError(
        f'{family} tensor names do not match the parameter tree: unmapped '
        f'{sorted(map(path_to_string, missing))}, unknown {sorted(map(path_to_string, extra))}')
