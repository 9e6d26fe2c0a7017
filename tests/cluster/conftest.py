"""Fixtures for tests on a real etcd cluster (Debian's etcd-server: apt-get install etcd-server)."""

from __future__ import annotations

import gc
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from etcd_cluster import ETCD, EtcdCluster, etcd_client
from etcd_tls import tls_etcd  # noqa: F401 - a fixture for every module here

if shutil.which("etcd") is None and not Path(ETCD).exists():
    # Not a skip: CI installs etcd-server, and a missing binary must fail loudly there.
    raise RuntimeError("tests/cluster need etcd 3.4 at /usr/bin/etcd: apt-get install etcd-server")


def _running_etcd(folder: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A 3-member etcd of the test's own (a module whose tests kill no etcd member may share
    one: ``module_etcd_cluster``)."""
    yield from _running_etcd(tmp_path / "etcd")


@pytest.fixture(scope="module")
def module_etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One 3-member etcd for a whole module (about 3 s saved per test). A module takes it as
    its ``etcd_cluster`` when its tests kill no etcd member and each test's site has a network
    key, so a prefix, of its own."""
    yield from _running_etcd(tmp_path_factory.mktemp("etcd"))


@pytest.fixture
async def etcd(etcd_cluster: EtcdCluster) -> AsyncIterator[Any]:
    """An aetcd client on ``etcd_cluster`` (whichever that is in the module)."""
    async with etcd_client(etcd_cluster) as client:
        yield client


@pytest.fixture(autouse=True)
def grpc_poller_ends_with_its_channels() -> Iterator[None]:
    """grpc.aio runs a poller thread while any channel object lives, and its channels sit in
    reference cycles: collect them after each test, so the root conftest's check that no thread
    outlives a test still catches a channel left open, without tripping on closed ones. (After a
    test that failed, pytest keeps its traceback and so its channels: the thread check then
    reports an error too, after the failure itself.)"""
    yield
    for _ in range(50):
        gc.collect()
        if not any(t.name.endswith("(_poll_wrapper)") for t in threading.enumerate()):
            return
        time.sleep(0.1)
