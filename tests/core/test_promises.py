"""Promises that had no test of their own, at the service level and below (fast, no sockets):
lease ids, the expiry event, reservations in chunks, the seats held after a restart, and the
clock tolerances at their edges. The durability promises that need a real process and disk are
in tests/durability/test_durable_promises.py."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key

from lanlic.core import borrowing, pool
from lanlic.core.clock import WALL_TOLERANCE, WallGuard
from lanlic.core.lending import Durable
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.pool import Granted, Holder, SeatPool
from lanlic.core.service import LicenseService, ServiceConfig, Session
from lanlic.errors import BorrowedFileError
from lanlic.proto import messages as m
from lanlic.store import Store

LEASE = 60.0
WALL = 1_800_000_000.0

# ------------------------------------------------------------------------------ lease ids


def test_lease_ids_are_128_bits_from_the_csprng(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[int] = []
    real = secrets.token_bytes

    def token_bytes(n: int) -> bytes:
        drawn.append(n)
        return real(n)

    monkeypatch.setattr(pool.secrets, "token_bytes", token_bytes)
    ids = pool._LeaseIds()
    got = [ids() for _ in range(2048)]
    assert drawn == [4096] * 8  # 256 ids of 16 bytes per draw, every byte used, nothing else
    ids.reset()  # what a forked child does: the rest of the buffer is thrown away
    ids()
    assert drawn == [4096] * 9
    assert all(len(x) == 16 for x in got) and len(set(got)) == len(got)
    # Every one of the 128 bits varies: set in about half the ids (a fixed or biased bit
    # would fall outside these bounds; the chance of a false alarm is below 1e-20).
    for bit in range(128):
        ones = sum((int.from_bytes(x, "big") >> bit) & 1 for x in got)
        assert 700 < ones < 1350, (bit, ones)
    # the restart guard's ids take their random part from the same buffer
    draw = SeatPool([ProductEntitlement("cad", seats=1)]).random_bytes
    parts = [draw(4) for _ in range(64)]
    assert all(len(x) == 4 for x in parts) and len(set(parts)) > 60


def test_a_forked_child_draws_fresh_lease_ids() -> None:
    """The child must not hand out the ids left in the parent's buffer."""
    ids = pool._lease_ids
    ids()  # a buffer is drawn and partly used
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write, b"".join(ids() for _ in range(4)))
        finally:
            os._exit(0)
    os.close(write)
    child = b""
    while chunk := os.read(read, 64):
        child += chunk
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(ids() for _ in range(4))
    assert len(child) == 64
    assert child != parent
    child_ids = {child[i : i + 16] for i in range(0, 64, 16)}
    assert not child_ids & {parent[i : i + 16] for i in range(0, 64, 16)}


def test_a_pool_uses_the_process_lease_ids_by_default() -> None:
    p = SeatPool([ProductEntitlement("cad", seats=2)])
    lease = p.checkout("cad", "", b"c", Holder("u", "h"), 0.0)
    assert isinstance(lease, Granted) and len(lease.lease.id) == 16


# ------------------------------------------------------------------------------ a service site


PRODUCTS = (
    ProductEntitlement("cad", seats=16),
    ProductEntitlement("sim", seats=3),
)


class Site:
    """A service on a store, started the way the server starts it (``load_store``); the store
    thread is played by ``apply``."""

    def __init__(self, path: Path, vendor: Ed25519PrivateKey, server_key: Ed25519PrivateKey):
        self.store = Store(path)
        self.events: list[tuple[str, str, str, str, str]] = []
        self.service = LicenseService(
            make_key(vendor, PRODUCTS),
            server_key,
            ServiceConfig(lease_seconds=LEASE, heartbeat_seconds=LEASE / 3),
            on_event=self.events.append,
        )
        self.service.desk.load(self.store, WALL)
        state = self.store.restart_state()
        self.epoch = state.epoch
        self.held = self.service.guard.start(state, 0.0)
        self.writes: list[dict[str, int]] = []
        self.now = 0.0
        self.service.clock = lambda: (self.now, WALL)

    def session(self, client: bytes, user: str = "ann") -> Session:
        s = Session()
        s.client_id, s.holder, s.version = client, Holder(user, "ws-1", "app", "1"), 1
        return s

    def apply(self, durable: Durable) -> m.Message:
        real = self.store.raise_reservations

        def counted(seats: dict[str, int]) -> None:
            self.writes.append(dict(seats))
            real(seats)

        self.store.raise_reservations = counted  # type: ignore[method-assign]
        try:
            try:
                value = durable.write(self.store)
            except Exception as exc:
                return durable.abort(exc)
            return durable.commit(value)
        finally:
            del self.store.raise_reservations

    def request(self, session: Session, msg: m.Message, now: float = 0.0) -> m.Message:
        self.now = now
        reply = self.service.handle(session, msg, now, WALL)
        if reply.message is not None:
            return reply.message
        assert reply.durable is not None
        return self.apply(reply.durable)

    def checkout(self, session: Session, product: str = "cad", now: float = 0.0) -> Any:
        return self.request(session, m.Checkout(1, product), now)


