"""The decoder's layers as one stack, unrolled in Python or scanned with `jax.lax.scan`.

`model.scan_layers` picks the layout of the layer parameters (and of every per-layer value:
decode caches, a document pass's keys and Mamba states):

  unrolled   layers[i].*                  one module per layer; the traced program holds every
                                          layer, so compile time grows with depth;
  scanned    blocks[s][j].*  [n_s, ...]   the layer kinds (dense: 'D' per layer; hybrid:
                                          `model.layer_pattern`) cut into segments, each a unit
                                          of kinds repeated n_s times, tracing the fewest layers
                                          (Nemotron-H 12B: 'M-M-M-M*-' × 6, then 'M-' × 4; Qwen3:
                                          'D' × 28); unit position j of segment s holds
                                          its n_s layers' parameters stacked on a leading
                                          'layers' axis, and the segment runs as one scan whose
                                          body is the unit, so the program holds each unit once.

Layer i of the pattern is, in the scanned layout, unit position j = (i − start_s) mod p_s of
repetition r = (i − start_s) div p_s of the segment s that covers it. Both layouts compute the
same numbers (tests/test_scan_layers.py); `unrolled_params` / `scanned_params` convert a
parameter tree (or any tree of the same paths) between them, which is how a checkpoint of one
layout loads into the other.

A per-layer value (`LayerValues`) follows the same layout: a tuple over layers, or per segment a
tuple over unit positions of values with a leading [n_s] axis. A layer without such a value (an
MLP layer has no cache) holds None.

`model.remat_policy` says what the backward pass keeps of a layer's forward: 'full' recomputes
the layer from its input, 'save_matmuls' keeps the matmul outputs (jax.checkpoint_policies'
dots-without-batch-dims) and recomputes the rest, 'none' keeps everything.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec

from rlp_jax.models.layers import checkpoint_policy, layer_forward

Segment = tuple[str, int]  # (unit of layer kinds, repetitions)


def leading_repeats(kinds: str, start: int, period: int) -> int:
  """How many times kinds[start:start + period] repeats back to back from `start`."""
  unit = kinds[start:start + period]
  count = 0
  while kinds[start + count * period:start + (count + 1) * period] == unit:
    count += 1
  return count


def scan_segments(kinds: str) -> tuple[Segment, ...]:
  """The layer kinds cut into (unit, repetitions) segments whose concatenation is `kinds`, with
  the fewest layers traced: the smallest sum over segments of len(unit) + 1 (each segment is one
  scan, so its unit is traced once; the 1 keeps neighbouring runs together). Exact, by dynamic
  programming over the cut points (ties: the first found, shorter units and fewer repeats first).
  """
  length = len(kinds)
  best: list[tuple[int, tuple[Segment, ...]]] = [(0, ())] * (length + 1)
  for start in range(length - 1, -1, -1):
    choice = None
    for period in range(1, length - start + 1):
      for repeats in range(1, leading_repeats(kinds, start, period) + 1):
        cost, rest = best[start + period * repeats]
        if choice is None or cost + period + 1 < choice[0]:
          choice = (cost + period + 1, ((kinds[start:start + period], repeats),) + rest)
    best[start] = choice
  return best[0][1]


@dataclasses.dataclass(frozen=True)
class LayerPlan:
  """Where each layer lives: `segments` is None for the unrolled layout."""
  kinds: str
  segments: tuple[Segment, ...] | None

  @property
  def scanned(self) -> bool:
    return self.segments is not None

  def locate(self, layer: int) -> tuple[int, int, int]:
    """(segment s, unit position j, repetition r) of layer `layer` in the scanned layout."""
    start = 0
    for s, (unit, repeats) in enumerate(self.segments):
      if layer < start + len(unit) * repeats:
        r, j = divmod(layer - start, len(unit))
        return s, j, r
      start += len(unit) * repeats
    raise IndexError(f'layer {layer} of {len(self.kinds)}')


def layer_plan(kinds: str, scan: bool) -> LayerPlan:
  return LayerPlan(kinds, scan_segments(kinds) if scan else None)


def stack_modules(modules: list[nnx.Module]) -> nnx.Module:
  """One module of the first's structure whose parameters are the modules' stacked on a new
  leading axis, with the logical axis name 'layers' prepended."""
  graphdef, _ = nnx.split(modules[0])
  states = [nnx.split(module)[1] for module in modules]
  is_variable = lambda x: isinstance(x, nnx.Variable)

  def stack(*variables: nnx.Variable) -> nnx.Variable:
    metadata = variables[0].get_metadata()
    axes = metadata.get('logical_axes')
    extra = {} if axes is None else {'logical_axes': ('layers',) + tuple(axes)}
    return variables[0].replace(jnp.stack([v.value for v in variables]), **extra)

  return nnx.merge(graphdef, jax.tree.map(stack, *states, is_leaf=is_variable))


def stack_layers(layers: list[nnx.Module], plan: LayerPlan) -> nnx.List:
  """The unrolled layer modules (in order) as the scanned layout's blocks[s][j]."""
  blocks, start = [], 0
  for unit, repeats in plan.segments:
    period = len(unit)
    blocks.append(nnx.List([
        stack_modules([layers[start + r * period + j] for r in range(repeats)])
        for j in range(period)]))
    start += period * repeats
  return nnx.List(blocks)


