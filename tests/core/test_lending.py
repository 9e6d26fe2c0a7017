"""The borrowing desk with a real SQLite store, driven without sockets: each Durable is written
to the store by hand (as the server's store thread would) and then committed or aborted."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key

from lanlic.core import borrowing, signing
from lanlic.core.lending import Durable
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.policy import parse
from lanlic.core.pool import Denied, Granted, Holder
from lanlic.core.service import LicenseService, Session
from lanlic.proto import messages as m
from lanlic.store import Store

DAY = 86400.0
T0 = 1_800_000_000.0  # wall clock, UTC seconds
PRODUCTS = (
    ProductEntitlement("cad", seats=3, borrowable=2, max_borrow_days=14, versions=("10", "16")),
    ProductEntitlement("cam", seats=1, borrowable=0, addon=True),
)


class Laptop:
    """A container made the way a client makes one, and its signed requests."""

    def __init__(self, kind: str = "act", machine: str = "mfp:aaaa") -> None:
        self.key = Ed25519PrivateKey.generate()
        self.pub = signing.public_bytes(self.key.public_key())
        self.kind = kind
        self.machine = machine if kind == "act" else ""
        self._n = 0

    def enroll_msg(self) -> m.Enroll:
        req = borrowing.make_enrollment_request(
            self.key, self.kind, self.machine, "ann", "lt-1", T0
        )  # type: ignore[arg-type]
        return m.Enroll(1, req)

    def borrow_msg(
        self, server_id: str, product: str = "cad", days: float = 7, rid: bytes | None = None
    ) -> m.Borrow:
        rid = rid or os.urandom(16)
        proof = signing.sign(
            self.key,
            signing.DOMAIN_CONTAINER_REQUEST,
            borrowing.container_proof_payload("borrow", server_id, [rid, product, "16", days]),
        )
        return m.Borrow(2, rid, product, days, self.pub, proof, version="16")

    def return_msg(self, server_id: str, borrow_id: str) -> m.Return:
        proof = signing.sign(
            self.key,
            signing.DOMAIN_CONTAINER_REQUEST,
            borrowing.container_proof_payload("return", server_id, [borrow_id]),
        )
        return m.Return(3, borrow_id, self.pub, proof)


class Site:
    """A service and its store, with the store thread played by ``apply``."""

    opened: ClassVar[list[Store]] = []
    """Every store a Site opened, closed after each test (close_sites)."""

    def __init__(self, path: Path, vendor: Ed25519PrivateKey, server_key: Ed25519PrivateKey,
                 kind: str = "act") -> None:  # fmt: skip
        self.store = Store(path)
        Site.opened.append(self.store)
        self.service = LicenseService(
            make_key(vendor, PRODUCTS, borrow_kind=kind),  # type: ignore[arg-type]
            server_key,
        )
        self.warnings = self.service.desk.load(self.store, T0)
        self.session = Session()
        self.now = 0.0

    @property
    def server_id(self) -> str:
        return self.service.server_id

    def apply(self, result: Any) -> m.Message:
        if not isinstance(result, Durable):
            return result  # type: ignore[no-any-return]
        try:
            value = result.write(self.store)
        except Exception as exc:
            return result.abort(exc)
        return result.commit(value)

    def request(self, msg: m.Message, wall: float = T0) -> m.Message:
        reply = self.service.handle(self.session, msg, self.now, wall)
        if reply.message is not None:
            return reply.message
        assert reply.durable is not None
        return self.apply(reply.durable)

    def expire(self, wall: float) -> None:
        for d in self.service.desk.due(wall):
            self.apply(d)

    def checkout(self, product: str = "cad") -> Granted | Any:
        return self.service.pool.checkout(product, "16", b"c" * 16, Holder("u", "h"), self.now)


@pytest.fixture(autouse=True)
def close_sites() -> Iterator[None]:
    """Close the stores the test's sites opened: an unclosed sqlite3 connection is a leak
    (Python 3.13 warns of it)."""
    yield
    while Site.opened:
        Site.opened.pop().close()


@pytest.fixture
def server_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def site(tmp_path: Path, vendor_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey) -> Site:
    return Site(tmp_path / "lanlic.db", vendor_key, server_key)


def enrolled(site: Site, laptop: Laptop | None = None) -> Laptop:
    laptop = laptop or Laptop()
    reply = site.request(laptop.enroll_msg())
    assert isinstance(reply, m.Enrolled), reply
    return laptop


def test_enrollment_is_answered_with_a_signed_response(site: Site) -> None:
    laptop = Laptop()
    reply = site.request(laptop.enroll_msg())
    assert isinstance(reply, m.Enrolled)
    resp = borrowing.read_enrollment_response(reply.response, laptop.pub)
    assert resp.server_key == site.service.server_pub
    assert site.store.enrollment(signing.fingerprint(laptop.pub)) is not None


def test_borrow_without_enrollment_says_how_to_enroll(site: Site) -> None:
    reply = site.request(Laptop().borrow_msg(site.server_id))
    assert isinstance(reply, m.Error) and reply.code == "not_enrolled"
    assert "lanlic enroll" in reply.message


def test_borrow_until_borrowable_seats_are_gone_floating_still_gets_the_rest(site: Site) -> None:
    a, b, c = enrolled(site), enrolled(site), enrolled(site)
    for laptop in (a, b):
        reply = site.request(laptop.borrow_msg(site.server_id))
        assert isinstance(reply, m.Borrowed), reply
    reply = site.request(c.borrow_msg(site.server_id))
    assert isinstance(reply, m.Error) and reply.code == "no_borrowable_seat"
    pool = site.service.pool
    assert (pool.borrowed("cad"), pool.free("cad")) == (2, 1)
    assert isinstance(site.checkout(), Granted)  # the third seat still floats
    assert site.checkout().code == "no_seat"  # type: ignore[union-attr]
    pool.check_invariant()


def test_borrow_refusals(site: Site, tmp_path: Path, vendor_key: Ed25519PrivateKey) -> None:
    laptop = enrolled(site)
    too_long = site.request(laptop.borrow_msg(site.server_id, days=15))
    assert isinstance(too_long, m.Error) and too_long.code == "borrow_too_long"
    not_borrowable = site.request(laptop.borrow_msg(site.server_id, product="cam"))
    assert isinstance(not_borrowable, m.Error) and not_borrowable.code == "not_borrowable"
    forged = laptop.borrow_msg(site.server_id)
    forged = m.Borrow(2, forged.request_id, "cad", 14, laptop.pub, forged.proof, "16")
    bad = site.request(forged)
    assert isinstance(bad, m.Error) and bad.code == "bad_proof"
    other_server = site.request(laptop.borrow_msg("sha256:" + "0" * 32))
    assert isinstance(other_server, m.Error) and other_server.code == "bad_proof"
    assert site.service.pool.borrowed("cad") == 0


def test_a_key_of_one_kind_refuses_the_other(site: Site) -> None:
    reply = site.request(Laptop(kind="key").enroll_msg())
    assert isinstance(reply, m.Error) and reply.code == "wrong_borrow_kind"


def test_a_retried_borrow_gets_the_same_borrow_not_a_second_seat(site: Site) -> None:
    laptop = enrolled(site)
    rid = os.urandom(16)
    first = site.request(laptop.borrow_msg(site.server_id, rid=rid))
    again = site.request(laptop.borrow_msg(site.server_id, rid=rid))
    assert isinstance(first, m.Borrowed) and isinstance(again, m.Borrowed)
    assert (first.borrow_id, first.file) == (again.borrow_id, again.file)
    assert site.service.pool.borrowed("cad") == 1


def test_borrowed_file_is_signed_for_this_machine(site: Site) -> None:
    laptop = enrolled(site)
    reply = site.request(laptop.borrow_msg(site.server_id, days=7))
    assert isinstance(reply, m.Borrowed)
    lic = borrowing.verify_borrowed_file(
        reply.file,
        borrowing.FileCheck(
            trusted_server_keys={site.service.server_pub},
            container_key=laptop.pub,
            machine_fp=laptop.machine,
            now=T0 + DAY,
            last_seen=None,
            returned=(),
        ),
    )
    assert (lic.product, lic.start, lic.end) == ("cad", T0, T0 + 7 * DAY)
    assert lic.versions == ("10", "16") and lic.kind == "act"


def test_a_full_disk_refuses_the_borrow_and_leaves_the_pool_unchanged(site: Site) -> None:
    laptop = enrolled(site)
    # The database may not grow past its current pages: SQLite's real "database or disk is
    # full" error, as on a full disk. Fill the last free room with enrollments first.
    pages = site.store._db.execute("PRAGMA page_count").fetchone()[0]
    site.store._db.execute(f"PRAGMA max_page_count={pages}")
    for _ in range(200):
        reply = site.request(Laptop().enroll_msg())
        if isinstance(reply, m.Error):
            break
    assert isinstance(reply, m.Error) and reply.code == "store_failed"
    for _ in range(500):
        reply = site.request(laptop.borrow_msg(site.server_id))
        if isinstance(reply, m.Error):
            break
        returned = site.request(laptop.return_msg(site.server_id, reply.borrow_id))  # type: ignore[attr-defined]
        assert isinstance(returned, m.Returned)
    assert isinstance(reply, m.Error) and reply.code == "store_failed"
    assert "full" in reply.message
    assert site.service.pool.borrowed("cad") == 0
    assert len(site.service.desk.active) == 0
    site.service.pool.check_invariant()


def test_return_frees_the_seat_at_once_and_is_idempotent(site: Site) -> None:
    laptop, thief = enrolled(site), enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed)
    stolen = site.request(thief.return_msg(site.server_id, b.borrow_id))
    assert isinstance(stolen, m.Error) and stolen.code == "borrow_unknown"
    assert site.service.pool.borrowed("cad") == 1
    r = site.request(laptop.return_msg(site.server_id, b.borrow_id))
    assert isinstance(r, m.Returned) and not r.already
    assert site.service.pool.borrowed("cad") == 0
    assert site.store.borrow(b.borrow_id).state == "returned"  # type: ignore[union-attr]
    again = site.request(laptop.return_msg(site.server_id, b.borrow_id))
    assert isinstance(again, m.Returned) and again.already
    assert site.service.pool.borrowed("cad") == 0


def test_expiry_returns_the_seat_with_no_word_from_the_laptop(site: Site) -> None:
    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id, days=3))
    assert isinstance(b, m.Borrowed)
    site.expire(T0 + 3 * DAY - 1)
    assert site.service.pool.borrowed("cad") == 1
    site.expire(T0 + 3 * DAY)
    assert site.service.pool.borrowed("cad") == 0
    assert site.store.borrow(b.borrow_id).state == "expired"  # type: ignore[union-attr]


def test_borrows_survive_a_restart_and_still_expire_on_time(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    site = Site(tmp_path / "lanlic.db", vendor_key, server_key)
    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id, days=2))
    assert isinstance(b, m.Borrowed)
    site.store.close()  # the server goes away (the store is all that is left)

    again = Site(tmp_path / "lanlic.db", vendor_key, server_key)
    assert again.warnings == []
    assert again.service.pool.borrowed("cad") == 1
    assert [x["borrow_id"] for x in again.service.status(1, 0, T0).borrows] == [b.borrow_id]
    # The laptop is still enrolled: it can borrow the second borrowable seat after the restart.
    assert isinstance(again.request(laptop.borrow_msg(again.server_id)), m.Borrowed)
    again.expire(T0 + 2 * DAY)
    assert again.service.pool.borrowed("cad") == 1
    assert again.store.borrow(b.borrow_id).state == "expired"  # type: ignore[union-attr]


def test_admin_policy_lowers_but_never_raises(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    store = Store(tmp_path / "lanlic.db")
    store.set_policy("cad", 5, 3)  # asks for more seats than the key, fewer days
    store.close()
    site = Site(tmp_path / "lanlic.db", vendor_key, server_key)
    terms = site.service.desk.terms("cad")
    assert (terms.borrowable, terms.max_days) == (2, 3)
    laptop = enrolled(site)
    reply = site.request(laptop.borrow_msg(site.server_id, days=4))
    assert isinstance(reply, m.Error) and reply.code == "borrow_too_long"


# ------------------------------------------------------------------ a borrow while it is written


def utc(ts: float) -> str:
    """How the history writes a time: ISO 8601 UTC to the second."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_events(site: Site) -> list[tuple[str, str, str, str, str]]:
    events: list[tuple[str, str, str, str, str]] = []
    site.service.set_event_sink(events.append)
    return events


