"""Kill the server with SIGKILL at random moments, restart it on the same data folder, and check
that nothing the clients were told is lost and nothing is ever over-granted.

A real server process on 127.0.0.1, real clients (floating seats through ``Client``, borrows
through ``Borrower`` with their own container folders) in this process, seeded randomness
(``LANLIC_CRASH_SEED``), and ``LANLIC_CRASH_KILLS`` rounds (at least 50). After each restart:

* every borrow a client was told about is there;
* no borrow is there that no client was told about, unless its client can still pick it up by
  retrying the same request id (it does, and must get that very borrow);
* the floating seats the clients held are reclaimed without the application noticing;
* at every moment observed (every few ms, from the clients' side: the seats they count as held
  plus the borrowed licence files they hold), no more than the key's seats are in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.core import netkey, signing
from lanlic.core.netkey import ProductEntitlement
from lanlic.errors import LanlicError
from lanlic.laptop.borrower import Borrower
from lanlic.net.client import Client, Seat

SEED = int(os.environ.get("LANLIC_CRASH_SEED", "20261128"))
KILLS = max(50, int(os.environ.get("LANLIC_CRASH_KILLS", "50")))
SEATS = 4
#: The clients' lease. A seat is kept across a restart only if the server is back within it, and
#: a server start (Python's imports, the store's open) took over 3 s on a loaded CI machine with
#: two suite passes at once: the client then rightly gave its seat up, which is not what this
#: test is about.
LEASE = 6.0
TODAY = dt.datetime.now(dt.UTC).date()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: The slowed store: every durable write waits this long first, as behind a slow fsync.
SLOW_FSYNC = 0.25
#: Its lease: work in flight at a kill takes longer to fail over slow writes, and a client that
#: hears nothing for a lease gives its seat up (rightly, but the test wants none lost).
SLOW_LEASE = 6.0
SLOW_SERVE = str(Path(__file__).with_name("slow_serve.py"))


class ServerProcess:
    def __init__(self, license: Path, pub: Path, data: Path, port: int, slow: bool) -> None:
        run = [SLOW_SERVE, str(SLOW_FSYNC)] if slow else ["-m", "lanlic.cli"]
        lease = SLOW_LEASE if slow else LEASE
        self.args = [
            sys.executable, *run, "serve", "--license", str(license),
            "--vendor-pub", str(pub), "--data", str(data), "--host", "127.0.0.1",
            "--port", str(port), "--no-mdns", "--no-admin", "--json", "--lease", str(lease),
            "--heartbeat", "0.5", "--allow-short-lease",
        ]  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert json.loads(line).get("event") == "listening", line

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


class Laptop:
    def __init__(self, tmp: Path, name: str) -> None:
        self.name = name
        self.borrower = Borrower(tmp / f"home-{name}", machine_fp=f"mfp:{name}")
        self.inflight: bytes | None = None
        """The request id of a borrow whose answer never came."""
        self.returning = False
        """A return was cut off: it is pending in the container."""
        self.busy = False
        """A borrow or return of this laptop is under way (one at a time, like a person)."""

    def holds_file(self) -> bool:
        home = self.borrower.home()
        return home is not None and home.borrowed("cad") is not None


# 50 kills, each a server start: about 75 s with a plain store, and more with every durable
# write delayed 0.25 s, past the suite's 120 s default. Bounded by its count all the same.
@pytest.mark.timeout(360)
@pytest.mark.parametrize("slow", [False, True], ids=["store", "slow-store"])
async def test_sigkill_at_random_moments_loses_nothing_and_never_over_grants(
    tmp_path: Path, vendor_key: Ed25519PrivateKey, slow: bool
) -> None:
    """With ``slow``, every store write waits ``SLOW_FSYNC`` first: reservation raises, lease
    batches and borrows interleave with the checkouts and kills (issue 12.1: with fsyncs
    delayed 0.25 s, clients believed they held 9 seats of 8)."""
    rng = random.Random(SEED + slow)
    lease = SLOW_LEASE if slow else LEASE
    products = (ProductEntitlement("cad", seats=SEATS, borrowable=2, max_borrow_days=7),)
    license = tmp_path / "net.lic"
    license.write_bytes(
        netkey.issue_network_key(
            vendor_key, customer="Crash Test Office", expires=TODAY + dt.timedelta(days=30),
            borrow_kind="act", products=products, issued=TODAY,
        )
    )  # fmt: skip
    pub = tmp_path / "vendor.pub"
    pub.write_bytes(signing.public_to_pem(vendor_key.public_key()))
    port = free_port()
    server = ServerProcess(license, pub, tmp_path / "data", port, slow)
    clients = [
        Client(("127.0.0.1", port), user=f"user{i}", host=f"ws{i}", connect_timeout=1.0)
        for i in range(3)
    ]
    laptops = [Laptop(tmp_path, f"lt{i}") for i in range(2)]
    told: dict[str, str] = {}  # borrow id -> laptop told about it (and not returned)
    violations: list[str] = []
    observations = 0
    granted = 0  # seats and borrowed files granted so far
    stats: dict[str, float] = {"seats": 0, "files": 0, "picked_up": 0, "waited_s": 0}

    def believed() -> int:
        return sum(len(c.seats) for c in clients) + sum(lt.holds_file() for lt in laptops)

    async def monitor() -> None:
        nonlocal observations
        while True:
            n = believed()
            observations += 1
            if n > SEATS:
                violations.append(f"{n} seats believed held of {SEATS}")
            await asyncio.sleep(0.005)

    async def status() -> dict[str, Any]:
        return await clients[0].status()

    async def until_no_seat_is_left_behind(timeout: float) -> None:
        """Wait (bounded) until the server holds no seat for a reclaim still to come and counts
        none in use beyond those the clients hold: what a fixed wait past the reclaim window
        gave, without the wait when every lease was reclaimed."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            cad = (await status())["products"][0]
            if cad["held"] == 0 and cad["in_use"] <= sum(len(c.seats) for c in clients):
                return
            await asyncio.sleep(0.1)

    async def op(kind: str) -> None:
        nonlocal granted
        client = rng.choice(clients)
        laptop = rng.choice(laptops)
        try:
            if kind == "checkout":
                await client.acquire("cad")
                granted += 1
            elif kind == "release" and client.seats:
                seat: Seat = rng.choice(list(client.seats.values()))
                await client.release(seat)
            elif kind in ("borrow", "return") and not laptop.busy:
                laptop.busy = True
                try:
                    await laptop_op(kind, laptop, client)
                finally:
                    laptop.busy = False
        except LanlicError:
            pass  # refusals, and the server dying under the request

    async def laptop_op(kind: str, laptop: Laptop, client: Client) -> None:
        nonlocal granted
        if kind == "borrow" and not laptop.holds_file() and not laptop.returning:
            rid = os.urandom(16)
            laptop.inflight = rid
            lic = await laptop.borrower.borrow(client, "cad", days=3, request_id=rid)
            laptop.inflight = None
            told[lic.borrow_id] = laptop.name
            granted += 1
        elif kind == "return" and laptop.holds_file():
            data = laptop.borrower.home().borrowed("cad")  # type: ignore[union-attr]
            assert data is not None
            borrow_id = json.loads(json.loads(data)["payload"])["borrow_id"]
            laptop.returning = True
            await laptop.borrower.return_(client, "cad")
            laptop.returning = False
            told.pop(borrow_id, None)

    async def worker() -> None:
        kinds = ["checkout", "checkout", "checkout", "release", "release", "borrow", "return"]
        for _ in range(50):  # bounded; the kill ends it much sooner
            await op(rng.choice(kinds))
            await asyncio.sleep(rng.uniform(0, 0.02))
            if server.proc is None or server.proc.returncode is not None:
                return

    watcher = asyncio.create_task(monitor())
    try:
        await server.start()
        for c in clients:
            await c.connect()
        for lt in laptops:
            await lt.borrower.enroll(clients[0], lt.name, lt.name)

        for round_no in range(KILLS):
            # Work, and a SIGKILL at a random moment in the middle of it.
            ops = [asyncio.create_task(worker()) for _ in range(3)]
            # The kill's random moment counts from the round's first grant (or 5 s: seats held
            # for a reclaim to come may refuse every checkout a while), so that a slow machine's
            # rounds are not all killed before any work was answered.
            before, waited = granted, 0
            while granted == before and believed() < SEATS and waited < 1000:
                if all(o.done() for o in ops):
                    break
                await asyncio.sleep(0.005)
                waited += 1
            stats["waited_s"] += waited * 0.005
            # (Longer with the slowed store: a grant past the reservation waits 0.25 s.)
            await asyncio.sleep(rng.uniform(0.1, 0.8) if slow else rng.uniform(0.02, 0.3))
            await server.kill()
            await asyncio.wait(ops, timeout=15)
            # Nothing changes the clients' seats from here but the server coming back.
            held_before = {id(c): set(c.seats) for c in clients}
            seat_objs = {k: v for c in clients for k, v in c.seats.items()}
            stats["seats"] += sum(len(x) for x in held_before.values())
            stats["files"] += sum(lt.holds_file() for lt in laptops)
            await server.start()

            # The clients reconnect and reclaim by themselves.
            async with asyncio.timeout(lease):
                while not all(
                    c.connected and all(s.epoch == c.epoch for s in c.seats.values())
                    for c in clients
                ):
                    await asyncio.sleep(0.02)
            for c in clients:
                gone = held_before[id(c)] - set(c.seats)
                assert not gone, (
                    f"round {round_no}: seats lost across the restart: "
                    f"{[str(seat_objs[x].reason) for x in gone]}"
                )
                assert set(c.seats) == held_before[id(c)]
            for lt in laptops:
                if lt.returning:  # finish the return that was cut off
                    await lt.borrower.return_(clients[0], "cad")
                    lt.returning = False
                    for b, name in list(told.items()):
                        if name == lt.name:
                            del told[b]

            if round_no % 5 == 4:
                # Now and then the server stays up until seats held for leases nobody came back
                # for have returned to the pool (they would only pile up if the server were
                # killed every second): at most past the reclaim window, as long as any is left.
                await until_no_seat_is_left_behind(lease + 1.2)
            listed = {b["borrow_id"]: b["user"] for b in (await status())["borrows"]}
            missing = set(told) - set(listed)
            assert not missing, f"round {round_no}: borrows told to clients are gone: {missing}"
            for borrow_id, user in listed.items():
                if borrow_id in told:
                    continue
                laptop = next(lt for lt in laptops if lt.name == user)
                assert laptop.inflight is not None, (
                    f"round {round_no}: borrow {borrow_id} exists that no client was told about"
                    " and none can pick up"
                )
                lic = await laptop.borrower.borrow(
                    clients[0], "cad", days=3, request_id=laptop.inflight
                )
                assert lic.borrow_id == borrow_id, "a retry must get the same borrow"
                laptop.inflight = None
                told[borrow_id] = laptop.name
                stats["picked_up"] += 1
            for lt in laptops:
                lt.inflight = None  # an unanswered borrow that was never made: nothing to pick up
            cad = (await status())["products"][0]
            assert cad["in_use"] + cad["borrowed"] <= SEATS
            assert not violations, violations[:3]
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        for c in clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), 5)
        await server.kill()
    print(f"kill9: {KILLS} kills, seed {SEED}, {observations} observations, {stats}")
    assert observations > KILLS * 10
    # The rounds did work: seats and files out at the kills. With the slowed store every grant
    # past the reservation waits 0.25 s and every borrow 0.25 s more, so fewer are out when the
    # kill comes (seats 31-45 and files 4-10 of 50 kills measured on loaded machines; plain
    # store seats 73-74 and files 15-18).
    seats, files = (KILLS // 2, KILLS / 20) if slow else (KILLS, KILLS / 10)
    assert stats["seats"] > seats and stats["files"] >= files, stats
    assert not violations, violations[:3]


@pytest.fixture(autouse=True)
def _client_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANLIC_CLIENT_DATA", str(tmp_path / "unused-home"))
