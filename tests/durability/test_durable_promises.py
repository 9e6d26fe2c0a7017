"""Durability promises checked on the real database and the real process:

* the store runs WAL with ``synchronous=FULL`` (on its own writing connection and in the file);
* an enrollment's, a borrow's and a return's write is fsynced before its commit runs (the commit
  makes the yes): the fsync calls are counted with strace between the write and the commit;
* the server answers a borrow only once its write has returned;
* a SIGKILL costs at most the last batch of history rows: what was flushed is all there, and
  what is missing is only the newest rows (never a hole).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from durable_cli import Procs
from helpers import RawPeer

from lanlic.core import borrowing, signing
from lanlic.net.client import Client
from lanlic.store import Store

TESTS = Path(__file__).resolve().parents[1]


def test_the_store_runs_wal_with_synchronous_full(tmp_path: Path) -> None:
    store = Store(tmp_path / "lanlic.db")
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.set_meta("x", "1")  # a write: the WAL exists and the mode is in the file
    store.close()
    assert (tmp_path / "lanlic.db").read_bytes()[18:20] == b"\x02\x02"  # WAL read/write versions
    again = Store(tmp_path / "lanlic.db")
    assert again._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    again.close()


# ------------------------------------------------------------------ fsync before the yes

SCRIPT = r"""
import os, sys
from pathlib import Path
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_lending import Laptop, Site
from lanlic.core import netkey

def mark(name):
    os.access("/lanlic-mark/" + name, os.F_OK)  # a syscall strace shows: a marker

site = Site(Path(sys.argv[1]), netkey.generate_vendor_key(), Ed25519PrivateKey.generate())
laptop = Laptop()

def step(name, msg):
    reply = site.service.handle(site.session, msg, 0.0, 1_800_000_000.0)
    durable = reply.durable
    mark(name + "-write")
    value = durable.write(site.store)
    mark(name + "-commit")
    answer = durable.commit(value)
    mark(name + "-done")
    return answer

step("enroll", laptop.enroll_msg())
borrowed = step("borrow", laptop.borrow_msg(site.server_id))
step("return", laptop.return_msg(site.server_id, borrowed.borrow_id))
print(type(borrowed).__name__)
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace to count fsync calls")
def test_enrollment_borrow_and_return_are_fsynced_before_their_commit(tmp_path: Path) -> None:
    script = tmp_path / "durable_steps.py"
    script.write_text(SCRIPT, "utf-8")
    trace = tmp_path / "trace.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(TESTS.parent), str(TESTS), str(TESTS / "core"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    db = tmp_path / "lanlic.db"
    out = subprocess.run(
        ["strace", "-f", "-y", "-o", str(trace), "-e",
         "trace=fsync,fdatasync,sync_file_range,access,faccessat,faccessat2",
         sys.executable, str(script), str(db)],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "Borrowed"
    lines = trace.read_text().splitlines()

    def between(start: str, end: str) -> list[str]:
        i = next(n for n, x in enumerate(lines) if f"/lanlic-mark/{start}" in x)
        j = next(n for n, x in enumerate(lines) if f"/lanlic-mark/{end}" in x)
        return [x for x in lines[i:j] if re.search(r"\b(fsync|fdatasync)\(", x)]

    for step in ("enroll", "borrow", "return"):
        synced = between(f"{step}-write", f"{step}-commit")
        wal = [x for x in synced if f"{db}-wal>" in x]
        assert wal, f"{step}: no fsync of the WAL before its commit:\n" + "\n".join(synced)
        # and nothing the yes depends on is left for after it
        assert not [x for x in between(f"{step}-commit", f"{step}-done") if f"{db}" in x]


async def test_the_server_answers_a_borrow_only_after_its_write_returned(
    start_server: Any, tmp_path: Path
) -> None:
    """The write is held up on the store's thread: no answer comes until it is let go."""
    release = threading.Event()
    writing = threading.Event()

    class SlowStore(Store):
        def add_borrow(self, b: Any) -> None:
            writing.set()
            release.wait(30)
            super().add_borrow(b)

    store = SlowStore(tmp_path / "lanlic.db")
    server = await start_server(store=store)
    server_id = server.service.server_id
    key = Ed25519PrivateKey.generate()
    pub = signing.public_bytes(key.public_key())
    reader, writer = await asyncio.open_connection(*server.address)
    peer = RawPeer(reader, writer)
    try:
        assert (await peer.hello())["t"] == "welcome"
        req = borrowing.make_enrollment_request(key, "act", "mfp:aaaa", "ann", "lt", time.time())
        assert (await peer.request("enroll", request=req))["t"] == "enrolled"
        rid = os.urandom(16)
        proof = signing.sign(
            key,
            signing.DOMAIN_CONTAINER_REQUEST,
            borrowing.container_proof_payload("borrow", server_id, [rid, "cad", "16", 3.0]),
        )
        borrow = {"t": "borrow", "id": 9, "request_id": rid, "product": "cad", "days": 3.0,
                  "container_key": pub, "proof": proof, "version": "16"}  # fmt: skip
        await peer.send(borrow)
        started = await asyncio.get_running_loop().run_in_executor(None, writing.wait, 30)
        assert started, peer.inbox
        with pytest.raises(TimeoutError):  # no yes while the write has not returned
            await peer.recv(timeout=0.5)
        assert server.service.pool.borrowed("cad") == 1  # the seat is reserved meanwhile
        release.set()
        borrowed = await peer.recv(timeout=30)
        assert (borrowed["t"], borrowed["id"]) == ("borrowed", 9), borrowed
        assert store.borrow(borrowed["borrow_id"]) is not None
    finally:
        release.set()
        peer.close()


# ------------------------------------------------------------------ history after SIGKILL


def test_a_sigkill_costs_at_most_the_newest_history_rows(
    procs: Procs, network_key: Path, vendor: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server, port, _ = procs.serve(network_key, vendor, data, "--lease", "30")
    done: list[str] = []  # the user of each checkout, in order

    async def checkouts(n: int, prefix: str, pause: float) -> None:
        for i in range(n):
            client = Client(("127.0.0.1", port), user=f"{prefix}{i}", host="ws")
            await client.connect()
            try:
                seat = await client.acquire("cad")
                await client.release(seat)
            finally:
                await client.close()
            done.append(f"{prefix}{i}")
            await asyncio.sleep(pause)

    asyncio.run(checkouts(5, "early", 0.0))
    early = list(done)
    time.sleep(3.0)  # several housekeeping turns: the early rows are flushed
    asyncio.run(checkouts(15, "late", 0.05))
    server.stop(signal.SIGKILL)

    store = Store(data / "lanlic.db")
    users = [r.user for r in store.history() if r.event == "checkout"]
    store.close()
    assert users[: len(early)] == early, users  # all that was flushed is there, in order
    assert users == done[: len(users)], (users, done)  # only a suffix is missing, no hole
