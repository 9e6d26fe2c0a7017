"""Borrowing end to end over real loopback sockets, a real SQLite store and real container
folders, with controllable wall clocks on both sides (days pass in numbers, not sleeps)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from frame_proxy import FrameProxy

from lanlic.core.netkey import ProductEntitlement
from lanlic.errors import (
    BorrowedFileError,
    BorrowRefused,
    NoSeat,
    ServerUnavailable,
    ServerUntrusted,
)
from lanlic.laptop.borrower import Borrower
from lanlic.net.client import Client
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.store import Store

DAY = 86400.0
PRODUCTS = (
    ProductEntitlement("cad", seats=3, borrowable=2, max_borrow_days=14, versions=("10", "16")),
    ProductEntitlement("render", seats=2, borrowable=1, max_borrow_days=7, addon=True),
)


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


class Site:
    """One licence server's data folder: a store and a server key that outlive server runs."""

    def __init__(self, start_server: Any, tmp_path: Path, clock: Clock, kind: str) -> None:
        self._start = start_server
        self.db = tmp_path / "lanlic.db"
        self.key = Ed25519PrivateKey.generate()
        self.clock = clock
        self.kind = kind
        self.server: LicenseServer | None = None

    async def start(self) -> LicenseServer:
        self.server = await self._start(
            products=PRODUCTS,
            store=Store(self.db),
            server_key=self.key,
            wall=self.clock,
            uptime=self.clock,  # days pass (both clocks move), rather than the wall clock jumping
            borrow_kind=self.kind,
            limits=ServerLimits(housekeeping_interval=0.05),
        )
        return self.server

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop()
        assert self.server.store is not None
        self.server.store.close()

    def borrowed(self, product: str = "cad") -> int:
        assert self.server is not None
        return self.server.service.pool.borrowed(product)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_laptop(tmp_path: Path, name: str, clock: Clock, kind: str = "act") -> Borrower:
    if kind == "key":
        return Borrower(
            portable_key=tmp_path / f"usb-{name}", machine_fp=f"mfp:{name}", clock=clock
        )
    return Borrower(tmp_path / f"home-{name}", machine_fp=f"mfp:{name}", clock=clock)


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("kind", ["act", "key"])
async def test_the_whole_life_of_a_borrow(
    start_server: Any, tmp_path: Path, clock: Clock, kind: str
) -> None:
    site = Site(start_server, tmp_path, clock, kind)
    server = await site.start()
    ann = make_laptop(tmp_path, "ann", clock, kind)
    async with Client(server.address, user="ann") as c:
        with pytest.raises(BorrowRefused) as info:
            await ann.borrow(c, "cad", days=3)
        assert info.value.code == "not_enrolled" and "lanlic enroll" in info.value.message
        await ann.enroll(c, "ann", "lt-ann")
        lic = await ann.borrow(c, "cad", days=3, version="16")
        assert (lic.product, lic.kind, lic.end) == ("cad", kind, clock.t + 3 * DAY)
        status = await c.status()
    cad = next(p for p in status["products"] if p["name"] == "cad")
    assert (cad["borrowed"], cad["free"]) == (1, 2)
    assert [(b["user"], b["product"]) for b in status["borrows"]] == [("ann", "cad")]

    # Off the network: the server is stopped, the file still works a day later.
    await site.stop()
    clock.t += DAY
    assert ann.offline("cad").borrow_id == lic.borrow_id

    # Back in the office: the borrow survived the restart; return it early.
    saved = ann.home().borrowed("cad")  # type: ignore[union-attr]
    assert saved is not None
    server = await site.start()
    assert site.borrowed() == 1
    async with Client(server.address) as c:
        assert await ann.return_(c, "cad") is True
        assert site.borrowed() == 0  # free at once
    # A saved copy of the file put back no longer works on this machine.
    ann.home().save_borrowed(saved)  # type: ignore[union-attr]
    with pytest.raises(BorrowedFileError) as refused:
        ann.offline("cad")
    assert refused.value.code == "file_returned"


async def test_borrowable_seats_run_out_floating_seats_do_not(
    start_server: Any, tmp_path: Path, clock: Clock
) -> None:
    site = Site(start_server, tmp_path, clock, "act")
    server = await site.start()
    laptops = [make_laptop(tmp_path, n, clock) for n in ("a", "b", "c")]
    async with Client(server.address) as c:
        for lt in laptops:
            await lt.enroll(c, "u", "h")
        await laptops[0].borrow(c, "cad", days=1)
        await laptops[1].borrow(c, "cad", days=1)
        with pytest.raises(BorrowRefused) as info:
            await laptops[2].borrow(c, "cad", days=1)
        assert info.value.code == "no_borrowable_seat"
        with pytest.raises(BorrowRefused) as too_long:
            await laptops[2].borrow(c, "render", days=8)
        assert too_long.value.code == "borrow_too_long"
        seat = await c.acquire("cad", "16")  # the third seat still floats
        with pytest.raises(NoSeat):
            await c.acquire("cad", "16")
        await c.release(seat)
    server.service.pool.check_invariant()