def test_a_borrow_in_flight_is_not_counted_as_recorded_until_its_write_commits(
    site: Site,
) -> None:
    """Between the reservation and the fsync the borrow holds its seat but is nowhere a
    recorded borrow: a retry, a return, a status listing and the expiry sweep all wait."""
    laptop = enrolled(site)
    desk = site.service.desk
    rid = os.urandom(16)
    reply = site.service.handle(site.session, laptop.borrow_msg(site.server_id, rid=rid), 0, T0)
    durable = reply.durable
    assert isinstance(durable, Durable) and reply.message is None
    assert site.service.pool.borrowed("cad") == 1  # the seat is out at once
    [active] = desk.active.values()
    assert not active.committed
    assert desk.listing() == [] and desk.next_end() is None
    assert desk.due(T0 + 100 * DAY) == []
    retry = site.request(laptop.borrow_msg(site.server_id, rid=rid))
    assert isinstance(retry, m.Error) and retry.code == "borrow_refused"
    assert "still being recorded" in retry.message
    early_return = site.request(laptop.return_msg(site.server_id, active.borrow_id))
    assert isinstance(early_return, m.Error) and early_return.code == "borrow_refused"
    assert site.store.borrow(active.borrow_id) is None

    done = site.apply(durable)
    assert isinstance(done, m.Borrowed) and done.borrow_id == active.borrow_id
    assert active.committed
    assert [b["borrow_id"] for b in desk.listing()] == [active.borrow_id]
    assert desk.next_end() == T0 + 7 * DAY
    again = site.request(laptop.borrow_msg(site.server_id, rid=rid))
    assert isinstance(again, m.Borrowed) and again.file == done.file