@pytest.fixture
def server_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def open_site(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> Iterator[Callable[[], Site]]:
    """``open_site()``: a Site on the test's database; its store is closed after the test (a
    Site is a reference cycle: left open, its connection would warn in a later test, when the
    collector gets to it)."""
    sites: list[Site] = []

    def start() -> Site:
        sites.append(Site(tmp_path / "lanlic.db", vendor_key, server_key))
        return sites[-1]

    yield start
    for s in sites:
        s.store.close()


@pytest.fixture
def site(open_site: Callable[[], Site]) -> Site:
    return open_site()


# ------------------------------------------------------------------------------ expiry


def test_a_lease_that_runs_out_is_an_expiry_in_the_history(site: Site) -> None:
    granted = site.checkout(site.session(b"c" * 16))
    assert isinstance(granted, m.Granted)
    site.events.clear()
    assert site.service.expire(LEASE - 0.001) == []
    assert site.events == []
    [lease] = site.service.expire(LEASE)
    assert lease.id == granted.lease
    assert site.events == [("expiry", "cad", "ann", "ws-1", "")]
    assert site.service.pool.in_use("cad") == 0


def test_leases_freed_in_passing_are_expiries_in_the_history(site: Site) -> None:
    """A full product's dead leases are freed by the next checkout, borrow or restart check
    before the sweep gets to them: each is still an expiry in the history, and its client is
    forgotten when nothing else holds it (found by the gate's mutation run: such leases left no
    trace but the new checkout)."""
    dead = site.session(b"d" * 16, "dan")
    for _ in range(3):
        assert isinstance(site.checkout(dead, "sim"), m.Granted)
    site.events.clear()
    other = site.session(b"o" * 16, "ola")
    assert isinstance(site.checkout(other, "sim", now=LEASE + 1), m.Granted)
    expiries = [e for e in site.events if e[0] == "expiry"]
    assert expiries == [("expiry", "sim", "dan", "ws-1", "")] * 3, site.events
    assert [e[0] for e in site.events if e[0] != "expiry"] == ["checkout"]
    assert site.service.pool.in_use("sim") == 1
    assert site.service.expire(LEASE + 2) == []  # the sweep has nothing left to tell
    assert [e[0] for e in site.events].count("expiry") == 3


# ------------------------------------------------------------------------------ reservations


def test_reservations_rise_in_chunks_of_an_eighth_of_the_seats(site: Site) -> None:
    """SPEC 13 rule 1: 16 seats rise 2 at a time (8 writes for 16 checkouts); 3 seats rise one
    at a time (an eighth of 3 rounds up to one). Each grant waits for its write."""
    s = site.session(b"c" * 16)
    for n in range(1, 17):
        assert isinstance(site.checkout(s), m.Granted), n
        assert site.store.reservations()["cad"] >= n  # durable before the yes
    assert site.writes == [{"cad": n} for n in range(2, 17, 2)]
    site.writes.clear()
    for _ in range(3):
        assert isinstance(site.checkout(s, "sim"), m.Granted)
    assert site.writes == [{"sim": 1}, {"sim": 2}, {"sim": 3}]
    assert isinstance(site.checkout(s, "sim"), m.Error)  # full: nothing to reserve
    assert site.writes == [{"sim": 1}, {"sim": 2}, {"sim": 3}]


def test_a_grant_waits_for_its_reservation_write(site: Site) -> None:
    s = site.session(b"c" * 16)
    reply = site.service.handle(s, m.Checkout(1, "cad"), 0.0, WALL)
    assert reply.message is None and reply.durable is not None  # no yes before the write
    assert site.service.pool.in_use("cad") == 0
    failed = reply.durable.abort(OSError("disk full"))
    assert isinstance(failed, m.Error)
    assert site.service.pool.in_use("cad") == 0 and site.store.reservations() == {}


# ------------------------------------------------------------------------------ after a restart


def test_seats_held_after_a_restart_are_reclaimed_and_the_rest_return_to_the_pool(
    open_site: Callable[[], Site],
) -> None:
    first = open_site()
    ann, bob = first.session(b"a" * 16, "ann"), first.session(b"b" * 16, "bob")
    bobs = first.checkout(bob).lease
    # the last batch wrote bob's lease with its owner; ann's two were granted after it
    guard = first.service.guard
    batch = guard.snapshot()
    assert [(r.lease_id, r.owner) for r in batch.added] == [(bobs, b"b" * 16)]
    first.store.write_batch(batch)
    guard.batch_written(batch)
    leases = [first.checkout(ann).lease, first.checkout(ann).lease, bobs]
    reserved = first.store.reservations()["cad"]
    assert reserved >= 3
    first.store.close()  # the server dies: nothing more reaches the disk

    again = open_site()
    assert again.epoch == first.epoch + 1
    assert again.held == {"cad": reserved}
    pool_ = again.service.pool
    assert pool_.free("cad") == 16 - reserved
    ann2, bob2, eve = (again.session(c, u) for c, u in
                       ((b"a" * 16, "ann"), (b"b" * 16, "bob"), (b"e" * 16, "eve")))  # fmt: skip

    def reclaim(s: Session, *ids: bytes) -> m.Reclaimed:
        seats = [{"lease": x, "product": "cad", "version": "1"} for x in ids]
        reply = again.request(s, m.Reclaim(7, seats), now=1.0)
        assert isinstance(reply, m.Reclaimed) and reply.epoch == again.epoch
        return reply

    for lease_id in leases:  # written to bob, or granted to ann after it: nobody else's
        stolen = reclaim(eve, lease_id)
        assert stolen.leases == [] and [x.code for x in stolen.lost] == ["lease_unknown"]
    assert reclaim(ann2, leases[0], leases[1]).leases == leases[:2]
    assert reclaim(bob2, leases[2]).leases == [leases[2]]
    assert (pool_.in_use("cad"), pool_.held("cad")) == (3, reserved - 3)
    assert [pool_.lease(x).owner for x in leases] == [b"a" * 16, b"a" * 16, b"b" * 16]  # type: ignore[union-attr]
    # a renew is taken as a reclaim (SPEC 13): of a lease this server never granted, refused
    renew = again.request(ann2, m.Renew(8, [b"x" * 16]), now=2.0)
    assert isinstance(renew, m.Renewed) and [x.code for x in renew.lost] == ["lease_unknown"]
    # the window ends one lease period after the start: unclaimed held seats return
    assert again.service.guard.close_window(LEASE - 0.001) == {}
    freed = again.service.guard.close_window(LEASE)
    assert freed == ({"cad": reserved - 3} if reserved > 3 else {})
    assert (pool_.held("cad"), pool_.free("cad")) == (0, 13)
    pool_.check_invariant()


# ------------------------------------------------------------------------------ clock tolerances


def laptop_check(now: float, last_seen: float | None = None) -> borrowing.FileCheck:
    return borrowing.FileCheck(
        trusted_server_keys=set(), container_key=b"", machine_fp="", now=now,
        last_seen=last_seen, returned=(),
    )  # fmt: skip


@pytest.fixture
def borrowed() -> tuple[bytes, bytes, borrowing.FileCheck]:
    server = Ed25519PrivateKey.generate()
    container = Ed25519PrivateKey.generate()
    from lanlic.core import signing

    server_pub = signing.public_bytes(server.public_key())
    container_pub = signing.public_bytes(container.public_key())
    file = borrowing.issue_borrowed_file(
        server, borrow_id="b-1", product="cad", versions=None, kind="act",
        server_id="sha256:" + "0" * 32, customer="ACME", container_key=container_pub,
        machine_fp="mfp:aaaa", user="ann", host="lt", start=WALL, end=WALL + 86400,
    )  # fmt: skip
    check = borrowing.FileCheck(
        trusted_server_keys={server_pub}, container_key=container_pub, machine_fp="mfp:aaaa",
        now=WALL, last_seen=None, returned=(),
    )  # fmt: skip
    return file, server_pub, check


def test_a_laptop_clock_ten_minutes_behind_the_server_still_accepts_a_new_file(
    borrowed: tuple[bytes, bytes, borrowing.FileCheck],
) -> None:
    import dataclasses

    file, _, check = borrowed
    assert borrowing.CLOCK_TOLERANCE == 600.0
    edge = dataclasses.replace(check, now=WALL - 600)
    assert borrowing.verify_borrowed_file(file, edge).borrow_id == "b-1"
    with pytest.raises(BorrowedFileError) as e:
        borrowing.verify_borrowed_file(file, dataclasses.replace(check, now=WALL - 600.5))
    assert e.value.code == "file_not_yet_valid"


def test_a_laptop_clock_set_back_ten_minutes_is_believed_and_more_is_not(
    borrowed: tuple[bytes, bytes, borrowing.FileCheck],
) -> None:
    import dataclasses

    file, _, check = borrowed
    seen = WALL + 3600
    ok = dataclasses.replace(check, now=seen - 600, last_seen=seen)
    assert borrowing.verify_borrowed_file(file, ok).borrow_id == "b-1"
    with pytest.raises(BorrowedFileError) as e:
        borrowing.verify_borrowed_file(file, dataclasses.replace(ok, now=seen - 600.5))
    assert e.value.code == "clock_set_back"


def test_the_server_believes_its_wall_clock_within_five_minutes_of_the_anchor() -> None:
    assert WALL_TOLERANCE == 300.0
    for skew in (300.0, -300.0):
        guard = WallGuard()
        assert guard.now(0.0, WALL) == WALL  # the anchor
        assert guard.now(10.0, WALL + 10 + skew) == WALL + 10 + skew  # believed at the edge
        assert not guard.suspect
    for skew in (300.5, -300.5):
        guard = WallGuard()
        guard.now(0.0, WALL)
        assert guard.now(10.0, WALL + 10 + skew) == WALL + 10  # the anchored time instead
        assert guard.suspect and guard.skew == skew