async def test_expiry_returns_the_seat_with_the_laptop_never_heard_from(
    start_server: Any, tmp_path: Path, clock: Clock
) -> None:
    site = Site(start_server, tmp_path, clock, "act")
    server = await site.start()
    ann = make_laptop(tmp_path, "ann", clock)
    async with Client(server.address) as c:
        await ann.enroll(c, "ann", "lt")
        await ann.borrow(c, "cad", days=2)
    # The laptop is lost. The server restarts half way through...
    clock.t += DAY
    await site.stop()
    await site.start()
    assert site.borrowed() == 1
    clock.t += DAY - 60
    await asyncio.sleep(0.2)
    assert site.borrowed() == 1, "no seat comes back early"
    # ...and at the end time the seat comes back by itself.
    clock.t += 60
    await wait_until(lambda: site.borrowed() == 0)
    store = site.server.store  # type: ignore[union-attr]
    assert store is not None
    await asyncio.sleep(0.1)
    [row] = [r for r in store.history() if r.event == "expiry_borrow"]
    assert row.product == "cad" and row.user == "ann"
    # The laptop's file stops working at the same moment.
    with pytest.raises(BorrowedFileError) as refused:
        ann.offline("cad")
    assert refused.value.code == "file_expired"


async def test_a_key_of_one_kind_refuses_the_other(
    start_server: Any, tmp_path: Path, clock: Clock
) -> None:
    site = Site(start_server, tmp_path, clock, "act")
    server = await site.start()
    usb = make_laptop(tmp_path, "usb", clock, kind="key")
    async with Client(server.address) as c:
        with pytest.raises(BorrowRefused) as info:
            await usb.enroll(c, "ann", "lt")
    assert info.value.code == "wrong_borrow_kind"


@pytest.mark.parametrize("kind", ["act", "key"])
async def test_portable_key_works_on_another_machine_act_file_does_not(
    start_server: Any, tmp_path: Path, clock: Clock, kind: str
) -> None:
    site = Site(start_server, tmp_path, clock, kind)
    server = await site.start()
    mine = make_laptop(tmp_path, "mine", clock, kind)
    async with Client(server.address) as c:
        await mine.enroll(c, "ann", "lt")
        await mine.borrow(c, "cad", days=5)
    await site.stop()
    # The same folder (the home, or the USB stick) on another machine.
    other = tmp_path / "elsewhere"
    shutil.copytree(mine.home_path, other)
    if kind == "key":
        elsewhere = Borrower(portable_key=other, machine_fp="mfp:other", clock=clock)
        assert elsewhere.offline("cad").product == "cad"
        # Without the key plugged in there is nothing to use.
        unplugged = Borrower(tmp_path / "no-key", machine_fp="mfp:other", clock=clock)
        with pytest.raises(BorrowRefused):
            unplugged.offline("cad")
    else:
        elsewhere = Borrower(other, machine_fp="mfp:other", clock=clock)
        with pytest.raises(BorrowedFileError) as refused:
            elsewhere.offline("cad")
        assert refused.value.code == "file_wrong_machine"


