"""The optional compiled build of the server's hot path (issue 14).

``pip install .`` installs pure Python, as always. With ``LANLIC_COMPILE=1`` (and mypy installed:
``pip install mypy``, then ``LANLIC_COMPILE=1 pip install --no-build-isolation '.[fast]'``) the
modules every checkout, renew and release passes through are compiled to C extensions by mypyc,
the compiler mypy ships (black and mypy itself ship wheels built this way). The compiled
modules are the same source: the pure modules stay what every test runs, and
tests/test_compiled.py builds this set and runs the suites of these modules against it.

Measured (README, Performance): the server's CPU for a checkout+release about a quarter less in
process; on the benchmark, checkout+release from 53% of the ceiling to 67% in alternating runs.
Everything else (metadata, dependencies) is in pyproject.toml.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

from setuptools import setup

#: The hot path (lanlic/hotpath.py, read without importing lanlic).
COMPILED = [
    name.replace(".", "/") + ".py"
    for name in runpy.run_path(str(Path(__file__).parent / "lanlic" / "hotpath.py"))["MODULES"]
]


def _ext_modules() -> list[Any]:
    if os.environ.get("LANLIC_COMPILE", "0") in ("", "0"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:  # pragma: no cover - a build without mypy
        raise SystemExit(
            "LANLIC_COMPILE=1 needs mypy (mypyc): 'pip install mypy', then build with "
            "'pip install --no-build-isolation'"
        ) from exc
    return mypycify(COMPILED, opt_level="3", group_name="lanlic")


setup(ext_modules=_ext_modules())
