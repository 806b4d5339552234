"""The package layout: no import cycles, no private names across modules.

Walks every module of `cnn/` and `input_pipeline/` with `ast`, counting the
imports a reader follows: at module level, inside functions and under
`TYPE_CHECKING`. A package's `__init__` that hands on its children is not an
edge of a cycle (its children import each other, not the package).
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ('cnn', 'input_pipeline')


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _modules() -> dict[str, pathlib.Path]:
  found = {}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob('*.py')):
      found[_module_name(path)] = path
  return found


def _imports(path: pathlib.Path, name: str, modules) -> list[tuple[str, str]]:
  """(imported module, imported name or '') of every import in the file."""
  tree = ast.parse(path.read_text())
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(a.name, '') for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        anchor = package.split('.')
        anchor = anchor[:len(anchor) - node.level + 1]
        base = '.'.join(anchor + ([base] if base else []))
      for a in node.names:
        child = f'{base}.{a.name}'
        found.append((child, '') if child in modules else (base, a.name))
  return found


def _graph():
  modules = _modules()
  edges, private = {}, []
  for name, path in modules.items():
    targets = set()
    aliases = {}
    for module, symbol in _imports(path, name, modules):
      if module not in modules:
        continue
      if symbol.startswith('_') and module != name:
        private.append(f'{name} imports {module}.{symbol}')
      targets.add(module)
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # `import a.b as c` / `from a import b`.
      if isinstance(node, ast.Import):
        for a in node.names:
          if a.name in modules:
            aliases[a.asname or a.name] = a.name
      elif isinstance(node, ast.ImportFrom):
        for a in node.names:
          full = f'{node.module}.{a.name}'
          if full in modules:
            aliases[a.asname or a.name] = full
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr.startswith('_')
          and not node.attr.startswith('__')):
        value = node.value
        dotted = []
        while isinstance(value, ast.Attribute):
          dotted.insert(0, value.attr)
          value = value.value
        if isinstance(value, ast.Name) and value.id in aliases:
          target = '.'.join([aliases[value.id]] + dotted)
          if target in modules and target != name:
            private.append(f'{name} uses {target}.{node.attr}')
    is_init = path.name == '__init__.py'
    edges[name] = {t for t in targets if t != name and not (
        is_init and t.startswith(name + '.'))}
  return modules, edges, private


def _cycles(edges):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycles():
  _, edges, _ = _graph()
  assert _cycles(edges) == []


def test_no_private_names_across_modules():
  _, _, private = _graph()
  assert private == []


def test_the_checker_finds_a_cycle():
  edges = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert _cycles(edges) == [['a', 'b', 'c']]


@pytest.mark.parametrize('package', PACKAGES)
def test_no_loose_private_modules_imported_by_others(package):
  """A module that several others import is public: no `_name.py` files."""
  private_files = [p for p in (ROOT / package).rglob('_*.py')
                   if not p.name.startswith('__')]
  assert private_files == [], [str(p) for p in private_files]