async def test_a_clock_set_back_is_refused(start_server: Any, tmp_path: Path, clock: Clock) -> None:
    site = Site(start_server, tmp_path, clock, "act")
    server = await site.start()
    ann = make_laptop(tmp_path, "ann", clock)
    async with Client(server.address) as c:
        await ann.enroll(c, "ann", "lt")
        await ann.borrow(c, "cad", days=10)
    clock.t += 5 * DAY
    ann.offline("cad")
    clock.t -= 3 * DAY  # to stretch the borrow, the user turns the clock back
    with pytest.raises(BorrowedFileError) as refused:
        ann.offline("cad")
    assert refused.value.code == "clock_set_back"


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("welcome", ["genuine", "forged", "unsigned", "replayed"])
async def test_a_clock_once_ahead_recovers_when_the_laptop_reaches_the_server(
    start_server: Any, tmp_path: Path, clock: Clock, welcome: str, version: int
) -> None:
    """A laptop clock that jumped a day ahead once (then was put right) locks a still-valid
    file with clock_set_back; reaching the server re-anchors the latest time seen to the time
    the server signed over this connection's nonce. A welcome whose time was edited, is not
    signed, or was recorded from an earlier connection re-anchors nothing: in protocol version 1
    (a server that speaks no other) the time has a signature of its own and the connection goes
    on; in versions 2 and 3 the handshake's one signature covers the time, so the handshake
    fails."""
    site = Site(start_server, tmp_path, clock, "act")
    server = await site.start()
    recorded: list[dict[str, Any]] = []

    def edit_hello(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("t") == "hello":
            frame["versions"] = list(range(1, version + 1))  # a server that speaks no later one
        return frame

    def edit_welcome(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("t") != "welcome":
            return frame
        recorded.append(dict(frame))
        if len(recorded) == 1 or welcome == "genuine":
            return frame
        signature = "time_signature" if version == 1 else "signature"
        if welcome == "forged":
            frame["time"] -= 1.0
        elif welcome == "unsigned":
            frame[signature] = b""
        else:  # the welcome of the first connection, played back
            old = recorded[0]
            frame["time"], frame[signature] = old["time"], old[signature]
        return frame

    proxy = await FrameProxy(server.address, up=edit_hello, down=edit_welcome).start()
    address = proxy.address
    try:
        laptop_clock = Clock()
        ann = make_laptop(tmp_path, "ann", laptop_clock)
        async with Client(address) as c:
            await ann.enroll(c, "ann", "lt")
            await ann.borrow(c, "cad", days=10)
        laptop_clock.t += DAY  # the laptop's clock jumps a day ahead, and lanlic runs
        ann.offline("cad")
        clock.t += 3600.0
        laptop_clock.t = clock.t  # put right: an hour after the borrow
        with pytest.raises(BorrowedFileError) as refused:
            ann.offline("cad")
        assert refused.value.code == "clock_set_back"
        assert "connect to the server once" in refused.value.message
        assert "or wait until 2027-01-16 07:50 UTC" in refused.value.message  # last_seen - 10 min

        if welcome != "genuine" and version >= 2:
            with pytest.raises(ServerUntrusted, match="did not sign"):
                async with Client(address) as c:
                    await ann.check_online(c)
        else:
            async with Client(address) as c:
                await ann.check_online(c)
        if welcome == "genuine":
            assert ann.offline("cad").product == "cad"
            await site.stop()  # and on, offline
            laptop_clock.t += DAY
            assert ann.offline("cad").product == "cad"
        else:
            with pytest.raises(BorrowedFileError) as still:
                ann.offline("cad")
            assert still.value.code == "clock_set_back"
    finally:
        await proxy.close()
    assert {(w["version"], bool(w["time_signature"])) for w in recorded} == {
        (version, version == 1)
    }


async def test_admin_lowers_the_terms_while_the_server_runs(
    start_server: Any, tmp_path: Path, clock: Clock
) -> None:
    site = Site(start_server, tmp_path, clock, "act")
    server = await site.start()
    ann = make_laptop(tmp_path, "ann", clock)
    admin = Store(site.db)  # what `lanlic admin policy` does: another connection, same file
    try:
        admin.set_policy("cad", 1, 20)  # one seat (key: 2), 20 days (key: 14 -> stays 14)
    finally:
        admin.close()
    await wait_until(lambda: server.service.desk.terms("cad").borrowable == 1)
    assert server.service.desk.terms("cad").max_days == 14
    async with Client(server.address) as c:
        cad = next(p for p in (await c.status())["products"] if p["name"] == "cad")
        assert (cad["borrowable"], cad["max_borrow_days"]) == (1, 14)
        await ann.enroll(c, "ann", "lt")
        await ann.borrow(c, "cad", days=14)
        bob = make_laptop(tmp_path, "bob", clock)
        await bob.enroll(c, "bob", "lt2")
        with pytest.raises(BorrowRefused) as info:
            await bob.borrow(c, "cad", days=1)
        assert info.value.code == "no_borrowable_seat"


async def test_a_return_cut_off_midway_is_kept_and_sent_again(
    start_server: Any, tmp_path: Path, clock: Clock
) -> None:
    site = Site(start_server, tmp_path, clock, "act")
    server = await site.start()
    ann = make_laptop(tmp_path, "ann", clock)
    async with Client(server.address) as c:
        await ann.enroll(c, "ann", "lt")
        await ann.borrow(c, "cad", days=5)

    class DropsTheReturn(Client):
        """The connection breaks after the laptop deactivated its file, before the server hears."""

        async def call(self, make):  # type: ignore[no-untyped-def]
            if make(0).TYPE == "return":
                raise ServerUnavailable("connection lost")
            return await super().call(make)

    async with DropsTheReturn(server.address) as c:
        with pytest.raises(ServerUnavailable):
            await ann.return_(c, "cad")
    with pytest.raises(BorrowRefused):  # the file no longer works here...
        ann.offline("cad")
    assert site.borrowed() == 1  # ...and the seat is still out: nothing over-granted
    async with Client(server.address) as c:
        assert await ann.return_(c, "cad") is True  # the pending return goes through
    assert site.borrowed() == 0
    async with Client(server.address) as c:
        with pytest.raises(BorrowRefused) as info:
            await ann.return_(c, "cad")
    assert info.value.code == "borrow_unknown"
