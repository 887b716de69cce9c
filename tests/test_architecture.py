"""The shape of the code, as a user of the code base notices it: no import cycles in `mixture`,
layers pointing one way (also checked by import-linter in `make test`), and short functions."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

LIBS = Path(__file__).resolve().parents[1] / "libs" / "mixture"
MAX_LINES = 60


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return out


def test_the_import_graph_of_mixture_has_no_cycle():
    graph = grimp.build_graph("mixture", include_external_packages=False)
    assert _cycles(graph) == []


def test_no_library_or_stage_imports_the_runner_or_an_entry_point():
    graph = grimp.build_graph("mixture", include_external_packages=False)
    upper = {"mixture.pipeline", "mixture.cli"}
    offenders = sorted(
        m for m in graph.modules if m not in upper for u in upper if graph.direct_import_exists(importer=m, imported=u)
    )
    assert offenders == []


def test_functions_in_libs_are_short():
    """Under 60 lines each; numpy/numba kernels may be exempted with a `# kernel` comment on
    their `def` line (none is today)."""
    long = []
    for path in sorted(LIBS.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n >= MAX_LINES and "# kernel" not in lines[node.lineno - 1]:
                    long.append(f"{path.relative_to(LIBS)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


def test_every_module_is_in_the_layers_contract():
    """A new top-level module must be placed in a layer (pyproject.toml, import-linter), or the
    layers check would not see it."""
    import tomllib

    conf = tomllib.loads((LIBS.parents[1] / "pyproject.toml").read_text())
    layers = conf["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    top = {
        f"mixture.{p.stem if p.is_file() else p.name}"
        for p in LIBS.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert sorted(top - named) == []


STAGE_MAX_LINES = 150  # a stage orchestrates: what it reads, which library calls, what it commits
MODULE_MAX_LINES = 500  # a library module holds one concern
FAMILIES = ("corpus", "curate", "cluster", "climblab", "search", "climbmix", "publish")
PLUMBING = (
    "config",
    "contract",
    "registry",
    "dataset",
    "increments",
    "lease",
    "storage",
    "parallel",
    "spark",
    "tracking",
    "faults",
)
RUNNER = ("cli", "pipeline", "preflight")


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _max_lines(path: Path) -> int:
    return STAGE_MAX_LINES if path.parent.name == "stages" else MODULE_MAX_LINES


def test_stage_modules_orchestrate_and_library_modules_hold_one_concern():
    long = [
        f"{p.relative_to(LIBS)} ({_lines(p)} lines, at most {_max_lines(p)})"
        for p in sorted(LIBS.rglob("*.py"))
        if _lines(p) > _max_lines(p)
    ]
    assert long == []


def test_the_top_level_holds_only_the_runner_the_plumbing_and_the_family_packages():
    """A new module goes into its family's package (or is plumbing every family shares, named here)."""
    top = {p.stem for p in LIBS.glob("*.py") if p.stem != "__init__"}
    packages = {p.name for p in LIBS.iterdir() if (p / "__init__.py").exists()}
    assert sorted(top - set(PLUMBING) - set(RUNNER)) == []
    assert sorted(packages - set(FAMILIES) - set(PLUMBING) - {"stages"}) == []


def test_the_families_are_declared_independent_in_the_import_contract():
    """`make check` (import-linter) fails when one family imports another's internals; this test
    keeps every family in that contract."""
    import tomllib

    conf = tomllib.loads((LIBS.parents[1] / "pyproject.toml").read_text())
    independence = [c for c in conf["tool"]["importlinter"]["contracts"] if c["type"] == "independence"]
    assert len(independence) == 1
    assert sorted(independence[0]["modules"]) == sorted(f"mixture.{f}" for f in FAMILIES)
