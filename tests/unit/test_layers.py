"""The package layers of pyproject.toml's import-linter contracts hold, and would catch a
cycle: the contracts run on the tree, and on a copy of it with one upward import added."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fabric", "connectors")
GENERATED = {"fabric.v1"}

# Runs import-linter as `lint-imports --no-cache` does, in the directory it is started in
# (that directory comes first on sys.path, so a copied tree is the one analysed).
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(no_cache=True, no_logo=True))"
)


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LINT],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_tree(to: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, to / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", to / "pyproject.toml")
    return to


def add_import(module: Path, statement: str) -> None:
    """Append `statement` inside a function, as the tree's own lazy imports are: the
    graph counts it all the same."""
    with module.open("a") as source:
        source.write(f"\n\ndef _upward() -> None:\n    {statement}  # noqa\n")


def contracts() -> list[dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found: list[dict[str, object]] = config["tool"]["importlinter"]["contracts"]
    return found


def test_the_contracts_hold_on_the_tree() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_package_is_in_a_layer() -> None:
    """A new top-level module or package must be placed in a layer, or no contract
    would say where it may be imported from."""
    (layers,) = [c for c in contracts() if c["type"] == "layers"]
    raw = layers["layers"]
    assert isinstance(raw, list)
    declared = {name.strip() for layer in raw for name in layer.replace(":", "|").split("|")}
    present = {"connectors"}
    for child in (ROOT / "fabric").iterdir():
        if child.name.startswith(("_", ".")):
            continue
        if child.suffix == ".py" or (child / "__init__.py").exists():
            present.add(f"fabric.{child.stem}")
    assert present - GENERATED - declared == set()
    assert declared - present == set()


@pytest.mark.parametrize(
    ("module", "statement", "broken"),
    [
        # A cycle: the query engine imports the catalog, now the catalog imports it back.
        (
            "fabric/catalog/audit.py",
            "from fabric.query import engine",
            "fabric.catalog.audit -> fabric.query.engine",
        ),
        # Something below the composition root reaching up into it.
        (
            "fabric/platform/refresh.py",
            "from fabric.app import parts",
            "fabric.platform.refresh -> fabric.app.parts",
        ),
        # A connector reaching into the catalog (the cycle the leaf fabric.model removed).
        (
            "connectors/base.py",
            "from fabric.catalog import manager",
            "connectors.base -> fabric.catalog.manager",
        ),
    ],
)
def test_an_upward_import_breaks_the_contracts(
    tmp_path: Path, module: str, statement: str, broken: str
) -> None:
    tree = copy_tree(tmp_path)
    add_import(tree / module, statement)
    result = lint_imports(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Layers: entry points" in result.stdout
    assert "BROKEN" in result.stdout
    assert broken in result.stdout