def test_a_borrow_whose_write_fails_gives_its_seat_back_and_can_be_tried_again(
    site: Site,
) -> None:
    laptop = enrolled(site)
    events = with_events(site)
    rid = os.urandom(16)
    reply = site.service.handle(site.session, laptop.borrow_msg(site.server_id, rid=rid), 0, T0)
    assert reply.durable is not None
    failed = reply.durable.abort(OSError("disk full"))
    assert isinstance(failed, m.Error) and failed.code == "store_failed"
    assert "disk full" in failed.message
    assert site.service.pool.borrowed("cad") == 0
    assert site.service.desk.active == {}
    assert events[-1] == ("refusal", "cad", "ann", "lt-1", "store_failed")
    retry = site.request(laptop.borrow_msg(site.server_id, rid=rid))  # not "still recorded"
    assert isinstance(retry, m.Borrowed)
    assert site.service.pool.borrowed("cad") == 1


def test_history_events_of_enrollment_borrow_return_expiry_and_refusals(site: Site) -> None:
    events = with_events(site)
    laptop = Laptop()
    assert isinstance(site.request(laptop.enroll_msg()), m.Enrolled)
    assert events == [("enroll", "", "ann", "lt-1", "online")]
    b = site.request(laptop.borrow_msg(site.server_id, days=2))
    assert isinstance(b, m.Borrowed)
    assert events[-1] == ("borrow", "cad", "ann", "lt-1", f"{b.borrow_id} until {utc(b.end)}")
    assert b.end == T0 + 2 * DAY
    r = site.request(laptop.return_msg(site.server_id, b.borrow_id))
    assert isinstance(r, m.Returned)
    assert events[-1] == ("return", "cad", "ann", "lt-1", b.borrow_id)
    b2 = site.request(laptop.borrow_msg(site.server_id, days=1))
    assert isinstance(b2, m.Borrowed)
    site.expire(T0 + DAY)
    assert events[-1] == ("expiry_borrow", "cad", "ann", "lt-1", b2.borrow_id)
    refused = site.request(laptop.borrow_msg(site.server_id, product="cam"))
    assert isinstance(refused, m.Error)
    assert events[-1] == ("refusal", "cam", "ann", "lt-1", "not_borrowable")
    enrolled(site)
    for _ in range(2):
        site.request(laptop.borrow_msg(site.server_id))
    full = site.request(Laptop().borrow_msg(site.server_id))
    assert isinstance(full, m.Error)


def test_no_seat_to_borrow_is_refused_with_the_free_count_and_an_event(site: Site) -> None:
    laptop = enrolled(site)
    events = with_events(site)
    for _ in range(3):
        assert isinstance(site.checkout(), Granted)
    reply = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(reply, m.Error) and reply.code == "no_seat"
    assert reply == m.Error(2, "no_seat", "no seat of cad is free to borrow (0 free)")
    assert events == [("refusal", "cad", "ann", "lt-1", "no_seat")]
    assert site.service.desk.active == {}


def test_a_borrow_sweeps_a_dead_lease_for_its_seat(site: Site) -> None:
    laptop = enrolled(site)
    for _ in range(3):
        assert isinstance(site.checkout(), Granted)
    site.now = site.service.pool.lease_seconds  # every lease is dead, none swept yet
    assert isinstance(site.request(laptop.borrow_msg(site.server_id)), m.Borrowed)


def test_offline_enrollment_is_recorded_as_offline(site: Site) -> None:
    laptop = Laptop()
    msg = laptop.enroll_msg()
    reply = site.request(m.Enroll(msg.id, msg.request, via="offline"))
    assert isinstance(reply, m.Enrolled)
    rec = site.store.enrollment(signing.fingerprint(laptop.pub))
    assert rec is not None and rec.via == "offline"
    assert site.service.desk.enrollments[rec.container_fp] == rec
    odd = Laptop()
    msg = odd.enroll_msg()
    assert isinstance(site.request(m.Enroll(msg.id, msg.request, via="carrier pigeon")), m.Enrolled)
    assert site.store.enrollment(signing.fingerprint(odd.pub)).via == "online"  # type: ignore[union-attr]


def test_an_enrollment_whose_write_fails_is_not_remembered(site: Site) -> None:
    laptop = Laptop()
    reply = site.service.handle(site.session, laptop.enroll_msg(), 0, T0)
    assert reply.durable is not None
    failed = reply.durable.abort(OSError("read-only"))
    assert isinstance(failed, m.Error) and failed.code == "store_failed"
    assert failed.message == "enrollment not saved: read-only"
    assert site.service.desk.enrollments == {}
    borrow = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(borrow, m.Error) and borrow.code == "not_enrolled"


def test_a_malformed_enrollment_request_is_bad_proof(site: Site) -> None:
    reply = site.request(m.Enroll(1, b"not a request"))
    assert isinstance(reply, m.Error) and reply.code == "bad_proof"


# ------------------------------------------------------------------ reload after a restart


