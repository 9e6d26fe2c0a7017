"""Attacks: each is refused with a clear reason, or is a documented limit pinned by a test.

Covered elsewhere, and not repeated here:

* A rogue server announcing the same site with another key: refused after pinning, a hard
  ``server_key_changed`` naming both fingerprints (tests/discovery/test_discover_loopback.py
  ``test_rogue_server_is_refused_after_a_pin``; ``test_cli_finds_pins_and_refuses_on_loopback``
  for the CLI); one that cannot sign the nonce
  (``test_server_that_cannot_sign_the_nonce_is_refused``).
* A lease of another client id: renew and release answer ``lease_unknown``
  (tests/net/test_floating.py ``test_renew_or_release_of_unknown_or_foreign_lease_is_refused``).
* The admin page's holders (with lease ids) need a session (tests/admin/test_api.py
  ``test_every_state_change_is_refused_without_a_session_or_csrf_token``).
* A network key with a raised seat count, a changed expiry, another vendor's signature: every
  byte flip, relabelled key ids, cross-domain signatures (tests/core/test_netkey.py), and
  ``lanlic serve`` refusing the raised count end to end (tests/test_cli.py
  ``test_serve_refuses_a_bad_network_key[edited]``: 3 seats edited to 9).
* A borrowed file copied to another machine (tests/net/test_borrowing.py
  ``test_portable_key_works_on_another_machine_act_file_does_not``) or used with the clock set
  back (``test_a_clock_set_back_is_refused``).

How each defence here was checked to be load-bearing (break it, see the test fail, restore it):
the hello nonce memory (a replayed session is then accepted); ``sign``/``verify`` without the
domain prefix (the signing-oracle test fails at the signature level); the ``present`` check in
``Client.acquire`` and ``lanlic checkout`` (a returned borrow restored from a backup is used);
``take_borrowed(force=True)`` counting an adopted borrow (a seat is then over-granted).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import DEFAULT_PRODUCTS, make_key

from lanlic.core import borrowing, netkey, signing
from lanlic.core.borrowing import FileCheck
from lanlic.core.service import LicenseService, handshake_payload
from lanlic.errors import (
    BorrowedFileError,
    BorrowRefused,
    KeyBadSignature,
    NoSeat,
    ServerUntrusted,
)
from lanlic.laptop.borrower import Borrower
from lanlic.laptop.machine import machine_fingerprint
from lanlic.net.client import Client
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.proto.framing import FrameDecoder, encode_frame
from lanlic.store import Store

DAY = 86400.0


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


class Site:
    """A licence server's data folder (database and server key) that outlives server runs."""

    def __init__(self, start_server: Any, db: Path, key: Ed25519PrivateKey | None = None) -> None:
        self._start = start_server
        self.db = db
        self.key = key or Ed25519PrivateKey.generate()
        self.server: LicenseServer | None = None

    async def start(self) -> LicenseServer:
        self.server = await self._start(
            store=Store(self.db), server_key=self.key,
            limits=ServerLimits(housekeeping_interval=0.05),
        )  # fmt: skip
        return self.server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            assert self.server.store is not None
            self.server.store.close()
            self.server = None


def laptop(tmp_path: Path, name: str) -> Borrower:
    return Borrower(tmp_path / f"home-{name}", machine_fp=f"mfp:{name}")


# ------------------------------------------------------------------------ stolen lease ids (5)


async def test_a_lease_belongs_to_its_client_id_not_to_the_connection(
    start_server: Any, raw_peer: Any
) -> None:
    server = await start_server()
    alice = await raw_peer(server.address)
    lease = (await alice.request("checkout", product="cad"))["lease"]
    # Another client id, even knowing the lease id: not its seat.
    mallory = await raw_peer(server.address)
    for t in ("renew", "release"):
        reply = await mallory.request(t, leases=[lease])
        assert reply["leases"] == [] and reply["lost"] == [
            {"lease": lease, "code": "lease_unknown"}
        ]
    assert (await mallory.request("bye"))["released"] == 0
    assert server.service.pool.lease(lease) is not None
    # The same client id on a second connection is the same client (a reconnect): it may renew
    # and release. That is safe because a client id is 128 random bits that the server never
    # shows anyone (below); on a LAN that is sniffed, see the README's Security model.
    again = await raw_peer(server.address, hello=False)
    again.client_id = alice.client_id
    assert (await again.hello())["t"] == "welcome"
    assert (await again.request("renew", leases=[lease]))["leases"] == [lease]
    assert (await again.request("release", leases=[lease]))["leases"] == [lease]
    assert server.service.pool.in_use("cad") == 0


