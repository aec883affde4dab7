"""The engine's import graph: no circles, and no package imports one above it (docs/architecture.md).

Every import counts: module level, inside functions, and `importlib.import_module("...")` with a literal name.
Imports under `if TYPE_CHECKING:` do not run, so they are left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"

# The data flow, bottom to top: a package may import its own modules and those of the packages before it.
# "core" is engine/errors.py, defaults.py and protocols.py; "face" is engine/__init__.py, __main__.py and cli.py.
LAYERS = ("core", "words", "model", "attention", "runners", "sampling", "pipeline", "study", "remote", "face")
OUTSIDE = ("export", "ui", "bench", "train", "pages", "Home", "streamlit", "tests")  # engine imports none of them
ENTRY_EXPORT = "engine.__main__"  # the CLI's entry hands export.onnx to the engine as its first-use hook


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "__main__", "cli"):
        return "face"
    if parts[1] in ("errors", "defaults", "protocols"):
        return "core"
    return parts[1]


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports (absolute names), at any depth."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from engine.x import module`
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
                found.add(str(node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def engine_graph() -> dict[str, set[str]]:
    """module -> the engine modules it imports (names that are not modules, e.g. `from engine.x import f`, dropped),
    plus the outside packages it imports, under their top-level name."""
    modules = {module_name(p): p for p in ENGINE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in imports_of(path):
            top = target.split(".")[0]
            if top == "engine":
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
            elif top in OUTSIDE:
                edges.add(top)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of the graph (one per strongly connected component of more than one module), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                strongconnect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def upward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target == "export" and module == ENTRY_EXPORT:
                continue
            if target in OUTSIDE:
                bad.append(f"{module} -> {target} (engine never imports {target})")
                continue
            a, b = layer_of(module), layer_of(target)
            if a not in LAYERS or b not in LAYERS:
                bad.append(f"{module} -> {target}: {a if a not in LAYERS else b} is not in LAYERS")
            elif LAYERS.index(b) > LAYERS.index(a):
                bad.append(f"{module} ({a}) -> {target} ({b}): imports up")
    return bad


def test_engine_imports_in_no_circle():
    assert cycles(engine_graph()) == []


def test_engine_imports_only_down():
    assert upward(engine_graph()) == []


def test_the_checks_catch_a_circle_and_an_upward_import():
    graph = {"engine.sampling.layout": {"engine.sampling.loop"}, "engine.sampling.loop": {"engine.sampling.layout"},
             "engine.model.backend": {"export"}, "engine.words.prompt": {"engine.study.log"}}
    assert cycles(graph) == [["engine.sampling.layout", "engine.sampling.loop"]]
    assert len(upward(graph)) == 2


def test_importlib_and_function_level_imports_are_seen(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import importlib\n\ndef f():\n    from engine.words import prompt\n"
                      "    return importlib.import_module('export.onnx')\n")
    assert {"engine.words.prompt", "export.onnx"} <= imports_of(source)


@pytest.mark.parametrize("package", LAYERS[1:-1])
def test_every_layer_is_a_package(package):
    assert (ENGINE / package / "__init__.py").is_file()
