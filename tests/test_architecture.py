"""The layout's promises, checked on the source: imports flow one way (cli -> commands ->
run lifecycle -> training -> components -> errors), with no cycles, lazy imports included;
the run folder's file names and the checkpoint's keys are each spelled in one module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "expkit"

# Lower layers never import higher ones. Modules in one layer may import each other, as
# long as no cycle forms.
LAYERS = [
    ("errors", "version", "collector", "printable"),
    ("config", "run", "data", "models", "tasks"),
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


def string_constants() -> dict[str, set[str]]:
    """Every expkit module -> the string constants in its code (docstrings included)."""
    return {module_name(p): {n.value for n in ast.walk(ast.parse(p.read_text()))
                             if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            for p in PACKAGE.rglob("*.py")}


def spelled_outside(owner: str, names: set[str]) -> list[str]:
    """Modules other than `owner` with a string that is one of `names`, or ends in one after
    a slash (an f-string's "/train.log")."""
    return sorted(f"{module} spells {text!r}" for module, found in string_constants().items() if module != owner
                  for text in found for name in names if text == name or text.endswith("/" + name))


def test_the_run_folder_names_its_files_in_one_module():
    from pathlib import Path

    from expkit.run.folder import RunDir

    root = Path("/run")
    paths = [getattr(RunDir(root), name) for name, value in vars(RunDir).items() if isinstance(value, property)]
    # eval/ and export/ are named like the commands that write them: those words stand everywhere.
    names = {part for p in paths for part in p.relative_to(root).parts} - {"eval", "export"}
    assert {"meta.json", "config.yaml", "checkpoints", "train.log", ".lock"} <= names
    assert not spelled_outside("expkit.run.folder", names)


def test_the_checkpoint_names_its_keys_and_reads_its_files_in_one_module():
    import dataclasses

    from expkit.config.schema import BASES, SCHEMAS, SINGLE
    from expkit.run.checkpoint import BEST, LAST, Checkpoint

    # Keys that are also config keys or groups (model, data, early_stop, ...) or common words
    # (step, epoch: metrics.json has them too) stand elsewhere for those; every reader gets
    # the checkpoint as a typed object, so no module but checkpoint.py subscripts its keys.
    schemas = [*BASES.values(), *SINGLE.values(), *(s for by in SCHEMAS.values() for s in by.values())]
    config_words = {f.name for s in schemas for f in dataclasses.fields(s)} | set(BASES) | set(SINGLE)
    common = {"model", "data", "config", "path", "epoch", "step", "batch", "metrics", "format"}
    keys = {f.name for f in dataclasses.fields(Checkpoint)} - config_words - common
    assert {"optimizer", "rng", "train_tally", "rng_ranks"} <= keys
    assert not spelled_outside("expkit.run.checkpoint", keys | {f"{BEST}.pt", f"{LAST}.pt"})
    calls = sorted(f"{module_name(p)} calls torch.{n.func.attr}" for p in PACKAGE.rglob("*.py")
                   for n in ast.walk(ast.parse(p.read_text()))
                   if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("load", "save")
                   and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"
                   and module_name(p) != "expkit.run.checkpoint")
    assert not calls
