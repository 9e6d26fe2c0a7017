"""The optional compiled build (setup.py, ``LANLIC_COMPILE=1``) passes the suites of the modules
it compiles: built with mypyc from this tree into a copy, then tests/core, tests/proto, tests/net
and tests/test_service.py run against the copy (1,219 tests, about two minutes here).

The pure modules stay what every other test runs; this is the other half of "an optional build
with the pure-Python path kept and tested" (issue 14).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lanlic
from lanlic.hotpath import MODULES

ROOT = Path(__file__).resolve().parent.parent
SUITES = ["tests/core", "tests/proto", "tests/net", "tests/test_service.py"]


def _copy_tree(dest: Path) -> None:
    """The sources and tests, without build outputs, caches or virtual environments."""
    skip = shutil.ignore_patterns(
        "*.so", "*.pyd", "__pycache__", "build", ".venv", "*.egg-info", ".git", ".*_cache"
    )
    for name in ("lanlic", "tests", "protocol", "tools"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_compiled_build_passes_the_suites_of_its_modules(tmp_path: Path) -> None:
    assert lanlic.compiled_modules() == [], "the main run must be the pure build"
    tree = tmp_path / "tree"
    _copy_tree(tree)
    env = {**os.environ, "LANLIC_COMPILE": "1", "PYTHONPATH": str(tree)}
    env.pop("PYTEST_ADDOPTS", None)
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]

    # The copy's modules are the compiled ones (its folder comes first on the path).
    which = subprocess.run(
        [sys.executable, "-c", "import lanlic; print(','.join(lanlic.compiled_modules()))"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert which.stdout.strip().split(",") == list(MODULES)

    suites = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
        cwd=tree, env=env, capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    tail = suites.stdout[-6000:] + suites.stderr[-2000:]
    assert suites.returncode == 0, tail
    last = suites.stdout.strip().splitlines()[-1]
    assert " passed" in last and "skipped" not in last and "deselected" not in last, tail