async def test_no_client_id_or_lease_id_is_shown_to_anyone(
    start_server: Any, raw_peer: Any, tmp_path: Path
) -> None:
    store = Store(tmp_path / "lanlic.db")
    server = await start_server(store=store)
    try:
        holders = [await raw_peer(server.address) for _ in range(3)]
        leases = [(await h.request("checkout", product="cad"))["lease"] for h in holders]
        secrets_ = [h.client_id for h in holders] + leases
        # A nosy peer asks for the status: the raw reply frame names no client id and no lease.
        nosy = await raw_peer(server.address)
        await nosy.send({"t": "status", "id": 1})
        data = await asyncio.wait_for(nosy.reader.read(1 << 20), 5)
        assert [h["user"] for h in FrameDecoder().feed(data)[0]["products"][0]["holders"]]
        for secret in secrets_:
            assert secret not in data and secret.hex().encode() not in data
        await holders[0].request("release", leases=[leases[0]])
        await server.flush_history()
        for row in store.history():
            text = repr(row).encode()
            assert not any(s.hex().encode() in text for s in secrets_), row
    finally:
        await server.stop()
        store.close()


# ------------------------------------------------------------------------------ replays (6)


class Recorder:
    """A TCP relay that records what a client sends to the server: a LAN sniffer's capture."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sent = bytearray()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, record: bool) -> None:
            try:
                while data := await r.read(65536):
                    if record:
                        self.sent += data
                    w.write(data)
            except OSError:
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w, True), pipe(up_r, writer, False))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_recorded_session_played_back_is_refused_at_its_hello(
    start_server: Any, raw_peer: Any
) -> None:
    server = await start_server()
    pool = server.service.pool
    recorder = Recorder(server.address)
    address = await recorder.start()
    try:
        victim = Client(address, user="victim")
        await victim.connect()
        seat = await victim.acquire("cad")
        await victim.renew_now()
        await wait_until(lambda: len(recorder.sent) > 0)
        capture = bytes(recorder.sent)  # hello, checkout, renew
        assert pool.in_use("cad") == 1

        # Played back word for word on a fresh connection: the hello's nonce was used before by
        # this client id, so the session is refused before any of its requests is read.
        replay = await raw_peer(server.address, hello=False)
        await replay.send_raw(capture)
        reply = await replay.recv()
        assert (reply["t"], reply["code"]) == ("error", "replayed_hello")
        assert "nonce" in reply["message"]
        assert await replay.closed_by_server()
        assert pool.in_use("cad") == 1 and not seat.lost
        # The victim's own reconnects make fresh nonces and are welcome.
        await victim.close()
        assert pool.in_use("cad") == 0
        await wait_until(lambda: not server.connections)
        # Once the victim is gone (no connection, no lease), its client id is forgotten: a late
        # replay gets a session of its own, with nothing of the victim's left to touch. The
        # seat its replayed checkout takes is renewed by nobody (the replayed renew names the
        # victim's old lease) and returns at the end of its lease: what any LAN peer can do.
        late = await raw_peer(server.address, hello=False)
        await late.send_raw(capture)
        assert (await late.recv())["t"] == "welcome"
        assert (await late.recv())["t"] == "granted"
        assert (await late.recv())["lost"][0]["lease"] == seat.lease_id
    finally:
        await recorder.stop()


async def test_a_recorded_welcome_cannot_be_replayed_to_a_client(
    start_server: Any, raw_peer: Any
) -> None:
    real = await start_server()
    async with Client(real.address):
        pass  # the client pins the real server's key
    # An impostor recorded a genuine welcome (signed by the pinned key, over another nonce)
    # and plays it back to every hello. It holds no private key.
    peer = await raw_peer(real.address, hello=False)
    recorded = await peer.request(
        "hello", versions=[1], client_id=peer.client_id, user="u", host="h", nonce=os.urandom(32)
    )

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            items = FrameDecoder().feed(await reader.read(65536))
            writer.write(encode_frame({**recorded, "id": items[0]["id"]}))
            await writer.drain()
            await reader.read(65536)
        finally:
            writer.close()

    rogue = await asyncio.start_server(impostor, "127.0.0.1", 0)
    try:
        with pytest.raises(ServerUntrusted) as info:
            await Client(rogue.sockets[0].getsockname()[:2]).connect()
        assert info.value.code == "server_untrusted"
    finally:
        rogue.close()
        await rogue.wait_closed()


async def test_a_replayed_borrow_gets_the_same_borrow_never_a_second_seat(
    start_server: Any, raw_peer: Any, tmp_path: Path
) -> None:
    site = Site(start_server, tmp_path / "lanlic.db")
    server = await site.start()
    try:
        ann = laptop(tmp_path, "ann")
        async with Client(server.address) as c:
            await ann.enroll(c, "ann", "lt")
        home = ann.home()
        assert home is not None
        request_id = secrets.token_bytes(16)
        proof = home.proof("borrow", server.service.server_id, [request_id, "cad", "", 3.0])
        frame = {"t": "borrow", "request_id": request_id, "product": "cad", "days": 3.0,
                 "container_key": home.public_key, "proof": proof}  # fmt: skip
        replies = []
        for _ in range(3):  # the original, then a replay on each of two fresh connections
            peer = await raw_peer(server.address)
            replies.append(await peer.request(**frame))
        assert {r["t"] for r in replies} == {"borrowed"}
        assert len({(r["borrow_id"], r["file"]) for r in replies}) == 1
        assert server.service.pool.borrowed("cad") == 1
    finally:
        await site.stop()


# -------------------------------------------------------------------------- signing oracle (7)


@pytest.mark.parametrize("same_key", [False, True], ids=["server-key", "server-key-is-vendor-key"])
async def test_a_crafted_nonce_never_yields_a_signature_for_a_document(
    start_server: Any, raw_peer: Any, vendor_key: Ed25519PrivateKey, tmp_path: Path, same_key: bool
) -> None:
    # A careless vendor may even run a server with its vendor key: the handshake signature must
    # still not pass for a network key.
    server_key = vendor_key if same_key else Ed25519PrivateKey.generate()
    service = LicenseService(make_key(vendor_key), server_key)
    server = await start_server(service=service)
    pub = server_key.public_key()
    # Real documents of each kind, to borrow their payloads from.
    container = Ed25519PrivateKey.generate()
    container_pub = signing.public_bytes(container.public_key())
    request = borrowing.read_enrollment_request(
        borrowing.make_enrollment_request(container, "act", "mfp:x", "u", "h", 1.8e9)
    )
    documents = {
        "borrowed": borrowing.issue_borrowed_file(
            server_key, borrow_id="b-1", product="cad", versions=None, kind="act",
            server_id=service.server_id, customer="ACME Engineering",
            container_key=container_pub, machine_fp="mfp:x", user="u", host="h",
            start=1.8e9, end=1.8e9 + DAY,
        ),
        "enrollment": borrowing.make_enrollment_response(
            server_key, request, service.server_id, "ACME Engineering", 1.8e9
        ),
        "network_key": netkey.issue_network_key(
            vendor_key, customer="ACME Engineering", expires=make_key(vendor_key).expires,
            borrow_kind="act", products=DEFAULT_PRODUCTS, issued=make_key(vendor_key).issued,
        ),
    }  # fmt: skip
    domains = {
        "borrowed": signing.DOMAIN_BORROWED_FILE,
        "enrollment": signing.DOMAIN_ENROLLMENT,
        "network_key": signing.DOMAIN_NETWORK_KEY,
    }
    for kind, doc_bytes in documents.items():
        doc = json.loads(doc_bytes)
        payload = doc["payload"].encode()
        # The attacker picks the nonce (32 bytes) and client id (16) to be that payload's
        # first bytes, and has the server sign them in a welcome.
        peer = await raw_peer(server.address, hello=False)
        peer.client_id = payload[32:48]
        welcome = await peer.request(
            "hello", versions=[1], client_id=payload[32:48], user="u", host="h",
            nonce=payload[:32],
        )  # fmt: skip
        sig = welcome["signature"]
        signed = handshake_payload(payload[:32], payload[32:48], service.server_id,
                                   welcome["vendor_fp"])  # fmt: skip
        assert signing.verify(pub, signing.DOMAIN_HANDSHAKE, signed, sig)  # the control
        # At the signature level: in no other domain does it pass, neither for the bytes it
        # was made over nor for the document's payload.
        for domain in signing.DOMAINS - {signing.DOMAIN_HANDSHAKE}:
            for candidate in (signed, payload, payload[:32], payload[:48]):
                assert not signing.verify(pub, domain, candidate, sig), (kind, domain)
        # At the document level: the real payload with the welcome's signature is refused.
        forged = json.dumps({**doc, "signature": base64.b64encode(sig).decode()}).encode()
        if kind == "borrowed":
            check = FileCheck({signing.public_bytes(pub)}, container_pub, "mfp:x", 1.8e9 + 1,
                              None, ())  # fmt: skip
            assert borrowing.verify_borrowed_file(doc_bytes, check).borrow_id == "b-1"
            with pytest.raises(BorrowedFileError) as refused:
                borrowing.verify_borrowed_file(forged, check)
            assert refused.value.code == "file_tampered"
        elif kind == "enrollment":
            assert borrowing.read_enrollment_response(doc_bytes, container_pub)
            with pytest.raises(BorrowedFileError) as refused:
                borrowing.read_enrollment_response(forged, container_pub)
            assert refused.value.code == "file_tampered"
        else:
            key = make_key(vendor_key)
            assert netkey.verify_network_key(doc_bytes, vendor_key.public_key(), key.issued)
            with pytest.raises(KeyBadSignature):
                netkey.verify_network_key(forged, vendor_key.public_key(), key.issued)
        assert signing.verify(
            pub if kind != "network_key" else vendor_key.public_key(),
            domains[kind], payload, base64.b64decode(doc["signature"]),
        )  # fmt: skip


# --------------------------------------------------------------------- borrowed-file tampering (8)


def _issued(server_key: Ed25519PrivateKey, container_pub: bytes, **changes: Any) -> bytes:
    fields: dict[str, Any] = dict(
        borrow_id="b-7", product="cad", versions=("10", "16"), kind="act",
        server_id=signing.fingerprint(server_key.public_key()), customer="ACME Engineering",
        container_key=container_pub, machine_fp="mfp:x", user="u", host="h", start=1.8e9,
        end=1.8e9 + 3 * DAY,
    )  # fmt: skip
    fields.update(changes)
    return borrowing.issue_borrowed_file(server_key, **fields)


def test_a_borrowed_file_tampered_with_in_any_way_is_refused() -> None:
    server = Ed25519PrivateKey.generate()
    container_pub = signing.public_bytes(Ed25519PrivateKey.generate().public_key())
    trusted = {signing.public_bytes(server.public_key())}
    check = FileCheck(trusted, container_pub, "mfp:x", 1.8e9 + DAY, 1.8e9, ())
    good = _issued(server, container_pub)
    assert borrowing.verify_borrowed_file(good, check).borrow_id == "b-7"

    def refused(data: bytes) -> str:
        with pytest.raises(BorrowedFileError) as info:
            borrowing.verify_borrowed_file(data, check)
        return info.value.code

    # Any single bit flipped, anywhere in the file.
    codes = set()
    for i in range(len(good)):
        for bit in range(8):
            codes.add(refused(good[:i] + bytes([good[i] ^ (1 << bit)]) + good[i + 1 :]))
    assert codes == {"file_tampered"}
    # Cut short anywhere.
    assert {refused(good[:n]) for n in range(0, len(good) - 2, 7)} == {"file_tampered"}
    doc = json.loads(good)
    sig = base64.b64decode(doc["signature"])

    def with_doc(**changes: Any) -> bytes:
        return json.dumps({**doc, **changes}).encode()

    # A truncated signature, or none.
    for short in (sig[:63], sig[:32], b""):
        assert refused(with_doc(signature=base64.b64encode(short).decode())) == "file_tampered"
    # The payload naming a key nobody knows (the signature no longer matches the key it names).
    body = json.loads(doc["payload"])
    body["server_key"] = base64.b64encode(os.urandom(32)).decode()
    assert refused(with_doc(payload=json.dumps(body, sort_keys=True))) == "file_tampered"
    # Made and signed by another server: genuine, but not a server this laptop enrolled with.
    other = Ed25519PrivateKey.generate()
    assert refused(_issued(other, container_pub)) == "file_untrusted_server"
    # Another server's signature on this server's file.
    other_sig = signing.sign(other, signing.DOMAIN_BORROWED_FILE, doc["payload"].encode())
    assert refused(with_doc(signature=base64.b64encode(other_sig).decode())) == "file_tampered"


async def test_a_home_restored_from_a_backup_after_a_return_is_caught_once_online(
    start_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setenv("LANLIC_MACHINE_ID_FILE", str(machine_id))
    home = tmp_path / "home"
    monkeypatch.setenv("LANLIC_CLIENT_DATA", str(home))
    ann = Borrower(home, machine_fp=machine_fingerprint())
    site = Site(start_server, tmp_path / "lanlic.db")
    server = await site.start()
    pool = server.service.pool
    where = f"{server.address[0]}:{server.address[1]}"
    try:
        async with Client(server.address) as c:
            await ann.enroll(c, "ann", "lt")
            lic = await ann.borrow(c, "cad", days=5)
        backup = tmp_path / "backup"
        shutil.copytree(home, backup)  # the whole container home, before the return
        async with Client(server.address) as c:
            assert await ann.return_(c, "cad") is True
        assert pool.borrowed("cad") == 0

        def restore() -> None:
            shutil.rmtree(home)
            shutil.copytree(backup, home)

        # Offline, a restored copy of the whole folder works again: the signed local state is
        # the old one too, and nothing on the laptop can tell. This is the documented limit.
        restore()
        assert ann.offline("cad").borrow_id == lic.borrow_id
        # Online, `lanlic checkout` shows the file to the server first, learns the borrow is
        # over, deactivates the file and takes a network seat instead.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lanlic.cli", "checkout", "cad", "--server", where,
            "--hold", "0", "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert events[0]["event"] == "checked_out" and events[0]["source"] == "network", events
        assert b"is over" in err
        restored = ann.home()
        assert restored is not None and restored.borrowed("cad") is None
        assert lic.borrow_id in restored.state().returned
        # The same through the library (an application with Client(borrowed=...)) and `info`.
        restore()
        async with Client(server.address, borrowed=ann) as c:
            seat = await c.acquire("cad")
            assert seat.source == "network" and pool.in_use("cad") == 1
        restore()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lanlic.cli", "info", "--server", where, "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        row = next(r for r in json.loads(out)["products"] if r["product"] == "cad")
        assert row["state"] == "Network", row
        with pytest.raises(BorrowRefused):
            ann.offline("cad")
        assert pool.borrowed("cad") == 0
    finally:
        await site.stop()


# ------------------------------------------------- a server database restored from a backup (10)


def _restore(backup: Path, db: Path) -> None:
    """What an admin does by hand: the database files go, the backup takes their place."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, db)


