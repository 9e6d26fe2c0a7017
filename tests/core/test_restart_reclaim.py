"""Issue 12.2, 12.3 and SPEC issue 13.3, through the real server's async store path
(``restart_rig``): who may take a seat back after a restart, how many seats a restart holds,
and a renew after a restart."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key
from restart_rig import Rig

from lanlic.core.netkey import NetworkKey, ProductEntitlement
from lanlic.proto import messages as m

ALICE, BOB, MALLORY = b"\x01" * 16, b"\x02" * 16, b"\xee" * 16
SERVER_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def life(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, loop: asyncio.AbstractEventLoop
) -> Iterator[Callable[..., Rig]]:
    """``life(seats)``: start a server on the same data folder (once per server life)."""
    now = [100.0]
    lives: list[Rig] = []
    keys: dict[int, NetworkKey] = {}

    def start(seats: int = 1) -> Rig:
        key = keys.setdefault(seats, make_key(vendor_key, (ProductEntitlement("cad", seats),)))
        rig = Rig(loop, tmp_path / "lanlic.db", key, SERVER_KEY, 60.0, lambda: now[0])
        rig.boot()
        for c in (ALICE, BOB, MALLORY):
            rig.hello(c)
        lives.append(rig)
        return rig

    yield start
    if lives:
        lives[-1].crash()


def checkout(rig: Rig, client: bytes) -> m.Message:
    reply = rig.ask(client, m.Checkout(2, "cad"))
    if reply is None:
        rig.drain()
        reply = rig.conns[client].inbox.pop()
    return reply


def lease_of(reply: m.Message) -> bytes:
    assert isinstance(reply, m.Granted), reply
    return reply.lease


def batch(rig: Rig) -> None:
    rig.start_batch()
    rig.drain()


def reclaim(rig: Rig, client: bytes, lease: bytes) -> m.Reclaimed:
    reply = rig.ask(client, m.Reclaim(3, [{"lease": lease, "product": "cad", "version": ""}]))
    assert isinstance(reply, m.Reclaimed)
    return reply


# ---------------------------------------------------------------------- 12.2 forged reclaims


def test_a_reclaim_with_a_made_up_lease_id_takes_no_seat_held_for_a_real_holder(
    life: Callable[..., Rig],
) -> None:
    rig = life(1)
    alices = lease_of(checkout(rig, ALICE))
    batch(rig)
    rig.crash()
    rig = life(1)
    forged = reclaim(rig, MALLORY, os.urandom(16))
    assert forged.leases == [] and [x.code for x in forged.lost] == ["lease_unknown"]
    assert reclaim(rig, ALICE, alices).leases == [alices]


def test_a_lease_granted_after_the_last_batch_is_reclaimed_only_by_its_own_client(
    life: Callable[..., Rig],
) -> None:
    rig = life(1)
    batch(rig)
    alices = lease_of(checkout(rig, ALICE))  # no batch records it before the crash
    rig.crash()
    rig = life(1)
    stolen = reclaim(rig, MALLORY, alices)  # the id leaked: another client id asks for it
    assert stolen.leases == [] and [x.code for x in stolen.lost] == ["lease_unknown"]
    assert reclaim(rig, ALICE, alices).leases == [alices]


def test_a_lease_released_before_a_recorded_batch_cannot_be_reclaimed(
    life: Callable[..., Rig],
) -> None:
    rig = life(1)
    mallorys = lease_of(checkout(rig, MALLORY))
    assert isinstance(rig.ask(MALLORY, m.Release(4, [mallorys])), m.Released)
    bobs = lease_of(checkout(rig, BOB))
    batch(rig)  # records Bob's lease, and that Mallory's ended
    rig.crash()
    rig = life(1)
    again = reclaim(rig, MALLORY, mallorys)
    assert again.leases == [] and [x.code for x in again.lost] == ["lease_unknown"]
    assert reclaim(rig, BOB, bobs).leases == [bobs]


def test_a_lease_reclaimed_under_another_product_is_refused(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, loop: asyncio.AbstractEventLoop
) -> None:
    key = make_key(vendor_key, (ProductEntitlement("cad", 1), ProductEntitlement("cam", 1)))
    now = [100.0]
    rig = Rig(loop, tmp_path / "lanlic.db", key, SERVER_KEY, 60.0, lambda: now[0])
    rig.boot()
    rig.hello(ALICE)
    rig.ask(ALICE, m.Checkout(2, "cad"))
    rig.drain()
    lease = lease_of(rig.conns[ALICE].inbox.pop())
    rig.crash()
    rig = Rig(loop, tmp_path / "lanlic.db", key, SERVER_KEY, 60.0, lambda: now[0])
    rig.boot()
    rig.hello(ALICE)
    reply = rig.ask(ALICE, m.Reclaim(3, [{"lease": lease, "product": "cam", "version": ""}]))
    assert isinstance(reply, m.Reclaimed) and reply.leases == []
    reply = rig.ask(ALICE, m.Reclaim(3, [{"lease": lease, "product": "cad", "version": ""}]))
    assert isinstance(reply, m.Reclaimed) and reply.leases == [lease]
    rig.crash()


# ------------------------------------------------------------------ 12.3 seats held for nobody


def test_a_clean_restart_holds_no_seat_when_every_lease_was_released(
    life: Callable[..., Rig],
) -> None:
    rig = life(1)
    lease = lease_of(checkout(rig, ALICE))
    assert isinstance(rig.ask(ALICE, m.Release(4, [lease])), m.Released)
    rig.stop()
    rig = life(1)
    assert rig.service.pool.held("cad") == 0
    assert isinstance(checkout(rig, BOB), m.Granted)


def test_a_clean_restart_holds_exactly_the_leases_still_out_until_each_is_reclaimed(
    life: Callable[..., Rig],
) -> None:
    rig = life(8)
    leases = {c: lease_of(checkout(rig, c)) for c in (ALICE, BOB, MALLORY)}
    for c in (BOB, MALLORY):
        assert isinstance(rig.ask(c, m.Release(4, [leases[c]])), m.Released)
    rig.stop()  # Alice's lease is out; the reservation on disk was 3
    rig = life(8)
    assert rig.service.pool.held("cad") == 1
    cad = rig.service.status(1, 100.0, 1.8e9).products[0]
    assert (cad["held"], cad["in_use"], cad["free"]) == (1, 0, 7)
    assert cad["held_until"] == pytest.approx(1.8e9 + 60.0)
    assert reclaim(rig, ALICE, leases[ALICE]).leases == [leases[ALICE]]
    assert rig.service.pool.held("cad") == 0  # its hold ended with the reclaim
    cad = rig.service.status(1, 100.0, 1.8e9).products[0]
    assert (cad["held"], cad["held_until"], cad["in_use"], cad["free"]) == (0, None, 1, 7)


def test_after_a_crash_no_more_seats_are_held_than_the_reservation_on_disk(
    life: Callable[..., Rig],
) -> None:
    rig = life(8)
    for c in (ALICE, BOB):
        checkout(rig, c)
    batch(rig)
    rig.crash()
    rig = life(8)
    assert 2 <= rig.service.pool.held("cad") <= 3  # the two leases, at most a chunk more


# --------------------------------------------------------- SPEC 13.3: a renew after a restart


def test_a_renew_after_a_restart_takes_the_lease_back_as_its_reclaim(
    life: Callable[..., Rig],
) -> None:
    rig = life(1)
    recorded = lease_of(checkout(rig, ALICE))
    batch(rig)
    rig.crash()
    rig = life(1)
    reply = rig.ask(ALICE, m.Renew(5, [recorded]))
    assert isinstance(reply, m.Renewed)
    assert (reply.leases, reply.lost) == ([recorded], [])
    lease = rig.service.pool.lease(recorded)
    assert lease is not None and lease.owner == ALICE
    forged = rig.ask(MALLORY, m.Renew(6, [os.urandom(16)]))
    assert isinstance(forged, m.Renewed) and [x.code for x in forged.lost] == ["lease_unknown"]


# ------------------------------------------------------------- what each refusal is called


def test_reclaim_refusals_name_their_reason(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, loop: asyncio.AbstractEventLoop
) -> None:
    key = make_key(
        vendor_key,
        (ProductEntitlement("cad", 2, versions=("10", "12")), ProductEntitlement("cam", 1)),
    )
    now = [100.0]
    rig = Rig(loop, tmp_path / "lanlic.db", key, SERVER_KEY, 60.0, lambda: now[0])
    rig.boot()
    for c in (ALICE, BOB):
        rig.hello(c)
    rig.ask(ALICE, m.Checkout(2, "cad", "11"))
    rig.drain()
    lease = lease_of(rig.conns[ALICE].inbox.pop())
    rig.crash()
    rig = Rig(loop, tmp_path / "lanlic.db", key, SERVER_KEY, 60.0, lambda: now[0])
    rig.boot()
    for c in (ALICE, BOB):
        rig.hello(c)

    def ask(client: bytes, product: str, version: str = "11", lease_id: bytes = lease) -> list[str]:
        item = {"lease": lease_id, "product": product, "version": version}
        reply = rig.ask(client, m.Reclaim(3, [item]))
        assert isinstance(reply, m.Reclaimed)
        return [x.code for x in reply.lost] or ["ok" for _ in reply.leases]

    assert ask(ALICE, "nope") == ["unknown_product"]
    assert ask(ALICE, "cad", "13") == ["version_not_licensed"]
    assert ask(BOB, "cad") == ["lease_unknown"]
    assert rig.service.pool.held("cad") == 1  # refusals take nothing
    assert ask(ALICE, "cad") == ["ok"]
    assert rig.service.pool.held("cad") == 0
    assert ask(ALICE, "cad") == ["ok"]  # a retry: the same lease, no second seat
    assert rig.service.pool.in_use("cad") == 1
    assert ask(BOB, "cad") == ["lease_unknown"]  # held now, and Alice's
    assert isinstance(rig.ask(ALICE, m.Release(4, [lease])), m.Released)
    assert ask(ALICE, "cad") == ["lease_unknown"]  # taken back, then ended: never again
    rig.crash()


def test_once_a_window_is_over_the_older_epochs_leases_are_never_taken_back(
    life: Callable[..., Rig],
) -> None:
    rig = life(2)
    alices = lease_of(checkout(rig, ALICE))  # no batch records it: only its tag can prove it
    rig.crash()
    rig = life(2)
    assert rig.service.pool.held("cad") == 1
    freed = rig.service.guard.close_window(rig.clock() + 61.0)  # nobody came back in time
    assert freed == {"cad": 1}
    batch(rig)  # closes epoch 1 on disk
    rig.crash()
    rig = life(2)
    late = reclaim(rig, ALICE, alices)
    assert late.leases == [] and [x.code for x in late.lost] == ["lease_unknown"]