def test_a_restart_reloads_every_field_of_every_active_borrow(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    site = Site(tmp_path / "lanlic.db", vendor_key, server_key)
    laptops = [enrolled(site), enrolled(site, Laptop(machine="mfp:bbbb"))]
    rids = [os.urandom(16), os.urandom(16)]
    borrowed = [
        site.request(lt.borrow_msg(site.server_id, days=d, rid=r))
        for lt, d, r in zip(laptops, (3, 5), rids, strict=True)
    ]
    before = dict(site.service.desk.active)
    site.store.close()

    again = Site(tmp_path / "lanlic.db", vendor_key, server_key)
    desk = again.service.desk
    assert desk.active == before  # every field: ids, product, container, user, host, times, file
    assert all(b.committed for b in desk.active.values())
    assert desk.enrollments == site.service.desk.enrollments
    assert again.service.pool.borrowed("cad") == 2
    # the request ids came back too: a retry after the restart gets the same borrow
    for lt, r, b in zip(laptops, rids, borrowed, strict=True):
        retry = again.request(lt.borrow_msg(again.server_id, rid=r))
        assert isinstance(retry, m.Borrowed) and isinstance(b, m.Borrowed)
        assert (retry.borrow_id, retry.file, retry.end) == (b.borrow_id, b.file, b.end)
    # the container too: only the laptop that borrowed may return it
    assert isinstance(b, m.Borrowed)
    other = again.request(laptops[0].return_msg(again.server_id, b.borrow_id))
    assert isinstance(other, m.Error) and other.code == "borrow_unknown"
    assert isinstance(
        again.request(laptops[1].return_msg(again.server_id, b.borrow_id)), m.Returned
    )


def test_a_restart_warns_of_borrows_the_key_no_longer_serves_or_has_no_seat_for(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    site = Site(tmp_path / "lanlic.db", vendor_key, server_key)
    laptop = enrolled(site)
    a = site.request(laptop.borrow_msg(site.server_id))
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(a, m.Borrowed) and isinstance(b, m.Borrowed)
    site.store.close()

    store = Store(tmp_path / "lanlic.db")
    smaller = (ProductEntitlement("cad", seats=1, borrowable=1, max_borrow_days=14),)
    service = LicenseService(make_key(vendor_key, smaller), server_key)
    warnings = service.desk.load(store, T0)
    assert len(warnings) == 1 and warnings[0] in {
        f"borrow {x.borrow_id} of cad does not fit in the current key's seats; it is counted all "
        "the same, and no seat of it is granted until enough come back"
        for x in (a, b)
    }
    assert service.pool.borrowed("cad") == 2  # counted all the same
    assert not service.pool.take_borrowed("cad")
    store.close()

    store = Store(tmp_path / "lanlic.db")
    other = (ProductEntitlement("sim", seats=2, borrowable=1, max_borrow_days=14),)
    service = LicenseService(make_key(vendor_key, other), server_key)
    warnings = service.desk.load(store, T0)
    assert len(warnings) == 2
    assert all("which the current network key does not serve" in w for w in warnings)
    assert service.desk.active == {} and service.pool.borrowed("sim") == 0
    store.close()


# ------------------------------------------------------------------ return, the odd cases


class FailingStore:
    """The real store, but ``method`` raises as a full disk would."""

    def __init__(self, store: Store, method: str) -> None:
        self._store, self._method = store, method

    def __getattr__(self, name: str) -> Any:
        if name == self._method:

            def fail(*args: Any) -> Any:
                raise OSError("database or disk is full")

            return fail
        return getattr(self._store, name)


def test_a_return_whose_write_fails_keeps_the_borrow(site: Site) -> None:
    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed)
    real = site.store
    site.store = FailingStore(real, "end_borrow")  # type: ignore[assignment]
    failed = site.request(laptop.return_msg(site.server_id, b.borrow_id))
    assert isinstance(failed, m.Error) and failed.code == "store_failed"
    assert "the return could not be recorded" in failed.message
    assert b.borrow_id in site.service.desk.active
    assert site.service.pool.borrowed("cad") == 1
    site.store = real
    assert isinstance(site.request(laptop.return_msg(site.server_id, b.borrow_id)), m.Returned)
    assert site.service.pool.borrowed("cad") == 0


def test_a_return_of_an_ended_borrow_is_told_only_to_its_container(site: Site) -> None:
    laptop, other = enrolled(site), enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed)
    assert isinstance(site.request(laptop.return_msg(site.server_id, b.borrow_id)), m.Returned)
    again = site.request(laptop.return_msg(site.server_id, b.borrow_id))
    assert isinstance(again, m.Returned) and again.already and again.borrow_id == b.borrow_id
    foreign = site.request(other.return_msg(site.server_id, b.borrow_id))
    assert isinstance(foreign, m.Error) and foreign.code == "borrow_unknown"
    never = site.request(laptop.return_msg(site.server_id, "b-0000000000000000"))
    assert isinstance(never, m.Error) and never.code == "borrow_unknown"
    site.store = FailingStore(site.store, "borrow")  # type: ignore[assignment]
    lookup = site.request(laptop.return_msg(site.server_id, b.borrow_id))
    assert isinstance(lookup, m.Error) and lookup.code == "store_failed"
    assert site.service.pool.borrowed("cad") == 0


def test_a_return_with_a_bad_proof_is_refused(site: Site) -> None:
    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed)
    msg = laptop.return_msg(site.server_id, b.borrow_id)
    forged = m.Return(msg.id, b.borrow_id, Laptop().pub, msg.proof)
    reply = site.request(forged)
    assert isinstance(reply, m.Error) and reply.code == "bad_proof"
    assert site.service.pool.borrowed("cad") == 1


def test_expiry_ends_only_recorded_borrows_whose_end_has_come(site: Site) -> None:
    laptop = enrolled(site)
    short = site.request(laptop.borrow_msg(site.server_id, days=1))
    long = site.request(laptop.borrow_msg(site.server_id, days=2))
    assert isinstance(short, m.Borrowed) and isinstance(long, m.Borrowed)
    desk = site.service.desk
    assert desk.next_end() == T0 + DAY
    assert [b["borrow_id"] for b in desk.listing()] == [short.borrow_id, long.borrow_id]
    assert desk.listing()[0] == {
        "borrow_id": short.borrow_id, "product": "cad", "user": "ann", "host": "lt-1",
        "start": T0, "end": T0 + DAY,
    }  # fmt: skip
    assert desk.due(T0 + DAY - 1) == []
    [due] = desk.due(T0 + DAY)
    assert isinstance(site.apply(due), m.Returned)
    assert desk.next_end() == T0 + 2 * DAY
    assert site.store.borrow(short.borrow_id).state == "expired"  # type: ignore[union-attr]
    assert site.service.pool.borrowed("cad") == 1


# ------------------------------------------------------------------ presenting a borrowed file


def present_msg(laptop: Laptop, server_id: str, file: bytes, borrow_id: str) -> m.Present:
    proof = signing.sign(
        laptop.key,
        signing.DOMAIN_CONTAINER_REQUEST,
        borrowing.container_proof_payload("present", server_id, [borrow_id]),
    )
    return m.Present(4, file, proof)


def issued_file(site: Site, server_key: Ed25519PrivateKey, laptop: Laptop, **over: Any) -> bytes:
    """A borrowed file as this server issues one, with fields changed by ``over``."""
    fields: dict[str, Any] = dict(
        borrow_id="b-1234567890abcdef", product="cad", versions=("10", "16"), kind="act",
        server_id=site.server_id, customer="ACME Engineering", container_key=laptop.pub,
        machine_fp=laptop.machine, user="ann", host="lt-1", start=T0 - DAY, end=T0 + 6 * DAY,
    )  # fmt: skip
    fields.update(over)
    return borrowing.issue_borrowed_file(server_key, **fields)


