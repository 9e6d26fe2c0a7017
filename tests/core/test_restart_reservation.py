"""Issue 12.1: the durable reservation must never fall below the floating seats in use, at any
instant a crash could happen, through the real server's async store path (writes delayed and
interleaved with checkouts)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key
from restart_rig import Rig, disk_reservations

from lanlic.core.netkey import ProductEntitlement
from lanlic.proto import messages as m

CLIENTS = [bytes([i]) * 16 for i in range(1, 9)]


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_a_lowering_batch_cannot_overwrite_a_raise_made_while_it_waited_for_the_disk(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, loop: asyncio.AbstractEventLoop
) -> None:
    key = make_key(vendor_key, (ProductEntitlement("cad", seats=8),))
    now = [100.0]
    rig = Rig(loop, tmp_path / "lanlic.db", key, Ed25519PrivateKey.generate(), 60.0, lambda: now[0])
    rig.boot()
    violations: list[str] = []

    def check() -> None:
        # After every store write: what a crash now would leave must cover the seats in use.
        on_disk = disk_reservations(rig.db_path).get("cad", 0)
        in_use = rig.service.pool.in_use("cad") + rig.service.pool.held("cad")
        if on_disk < in_use:
            violations.append(f"{on_disk} on disk < {in_use} in use")

    rig.executor.after_each = check
    for c in CLIENTS:
        rig.hello(c)
    leases: list[bytes] = []

    def checkout(c: bytes) -> None:
        reply = rig.ask(c, m.Checkout(2, "cad"))
        if reply is None:
            rig.drain()
            reply = rig.conns[c].inbox.pop()
        assert isinstance(reply, m.Granted), reply
        leases.append(reply.lease)
        check()

    for c in CLIENTS[:6]:
        checkout(c)
    rig.start_batch()
    rig.drain()
    for c, lease in zip(CLIENTS[:5], leases[:5], strict=True):
        assert isinstance(rig.ask(c, m.Release(3, [lease])), m.Released)
    rig.start_batch()  # records the releases; the peak since the last batch is still 6
    rig.drain()
    checkout(CLIENTS[0])
    assert isinstance(rig.ask(CLIENTS[5], m.Release(3, [leases[5]])), m.Released)
    # This batch lowers the reservation (peak 2, to a chunk above: 3) and waits for the disk ...
    rig.start_batch()
    # ... while three checkouts come in: the third must raise the reservation again.
    granted = []
    for c in CLIENTS[1:4]:
        reply = rig.ask(c, m.Checkout(2, "cad"))
        if reply is not None:
            granted.append(reply)
    rig.drain()
    for c in CLIENTS[1:4]:
        granted.extend(rig.conns[c].inbox)
    assert all(isinstance(g, m.Granted) for g in granted) and len(granted) == 3, granted
    check()
    assert rig.service.pool.in_use("cad") == 4
    assert disk_reservations(rig.db_path)["cad"] >= 4
    assert not violations, violations
    rig.stop()
