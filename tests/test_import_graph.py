"""The import graph keeps the layering docs/design.md states ("Import direction"): no cycles, imports flowing one
way between the parts of the package, demo/ reached only by the demo command and the demo's prompt source, and
printing only in commands/ and cli.py.

The graph is read from the source (ast), every import counted, the ones inside functions too: an import moved
into a function still makes a cycle at run time, it only hides it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("offline_infalign", "data_builders")

# part of the package -> the parts it may import (besides itself and the package's __init__, which holds only
# the version). The same table is the "Import direction" list in docs/design.md.
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "kinds": {"core", "models"},
    "training": {"core", "models", "kinds"},
    "engines": {"core", "models"},
    "config": {"core", "engines", "integrations", "kinds", "models", "data_builders"},  # registries: names
    "artifacts": {"core", "config", "models"},
    "plots": {"core"},
    "data_builders": {"core", "demo"},  # demo: the demo's own prompt source only (checked below)
    "integrations": {"core", "models", "kinds", "artifacts", "data_builders"},
    "stages": {"core", "models", "kinds", "training", "engines", "config", "artifacts", "plots", "data_builders",
               "integrations"},
    "demo": {"core", "models", "config", "artifacts", "plots", "stages"},
    "commands": {"core", "config", "kinds", "artifacts", "plots", "stages", "demo"},  # demo: commands/demo.py only
    "cli": {"core", "commands"},
    "__main__": {"cli"},
}
# What config and artifacts may import from models: the scorer names, and for config the --device check (which
# imports torch when a device is named); nothing that loads a model.
NAMES_ONLY = {"config": {"offline_infalign.models.scorers", "offline_infalign.models.load_checks"},
              "artifacts": {"offline_infalign.models.scorers"}}
# The only importers of demo/ (the demo command; the demo prompt source, owned by the demo part of the package).
DEMO_IMPORTERS = {"offline_infalign.commands.demo", "data_builders.demo"}
PRINTERS = ("commands", "cli")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imported(module: str, path: Path) -> set[str]:
    """The package's modules `module` imports, anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: None if is_pkg else -1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


GRAPH = {m: _imported(m, p) for m, p in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "data_builders":
        return "data_builders"
    return parts[1] if len(parts) > 1 else "<package>"


def test_every_part_is_in_the_table():
    parts = {_part(m) for m in MODULES} - {"<package>"}
    assert parts == set(ALLOWED), parts ^ set(ALLOWED)


def test_no_import_cycles():
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, cycles


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_one_way(module):
    part = _part(module)
    if part == "<package>":
        return
    for target in GRAPH[module]:
        other = _part(target)
        if other in (part, "<package>"):
            continue
        assert other in ALLOWED[part], f"{module} imports {target}: {part} may import only {sorted(ALLOWED[part])}"
        if other == "models" and part in NAMES_ONLY:
            assert target in NAMES_ONLY[part], f"{module} imports {target}; {part} reads only the name registries"
        if other == "demo":
            assert module in DEMO_IMPORTERS, f"{module} imports {target}; only {sorted(DEMO_IMPORTERS)} import demo/"


def test_core_imports_nothing_of_the_package_and_nothing_from_hugging_face():
    heavy = ("transformers", "datasets", "peft", "trl", "accelerate", "huggingface_hub", "tokenizers")
    for module, path in MODULES.items():
        if _part(module) != "core":
            continue
        assert all(_part(t) == "core" for t in GRAPH[module]), (module, GRAPH[module])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert not set(roots) & set(heavy), (module, roots)


def _prints(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.iter_child_nodes(tree):
        main_guard = isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        if main_guard:  # a script's own entry point
            continue
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
            lines.append(node.lineno)
        lines += _prints(node)
    return lines


def test_only_commands_and_cli_print():
    for module, path in MODULES.items():
        if _part(module) in PRINTERS:
            continue
        assert not _prints(ast.parse(path.read_text())), f"{module} prints (lines {_prints(ast.parse(path.read_text()))})"


def test_the_root_holds_few_modules():
    root = sorted(p.name for p in (ROOT / "offline_infalign").glob("*.py"))
    assert len(root) <= 8, root
