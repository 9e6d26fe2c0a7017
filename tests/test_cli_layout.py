"""The ``lanlic`` command's package holds its shape (issue 11): one module per family of
commands, each using ``lanlic.cli.common`` and none another family, and nothing outside the
package importing it, so the old circle (cli, cli_borrow, cli_admin, admin.command, bench.run
passing ``CliError``, ``add``, ``_connect`` and ``build_parser`` around) cannot come back."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "lanlic"
PACKAGE = ROOT / "cli"
#: The modules that put the families together or are shared, rather than families.
NOT_FAMILIES = {"__init__", "__main__", "app", "common"}
FAMILIES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in NOT_FAMILIES)


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as full dotted names
    (``from lanlic.cli import x`` counts as ``lanlic.cli.x``, which may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_families_are_there() -> None:
    assert {"admin", "bench", "borrow", "seats", "serve", "vendor"} <= set(FAMILIES)


def test_a_family_imports_common_and_no_other_family() -> None:
    for family in FAMILIES:
        ours = {n for n in imported(PACKAGE / f"{family}.py") if n.startswith("lanlic.cli")}
        assert "lanlic.cli.common" in ours, family
        others = {
            n for n in ours if n != "lanlic.cli.common" and not n.startswith("lanlic.cli.common.")
        }
        assert others == set(), (family, others)


def test_common_imports_no_family() -> None:
    ours = {n for n in imported(PACKAGE / "common.py") if n.startswith("lanlic.cli")}
    assert ours == set()


def test_nothing_outside_the_package_imports_it() -> None:
    found = []
    for path in ROOT.rglob("*.py"):
        if PACKAGE in path.parents or path == ROOT / "__main__.py":
            continue  # python -m lanlic runs the command
        hits = {n for n in imported(path) if n == "lanlic.cli" or n.startswith("lanlic.cli.")}
        if hits:
            found.append(f"{path.relative_to(ROOT)}: {sorted(hits)}")
    assert found == []


def test_each_family_loads_alone() -> None:
    """Importing a family brings in ``common`` and no other family (``lanlic.cli`` itself
    imports nothing until ``main`` runs)."""
    probe = (
        "import importlib, json, sys\n"
        "importlib.import_module('lanlic.cli.' + sys.argv[1])\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lanlic.cli'))))\n"
    )
    for family in FAMILIES:
        out = subprocess.run(
            [sys.executable, "-c", probe, family],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        loaded = set(json.loads(out.stdout))
        assert loaded == {"lanlic.cli", "lanlic.cli.common", f"lanlic.cli.{family}"}, family
