"""The borrowing desk with a real SQLite store, driven without sockets: each Durable is written
to the store by hand (as the server's store thread would) and then committed or aborted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key

from lanlic.core import borrowing, signing
from lanlic.core.lending import Durable
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.pool import Granted, Holder
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