async def test_a_borrow_unknown_to_a_restored_database_is_counted_and_never_over_granted(
    start_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="lanlic.server")
    site = Site(start_server, tmp_path / "lanlic.db")
    server = await site.start()
    ann, bob = laptop(tmp_path, "ann"), laptop(tmp_path, "bob")
    async with Client(server.address) as c:
        await ann.enroll(c, "ann", "lt-ann")
        await ann.borrow(c, "cad", days=3)
    backup = tmp_path / "nightly.db"
    await server.store_call(lambda store: store.backup(backup))
    # After the backup: Bob enrolls and borrows for a week.
    async with Client(server.address) as c:
        await bob.enroll(c, "bob", "lt-bob")
        bob_lic = await bob.borrow(c, "cad", days=7)
    await site.stop()
    # The disk dies; the admin restores last night's backup. Bob's borrow is not in it.
    _restore(backup, site.db)
    server = await site.start()
    pool = server.service.pool
    assert pool.borrowed("cad") == 1
    try:
        async with Client(server.address) as x, Client(server.address) as y:
            held = [await x.acquire("cad"), await y.acquire("cad")]  # every seat is taken now
            assert pool.free("cad") == 0
            # Bob comes back: his laptop shows its file, the server counts it at once (over
            # its seats), writes it down, and tells the admin.
            async with Client(server.address) as c:
                assert await bob.check_online(c) == {"cad": "adopted"}
                assert await bob.check_online(c) == {"cad": "active"}
                assert await ann.check_online(c) == {"cad": "active"}
            assert (pool.in_use("cad"), pool.borrowed("cad")) == (2, 2)
            pool.check_invariant()
            assert any(
                "borrow_adopted" in r.getMessage() and bob_lic.borrow_id in r.getMessage()
                for r in caplog.records
            )
            await server.flush_history()
            assert server.store is not None
            [row] = [r for r in server.store.history() if r.event == "borrow_adopted"]
            assert row.user == "bob" and "over its seats" in row.detail
            # Nothing new is granted until the product is back within its seats.
            async with Client(server.address) as z:
                with pytest.raises(NoSeat):
                    await z.acquire("cad")
                await x.release(held[0])  # back to exactly the seats: still nothing free
                with pytest.raises(NoSeat):
                    await z.acquire("cad")
                status = await z.status()
                cad = next(p for p in status["products"] if p["name"] == "cad")
                assert (cad["in_use"], cad["borrowed"], cad["free"]) == (1, 2, 0)
                await y.release(held[1])
                assert (await z.acquire("cad")).product == "cad"  # now one is
                with pytest.raises(NoSeat):
                    await z.acquire("cad")
            pool.check_invariant()
        # Durable: after another restart the adopted borrow (and Bob's enrollment, which the
        # backup lacked too) are on record, and the borrow still ends when its file says.
        await site.stop()
        server = await site.start()
        assert server.service.pool.borrowed("cad") == 2
        assert server.service.desk.active[bob_lic.borrow_id].end == bob_lic.end
        async with Client(server.address) as c:
            assert await bob.check_online(c) == {"cad": "active"}
            assert await bob.return_(c, "cad") is True
        assert server.service.pool.borrowed("cad") == 1
    finally:
        await site.stop()


