"""Fixtures for tests on a real etcd cluster (Debian's etcd-server: apt-get install etcd-server)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_cluster import ETCD, EtcdCluster

if shutil.which("etcd") is None and not Path(ETCD).exists():
    # Not a skip: CI installs etcd-server, and a missing binary must fail loudly there.
    raise RuntimeError("tests/cluster need etcd 3.4 at /usr/bin/etcd: apt-get install etcd-server")


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path / "etcd")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
