"""Bad input: every kind of hostile frame gets its stable error code, or a closed connection,
while the server keeps serving everyone else and loses nothing (issue 8, "Bad input").

Real sockets on 127.0.0.1 throughout. The in-process cases pin each outcome exactly; the
process case measures what a hostile volley costs a real ``lanlic serve`` (peak memory, and
that its log holds one line per incident and no traceback). The mDNS case announces malformed
and oversized TXT records on loopback next to a real server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import zeroconf._core
from adversarial_helpers import (
    PeerFactory,
    ServeProcess,
    connect,
    frame,
    header,
    pack,
    proc_status,
    raw_map,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import RawPeer
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from lanlic.core import borrowing, signing
from lanlic.core.service import LicenseService
from lanlic.discovery import build_txt, service_type
from lanlic.errors import BorrowedFileError, ServerUnavailable
from lanlic.net.announce import announcer_for
from lanlic.net.client import Client
from lanlic.net.server import LicenseServer, ServerLimits
from lanlic.proto.framing import MAX_FRAME

NAN = float("nan")
LEASE = bytes(16)

# name -> (bytes sent, the replies as (code, id), whether the connection stays open)
Case = tuple[bytes, list[tuple[str, int]], bool]


def body_case(body: bytes, code: str = "bad_frame", rid: int = 0) -> Case:
    return frame(body), [(code, rid)], True


def msg_case(wire: dict[str, Any], code: str, rid: int) -> Case:
    return frame(pack(wire)), [(code, rid)], True


def nested(levels: int, container: bytes) -> bytes:
    """A top map whose one value nests ``levels`` containers deep (``\\x91``: array of one,
    ``\\x81\\xa1x``: map of one)."""
    return b"\x81\xa1x" + container * levels + b"\xc0"


def document(payload: str) -> bytes:
    """An enrollment request document around ``payload``, with a signature of zeros."""
    doc = {
        "format": "lanlic-enrollment-request",
        "version": 1,
        "payload": payload,
        "signature": base64.b64encode(bytes(64)).decode(),
    }
    return json.dumps(doc).encode()


def enrollment_with(created: str = "1.0", user: str = "u") -> bytes:
    """A well-formed enrollment request whose ``created`` is the JSON text given, and whose
    payload holds ``user`` as it is (a lone surrogate stays one, as a JSON escape would make)."""
    fields = {"role": "request", "container_key": base64.b64encode(bytes(32)).decode(),
              "kind": "act", "machine_fp": "mfp:x", "user": user, "host": "h"}  # fmt: skip
    payload = json.dumps(fields, ensure_ascii=False)[:-1] + f', "created": {created}}}'
    return document(payload)


STATUS = pack({"t": "status", "id": 1})
WELCOME = {"t": "welcome", "id": 12, "version": 1, "server_id": "x", "lease_s": 1, "heartbeat_s": 1}
BORROW = {
    "t": "borrow",
    "id": 6,
    "request_id": bytes(16),
    "product": "cad",
    "container_key": bytes(32),
    "proof": bytes(64),
}

CASES: dict[str, Case] = {
    # --------------------------------------------------------- framing: bad_frame, stays open
    "zero_length": (header(0), [("bad_frame", 0)], True),
    "garbage": body_case(b"\xc1\xc1 garbage \xff\x00"),
    "truncated_body": body_case(STATUS[:-2]),
    "trailing_bytes": body_case(STATUS + b"\x00"),
    "not_a_map_array": body_case(pack([1, 2, 3])),
    "not_a_map_int": body_case(pack(42)),
    "not_a_map_str": body_case(pack("status")),
    "not_a_map_nil": body_case(pack(None)),
    "nesting_10000_arrays": body_case(nested(10_000, b"\x91")),
    "nesting_10000_maps": body_case(nested(10_000, b"\x81\xa1x")),
    "nesting_17": body_case(nested(17, b"\x91")),
    "array_header_2**32-1": body_case(b"\x81\xa1x\xdd\xff\xff\xff\xff"),
    "map_header_2**32-1": body_case(b"\xdf\xff\xff\xff\xff"),
    "str_header_2**32-1": body_case(b"\x81\xa1x\xdb\xff\xff\xff\xff"),
    "bin_header_2**32-1": body_case(b"\x81\xa1x\xc6\xff\xff\xff\xff"),
    "timestamp32": body_case(b"\x81\xa1x\xd6\xff\x00\x00\x00\x01"),
    "timestamp96": body_case(b"\x81\xa1x\xc7\x0c\xff" + bytes(12)),
    "ext_type_5": body_case(b"\x81\xa1x\xd4\x05\x01"),
    "ext_empty": body_case(b"\x81\xa1x\xc7\x00\x05"),
    "ext_in_a_big_body": body_case(raw_map(("pad", "p" * 20_000)) + b"\xd6\xff" + bytes(4)),
    "bin_key": body_case(b"\x81\xc4\x01t\xa6status"),
    "int_key": body_case(b"\x81\x01\x01"),
    "nil_key": body_case(b"\x81\xc0\x01"),
    "bad_utf8": body_case(b"\x82\xa1t\xa6status\xa2id\xa2\xff\xfe"),
    # ----------------------------------------------- messages: bad_message or unknown_message
    "no_type": msg_case({"id": 3}, "bad_message", 3),
    "type_not_a_str": msg_case({"t": 1, "id": 3}, "bad_message", 3),
    "type_nan": msg_case({"t": NAN, "id": 3}, "bad_message", 3),
    "unknown_type": msg_case({"t": "make_coffee", "id": 9}, "unknown_message", 9),
    "unknown_type_100kb": msg_case({"t": "x" * 100_000, "id": 9}, "unknown_message", 9),
    "product_int": msg_case({"t": "checkout", "id": 4, "product": 7}, "bad_message", 4),
    "product_bin": msg_case({"t": "checkout", "id": 4, "product": b"cad"}, "bad_message", 4),
    "product_200kb": msg_case(
        {"t": "checkout", "id": 4, "product": "x" * 200_000}, "bad_message", 4
    ),
    "id_str": msg_case({"t": "status", "id": "4"}, "bad_message", 0),
    "id_2**64-1": msg_case({"t": "status", "id": 2**64 - 1}, "bad_message", 0),
    "id_2**63": msg_case({"t": "status", "id": 2**63}, "bad_message", 0),
    "id_-2**63": msg_case({"t": "status", "id": -(2**63)}, "bad_message", 0),
    "id_float": msg_case({"t": "status", "id": 1.0}, "bad_message", 0),
    "leases_not_a_list": msg_case({"t": "renew", "id": 5, "leases": LEASE}, "bad_message", 5),
    "lease_of_15_bytes": msg_case({"t": "renew", "id": 5, "leases": [bytes(15)]}, "bad_message", 5),
    "leases_4097": msg_case({"t": "renew", "id": 5, "leases": [LEASE] * 4097}, "bad_message", 5),
    "lease_2**64-1": msg_case({"t": "release", "id": 5, "leases": [2**64 - 1]}, "bad_message", 5),
    "days_nan": msg_case({**BORROW, "days": NAN}, "bad_message", 6),
    "days_inf": msg_case({**BORROW, "days": math.inf}, "bad_message", 6),
    "days_-inf": msg_case({**BORROW, "days": -math.inf}, "bad_message", 6),
    "days_negative": msg_case({**BORROW, "days": -1.0}, "bad_message", 6),
    "days_2**64-1": msg_case({**BORROW, "days": 2**64 - 1}, "bad_message", 6),
    "days_str": msg_case({**BORROW, "days": "7"}, "bad_message", 6),
    "versions_2**64-1": msg_case(
        {
            "t": "hello",
            "id": 8,
            "versions": [2**64 - 1],
            "client_id": LEASE,
            "user": "u",
            "host": "h",
        },
        "bad_message",
        8,
    ),
    # An enrollment request is a signed JSON document read before any signature is checked.
    "enroll_json_nested_20000": msg_case(
        {"t": "enroll", "id": 14, "request": document("[" * 20_000)}, "bad_proof", 14
    ),
    "enroll_json_nan": msg_case(
        {"t": "enroll", "id": 14, "request": document('{"created": NaN}')}, "bad_proof", 14
    ),
    "enroll_json_huge_int": msg_case(
        {"t": "enroll", "id": 14, "request": enrollment_with(created="1" * 400)}, "bad_proof", 14
    ),
    "enroll_json_infinity": msg_case(
        {"t": "enroll", "id": 14, "request": enrollment_with(created="Infinity")}, "bad_proof", 14
    ),
    "enroll_json_lone_surrogate": msg_case(
        {"t": "enroll", "id": 14, "request": enrollment_with(user="\ud800")}, "bad_proof", 14
    ),
    "enroll_not_json": msg_case(
        {"t": "enroll", "id": 14, "request": b"\xff" * 99}, "bad_proof", 14
    ),
    "enroll_over_64kib": msg_case(
        {"t": "enroll", "id": 14, "request": b" " * (64 * 1024 + 1)}, "bad_message", 14
    ),
    # ------------------------------------------------ allowed nowhere here: unexpected_message
    "server_message": msg_case(WELCOME, "unexpected_message", 12),
    "second_hello": msg_case(
        {
            "t": "hello",
            "id": 13,
            "versions": [1],
            "client_id": bytes(range(16)),
            "user": "x",
            "host": "y",
        },
        "unexpected_message",
        13,
    ),
    # ------------------------------------------------------- fatal: bad_frame, then closed
    "length_over_the_limit": (header(MAX_FRAME + 1), [("bad_frame", 0)], False),
    "length_2**32-1": (header(2**32 - 1), [("bad_frame", 0)], False),
    "string_1mb": (
        frame(pack({"t": "checkout", "id": 1, "product": "x" * (1 << 20)})),
        [("bad_frame", 0)],
        False,
    ),
}


async def replies(peer: RawPeer, n: int) -> list[tuple[str, int]]:
    got = [await peer.recv() for _ in range(n)]
    return [(r.get("code", r["t"]), r["id"]) for r in got]


@pytest.fixture
async def bystander(start_server: Any) -> Any:
    """A server, and a well-behaved client of it holding a seat: (server, client, seat)."""
    server = await start_server()
    client = Client(server.address)
    await client.connect()
    try:
        seat = await client.acquire("cad", "16")
        yield server, client, seat
    finally:
        await client.close()


async def still_served(server: LicenseServer, client: Client, seat: Any, in_use: int) -> None:
    await client.renew_now()
    assert not seat.lost
    assert server.service.pool.lease(seat.lease_id) is not None
    assert server.service.pool.in_use("cad") == in_use
    server.service.pool.check_invariant()


@pytest.mark.parametrize("name", list(CASES))
async def test_each_hostile_frame_gets_its_outcome(
    name: str, bystander: Any, raw_peer: PeerFactory
) -> None:
    server, client, seat = bystander
    data, want, stays_open = CASES[name]
    peer = await raw_peer(server.address)
    await peer.send_raw(data)
    assert await replies(peer, len(want)) == want
    if stays_open:
        reply = await peer.request("status")
        assert reply["t"] == "status_reply"
    else:
        assert await peer.closed_by_server(timeout=2)
    await still_served(server, client, seat, in_use=1)


async def test_error_messages_stay_short_and_on_one_line(
    bystander: Any, raw_peer: PeerFactory
) -> None:
    server, _, _ = bystander
    peer = await raw_peer(server.address)
    for name in ("unknown_type_100kb", "product_200kb", "nesting_10000_maps", "bad_utf8"):
        await peer.send_raw(CASES[name][0])
        reply = await peer.recv()
        assert len(reply["message"]) < 200 and "\n" not in reply["message"], name


async def test_all_hostile_frames_in_one_stream_keep_it_in_step(
    bystander: Any, raw_peer: PeerFactory
) -> None:
    """Every frame that leaves the stream in step, back to back in one write and then one byte
    at a time (the smaller ones): each gets its own error, in order, and a valid checkout after
    them all is granted."""
    server, client, seat = bystander
    survivable = [name for name, case in CASES.items() if case[2]]
    want = [r for name in survivable for r in CASES[name][1]]
    checkout = frame(pack({"t": "checkout", "id": 77, "product": "cad", "version": "16"}))

    peer = await raw_peer(server.address)
    await peer.send_raw(b"".join(CASES[name][0] for name in survivable) + checkout)
    assert await replies(peer, len(want)) == want
    assert await replies(peer, 1) == [("granted", 77)]

    small = [name for name in survivable if len(CASES[name][0]) < 12_000]
    stream = b"".join(CASES[name][0] for name in small) + checkout
    peer = await raw_peer(server.address)
    for i in range(len(stream)):
        peer.writer.write(stream[i : i + 1])
        if i % 64 == 0:
            await peer.writer.drain()
    await peer.writer.drain()
    assert await replies(peer, len(small)) == [r for name in small for r in CASES[name][1]]
    assert await replies(peer, 1) == [("granted", 77)]
    await still_served(server, client, seat, in_use=3)


async def test_over_the_limit_is_refused_at_the_header_before_any_body(
    start_server: Any, raw_peer: PeerFactory
) -> None:
    # The frame timeout is an hour: no answer or close this test waits for (30 s at most) can
    # be the timeout's doing, whatever the machine's load. The header alone was refused.
    server = await start_server(limits=ServerLimits(frame_timeout=3600.0))
    client = Client(server.address)
    await client.connect()
    try:
        seat = await client.acquire("cad", "16")
        # The header alone: the answer and the close come without a body.
        peer = await raw_peer(server.address)
        await peer.send_raw(header(2**32 - 1))
        reply = await peer.recv(timeout=30)
        assert (reply["code"], reply["id"]) == ("bad_frame", 0) and "limit" in reply["message"]
        assert await peer.closed_by_server(timeout=30)
        # Nothing after a bad header is read as a frame, even when it came in the same read.
        peer = await raw_peer(server.address)
        await peer.send_raw(header(MAX_FRAME + 1) + frame(STATUS) + frame(STATUS))
        reply = await peer.recv(timeout=30)
        assert (reply["code"], reply["id"]) == ("bad_frame", 0)
        assert await peer.closed_by_server(timeout=30)
        assert peer.inbox == []  # no status_reply: the frames behind the header never taken
        # A body that keeps coming after the header meets a closed connection; no one
        # buffers it.
        peer = await raw_peer(server.address)
        await peer.send_raw(header(MAX_FRAME + 1))
        reply = await peer.recv(timeout=30)
        assert (reply["code"], reply["id"]) == ("bad_frame", 0)
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                await asyncio.wait_for(peer.send_raw(b"x" * 65536), 30)
        assert all(not c._conn.has_partial_frame for c in server.connections)
        await still_served(server, client, seat, in_use=1)
    finally:
        await client.close()


async def test_requests_before_the_handshake_are_refused_and_the_state_is_unchanged(
    bystander: Any, raw_peer: PeerFactory
) -> None:
    server, client, seat = bystander
    peer = await raw_peer(server.address, hello=False)
    stolen = {"leases": [seat.lease_id]}
    for t, fields in [
        ("checkout", {"product": "cad"}),
        ("renew", stolen),
        ("release", stolen),
        ("status", {}),
        ("bye", {}),
    ]:
        reply = await peer.request(t, **fields)
        assert reply["code"] == "unexpected_message", t
    assert (await peer.hello())["t"] == "welcome"  # still awaiting its hello
    await still_served(server, client, seat, in_use=1)  # the stolen lease was not touched


async def test_a_second_hello_changes_nothing(bystander: Any, raw_peer: PeerFactory) -> None:
    """A second hello with another client id must not rebind the session: the seat taken
    before it still belongs to the first id, and the other id gains nothing."""
    server, client, seat = bystander
    peer = await raw_peer(server.address)
    granted = await peer.request("checkout", product="cad", version="16")
    first_id = peer.client_id
    peer.client_id = client.client_id  # pose as the bystander
    reply = await peer.hello()
    assert reply["code"] == "unexpected_message"
    lease = server.service.pool.lease(granted["lease"])
    assert lease is not None and lease.owner == first_id
    renewed = await peer.request("renew", leases=[granted["lease"], seat.lease_id])
    assert renewed["leases"] == [granted["lease"]]  # its own, never the bystander's
    assert [x["lease"] for x in renewed["lost"]] == [seat.lease_id]
    await still_served(server, client, seat, in_use=2)


async def test_duplicate_map_keys_the_last_one_wins(bystander: Any, raw_peer: PeerFactory) -> None:
    """Decided and documented (protocol/SPEC.md, section 2): in a map with a key twice, the
    last value counts, at any depth, as msgpack-python and most decoders do. Nothing signed is
    read from a map, so no signature can be made to mean two things by it."""
    server, client, seat = bystander
    peer = await raw_peer(server.address)
    await peer.send_body(
        raw_map(("t", "checkout"), ("id", 21), ("product", "nope"), ("product", "cad"),
                ("version", "99"), ("version", "16"))
    )  # fmt: skip
    granted = await peer.recv()
    assert (granted["t"], granted["id"], granted["product"]) == ("granted", 21, "cad")
    await peer.send_body(raw_map(("t", "checkout"), ("t", "status"), ("id", 1), ("id", 22)))
    assert (await peer.recv())["t"] == "status_reply"
    await peer.send_body(raw_map(("t", "status"), ("id", 23), ("t", "make_coffee")))
    assert await replies(peer, 1) == [("unknown_message", 23)]
    await still_served(server, client, seat, in_use=2)


# --------------------------------------------------------------- a real server process


async def hostile_volley(address: tuple[str, int], rounds: int) -> int:
    """Every case above from its own connection, all at once, ``rounds`` times, each round
    with 8 connections that keep sending after an over-limit header. Returns how many
    connections it made."""
    made = 0

    async def one(data: bytes, want: list[tuple[str, int]], stays_open: bool) -> None:
        nonlocal made
        made += 1
        peer = await connect(address)
        try:
            await peer.send_raw(data)
            assert await replies(peer, len(want)) == want
            if stays_open:
                assert (await peer.request("status"))["t"] == "status_reply"
            else:
                assert await peer.closed_by_server(timeout=5)
        finally:
            peer.close()

    async def streaming_after_a_bad_header() -> None:
        nonlocal made
        made += 1
        peer = await connect(address)
        try:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await peer.send_raw(header(2**32 - 1))
                for _ in range(16):  # 1 MiB that nobody must keep
                    await asyncio.wait_for(peer.send_raw(b"\xa5" * 65536), 2)
        finally:
            peer.close()

    for _ in range(rounds):
        cases = [one(*case) for case in CASES.values()]
        streams = [streaming_after_a_bad_header() for _ in range(8)]
        await asyncio.wait_for(asyncio.gather(*cases, *streams), 60)
    return made


async def test_a_hostile_volley_costs_bounded_memory_and_one_log_line_each(
    tmp_path: Path,
) -> None:
    server = await ServeProcess.start(tmp_path / "data")
    hanging: list[RawPeer] = []
    try:
        bystander = await connect(server.address)
        granted = await bystander.request("checkout", product="cad", version="16")
        assert granted["t"] == "granted"
        # One round first, so the baseline holds what serving each case normally costs.
        await hostile_volley(server.address, rounds=1)
        before = proc_status(server.pid, "VmHWM")
        made = await hostile_volley(server.address, rounds=8)
        # And 16 frames of 256 KiB left a few bytes short: their halves are held, as allowed.
        for _ in range(16):
            peer = await connect(server.address)
            hanging.append(peer)
            await peer.send_raw(header(MAX_FRAME) + b"h" * (MAX_FRAME - 8))
        await asyncio.sleep(0.3)
        after = proc_status(server.pid, "VmHWM")
        grew = after - before
        print(
            f"\nhostile volley: {made + 16} connections; server peak RSS {before / 2**20:.1f} "
            f"MiB before, {after / 2**20:.1f} MiB after (+{grew / 2**20:.1f} MiB)"
        )
        # The half frames hold 4 MiB; the rest is buffers and the allocator's slack. Buffering
        # a 1 MiB string, a 4 GiB length or a 2**32-element array would blow far past this.
        assert grew < 40 * 2**20, grew
        # The bystander lost nothing and is still served.
        renewed = await bystander.request("renew", leases=[granted["lease"]])
        assert renewed["leases"] == [granted["lease"]] and renewed["lost"] == []
        status = await bystander.request("status")
        cad = next(p for p in status["products"] if p["name"] == "cad")
        assert cad["in_use"] == 1
        bystander.close()
    finally:
        for peer in hanging:
            peer.close()
        code = await server.stop()
    assert code == 0
    log = server.stderr()
    assert "Traceback" not in log, log[-4000:]
    assert "internal error" not in log
    lines = log.splitlines()
    assert sum("closing connection: bad_frame" in line for line in lines) >= 8 * 8
    # Every line is a log record of its own (no message spills over several lines).
    stray = [line for line in lines if not line[:4].isdigit() and not line.startswith("lanlic")]
    assert not stray, stray[:5]


# ------------------------------------------------------------------------------- mDNS TXT

LOOPBACK = ["127.0.0.1"]


def fp(key: Ed25519PrivateKey) -> str:
    return signing.fingerprint(key.public_key())


def txt_bytes(*strings: bytes) -> bytes:
    """A raw TXT record: each string after its length byte."""
    return b"".join(bytes([len(s)]) + s for s in strings)


class Listener:
    """Counts connections to the address the hostile announcements point at."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def on(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(on, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_malformed_and_oversized_txt_records_are_ignored(
    vendor_key: Ed25519PrivateKey, start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another announcer on the LAN publishes TXT records that are cut short, oversized, not
    UTF-8, or full of junk, all for our vendor: the client never acts on them, and still finds
    and uses the real server. (tests/discovery covers a bad fingerprint, no txtvers and a
    garbled proto; these are the raw-bytes cases a dict of properties cannot even express.)"""
    monkeypatch.setattr(zeroconf._core, "_CHECK_TIME", 100)
    monkeypatch.setattr(zeroconf._core, "_PROBE_RANDOM_DELAY_INTERVAL", (20, 40))
    vfp = fp(vendor_key)
    good = [f"{k}={v}".encode() for k, v in build_txt(
        protocol=[1], server_id=vfp, server_fp=vfp, vendor_fp=vfp, site="ACME Engineering",
        products=["cad"],
    ).items()]  # fmt: skip
    hostile: dict[str, bytes] = {
        # A length byte that claims more than the record holds.
        "cut-short": txt_bytes(*good)[:-3] + b"\xff" + b"txtvers=1",
        # About 4 KB: 200 junk keys, then the real keys (parsers that stop early see nothing).
        "oversized": txt_bytes(*[b"junk%03d=" % i + b"j" * 10 for i in range(200)], *good),
        # Strings of the full 255 bytes each: the site and a fingerprint too long to be one.
        "long-strings": txt_bytes(
            *[s for s in good if not s.startswith((b"site=", b"sfp="))],
            b"site=" + b"A" * 250,
            b"sfp=sha256:" + b"a" * 244,
        ),
        "not-utf8": txt_bytes(*[s for s in good if not s.startswith(b"site=")], b"site=\xff\xfe"),
        # The first of two txtvers is the one a browser reads (RFC 6763, 6.4).
        "two-txtvers": txt_bytes(b"txtvers=9", *good),
        "proto-junk": txt_bytes(
            *[s for s in good if not s.startswith(b"proto=")], b"proto=" + b"9" * 249
        ),
        "no-equals": txt_bytes(*[s.replace(b"=", b"") for s in good]),
        "products-junk": txt_bytes(
            *[s for s in good if not s.startswith(b"products=")], b"products=" + b"\x00/.." * 60
        ),
        "empty": b"\x00",
    }
    listener = Listener()
    port = await listener.start()
    aiozc = AsyncZeroconf(interfaces=LOOPBACK)
    service = service_type()  # the test's own (conftest.py), which the client browses
    infos = [
        AsyncServiceInfo(
            service,
            f"hostile-{name}.{service}",
            port=port,
            parsed_addresses=["127.0.0.1"],
            properties=text,
            server=f"hostile-{name}.local.",
        )
        for name, text in hostile.items()
    ]
    announcer = None
    try:
        await asyncio.wait_for(
            asyncio.gather(*(aiozc.async_register_service(i) for i in infos)), 15
        )
        # With only the hostile ones there: nothing found, nothing connected to.
        with pytest.raises(ServerUnavailable, match=r"ignored \d+ malformed"):
            await Client.discover(vfp, interfaces=LOOPBACK, timeout=1.5)
        assert listener.connections == 0
        # The real server next to them is found and used.
        server: LicenseServer = await start_server()
        service: LicenseService = server.service
        announcer = announcer_for(service, server.host, server.port)
        await asyncio.wait_for(announcer.start(), 10)
        async with await Client.discover(vfp, interfaces=LOOPBACK, timeout=5.0) as client:
            assert client.address == server.address
            await client.acquire("cad", "16")
        assert listener.connections == 0, "a malformed announcement was acted on"
    finally:
        if announcer is not None:
            await announcer.close()
        await aiozc.async_unregister_all_services()
        await aiozc.async_close()
        await listener.stop()


# -------------------------------------------------- signed documents (fuzz findings, pinned)


def signed_borrowed_file(server: Ed25519PrivateKey, **over: str) -> bytes:
    """A borrowed file signed by ``server`` whose payload fields ``over`` are raw JSON text."""
    pub = signing.public_bytes(server.public_key())
    body = {"borrow_id": "b-1", "product": "cad", "versions": None, "kind": "act",
            "server_id": signing.fingerprint(pub), "server_key": base64.b64encode(pub).decode(),
            "customer": "ACME", "container_key": base64.b64encode(bytes(32)).decode(),
            "machine_fp": "mfp:x", "user": "u", "host": "h", "start": 1.0, "end": 2.0}  # fmt: skip
    payload = json.dumps(body, sort_keys=True)
    for name, text in over.items():
        payload = payload.replace(f'"{name}": {json.dumps(body[name])}', f'"{name}": {text}')
    sig = signing.sign(server, signing.DOMAIN_BORROWED_FILE, payload.encode())
    doc = {"format": borrowing.FMT_BORROWED, "version": 1, "payload": payload,
           "signature": base64.b64encode(sig).decode()}  # fmt: skip
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "over",
    [{"end": "NaN"}, {"end": "Infinity"}, {"start": "-Infinity"}, {"start": "1" * 400}],
    ids=["end_nan", "end_inf", "start_-inf", "start_400_digits"],
)
def test_a_signed_file_with_a_period_that_is_not_a_number_is_refused(over: dict[str, str]) -> None:
    """Even signed by the trusted server: a NaN end would never be reached (``now >= nan`` is
    false), so such a file would never expire. Found by tools/fuzz/fuzz_borrowed_file.py."""
    server = Ed25519PrivateKey.generate()
    data = signed_borrowed_file(server, **over)
    check = borrowing.FileCheck(
        trusted_server_keys=[signing.public_bytes(server.public_key())],
        container_key=bytes(32), machine_fp="mfp:x", now=1.5, last_seen=None, returned=(),
    )  # fmt: skip
    assert borrowing.verify_borrowed_file(signed_borrowed_file(server), check).end == 2.0
    with pytest.raises(BorrowedFileError) as info:
        borrowing.verify_borrowed_file(data, check)
    assert info.value.code == "file_tampered"


@pytest.mark.parametrize("payload", ["[" * 20_000, '{"a": ' * 5_000, "1" * 5_000])
def test_documents_nested_or_huge_are_refused_not_crashed(payload: str) -> None:
    doc = document(payload)
    with pytest.raises(BorrowedFileError):
        borrowing.read_enrollment_request(doc)
    with pytest.raises(BorrowedFileError):
        borrowing.parse_borrowed_file(doc.replace(b"enrollment-request", b"borrowed-license"))


def test_a_lone_surrogate_in_a_document_is_refused_not_crashed() -> None:
    """JSON may escape half a UTF-16 pair ("\\ud800"): such a payload has no UTF-8 bytes, so it
    cannot be what anyone signed. Found by tools/fuzz/fuzz_borrowed_file.py."""
    with pytest.raises(BorrowedFileError):
        borrowing.read_enrollment_request(enrollment_with(user="\ud800"))
    server = Ed25519PrivateKey.generate()
    good = signed_borrowed_file(server)
    doc = json.loads(good)
    doc["payload"] = doc["payload"].replace('"user": "u"', '"user": "\udfff"')
    check = borrowing.FileCheck(
        trusted_server_keys=[signing.public_bytes(server.public_key())],
        container_key=bytes(32), machine_fp="mfp:x", now=1.5, last_seen=None, returned=(),
    )  # fmt: skip
    with pytest.raises(BorrowedFileError) as info:
        borrowing.verify_borrowed_file(json.dumps(doc).encode(), check)
    assert info.value.code == "file_tampered"
