"""The package's code rules, checked on its source (no import runs): no import cycle between
onnxprune modules, no private name imported from another onnxprune module, no function over
MAX_FUNCTION_LINES lines, a docstring on every public module-level function and class.

Each check has an allow-list of the offenders known when the check was written; a listed
offender that is gone fails the check too, so that its entry is deleted with the fix."""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnxprune"
MAX_FUNCTION_LINES = 60

# Allow-lists of the offenders known when the checks were written: removed by the issue-14
# restructuring (delete each entry with its fix; the lists end empty).
# Import edges ("importer -> imported"), one per known cycle; the check leaves them out of the graph.
KNOWN_CYCLE_EDGES: set[str] = set()
# "module: name" for a private name a module imports from another onnxprune module.
KNOWN_PRIVATE_IMPORTS: set[str] = set()
# Qualified names ("onnxprune.api.prune", "onnxprune.x.Class.method") of over-long functions.
KNOWN_LONG_FUNCTIONS: set[str] = set()
# Qualified names of public module-level functions and classes without a docstring.
KNOWN_MISSING_DOCSTRINGS: set[str] = {
    "onnxprune.model.edit.copy_fields",
}


@dataclass(frozen=True)
class Module:
    """One source file of the package: its dotted name, path and parsed tree."""

    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}"


@functools.cache
def modules() -> dict[str, Module]:
    """Every .py file under onnxprune/, by dotted module name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        found[name] = Module(name, path, ast.parse(path.read_text(), filename=str(path)))
    return found


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module name a `from ... import` statement names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if not module.is_package:
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: Module) -> list[tuple[str, str, ast.AST]]:
    """(imported onnxprune module, imported name or "", statement) for every import statement in
    the module, at any depth (inside functions too). `from onnxprune.pkg import name` names the
    submodule onnxprune.pkg.name when that is a module, else the module onnxprune.pkg."""
    known = modules()
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node) for a in node.names if a.name in known]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source not in known:
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.append((submodule, "", node) if submodule in known else (source, alias.name, node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the onnxprune modules it imports (itself excluded)."""
    return {name: {target for target, _, _ in imports(module) if target != name} for name, module in modules().items()}


def without(graph: dict[str, set[str]], edges: set[str]) -> dict[str, set[str]]:
    """A copy of the graph without the "importer -> imported" edges."""
    left = {name: set(targets) for name, targets in graph.items()}
    for edge in edges:
        importer, imported = edge.split(" -> ")
        left.get(importer, set()).discard(imported)
    return left


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a chain [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _stale(known: set[str], found: set[str], what: str) -> str:
    gone = sorted(known - found)
    return f"allow-listed {what} no longer found; delete from the allow-list: {gone}" if gone else ""


def test_no_import_cycle_between_modules():
    graph = import_graph()
    cycle = find_cycle(without(graph, KNOWN_CYCLE_EDGES))
    assert cycle is None, "import cycle between onnxprune modules: " + " → ".join(cycle or [])
    # An allow-listed edge is still needed when it exists and, put back alone, closes a cycle.
    needed = {edge for edge in KNOWN_CYCLE_EDGES if find_cycle(without(graph, KNOWN_CYCLE_EDGES - {edge}))}
    assert not (message := _stale(KNOWN_CYCLE_EDGES, needed, "cycle edges")), message


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(module: Module) -> list[tuple[str, str]]:
    """("module: name", where) for each private name the module takes from another onnxprune module:
    imported by name, or read as an attribute of an imported onnxprune module."""
    found, aliases = [], {}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname: a.name for a in node.names if a.asname and a.name in modules()}
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            if source in modules():
                aliases |= {
                    a.asname or a.name: f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules()
                }
    for target, name, node in imports(module):
        if _private(name) and target != module.name:
            found.append((f"{module.name}: {name}", module.where(node)))
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            if aliases.get(node.value.id, module.name) != module.name:
                found.append((f"{module.name}: {aliases[node.value.id]}.{node.attr}", module.where(node)))
    return found


def test_no_private_name_imported_from_another_module():
    found = [f for module in modules().values() for f in private_imports(module)]
    offenders = [f"{what} ({where})" for what, where in found if what not in KNOWN_PRIVATE_IMPORTS]
    assert not offenders, (
        "private names imported from another onnxprune module (make them public with a docstring, or move them): "
        + "; ".join(offenders)
    )
    assert not (message := _stale(KNOWN_PRIVATE_IMPORTS, {w for w, _ in found}, "private imports")), message


def functions(module: Module):
    """(qualified name, node) of every function and method, nested ones too."""

    def visit(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}.{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                yield from visit(child, name)
            else:
                yield from visit(child, prefix)

    yield from visit(module.tree, module.name)


def function_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from `def` to the last line of the body: decorators excluded, docstring included."""
    assert node.end_lineno is not None
    return node.end_lineno - node.lineno + 1


def test_no_function_longer_than_the_limit():
    found = {
        name: (function_lines(node), module.where(node))
        for module in modules().values()
        for name, node in functions(module)
        if function_lines(node) > MAX_FUNCTION_LINES
    }
    offenders = [
        f"{name} ({lines} lines, {where})"
        for name, (lines, where) in sorted(found.items())
        if name not in KNOWN_LONG_FUNCTIONS
    ]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(offenders)
    assert not (message := _stale(KNOWN_LONG_FUNCTIONS, set(found), "long functions")), message


def test_every_public_module_level_function_and_class_has_a_docstring():
    found = {
        f"{module.name}.{node.name}": module.where(node)
        for module in modules().values()
        for node in module.tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
        and not ast.get_docstring(node)
    }
    offenders = [f"{name} ({where})" for name, where in sorted(found.items()) if name not in KNOWN_MISSING_DOCSTRINGS]
    assert not offenders, "public functions and classes without a docstring: " + "; ".join(offenders)
    assert not (message := _stale(KNOWN_MISSING_DOCSTRINGS, set(found), "missing docstrings")), message


def test_the_checks_find_what_they_look_for():
    """The helpers above on a small made-up graph and function (they must not pass vacuously)."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert "onnxprune.api" in modules() and "onnxprune" in modules()
    tree = ast.parse("@decorator\ndef f():\n    '''doc'''\n    return 1\n")
    assert function_lines(tree.body[0]) == 3  # type: ignore[arg-type]