async def test_present_refuses_files_it_did_not_issue_and_presenters_without_the_key(
    start_server: Any, raw_peer: Any, tmp_path: Path
) -> None:
    site = Site(start_server, tmp_path / "lanlic.db")
    server = await site.start()
    try:
        sid = server.service.server_id
        container = Ed25519PrivateKey.generate()
        container_pub = signing.public_bytes(container.public_key())
        proof = signing.sign(
            container, signing.DOMAIN_CONTAINER_REQUEST,
            borrowing.container_proof_payload("present", sid, ["b-7"]),
        )  # fmt: skip
        peer = await raw_peer(server.address)
        # Another server's genuine file, even with a good proof: not ours to count.
        other = _issued(Ed25519PrivateKey.generate(), container_pub, end=9e9)
        reply = await peer.request("present", file=other, proof=proof)
        assert (reply["t"], reply["code"]) == ("error", "borrow_unknown")
        # Our file, shown by someone without its container key (a copied file).
        ours = _issued(site.key, container_pub, end=9e9, server_id=sid)
        reply = await peer.request("present", file=ours, proof=os.urandom(64))
        assert (reply["t"], reply["code"]) == ("error", "bad_proof")
        # Garbage.
        reply = await peer.request("present", file=b"{}", proof=proof)
        assert (reply["t"], reply["code"]) == ("error", "borrow_unknown")
        assert server.service.pool.borrowed("cad") == 0
        # Our file, its container's proof: adopted (and a replay of it changes nothing more).
        for state in ("adopted", "active"):
            reply = await peer.request("present", file=ours, proof=proof)
            assert (reply["t"], reply["state"]) == ("presented", state)
        assert server.service.pool.borrowed("cad") == 1
    finally:
        await site.stop()
