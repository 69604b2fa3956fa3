"""The house rules of the package layout (docs/glossary.md, "Module layout"), checked on the
source: no import cycle, no private name imported across modules except from a module made to
be shared, and no public function hiding a submodule of the same name."""

from __future__ import annotations

import ast
import importlib
import pathlib
import pkgutil

import pytest

import tensorfact

ROOT = pathlib.Path(tensorfact.__file__).parent

#: Private modules made to be shared: a private name may be imported from these alone.
SHARED = {"_common", "_base", "_checks", "_numerics", "_sweeps", "_loop", "_pallas"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


MODULES = _modules()


def _imports(path: pathlib.Path):
    """(target module, imported names) for every ``tensorfact`` import in ``path``, at any
    depth (a function-local import that dodges a cycle still counts)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "tensorfact":
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "tensorfact":
                    yield a.name, [], node.lineno


def _graph():
    """Module → modules it makes Python execute. Importing ``pkg.sub`` runs ``pkg/__init__``
    first (except the root package, which every module would otherwise depend on)."""
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for target, names, _ in _imports(path):
            submodules = {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES}
            targets = set(submodules)
            # ``from pkg import _sub`` inside pkg only needs the submodule; importing a name
            # that pkg/__init__ defines does need the package (and can close a cycle)
            if not (name.startswith(target + ".") and len(submodules) == len(names)):
                targets.add(target)
            for t in targets:
                parts = t.split(".")
                for i in range(2, len(parts) + 1):  # the parent packages, then the module
                    if not name.startswith(".".join(parts[:i]) + "."):  # not our own parents
                        edges.add(".".join(parts[:i]))
        edges.discard(name)
        graph[name] = {e for e in edges if e in MODULES and e != "tensorfact"}
    return graph


def test_the_import_graph_has_no_cycle():
    graph, state, stack = _graph(), {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_private_name_crosses_modules_except_from_shared_ones():
    bad = []
    for name, path in MODULES.items():
        for target, names, line in _imports(path):
            source = target.rsplit(".", 1)[-1]
            for imported in names:
                is_module = f"{target}.{imported}" in MODULES
                if imported.startswith("_") and not is_module and source not in SHARED:
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports {imported} "
                               f"from {target}")
    assert not bad, "\n".join(bad)


def test_no_public_attribute_hides_a_submodule():
    """``import tensorfact.decomposition.cp as m`` must not give a function: implementation
    modules are private, so no public name of a package can shadow one."""
    for info in pkgutil.walk_packages(tensorfact.__path__, "tensorfact."):
        if info.name.endswith("__main__"):
            continue
        parent, _, leaf = info.name.rpartition(".")
        package = importlib.import_module(parent)
        module = importlib.import_module(info.name)
        if not leaf.startswith("_"):
            assert getattr(package, leaf) is module, (
                f"{parent}.{leaf} is {getattr(package, leaf)!r}, not the submodule")
