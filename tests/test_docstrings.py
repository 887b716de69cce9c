"""A package's docstring that lists its modules lists them all, and only modules that exist.

The list is the paragraph of the package's `__init__` docstring that starts at the word `Modules`
(e.g. "Modules, in the order the data flows:"), with the bulleted list right after it; the
modules are the backticked lower-case names in it (`encoder`, `formats/`, `_base.py`). Every module
and subpackage of the package must be there, but for private ones (`_base`), which may be listed.
Every package has one. One test per package, so that a stale list names its package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "libs" / "mixture"
PACKAGES = sorted(p.parent for p in ROOT.rglob("__init__.py"))
NAME = re.compile(r"`(_?[a-z][a-z0-9_]*)(?:/|\.py)?`")  # lower case: `Scorer` is a class


def listed(doc: str) -> set[str] | None:
    """The module names of the docstring's `Modules` paragraph and the bullets after it; None
    when it has none."""
    start = re.search(r"\bModules\b", doc)
    if start is None:
        return None
    first, *rest = re.split(r"\n\s*\n", doc[start.start() :])
    section = [first]
    for paragraph in rest:
        if not paragraph.lstrip().startswith("- "):
            break
        section.append(paragraph)
    return set(NAME.findall("\n".join(section)))


def modules(package: Path) -> set[str]:
    """The package's modules and subpackages."""
    files = {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    return files | {p.parent.name for p in package.glob("*/__init__.py")}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: ".".join(p.relative_to(ROOT.parent).parts))
def test_a_package_docstring_lists_exactly_its_modules(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    names = listed(doc)
    assert names is not None, "its docstring has no `Modules` paragraph"
    present = modules(package)
    assert not names - present, f"listed, but not modules of the package: {sorted(names - present)}"
    missing = {m for m in present - names if not m.startswith("_")}
    assert not missing, f"modules the docstring does not list: {sorted(missing)}"


def test_the_list_reads_prose_and_bullets():
    doc = "What it is.\n\nModules: `a` (does `x.y`, `X`), `b/`.\n\n- `c`: one;\n- `_d.py`: two.\n\nElse `e`."
    assert listed(doc) == {"a", "b", "c", "_d"}
    assert listed("No list here: `a`.") is None
