"""Fixtures of the durability tests: a network key made once per module (the vendor key pair
and the ``procs`` fixture are tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path

import pytest
from durable_cli import issue


@pytest.fixture(scope="module")
def network_key(vendor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue(vendor, tmp_path_factory.mktemp("key") / "net.lic")
