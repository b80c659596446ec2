"""The package's import graph: no cycles, and every import points down the layers of
docs/architecture.md (a module may import its own package and the packages below it).

The graph is read from the source (every `import` / `from … import` of an rlp_jax module, also
those inside functions), not from what happens to be imported at run time.
"""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'rlp_jax'

# Lowest first. `errors` and `cli` depend on nothing of ours; `entry` holds the command lines.
LAYERS = ('errors', 'paths', 'parallel', 'data', 'models', 'objective', 'rollout', 'config',
          'interop', 'eval', 'train', 'entry')
ENTRY_POINTS = {'rlp_jax.main', 'rlp_jax.dry_run', 'rlp_jax.cli', 'rlp_jax.eval.__main__',
                'rlp_jax.api', 'rlp_jax.inspect',
                'rlp_jax.config.__main__', 'rlp_jax'}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer_of(module: str) -> int:
  if module in ENTRY_POINTS:
    return LAYERS.index('entry')
  return LAYERS.index(module.split('.')[1])


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
  """The rlp_jax modules an ImportFrom names (a `from pkg import module` names the module)."""
  if node.level:
    base = module.split('.') if is_package else module.split('.')[:-1]
    base = base[:len(base) - node.level + 1]
    target = '.'.join(base + ([node.module] if node.module else []))
  else:
    target = node.module or ''
  if not target.startswith('rlp_jax'):
    return []
  names = []
  for alias in node.names:
    candidate = f'{target}.{alias.name}'
    path = PACKAGE.parent / candidate.replace('.', '/')
    names.append(candidate if path.with_suffix('.py').exists() or path.is_dir() else target)
  return names


def import_graph() -> dict[str, set[str]]:
  graph = {}
  for path in sorted(PACKAGE.rglob('*.py')):
    module = module_name(path)
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        edges.update(a.name for a in node.names if a.name.startswith('rlp_jax'))
      elif isinstance(node, ast.ImportFrom):
        edges.update(resolve(module, path.name == '__init__.py', node))
    graph[module] = edges - {module}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = 'done'
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_the_graph_reader_sees_known_edges():
  graph = import_graph()
  assert 'rlp_jax.models.registry' in graph['rlp_jax.rollout.thought_sampler']
  assert 'rlp_jax.train.loop' in graph['rlp_jax.main']  # an import inside a function
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycles():
  assert find_cycle(import_graph()) is None


def test_packages_are_layered():
  graph = import_graph()
  upward = [f'{m} -> {t}' for m, targets in graph.items() for t in sorted(targets)
            if m != 'rlp_jax' and layer_of(t) > layer_of(m)]
  assert not upward, f'imports that point up the layers {LAYERS}: {upward}'
