"""No package of the project has an import cycle, counting every import: module level, TYPE_CHECKING and
inside functions (a cycle that only works because one side imports late is still two modules that cannot be
understood, tested or changed apart)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT


def _imports(path: Path, package: str, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from x import y`` counts x, and x.y when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


PACKAGES = ("common", "data", "models", "training", "evaluation", "benchmarks")


def _graph() -> dict[str, set[str]]:
    files = {}
    for path in (p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        files[name] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = _imports(path, package, set(files)) - {name}
        if path.name == "__init__.py":  # the source registry imports its modules by name (importlib)
            text = path.read_text()
            children = {m for m in files if m.rpartition(".")[0] == name}
            targets |= {m for m in children if f'"{m.rpartition(".")[2]}"' in text}
        # Importing a submodule runs its package's __init__ first.
        targets |= {t.rpartition(".")[0] for t in targets if t.rpartition(".")[0] in files}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_package_has_an_import_cycle() -> None:
    graph = _graph()
    assert {"models.registry", "models.torch_weights", "training.trainer", "evaluation.loaders"} <= set(graph)
    assert "models.layer_names" in graph["models.torch_weights"]
    assert {"data.records", "data.build", "data.report", "data.splits", "data.sources.base"} <= set(graph)
    assert "data.records" in graph["data.report"] and "data.records" in graph["data.splits"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
