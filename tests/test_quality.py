"""The standards the code is held to, run with the suite so CI holds them too: mypy strict on
lanlic/ (as on Linux, and as on Windows and macOS, so the code for each OS in lanlic.osdeps is
checked on any machine), ruff's lint families, and ruff's formatting over the whole tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_mypy_strict_on_the_package() -> None:
    out = run(sys.executable, "-m", "mypy")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_mypy_strict_as_on_another_os(platform: str) -> None:
    out = run(sys.executable, "-m", "mypy", "--platform", platform)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_ruff_lint() -> None:
    out = run(sys.executable, "-m", "ruff", "check", ".")
    assert out.returncode == 0, out.stdout[-4000:]


def test_ruff_format() -> None:
    out = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert out.returncode == 0, out.stdout[-4000:]
