"""The package layout: imports only go downward, and docs/index.md maps the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "redis_logstream"
DOCS = ROOT / "docs" / "index.md"

#: Each subpackage's layer: a module may import from its own layer or lower ones.
#: The package root (``__init__.py``) is public API only and loads just the
#: ground floor at import (the rest is resolved on first use).
LAYERS = {
    "ground": 0,  # context.py naming.py conf.py, the package root
    "shipping": 1,
    "redis": 2,
    "reading": 3,
    "consumers": 4,
    "console": 4,
    "amqp": 5,
    "cli": 6,
    "top": 7,  # the Django glue: apps, checks, middleware, celery, signals, management, ...
}
GROUND = {
    "redis_logstream",
    "redis_logstream.context",
    "redis_logstream.naming",
    "redis_logstream.conf",
}
OPAQUE = {"management", "migrations", "templatetags", "templates", "static", "systemd"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(["redis_logstream", *parts])] = path
    return found


def unit(module: str) -> str:
    if module in GROUND:
        return "ground"
    first = module.split(".")[1]
    return first if first in LAYERS else "top"


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The modules of this package that ``path`` imports (TYPE_CHECKING ones aside)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in known:
                targets.add(name)
    return targets - {module}


def drawing() -> dict[str, set[str]]:
    found = modules()
    return {module: imports(path, module, set(found)) for module, path in found.items()}


def test_every_module_has_a_layer():
    for module in modules():
        assert unit(module) in LAYERS, module


def test_no_module_imports_upward():
    upward = []
    for module, targets in drawing().items():
        here = unit(module)
        for target in targets:
            there = unit(target)
            if there != here and LAYERS[there] >= LAYERS[here]:
                upward.append(f"{module} ({here}) imports {target} ({there})")
    assert not upward, "\n".join(sorted(upward))


def test_shipping_imports_no_broker():
    for module, targets in drawing().items():
        if unit(module) == "shipping":
            assert not {unit(t) for t in targets} & {"redis", "amqp"}, module


def test_no_cycle_between_subpackages():
    edges: dict[str, set[str]] = {}
    for module, targets in drawing().items():
        for target in targets:
            if unit(target) != unit(module):
                edges.setdefault(unit(module), set()).add(unit(target))
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, " -> ".join((*path, node))
        if node in done:
            return
        for nxt in edges.get(node, ()):
            visit(nxt, (*path, node))
        done.add(node)

    for node in list(edges):
        visit(node, ())


def documented() -> set[str]:
    text = DOCS.read_text()
    section = text.split("## The folders", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.M))


def tree() -> set[str]:
    found = set()
    for path in PACKAGE.iterdir():
        if path.is_dir() and not path.name.startswith(("__", ".")):
            found.add(path.name + "/")
    for path in PACKAGE.rglob("*"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in OPAQUE or "__pycache__" in rel.parts or path.is_dir():
            continue
        if path.suffix in (".py", ".lua") and (
            path.name != "__init__.py" or rel == Path("__init__.py")
        ):
            found.add(rel.as_posix())
    return found


def test_docs_map_matches_the_tree():
    listed, actual = documented(), tree()
    assert not actual - listed, (
        f"in the tree, missing from docs/index.md: {sorted(actual - listed)}"
    )
    assert not listed - actual, f"in docs/index.md, not in the tree: {sorted(listed - actual)}"
