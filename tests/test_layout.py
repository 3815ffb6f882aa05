"""The package's structure: no import cycles between cardioseg's modules (at import time; an
import inside a function runs later and cannot deadlock the import), and nothing heavy on
``import cardioseg``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "cardioseg"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _top_level_imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The cardioseg modules that importing ``name`` runs (parents included; ``TYPE_CHECKING``
    blocks and function bodies left out; a submodule's own parent packages too)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "cardioseg":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cardioseg"}
    out = set()
    for dep in found:
        parts = dep.split(".")
        for i in range(1, len(parts) + 1):
            q = ".".join(parts[:i])
            if q in modules and q != name and not name.startswith(q + "."):
                out.add(q)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first search as a cycle ``[a, b, ..., a]``.

    >>> find_cycles({"a": {"b"}, "b": {"a"}, "c": set()})
    [['a', 'b', 'a']]
    """
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append([*stack[stack.index(v) :], v])
            elif v not in state:
                visit(v, stack)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return cycles


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: _top_level_imports(p, m, modules) for m, p in modules.items()}
    assert "cardioseg.io.volume" in graph["cardioseg.io.dicom"]  # the checker sees real imports
    assert find_cycles(graph) == []


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == [["x", "y", "z", "x"]]


def test_import_cardioseg_is_light() -> None:
    code = "import sys, cardioseg, cardioseg.cli; print(sorted(m for m in ('torch', 'numpy', 'rich', 'nibabel') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"