def test_presenting_an_active_borrow_says_active(site: Site) -> None:
    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id, days=4))
    assert isinstance(b, m.Borrowed)
    reply = site.request(present_msg(laptop, site.server_id, b.file, b.borrow_id))
    assert reply == m.Presented(4, b.borrow_id, "active", T0 + 4 * DAY)
    assert site.service.pool.borrowed("cad") == 1


def test_presenting_a_borrow_still_being_written_is_refused(site: Site) -> None:
    laptop = enrolled(site)
    reply = site.service.handle(site.session, laptop.borrow_msg(site.server_id), 0, T0)
    [active] = site.service.desk.active.values()
    got = site.request(present_msg(laptop, site.server_id, active.file, active.borrow_id))
    assert isinstance(got, m.Error) and got.code == "borrow_refused"
    assert reply.durable is not None


def test_presenting_a_returned_borrow_says_returned_and_counts_nothing(site: Site) -> None:
    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed)
    assert isinstance(site.request(laptop.return_msg(site.server_id, b.borrow_id)), m.Returned)
    reply = site.request(present_msg(laptop, site.server_id, b.file, b.borrow_id))
    assert reply == m.Presented(4, b.borrow_id, "returned", b.end)
    assert site.service.pool.borrowed("cad") == 0
    assert site.service.desk.active == {}


def test_presenting_a_file_past_its_end_says_expired(
    site: Site, server_key: Ed25519PrivateKey
) -> None:
    laptop = Laptop()
    file = issued_file(site, server_key, laptop, end=T0)
    reply = site.request(present_msg(laptop, site.server_id, file, "b-1234567890abcdef"), wall=T0)
    assert reply == m.Presented(4, "b-1234567890abcdef", "expired", T0)
    assert site.service.pool.borrowed("cad") == 0 and site.service.desk.active == {}


def test_a_file_unknown_to_a_restored_database_is_adopted_and_counted(
    site: Site, server_key: Ed25519PrivateKey
) -> None:
    laptop = Laptop()  # not enrolled either: the database knows nothing of it
    events = with_events(site)
    file = issued_file(site, server_key, laptop, end=T0 + 1)
    reply = site.request(present_msg(laptop, site.server_id, file, "b-1234567890abcdef"))
    assert reply == m.Presented(4, "b-1234567890abcdef", "adopted", T0 + 1)
    fp = signing.fingerprint(laptop.pub)
    rec = site.store.borrow("b-1234567890abcdef")
    assert rec is not None
    assert (rec.request_id, rec.product, rec.container_fp, rec.user, rec.host) == (
        "adopted:b-1234567890abcdef", "cad", fp, "ann", "lt-1",
    )  # fmt: skip
    assert (rec.start, rec.end, rec.state, rec.ended_at, rec.file) == (
        T0 - DAY, T0 + 1, "active", None, file,
    )  # fmt: skip
    enrollment = site.store.enrollment(fp)
    assert enrollment is not None
    assert (enrollment.container_key, enrollment.kind, enrollment.machine_fp) == (
        laptop.pub, "act", laptop.machine,
    )  # fmt: skip
    assert (enrollment.user, enrollment.host, enrollment.enrolled_at, enrollment.via) == (
        "ann", "lt-1", T0, "adopted",
    )  # fmt: skip
    assert site.service.desk.enrollments[fp] == enrollment
    active = site.service.desk.active["b-1234567890abcdef"]
    assert active.committed and active.container_fp == fp and active.file == file
    assert site.service.pool.borrowed("cad") == 1
    assert events == [
        ("borrow_adopted", "cad", "ann", "lt-1", f"b-1234567890abcdef until {utc(T0 + 1)}, "
         "unknown to the database (restored from an older backup?)"),
    ]  # fmt: skip
    # counted until its end like any borrow, and presented again it is simply active
    again = site.request(present_msg(laptop, site.server_id, file, "b-1234567890abcdef"))
    assert again == m.Presented(4, "b-1234567890abcdef", "active", T0 + 1)
    assert site.service.pool.borrowed("cad") == 1
    site.expire(T0 + 1)
    assert site.service.pool.borrowed("cad") == 0


def test_an_adopted_borrow_with_no_seat_free_is_counted_over_the_seats(
    site: Site, server_key: Ed25519PrivateKey
) -> None:
    for _ in range(3):
        assert isinstance(site.checkout(), Granted)
    laptop = enrolled(site)
    events = with_events(site)
    file = issued_file(site, server_key, laptop)
    reply = site.request(present_msg(laptop, site.server_id, file, "b-1234567890abcdef"))
    assert isinstance(reply, m.Presented) and reply.state == "adopted"
    assert events[-1][4].endswith("; no seat was free: the product is over its seats until one is")
    assert site.service.pool.borrowed("cad") == 1 and site.service.pool.in_use("cad") == 3
    site.service.pool.check_invariant()
    # the enrollment the database had is kept, not replaced by the adopted one
    fp = signing.fingerprint(laptop.pub)
    assert site.store.enrollment(fp).via == "online"  # type: ignore[union-attr]
    assert site.service.desk.enrollments[fp].via == "online"


def test_a_file_on_record_but_not_counted_is_counted_under_its_request_id(
    site: Site, server_key: Ed25519PrivateKey
) -> None:
    """The store has the borrow active but memory does not (written behind the desk's back):
    presenting it counts it, under the request id on record, and a retry finds it."""
    from lanlic.core.records import BorrowRecord

    laptop = enrolled(site)
    file = issued_file(site, server_key, laptop)
    fp = signing.fingerprint(laptop.pub)
    site.store.add_borrow(
        BorrowRecord("b-1234567890abcdef", "ab" * 16, "cad", fp, "ann", "lt-1", T0 - DAY,
                     T0 + 6 * DAY, "active", None, file)
    )  # fmt: skip
    reply = site.request(present_msg(laptop, site.server_id, file, "b-1234567890abcdef"))
    assert reply == m.Presented(4, "b-1234567890abcdef", "active", T0 + 6 * DAY)
    assert site.service.pool.borrowed("cad") == 1
    active = site.service.desk.active["b-1234567890abcdef"]
    assert active.committed and active.request_id == "ab" * 16
    retry = site.request(laptop.borrow_msg(site.server_id, rid=bytes.fromhex("ab" * 16)))
    assert isinstance(retry, m.Borrowed) and retry.borrow_id == "b-1234567890abcdef"
    assert site.service.pool.borrowed("cad") == 1