@struct.dataclass
class LayerValues:
  """A value per layer in a stack's layout (module docstring); `entries` is a tuple over layers
  (unrolled) or over segments of tuples over unit positions (scanned, leading [n_s])."""
  entries: tuple
  scanned: bool = struct.field(pytree_node=False, default=False)

  def unrolled(self, plan: LayerPlan) -> tuple:
    """The values as a tuple over layers (slices of the stacked ones when scanned)."""
    if not self.scanned:
      return self.entries
    out = []
    for layer in range(len(plan.kinds)):
      s, j, r = plan.locate(layer)
      entry = self.entries[s][j]
      out.append(None if entry is None else jax.tree.map(lambda a: a[r], entry))
    return tuple(out)

  def of_kind(self, plan: LayerPlan, kind: str) -> tuple:
    """The unrolled values of the layers of one kind (e.g. every attention layer's), in order."""
    return tuple(v for k, v in zip(plan.kinds, self.unrolled(plan)) if k == kind)


def build_values(plan: LayerPlan, make: Callable[[str], Any]) -> LayerValues:
  """`make(kind)` (a pytree or None) for every layer, in the plan's layout."""
  if not plan.scanned:
    return LayerValues(tuple(make(kind) for kind in plan.kinds))
  stacked = lambda value, n: jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), value)
  return LayerValues(tuple(tuple(stacked(make(kind), repeats) for kind in unit)
                           for unit, repeats in plan.segments), scanned=True)


def map_values(values: LayerValues, fn: Callable[[Any], Any]) -> LayerValues:
  """`fn` applied to every layer's value (None stays None); fn sees one layer's value."""
  apply = lambda v, f: None if v is None else f(v)
  if not values.scanned:
    return LayerValues(tuple(apply(v, fn) for v in values.entries))
  return LayerValues(tuple(tuple(apply(v, jax.vmap(fn)) for v in segment)
                           for segment in values.entries), scanned=True)


def zip_values(first: LayerValues, second: LayerValues | None) -> LayerValues:
  """Per layer the pair (first's value, second's value or None), in their common layout."""
  if second is None:
    second = map_values(first, lambda _: None)
  if first.scanned != second.scanned:
    raise ValueError('zip_values of values in different layouts')
  if not first.scanned:
    return LayerValues(tuple(zip(first.entries, second.entries, strict=True)))
  return LayerValues(tuple(tuple(zip(a, b, strict=True))
                           for a, b in zip(first.entries, second.entries, strict=True)),
                     scanned=True)


LayerCall = Callable[..., tuple[jax.Array, Any]]  # (layer, x, value, *shared) → (x, new value)


def run_stack(model: nnx.Module, plan: LayerPlan, x: jax.Array, call: LayerCall,
              inputs: LayerValues | None, shared: tuple, remat: str,
              ) -> tuple[jax.Array, LayerValues]:
  """The residual stream x through every layer: `call(layer, x, value, *shared)` per layer, with
  `value` the layer's entry of `inputs` (None without inputs) and `shared` the same for all.
  Returns (x, the per-layer values `call` returned, in the plan's layout). `remat` is a
  `model.remat_policy`."""
  if not plan.scanned:
    outputs = []
    for i, layer in enumerate(model.layers):
      value = None if inputs is None else inputs.entries[i]
      x, out = layer_forward(layer, x, value, *shared, remat=remat, call=call)
      outputs.append(out)
    return x, LayerValues(tuple(outputs))

  outputs = []
  for s, block in enumerate(model.blocks):
    split = [nnx.split(unit_layer) for unit_layer in block]
    graphdefs = [graphdef for graphdef, _ in split]
    states = tuple(state for _, state in split)
    values = (tuple(None for _ in block) if inputs is None else inputs.entries[s])

    def body(x, per_repeat, graphdefs=graphdefs):
      unit_states, unit_values = per_repeat
      outs = []
      for graphdef, state, value in zip(graphdefs, unit_states, unit_values):
        x, out = call(nnx.merge(graphdef, state), x, value, *shared)
        outs.append(out)
      return x, tuple(outs)

    policy = checkpoint_policy(remat)
    if policy is not None:
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x, outs = jax.lax.scan(body, x, (states, values))
    outputs.append(outs)
  return x, LayerValues(tuple(outputs), scanned=True)


