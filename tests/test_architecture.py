"""The layout's promises, checked on the source: imports flow one way (cli -> commands ->
run lifecycle -> training -> components -> errors), with no cycles, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "expkit"

# Lower layers never import higher ones. Modules in one layer may import each other, as
# long as no cycle forms.
LAYERS = [
    ("errors", "version"),
    ("config", "run", "data", "models"),
    ("training",),
    ("app", "resuming", "sweep", "summary", "lessons", "afterwards", "runlist", "compare", "reproduce"),
    ("commands",),
    ("cli", "__init__", "__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every expkit module -> the expkit modules it imports, at the top or inside a function."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from expkit import sweep` imports the submodule; the package itself only
                # when a name is not a submodule (`from expkit.x import name`).
                targets = [f"{node.module}.{a.name}" for a in node.names]
                if any(t not in modules for t in targets):
                    targets.append(node.module)
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("expkit"):
                    found.add(target)
        graph[name] = found
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    return next(i for i, names in enumerate(LAYERS) if head in names)


def test_every_module_has_a_layer():
    for module in imports():
        layer(module)  # StopIteration names a module no layer holds


def test_imports_flow_down_the_layers():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in imports().items() for b in targets
              if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    # A package's __init__ is imported by its submodules implicitly; only explicit edges count.
    graph = imports()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