def test_presenting_a_file_the_store_cannot_record_counts_nothing(
    site: Site, server_key: Ed25519PrivateKey
) -> None:
    laptop = Laptop()
    file = issued_file(site, server_key, laptop)
    site.store = FailingStore(site.store, "add_borrow")  # type: ignore[assignment]
    reply = site.request(present_msg(laptop, site.server_id, file, "b-1234567890abcdef"))
    assert isinstance(reply, m.Error) and reply.code == "store_failed"
    assert "the borrow could not be recorded" in reply.message
    assert site.service.pool.borrowed("cad") == 0 and site.service.desk.active == {}


def test_presenting_files_not_ours_or_without_the_key_is_refused(
    site: Site, server_key: Ed25519PrivateKey
) -> None:
    laptop = Laptop()
    bid = "b-1234567890abcdef"
    other = Ed25519PrivateKey.generate()
    genuine = issued_file(site, server_key, laptop)
    doc = json.loads(genuine)
    body = json.loads(doc["payload"])
    # another server's file; one claiming our key signed by another; one of ours edited
    signed_elsewhere = issued_file(site, other, laptop)
    claims_ours = json.loads(borrowing.issue_borrowed_file(other, **{
        k: v for k, v in {**body, "versions": tuple(body["versions"]),
                          "container_key": laptop.pub}.items() if k != "server_key"}))  # fmt: skip
    claims_ours["payload"] = json.dumps(
        {**json.loads(claims_ours["payload"]), "server_key": body["server_key"]}, sort_keys=True
    )
    edited = {**doc, "payload": doc["payload"].replace(str(T0 + 6 * DAY), str(T0 + 60 * DAY))}
    assert edited != doc
    for file in (signed_elsewhere, json.dumps(claims_ours).encode(), json.dumps(edited).encode()):
        reply = site.request(present_msg(laptop, site.server_id, file, bid))
        assert isinstance(reply, m.Error) and reply.code == "borrow_unknown", reply
        assert reply.message == "this file was not issued by this server"
    garbage = site.request(present_msg(laptop, site.server_id, b"{}", bid))
    assert isinstance(garbage, m.Error) and garbage.code == "borrow_unknown"
    assert garbage.message.startswith("not a borrowed licence file: ")
    thief = site.request(present_msg(Laptop(), site.server_id, genuine, bid))
    assert isinstance(thief, m.Error) and thief.code == "bad_proof"
    wrong_id = site.request(present_msg(laptop, site.server_id, genuine, "b-other"))
    assert isinstance(wrong_id, m.Error) and wrong_id.code == "bad_proof"
    assert site.service.pool.borrowed("cad") == 0 and site.service.desk.active == {}


def test_presenting_a_file_of_a_product_the_key_no_longer_has_is_not_counted(
    site: Site, server_key: Ed25519PrivateKey
) -> None:
    laptop = Laptop()
    file = issued_file(site, server_key, laptop, product="gone")
    reply = site.request(present_msg(laptop, site.server_id, file, "b-1234567890abcdef"))
    assert isinstance(reply, m.Error) and reply.code == "not_borrowable"
    assert "no product 'gone'" in reply.message
    assert site.store.borrow("b-1234567890abcdef") is None


# ------------------------------------------------------------------ every answer, exactly

FULL = "database or disk is full"


def test_return_answers_carry_the_request_id_and_say_exactly_why(site: Site) -> None:
    laptop, other = enrolled(site), enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed) and b.id == 2
    bid = b.borrow_id
    msg = laptop.return_msg(site.server_id, bid)
    forged = site.request(m.Return(3, bid, other.pub, msg.proof))
    assert forged == m.Error(3, "bad_proof", "the return request's proof does not verify")
    assert site.request(other.return_msg(site.server_id, bid)) == m.Error(
        3, "borrow_unknown", f"no borrow {bid!r}"
    )
    real = site.store
    site.store = FailingStore(real, "end_borrow")  # type: ignore[assignment]
    assert site.request(msg) == m.Error(
        3, "store_failed", f"the return could not be recorded: {FULL}"
    )
    site.store = real
    assert site.request(msg) == m.Returned(3, bid, already=False)
    rec = site.store.borrow(bid)
    assert rec is not None and (rec.state, rec.ended_at) == ("returned", T0)
    assert site.request(msg) == m.Returned(3, bid, already=True)
    assert site.request(other.return_msg(site.server_id, bid)) == m.Error(
        3, "borrow_unknown", f"no borrow {bid!r}"
    )
    site.store = FailingStore(real, "borrow")  # type: ignore[assignment]
    assert site.request(msg) == m.Error(3, "store_failed", FULL)
    site.store = real
    # a borrow still being written
    reply = site.service.handle(site.session, laptop.borrow_msg(site.server_id), 0, T0)
    assert reply.durable is not None
    [flying] = [x for x in site.service.desk.active.values() if not x.committed]
    assert site.request(laptop.return_msg(site.server_id, flying.borrow_id)) == m.Error(
        3, "borrow_refused", "that borrow is still being recorded"
    )
    # a refusal made by the borrow checks keeps the borrow's request id
    refused = site.request(laptop.borrow_msg(site.server_id, product="cam"))
    assert isinstance(refused, m.Error) and (refused.id, refused.code) == (2, "not_borrowable")


def test_an_expiry_is_answered_to_nobody_and_dated_by_the_sweep(site: Site) -> None:
    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id, days=1))
    assert isinstance(b, m.Borrowed)
    [due] = site.service.desk.due(T0 + DAY + 5)
    assert site.apply(due) == m.Returned(0, b.borrow_id, already=False)
    rec = site.store.borrow(b.borrow_id)
    assert rec is not None and (rec.state, rec.ended_at) == ("expired", T0 + DAY + 5)


def test_present_answers_carry_the_request_id_and_say_exactly_why(
    site: Site, server_key: Ed25519PrivateKey
) -> None:
    laptop = Laptop()
    bid = "b-1234567890abcdef"
    file = issued_file(site, server_key, laptop)
    other = issued_file(site, Ed25519PrivateKey.generate(), laptop)
    assert site.request(present_msg(laptop, site.server_id, other, bid)) == m.Error(
        4, "borrow_unknown", "this file was not issued by this server"
    )
    garbage = site.request(present_msg(laptop, site.server_id, b"{}", bid))
    assert isinstance(garbage, m.Error) and garbage.id == 4
    assert site.request(present_msg(Laptop(), site.server_id, file, bid)) == m.Error(
        4, "bad_proof", "the presenting container does not hold the file's key"
    )
    gone = issued_file(site, server_key, laptop, product="gone")
    refused = site.request(present_msg(laptop, site.server_id, gone, bid))
    assert refused == m.Error(
        4, "not_borrowable", "the network key served now has no product 'gone'; not counted"
    )
    real = site.store
    site.store = FailingStore(real, "add_borrow")  # type: ignore[assignment]
    assert site.request(present_msg(laptop, site.server_id, file, bid)) == m.Error(
        4, "store_failed", f"the borrow could not be recorded: {FULL}"
    )
    site.store = real
    # adopted, but its write not done yet: nowhere a recorded borrow
    reply = site.service.handle(site.session, present_msg(laptop, site.server_id, file, bid), 0, T0)
    assert reply.message is None and reply.durable is not None
    desk = site.service.desk
    assert not desk.active[bid].committed
    assert desk.listing() == [] and desk.next_end() is None and desk.due(T0 + 99 * DAY) == []
    assert site.request(present_msg(laptop, site.server_id, file, bid)) == m.Error(
        4, "borrow_refused", "that borrow is still being recorded"
    )
    assert site.apply(reply.durable) == m.Presented(4, bid, "adopted", T0 + 6 * DAY)
    assert desk.listing() == [
        {"borrow_id": bid, "product": "cad", "user": "ann", "host": "lt-1",
         "start": T0 - DAY, "end": T0 + 6 * DAY},
    ]  # fmt: skip


