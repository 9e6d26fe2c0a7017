"""Packaging: ``python -m lanlic``, the LICENSE that pyproject names, and no declared dependency
that nothing imports."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Distribution name -> the module lanlic imports from it.
IMPORT_NAME = {"msgpack": "msgpack", "cryptography": "cryptography"}


def test_python_dash_m_lanlic_is_the_cli() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lanlic", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: lanlic ")


def test_license_file_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_every_declared_dependency_is_imported() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    sources = "\n".join(p.read_text() for p in (ROOT / "lanlic").rglob("*.py"))
    unused = []
    for requirement in project["dependencies"]:
        dist = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert dist is not None
        module = IMPORT_NAME.get(dist.group(0), dist.group(0)).replace("-", "_")
        if not re.search(rf"^\s*(import|from) {re.escape(module)}\b", sources, re.MULTILINE):
            unused.append(dist.group(0))
    assert unused == []
