"""The layers of oneforcing/, read from the source with ast (nothing is imported): which top-level
unit may import which, the toy world apart from the core, and no import circle.

A unit is a top-level package or module of oneforcing (`jobs`, `trainer`, `runtime`, ...). A unit
may import its own modules and the units of lower tiers, never a sibling of its tier nor anything
above it. Imports inside functions count: an import hidden in a function still couples the layers.
The toy world (`oneforcing.toy`) may use the whole core; no core unit may import it. No import
circle anywhere, inside a unit either. There are no exceptions.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "oneforcing"
TOY = "toy"

# Bottom first. "oneforcing" is the package's own __init__.
TIERS: tuple[tuple[str, ...], ...] = (
    ("oneforcing", "errors", "provenance"),                  # import no other oneforcing module
    ("runtime", "speed", "video"),                           # errors only
    ("distributed", "registry", "config", "weights"),
    ("attention", "schedulers", "loggers", "data"),
    ("models", "eval"),
    ("critics", "samplers"),
    ("losses", "streaming"),
    ("trainer", "study", "serve"),
    ("jobs",),
    ("testing", TOY, "unit_world"),                           # test fixtures; the toy world; the 2-D unit world
    ("runner",),                                              # entry points
    ("cli",),
    ("__main__",),
)
TIER = {unit: i for i, units in enumerate(TIERS) for unit in units}


# --- the checker --------------------------------------------------------------------------------
def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package at `root`."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` loads: itself, or its longest known prefix (`pkg.mod.attr` -> pkg.mod)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in modules else None


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (module level and inside functions alike)."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                found = [_known(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from pkg import sub` loads pkg.sub when sub is a module, else pkg itself.
                found = [_known(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base, modules)
                         for alias in node.names]
            else:
                continue
            targets.update(t for t in found if t is not None and t != name)
        graph[name] = targets
    return graph


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Edges from a unit to a sibling of its tier or to a higher tier (unknown units: KeyError)."""
    return {(a, b) for a, targets in graph.items() for b in targets
            if unit_of(a) != unit_of(b) and TIER[unit_of(b)] >= TIER[unit_of(a)]}


def core_imports_of_toy(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets
            if unit_of(a) != TOY and unit_of(b) == TOY}


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def problems(graph: dict[str, set[str]]) -> list[str]:
    """Every breach of the layers, one line each (empty: the graph keeps them)."""
    out = [f"{a} imports {b}: the core never imports oneforcing.toy" for a, b in sorted(core_imports_of_toy(graph))]
    out += [f"{a} imports {b}: up the layers (tests/test_layers.py TIERS)" for a, b in sorted(upward_imports(graph))]
    out += [f"import circle: {' <-> '.join(sorted(c))}" for c in sorted(circles(graph), key=sorted)]
    return out


# --- the real package ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_every_unit_has_a_tier(graph):
    units = {unit_of(m) for m in graph}
    assert units - set(TIER) == set(), "a new top-level unit: place it in TIERS"
    assert TOY in units and "jobs" in units  # the walk found the package


def test_the_core_never_imports_the_toy_world(graph):
    assert core_imports_of_toy(graph) == set()
    # ... while the toy world does use the core: the check looks at real edges.
    assert ("oneforcing.toy.jobs.eval", "oneforcing.jobs.shared") in {(a, b) for a, t in graph.items() for b in t}


def test_no_circle_runs_through_the_toy_world(graph):
    assert [sorted(c) for c in circles(graph) if any(unit_of(m) == TOY for m in c)] == []


def test_imports_follow_the_layers(graph):
    assert problems(graph) == []


def test_the_architecture_page_draws_these_tiers():
    """docs/architecture.md's table of tiers is this file's TIERS, row for row."""
    text = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.split("## Layers", 1)[1].split("```")[1].splitlines():
        match = re.match(r"\s{1,2}(\d+)   (.+?)(\s{2,}|$)", line)
        if match:
            rows[int(match[1])] = {u.replace("(__init__)", "").strip() for u in match[2].split(",")}
    assert rows == {i: set(units) for i, units in enumerate(TIERS)}


# --- the checker can fail -----------------------------------------------------------------------
def test_a_violating_graph_is_reported():
    bad = {
        "oneforcing.jobs.curvature": {"oneforcing.toy.world", "oneforcing.data.loader"},
        "oneforcing.toy.world": {"oneforcing.data.loader"},
        "oneforcing.data.loader": {"oneforcing.toy.world", "oneforcing.trainer.loop"},
        "oneforcing.trainer.loop": set(),
    }
    found = problems(bad)
    assert "oneforcing.jobs.curvature imports oneforcing.toy.world: the core never imports oneforcing.toy" in found
    assert "oneforcing.data.loader imports oneforcing.toy.world: the core never imports oneforcing.toy" in found
    assert "oneforcing.data.loader imports oneforcing.trainer.loop: up the layers (tests/test_layers.py TIERS)" in found
    assert "import circle: oneforcing.data.loader <-> oneforcing.toy.world" in found
    # a circle inside one unit, closed by an import in a function, is one too
    inner = {"oneforcing.registry": {"oneforcing.registry.build"}, "oneforcing.registry.build": {"oneforcing.registry"}}
    assert problems(inner) == ["import circle: oneforcing.registry <-> oneforcing.registry.build"]
    with pytest.raises(KeyError):  # a unit without a tier cannot pass silently
        upward_imports({"oneforcing.newunit.x": {"oneforcing.jobs.base"}})


def test_the_graph_sees_every_form_of_import(tmp_path):
    pkg = tmp_path / "oneforcing"
    files = {
        "__init__.py": "",
        "errors.py": "",
        "jobs/__init__.py": "from oneforcing.jobs import base\n",
        "jobs/base.py": "from . import shared\nfrom ..errors import UserError\n",
        "jobs/shared.py": "import oneforcing.data.loader as loader\n",
        "data/__init__.py": "",
        "data/loader.py": "def late():\n    from oneforcing.toy.world import ToyWorld\n",
        "toy/__init__.py": "",
        "toy/world.py": "from oneforcing.data import loader\nimport torch\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    g = import_graph(pkg)
    assert g["oneforcing.jobs"] == {"oneforcing.jobs.base"}
    assert g["oneforcing.jobs.base"] == {"oneforcing.jobs.shared", "oneforcing.errors"}   # relative imports
    assert g["oneforcing.jobs.shared"] == {"oneforcing.data.loader"}                      # import a.b as c
    assert g["oneforcing.data.loader"] == {"oneforcing.toy.world"}                        # inside a function
    assert g["oneforcing.toy.world"] == {"oneforcing.data.loader"}                        # from pkg import module
    assert circles(g) == {frozenset({"oneforcing.data.loader", "oneforcing.toy.world"})}
    assert core_imports_of_toy(g) == {("oneforcing.data.loader", "oneforcing.toy.world")}
