"""The package's layout, checked statically: the import graph of ``csm_lib`` (read with ``ast``, never
imported), the size of its modules, and the commands the README and the Makefile name.

``csm_lib``'s top level is the model a reader studies and its training (chapters 01-08); the parts that
serve it sit above it, and imports only point down:

    core (csm_lib/*.py)  <-  judges/, baselines/  <-  bench/, serve/, widgets.py;   verdicts/ (files only)

Every import counts, including those inside functions (the lazy ones), so a module cannot hide an
arrow that points up or closes a circle.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "csm_lib"

# which parts each part may import (besides its own modules); "core" is every module at the top level
MAY_IMPORT = {
    "core": set(),
    "judges": {"core"},
    "baselines": {"core"},
    "serve": {"core"},
    "widgets": {"core", "baselines"},
    "verdicts": set(),  # reads results/ and checkpoints/ as files, imports no model code
    "bench": {"core", "judges", "baselines", "serve"},
}
MAX_LINES = 500
# modules over MAX_LINES, each with why it is not split yet; the test fails when the list is not exact
TOO_LONG = {"csm_lib/generate.py": "Segment, Generator, Conversation: edited by other work during issue 29"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part(module: str) -> str:
    """``csm_lib.bench.common`` -> ``bench``; a top-level module -> ``core`` (``widgets`` is its own part)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "core"
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "widgets" if parts[1] == "widgets" else "core"


def imported(path: Path) -> set[str]:
    """The ``csm_lib`` modules a file imports, anywhere in it (``from csm_lib import x`` names module x)."""
    mods, name = modules(), module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .common import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods)
    return {m for m in out if m in mods and m != name and m != "csm_lib"}


@cache
def graph() -> dict[str, set[str]]:
    return {name: imported(path) for name, path in modules().items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (or a module importing itself)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
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
            if len(component) > 1 or v in g[v]:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reads_every_kind_of_import():
    g = graph()
    assert "csm_lib.bench.common" in g["csm_lib.bench.kv_cache"]  # from csm_lib.bench.common import ...
    assert "csm_lib.judges.quality" in g["csm_lib.judges.pronunciation"]  # inside a function
    assert "csm_lib.baselines.pipeline" in g["csm_lib.bench.latency"]  # from csm_lib.baselines import pipeline
    assert "csm_lib.metrics" in g["csm_lib.semantic"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    found = cycles(graph())
    assert not found, "import circles among csm_lib's modules: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_point_down():
    """The top level (core) imports no part; judges and baselines import only the core; benchmarks, serving
    and widgets import what is below them and nothing imports them but their own part."""
    up = [f"{m} ({part(m)}) imports {d} ({part(d)})" for m, deps in graph().items() for d in sorted(deps)
          if part(d) != part(m) and part(d) not in MAY_IMPORT[part(m)]]
    assert not up, "imports that point up:\n" + "\n".join(up)


def test_every_part_is_known_and_its_init_imports_nothing():
    """A part's ``__init__.py`` is its docstring only: importing ``csm_lib.bench.common`` runs no other code."""
    for init in PACKAGE.rglob("__init__.py"):
        assert part(module_name(init)) in MAY_IMPORT, init
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} says nothing about its part"
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], init


def test_every_module_says_what_it_is_for():
    missing = [str(p.relative_to(ROOT)) for p in modules().values()
               if p.name != "__init__.py" and not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def test_no_module_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in modules().values()}
    over = {f for f, n in long.items() if n > MAX_LINES}
    assert over == set(TOO_LONG), (f"modules over {MAX_LINES} lines: { {f: long[f] for f in over} }; "
                                   f"split them, or keep TOO_LONG exact")


# ----------------------------------------------------------------------------- commands the docs name


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"(?m)^([A-Za-z0-9][\w.-]*)\s*:(?![:=])", text)) - {".PHONY"}


def readme_make_targets() -> set[str]:
    """Every target a ``make ...`` command in the README's code (spans and blocks) names."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```.*?```", text, flags=re.S)
    spans = re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    word = r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?=[\s`),;]|$)"
    targets = set()
    for code in blocks + spans:
        for m in re.finditer(rf"(?<![\w-])make((?:[ \t\n]+{word})*)", code):
            targets.update(m.group(1).split())
    return targets


def test_every_make_target_the_readme_names_exists():
    named, defined = readme_make_targets(), makefile_targets()
    assert {"workbook", "test", "bench", "serve", "bench-quality"} <= named, sorted(named)  # the parser sees them
    assert named <= defined, f"the README names make targets the Makefile does not have: {sorted(named - defined)}"


def runnable(module: str) -> bool:
    """``python -m module`` runs something: a module with a ``__main__`` block, or a package with ``__main__.py``."""
    path = ROOT / Path(*module.split("."))
    if (path / "__main__.py").exists():
        return True
    file = path.with_suffix(".py")
    return file.exists() and 'if __name__ == "__main__":' in file.read_text()


def command_sources() -> dict[str, str]:
    """The README, the Makefile, the notebooks' cells (not their outputs: those print the commands that made
    committed results, some under old names), the other tests and csm_lib's own files."""
    out = {"README.md": (ROOT / "README.md").read_text(), "Makefile": (ROOT / "Makefile").read_text()}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        out[nb.name] = "\n".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"])
    for p in [*sorted((ROOT / "tests").glob("*.py")), *modules().values()]:
        if p.name != Path(__file__).name:  # this file's patterns are not commands
            out[str(p.relative_to(ROOT))] = p.read_text()
    return out


def test_every_python_m_command_names_a_runnable_module():
    named = {(m, where) for where, text in command_sources().items()
             for m in re.findall(r"(?<![\w-])-m (csm_lib(?:\.\w+)*)", text)}
    assert {"csm_lib.bench", "csm_lib.serve", "csm_lib.judges.quality"} <= {m for m, _ in named}
    stale = sorted(f"{m} ({where})" for m, where in named if not runnable(m))
    assert not stale, "python -m commands that run nothing: " + ", ".join(stale)


def test_every_benchmark_command_names_a_benchmark():
    """``python -m csm_lib.bench NAME``: NAME is a key of ``bench/__main__.py``'s ``BENCHMARKS``."""
    tree = ast.parse((PACKAGE / "bench" / "__main__.py").read_text())
    table = next(n.value for n in tree.body if isinstance(n, ast.AnnAssign) and n.target.id == "BENCHMARKS")
    names = {k.value for k in table.keys}
    used = {(m, where) for where, text in command_sources().items()
            for m in re.findall(r"-m csm_lib\.bench ([a-z][\w-]*)", text)}
    assert len(used) > 5
    unknown = sorted(f"{m} ({where})" for m, where in used if m not in names)
    assert not unknown, f"benchmark commands that name no benchmark of {sorted(names)}: {unknown}"
