"""The layer order of ``unveil/__init__.py``, checked on the import graph of every module in src/unveil.

Every ``unveil`` import (at module level or inside a function) must point to the importing module's own layer
or one below it, and no ``unveil`` import may hide inside a function: a function-local import is how a cycle
between layers gets smuggled in. The CLI, the top layer that nothing imports, is the one exception: its
commands import the library lazily so that ``unveil --help`` starts without loading torch.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import unveil

SOURCE = Path(unveil.__file__).parent

#: Lowest first; a module belongs to the longest entry that prefixes its dotted name.
LAYERS: list[tuple[str, ...]] = [
    ("unveil", "unveil.errors", "unveil.provenance", "unveil.progress", "unveil.documents", "unveil.schema",
     "unveil.tracking", "unveil.artifacts"),
    ("unveil.io",),
    ("unveil.data",),
    ("unveil.synth",),
    ("unveil.transforms",),
    ("unveil.segmentation",),
    ("unveil.preprocess",),
    ("unveil.models",),
    ("unveil.thresholds",),
    ("unveil.training",),
    ("unveil.explain",),
    ("unveil.evaluation",),
    ("unveil.audit",),
    ("unveil.inference",),
    ("unveil.reports",),
    ("unveil.experiments",),
    ("unveil.cli",),
]

#: Packages whose function-local ``unveil`` imports are allowed, with the reason.
LAZY_ALLOWED = {"unveil.cli": "top layer, imported by nothing: lazy imports keep `unveil --help` fast"}


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest prefix of ``module``; a module outside the table fails."""
    best: tuple[int, int] | None = None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[0]):
                best = (len(name), index)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to the table in unveil/__init__.py and here")
    return best[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unveil_imports(text: str, module: str, is_package: bool = False) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every ``unveil`` import in the source ``text`` of
    ``module`` (relative imports resolved against its package)."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names
                             if alias.name.split(".")[0] == "unveil")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = package.split(".")
                    base = parts[: len(parts) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == "unveil":
                    found.append((target, child.lineno, in_function))
            visit(child, nested)

    visit(ast.parse(text, filename=module), False)
    return found


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    return unveil_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


MODULES = sorted(SOURCE.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 50
    for path in MODULES:
        layer_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_imports_point_down(path: Path) -> None:
    module = module_name(path)
    own = layer_of(module)
    upward = [f"line {line}: {module} (layer {own + 1}) imports {target} (layer {layer_of(target) + 1})"
              for target, line, _ in imports_of(path) if layer_of(target) > own]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_no_function_local_unveil_import(path: Path) -> None:
    module = module_name(path)
    if any(module == name or module.startswith(name + ".") for name in LAZY_ALLOWED):
        return
    hidden = [f"line {line}: {module} imports {target} inside a function"
              for target, line, local in imports_of(path) if local]
    assert not hidden, "\n".join(hidden)


def test_layer_table_matches_the_package_docstring() -> None:
    """The numbered list in ``unveil/__init__.py`` is the order this test enforces, layer for layer."""
    items = re.findall(r"^\d+\. (``unveil.*?):", unveil.__doc__ or "", flags=re.M | re.S)  # a head may wrap
    stated = [tuple(re.findall(r"``(unveil[\w.]*)``", head)) for head in items]
    assert stated == [names if names[0] != "unveil" else names[1:] for names in LAYERS]


def test_the_checker_sees_upward_relative_and_hidden_imports() -> None:
    """The checker itself: an upward import, a relative one and a function-local one are all found."""
    text = "from unveil.audit import audit\nfrom .records import concat_records\n\ndef f():\n    import unveil.io\n"
    imports = unveil_imports(text, "unveil.data.check")
    assert imports == [("unveil.audit", 1, False), ("unveil.data.records", 2, False), ("unveil.io", 5, True)]
    assert layer_of("unveil.audit") > layer_of("unveil.data.check") == layer_of("unveil.data.records")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("unveil_extra.module")