def test_borrow_and_enroll_answers_carry_the_request_id_and_say_exactly_why(site: Site) -> None:
    laptop = Laptop()
    enrolled_reply = site.request(laptop.enroll_msg())
    assert isinstance(enrolled_reply, m.Enrolled) and enrolled_reply.id == 1
    wrong_kind = site.request(Laptop(kind="key").enroll_msg())
    assert wrong_kind == m.Error(
        1, "wrong_borrow_kind",
        "this site's network key borrows with kind 'act'; the container is of kind 'key'",
    )  # fmt: skip
    bad = site.request(m.Enroll(1, b"not a request"))
    assert isinstance(bad, m.Error) and (bad.id, bad.code) == (1, "bad_proof") and bad.message
    real = site.store
    site.store = FailingStore(real, "add_enrollment")  # type: ignore[assignment]
    assert site.request(Laptop().enroll_msg()) == m.Error(
        1, "store_failed", f"enrollment not saved: {FULL}"
    )
    site.store = FailingStore(real, "add_borrow")  # type: ignore[assignment]
    assert site.request(laptop.borrow_msg(site.server_id)) == m.Error(
        2, "store_failed", f"the borrow could not be recorded: {FULL}"
    )
    site.store = real

    def refused(msg: m.Borrow) -> m.Message:
        return site.request(msg)

    assert refused(laptop.borrow_msg(site.server_id, product="nope")) == m.Error(
        2, "not_borrowable", "no product 'nope' in the network key"
    )
    old = laptop.borrow_msg(site.server_id)
    old = m.Borrow(2, old.request_id, "cad", 7, laptop.pub, old.proof, version="9")
    assert refused(old) == m.Error(2, "not_borrowable", "cad version '9' is not licensed")
    assert refused(Laptop().borrow_msg(site.server_id)) == m.Error(
        2, "not_enrolled",
        "this machine is not enrolled for borrowing: run 'lanlic enroll' first (or 'lanlic "
        "enroll --request FILE' when the server cannot be reached)",
    )  # fmt: skip
    forged = laptop.borrow_msg(site.server_id)
    forged = m.Borrow(2, forged.request_id, "cad", 6, laptop.pub, forged.proof, version="16")
    assert refused(forged) == m.Error(2, "bad_proof", "the borrow request's proof does not verify")
    assert refused(laptop.borrow_msg(site.server_id, days=15)) == m.Error(
        2, "borrow_too_long", "cad may be borrowed for at most 14 days, not 15"
    )
    assert refused(laptop.borrow_msg(site.server_id, product="cam")) == m.Error(
        2, "not_borrowable", "cam cannot be borrowed under this licence"
    )

    rid = os.urandom(16)
    b = site.request(laptop.borrow_msg(site.server_id, rid=rid))
    assert isinstance(b, m.Borrowed) and b.id == 2
    assert re.fullmatch(r"b-[0-9a-f]{16}", b.borrow_id)
    assert site.request(laptop.borrow_msg(site.server_id, rid=rid)) == m.Borrowed(
        2, b.borrow_id, b.file, b.end
    )
    flying = site.service.handle(site.session, laptop.borrow_msg(site.server_id), 0, T0)
    assert flying.durable is not None
    [pending] = [x for x in site.service.desk.active.values() if not x.committed]
    retry = m.Borrow(2, bytes.fromhex(pending.request_id), "cad", 7, laptop.pub, b"", "16")
    assert site.request(retry) == m.Error(
        2, "borrow_refused", "that borrow is still being recorded"
    )


def test_a_desk_with_no_data_folder_starts_empty_and_works(vendor_key: Ed25519PrivateKey) -> None:
    """No store, so no ``load``: the desk starts with no enrollment and no policy."""
    service = LicenseService(make_key(vendor_key, PRODUCTS), Ed25519PrivateKey.generate())
    desk = service.desk
    assert desk.enrollments == {} and desk.policy == {} and desk.active == {}
    assert desk.terms("cad").borrowable == 2
    reply = service.handle(Session(), Laptop().borrow_msg(service.server_id), 0.0, T0)
    assert isinstance(reply.message, m.Error) and reply.message.code == "not_enrolled"
    enroll = service.handle(Session(), Laptop().enroll_msg(), 0.0, T0)
    assert enroll.durable is not None
    assert isinstance(enroll.durable.commit(None), m.Enrolled)
    assert len(desk.enrollments) == 1


def test_a_return_of_a_borrow_the_store_already_ended_says_already(site: Site) -> None:
    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed)
    assert site.store.end_borrow(b.borrow_id, "expired", T0)  # ended behind the desk's back
    reply = site.request(laptop.return_msg(site.server_id, b.borrow_id))
    assert reply == m.Returned(3, b.borrow_id, already=True)
    assert site.service.pool.borrowed("cad") == 0


def test_the_seat_policy_counts_borrowers_as_borrows_begin_fail_end_and_reload(
    site: Site, tmp_path: Path, vendor_key: Ed25519PrivateKey, server_key: Ed25519PrivateKey
) -> None:
    """The policy's counts (``Tally``) follow the desk's borrows without a recount: begun,
    failed to record, returned, expired, and loaded again after a restart."""
    policy = parse(
        '[products.cad]\nmax_borrowed_per_user = 1\nmax = [{ seats = 2, user = "ann" }]\n'
    )
    service = site.service
    service.set_policy(policy, site.now)

    def counted() -> tuple[int, tuple[int, ...], dict[int, int], dict[str, int]]:
        kept, fresh = service.gate.tallies["cad"], service.gate.recount("cad", site.now)
        assert fresh is not None and kept.counts() == fresh.counts()
        return kept.counts()

    laptop = enrolled(site)
    reply = service.handle(site.session, laptop.borrow_msg(site.server_id), 0, T0)
    assert reply.durable is not None
    assert isinstance(reply.durable.abort(OSError("disk full")), m.Error)
    assert counted() == (0, (0,), {}, {})
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed)
    assert counted() == (1, (1,), {}, {"ann": 1})
    second = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(second, m.Error) and second.code == "limit_reached"
    assert site.request(laptop.return_msg(site.server_id, b.borrow_id)).TYPE == "returned"
    assert counted() == (0, (0,), {}, {})
    b = site.request(laptop.borrow_msg(site.server_id, days=1))
    assert isinstance(b, m.Borrowed) and counted() == (1, (1,), {}, {"ann": 1})
    again = Site(tmp_path / "lanlic.db", vendor_key, server_key)  # the server restarted
    again.service.set_policy(policy, 0.0)
    assert again.service.gate.tallies["cad"].counts() == (1, (1,), {}, {"ann": 1})
    site.expire(T0 + 2 * DAY)
    assert counted() == (0, (0,), {}, {})