def _stack_leaves(leaves: list[Any]) -> Any:
  """Arrays stacked on a new leading axis; for jax.ShapeDtypeStructs the stacked shape, with the
  sharding's spec given a leading unsharded axis."""
  first = leaves[0]
  if isinstance(first, jax.ShapeDtypeStruct):
    sharding = first.sharding
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
    return jax.ShapeDtypeStruct((len(leaves),) + tuple(first.shape), first.dtype,
                                sharding=sharding)
  return jnp.stack(leaves)


def _take_leaf(leaf: Any, index: int) -> Any:
  """Entry `index` of a stacked array; for a jax.ShapeDtypeStruct the entry's shape and the
  sharding without its leading axis."""
  if isinstance(leaf, jax.ShapeDtypeStruct):
    sharding = leaf.sharding
    if isinstance(sharding, NamedSharding):
      sharding = NamedSharding(sharding.mesh, PartitionSpec(*tuple(sharding.spec)[1:]))
    return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype, sharding=sharding)
  return leaf[index]


def scanned_params(params: dict, plan: LayerPlan) -> dict:
  """A tree with the unrolled `layers` → the scanned `blocks` (stacked copies); other keys kept.
  Leaves may be arrays or jax.ShapeDtypeStructs (shapes and shardings follow)."""
  out = {k: v for k, v in params.items() if k != 'layers'}
  layers = params['layers']
  blocks: dict = {}
  start = 0
  for s, (unit, repeats) in enumerate(plan.segments):
    blocks[s] = {}
    for j in range(len(unit)):
      members = [layers[start + r * len(unit) + j] for r in range(repeats)]
      blocks[s][j] = jax.tree.map(lambda *xs: _stack_leaves(list(xs)), *members)
    start += len(unit) * repeats
  out['blocks'] = blocks
  return out


def unrolled_params(params: dict, plan: LayerPlan) -> dict:
  """A tree with the scanned `blocks` → the unrolled `layers` (slices); other keys kept. Leaves
  may be arrays or jax.ShapeDtypeStructs."""
  out = {k: v for k, v in params.items() if k != 'blocks'}
  layers = {}
  for layer in range(len(plan.kinds)):
    s, j, r = plan.locate(layer)
    layers[layer] = jax.tree.map(lambda a, r=r: _take_leaf(a, r), params['blocks'][s][j])
  out['layers'] = layers
  return out


def is_scanned_tree(params: dict) -> bool:
  """Whether a parameter tree (or a tree of its paths) is in the scanned layout."""
  return 'blocks' in params


def _is_layer_tree(x: Any) -> bool:
  return isinstance(x, dict) and ('layers' in x or 'blocks' in x) and 'final_norm' in x


def to_layout(tree: Any, plan: LayerPlan) -> Any:
  """`tree` with every parameter-shaped dict in it (θ, φ, optimizer moments: dicts holding
  `final_norm` and `layers` or `blocks`) moved to the layout of `plan`; leaves may be arrays or
  jax.ShapeDtypeStructs."""
  segments = plan.segments or scan_segments(plan.kinds)
  scanned_plan = LayerPlan(plan.kinds, segments)

  def move(node: Any) -> Any:
    if not _is_layer_tree(node):
      return node
    if plan.scanned and not is_scanned_tree(node):
      return scanned_params(node, scanned_plan)
    if not plan.scanned and is_scanned_tree(node):
      return unrolled_params(node, scanned_plan)
    return node

  return jax.tree.map(move, tree, is_leaf=_is_layer_tree)


def other_layout(plan: LayerPlan) -> LayerPlan:
  """The plan of the same layers in the other layout."""
  return layer_plan(plan.kinds, not plan.scanned)


def tree_is_scanned(tree: Any) -> bool | None:
  """Whether the parameter-shaped dicts of `tree` are scanned (None: it holds none). Works on
  any nested dicts with those keys, e.g. orbax's metadata tree."""
  found = []
  jax.tree.map(lambda node: found.append(is_scanned_tree(node)) if _is_layer_tree(node) else None,
               tree, is_leaf=_is_layer_tree)
  return found[0] if found else None


def relayout_arrays(tree: Any, plan: LayerPlan, targets: Any) -> Any:
  """`to_layout(tree, plan)` of arrays, computed by one jit straight into the shardings of
  `targets` (the result's jax.ShapeDtypeStructs; XLA's choice where they carry none). Nothing is
  donated (no output has an input's shape), so θ is held twice while it runs."""
  leaves = jax.tree.leaves(targets)
  if leaves and all(getattr(leaf, 'sharding', None) is not None for leaf in leaves):
    shardings = jax.tree.map(lambda leaf: leaf.sharding, targets)
    return jax.jit(lambda t: to_layout(t, plan), out_shardings=shardings)(tree)
  return jax.jit(lambda t: to_layout(t, plan))(tree)
