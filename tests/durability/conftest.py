"""Fixtures of the durability tests: a vendor key pair and a network key made once per module,
and the background ``lanlic`` processes a test starts (all stopped at its end)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from durable_cli import Procs, issue, make_vendor, procs_fixture


@pytest.fixture
def procs() -> Iterator[Procs]:
    yield from procs_fixture()


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_vendor(tmp_path_factory.mktemp("vendor"))


@pytest.fixture(scope="module")
def network_key(vendor: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return issue(vendor, tmp_path_factory.mktemp("key") / "net.lic")