@pytest.mark.parametrize("presented", ["written", "write_failed"])
def test_the_seat_policy_counts_a_borrower_by_host_and_once_through_a_failed_return(
    site: Site, presented: str
) -> None:
    """A host rule counts borrowers by the host they borrowed from; and a return in flight
    while the same file is presented, whose write then fails, leaves one borrow counted once
    and one seat out of the pool, whether the presented copy's write then succeeds or fails.
    (Found by mutation testing: the presented copy's seat stayed out for good, and a failed
    write of the copy forgot the borrow itself.)"""
    policy = parse('[products.cad]\nreserve = [{ seats = 1, host = "lt-1" }]\n')
    service = site.service
    service.set_policy(policy, site.now)

    def counted() -> tuple[int, tuple[int, ...], dict[int, int], dict[str, int]]:
        kept, fresh = service.gate.tallies["cad"], service.gate.recount("cad", site.now)
        assert fresh is not None and kept.counts() == fresh.counts()
        return kept.counts()

    laptop = enrolled(site)
    b = site.request(laptop.borrow_msg(site.server_id))
    assert isinstance(b, m.Borrowed)
    one = (1, (), {1: 1}, {"ann": 1})  # one borrower, of the class the host rule matches
    assert counted() == one
    returning = service.handle(site.session, laptop.return_msg(site.server_id, b.borrow_id), 0, T0)
    assert returning.durable is not None and counted() == (0, (), {}, {})
    presenting = service.handle(
        site.session, present_msg(laptop, site.server_id, b.file, b.borrow_id), 0, T0
    )
    assert presenting.durable is not None and counted() == one
    failed = returning.durable.abort(OSError("disk full"))
    assert isinstance(failed, m.Error) and failed.code == "store_failed"
    assert counted() == one
    if presented == "written":
        assert site.apply(presenting.durable) == m.Presented(4, b.borrow_id, "active", b.end)
    else:
        lost = presenting.durable.abort(OSError("disk full"))
        assert isinstance(lost, m.Error) and lost.code == "store_failed"
    assert counted() == one
    # One borrow, one seat out of the pool: the presented copy's seat went back.
    assert site.service.pool.borrowed("cad") == 1 and len(site.service.desk.active) == 1
    assert site.request(laptop.return_msg(site.server_id, b.borrow_id)).TYPE == "returned"
    assert site.service.pool.borrowed("cad") == 0 and counted() == (0, (), {}, {})


# ------------------------------------------------------------- the seat policy's word on a borrow


def test_the_seat_policys_refusal_of_a_borrow_takes_nothing_and_is_in_the_history(
    site: Site,
) -> None:
    laptop = enrolled(site)
    events = with_events(site)
    asked: list[tuple[str, str, str]] = []

    def check(product: str, user: str, host: str) -> Denied | None:
        asked.append((product, user, host))
        return Denied("policy_refused", "ann may borrow one cad at most") if asked[1:] else None

    first = site.service.desk.borrow(laptop.borrow_msg(site.server_id), T0, 0.0, check)
    assert isinstance(site.apply(first), m.Borrowed)  # None: the policy lets it through
    reply = site.service.desk.borrow(laptop.borrow_msg(site.server_id), T0, 0.0, check)
    assert reply == m.Error(2, "policy_refused", "ann may borrow one cad at most")
    assert asked == [("cad", "ann", "lt-1")] * 2  # who asks is the enrolled user and host
    assert events[-1] == ("refusal", "cad", "ann", "lt-1", "policy_refused")
    assert site.service.pool.borrowed("cad") == 1 and len(site.service.desk.active) == 1


def test_the_policy_files_borrow_terms_lower_the_keys_and_the_admins(site: Site) -> None:
    desk = site.service.desk
    desk.file_policy = {"cad": (1, 5)}
    terms = desk.terms("cad")
    assert (terms.borrowable, terms.max_days) == (1, 5)
    desk.policy = {"cad": (2, 3)}  # the admin's, lower in days: the lower of each wins
    terms = desk.terms("cad")
    assert (terms.borrowable, terms.max_days) == (1, 3)
    desk.file_policy = {"cad": (None, 9), "cam": (1, 1)}  # no lowering of the count; cad only
    terms = desk.terms("cad")
    assert (terms.borrowable, terms.max_days) == (2, 3)
    laptop = enrolled(site)
    desk.policy = {}
    reply = site.request(laptop.borrow_msg(site.server_id, days=10))
    assert isinstance(reply, m.Error) and reply.code == "borrow_too_long"
    assert isinstance(site.request(laptop.borrow_msg(site.server_id, days=9)), m.Borrowed)


def test_a_refused_borrow_from_an_unknown_machine_names_nobody(site: Site) -> None:
    events = with_events(site)
    stranger = Laptop()
    reply = site.request(stranger.borrow_msg(site.server_id))
    assert isinstance(reply, m.Error) and reply.code == "not_enrolled"
    assert events == [("refusal", "cad", "", "", "not_enrolled")]
    # A container key that is no key at all (the wire lets only 32 bytes through; the desk
    # does not count on it), for a product the key lacks: refused and recorded, nothing raised.
    msg = stranger.borrow_msg(site.server_id, product="nope")
    reply = site.request(dataclasses.replace(msg, container_key=b"\x01" * 5))
    assert isinstance(reply, m.Error) and reply.code == "not_borrowable"
    assert events[-1] == ("refusal", "nope", "", "", "not_borrowable")


def test_history_times_are_utc_whatever_the_servers_time_zone(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        laptop = enrolled(site)
        events = with_events(site)
        b = site.request(laptop.borrow_msg(site.server_id, days=2))
        assert isinstance(b, m.Borrowed)
        # T0 + 2 days is 2027-01-17 08:00 UTC (03:00 in New York).
        assert events[-1][4] == f"{b.borrow_id} until 2027-01-17T08:00:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()
