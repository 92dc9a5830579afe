"""The house's structure, checked on the source (no import is run): every import between the package's
modules points down the layers below, and no modules import each other in a cycle (lazy imports inside
functions count too: they are arrows all the same).

Layers, lowest first: errors, publish, report_to (no package import) → data, modeling → provenance →
config, hub, cards → training → downstream → cli → the entry points (``__main__``, ``_auto_register``, the
package ``__init__``). A module may import its own layer or any below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mae_trainer"
LAYERS = {
    "data": 1,
    "modeling": 1,
    "provenance": 2,
    "config": 3,
    "hub": 3,
    "cards": 3,
    "training": 4,
    "downstream": 5,
    "cli": 6,
    "__main__": 7,
    "_auto_register": 7,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets |= {base} & known.keys()
            targets |= {f"{base}.{alias.name}" for alias in node.names} & known.keys()
        elif isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names} & known.keys()
    return {t for t in targets if t != name and not name.startswith(t + ".")}  # a package's own parents


def layer(name: str) -> int:
    if name == "mae_trainer":
        return 7
    return LAYERS.get(name.split(".")[1], 0)


def test_imports_point_down_and_form_no_cycle():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the scan sees the package

    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if layer(t) > layer(m))
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)

    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [name, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
