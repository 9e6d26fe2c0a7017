"""The welcome of each protocol version (SPEC 4, 12 "Offline use"): version 2 signs the handshake
and the server's time once; version 1 signs them apart. A peer of either version keeps working,
and in neither can a time be edited past the client."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from frame_proxy import FrameProxy
from helpers import make_key

from lanlic.core import signing
from lanlic.core.service import (
    LicenseService,
    Session,
    handshake_payload,
    handshake_v2_payload,
    server_time_payload,
)
from lanlic.errors import ServerUntrusted
from lanlic.laptop.trust import verify_server_time, verify_welcome
from lanlic.net.client import Client
from lanlic.proto import messages as m
from lanlic.proto.framing import encode_frame

WALL = 1.9e9


def hello(versions: list[int], nonce: bytes, client_id: bytes) -> m.Hello:
    return m.Hello(
        id=1, versions=versions, client_id=client_id, user="u", host="h", app="", nonce=nonce
    )


def welcome_of(service: LicenseService, msg: m.Hello) -> m.Welcome:
    reply = service.handle(Session(), msg, 0.0, WALL)
    assert isinstance(reply.message, m.Welcome), reply
    return reply.message


@pytest.fixture
def service(vendor_key: Ed25519PrivateKey) -> LicenseService:
    return LicenseService(make_key(vendor_key), Ed25519PrivateKey.generate())


def test_a_v2_welcome_signs_the_handshake_and_the_time_once(service: LicenseService) -> None:
    nonce, cid = os.urandom(32), os.urandom(16)
    w = welcome_of(service, hello([1, 2], nonce, cid))
    assert w.version == 2 and w.time == WALL and w.time_signature == b""
    signed = handshake_v2_payload(nonce, cid, w.server_id, w.vendor_fp, WALL)
    pub = signing.public_from_bytes(w.server_key)
    assert signing.verify(pub, signing.DOMAIN_HANDSHAKE_V2, signed, w.signature)
    # The version-1 bytes under the version-1 domain are not what it signed.
    v1 = handshake_payload(nonce, cid, w.server_id, w.vendor_fp)
    assert not signing.verify(pub, signing.DOMAIN_HANDSHAKE, v1, w.signature)
    assert verify_welcome(w, nonce, cid).server_key == w.server_key
    assert verify_server_time(w, nonce, cid) == WALL


@pytest.mark.parametrize(
    "edit",
    [
        {"time": WALL - 1.0},  # a time set back by a second
        {"time": WALL + 86400.0},
        {"time": 0.0},  # the time left out
        {"version": 1},  # told it is version 1: the signature is not a version-1 one
    ],
)
def test_a_v2_welcome_with_an_edited_time_is_refused(
    service: LicenseService, edit: dict[str, Any]
) -> None:
    nonce, cid = os.urandom(32), os.urandom(16)
    w = dataclasses.replace(welcome_of(service, hello([1, 2], nonce, cid)), **edit)
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(w, nonce, cid)
    assert verify_server_time(w, nonce, cid) is None


def test_a_v2_welcome_for_another_nonce_is_refused(service: LicenseService) -> None:
    nonce, cid = os.urandom(32), os.urandom(16)
    w = welcome_of(service, hello([2], nonce, cid))
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(w, os.urandom(32), cid)
    assert verify_server_time(w, os.urandom(32), cid) is None


def test_a_v1_only_client_gets_and_checks_both_signatures(service: LicenseService) -> None:
    nonce, cid = os.urandom(32), os.urandom(16)
    w = welcome_of(service, hello([1], nonce, cid))
    assert w.version == 1 and w.time == WALL and len(w.time_signature) == 64
    pub = signing.public_from_bytes(w.server_key)
    v1 = handshake_payload(nonce, cid, w.server_id, w.vendor_fp)
    assert signing.verify(pub, signing.DOMAIN_HANDSHAKE, v1, w.signature)
    timed = server_time_payload(nonce, cid, w.server_id, WALL)
    assert signing.verify(pub, signing.DOMAIN_SERVER_TIME, timed, w.time_signature)
    assert verify_welcome(w, nonce, cid).server_key == w.server_key
    assert verify_server_time(w, nonce, cid) == WALL
    # In version 1 an edited time costs only the time: the handshake still holds.
    edited = dataclasses.replace(w, time=WALL - 1.0)
    verify_welcome(edited, nonce, cid)
    assert verify_server_time(edited, nonce, cid) is None
    # A version-1 welcome presented as version 2 proves nothing.
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(dataclasses.replace(w, version=2), nonce, cid)


def test_a_welcome_in_a_version_the_client_does_not_speak_is_refused(
    service: LicenseService,
) -> None:
    nonce, cid = os.urandom(32), os.urandom(16)
    w = dataclasses.replace(welcome_of(service, hello([1, 2], nonce, cid)), version=4)
    with pytest.raises(ServerUntrusted, match="version 4"):
        verify_welcome(w, nonce, cid)
    assert verify_server_time(w, nonce, cid) is None


def test_a_hello_without_a_nonce_gets_no_time_in_either_version(
    service: LicenseService,
) -> None:
    cid = os.urandom(16)
    for versions, domain in (
        ([1], signing.DOMAIN_HANDSHAKE),
        ([1, 2], signing.DOMAIN_HANDSHAKE_V2),
    ):
        w = welcome_of(service, hello(versions, b"", cid))
        assert w.time == 0.0 and w.time_signature == b""
        pub = signing.public_from_bytes(w.server_key)
        signed = (
            handshake_payload(b"", cid, w.server_id, w.vendor_fp)
            if w.version == 1
            else handshake_v2_payload(b"", cid, w.server_id, w.vendor_fp, 0.0)
        )
        assert signing.verify(pub, domain, signed, w.signature)


# ----------------------------------------------------------------- the reference client on TCP


async def test_the_client_speaks_its_newest_and_refuses_an_edited_time(start_server: Any) -> None:
    """The reference client offers every version it speaks, gets the newest (3: the time is in
    its handshake's leaf) and takes the signed time; a welcome whose time was edited on the way
    fails the handshake like a bad signature does."""
    server = await start_server()
    offered: list[list[int]] = []
    edit = {"on": False}

    def hello_seen(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("t") == "hello":
            offered.append(list(frame["versions"]))
        return frame

    def welcome_edited(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("t") == "welcome" and edit["on"]:
            frame["time"] -= 5
        return frame

    proxy = await FrameProxy(server.address, up=hello_seen, down=welcome_edited).start()
    try:
        async with Client(proxy.address) as c:
            assert c.server_time is not None and c.server_time > 0
        assert offered == [list(m.PROTOCOL_VERSIONS)] and m.PROTOCOL_VERSIONS[-1] == 3
        edit["on"] = True
        client = Client(proxy.address)
        with pytest.raises(ServerUntrusted, match="did not sign"):
            await client.connect()
        await client.close()
    finally:
        await proxy.close()


@pytest.mark.parametrize("forge", [False, True])
async def test_the_client_checks_both_signatures_of_a_v1_server(
    start_server: Any, forge: bool
) -> None:
    """A server that speaks only version 1 answers the reference client in version 1: the client
    checks the handshake signature and the time's apart, and an edited time costs only the time."""
    server = await start_server()
    welcomes: list[dict[str, Any]] = []

    def v1_only(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("t") == "hello":
            frame["versions"] = [1]  # what a server that speaks version 1 alone would pick
        return frame

    def welcome(frame: dict[str, Any]) -> dict[str, Any]:
        if frame.get("t") == "welcome":
            welcomes.append(dict(frame))
            if forge:
                frame["time"] -= 5
        return frame

    proxy = await FrameProxy(server.address, up=v1_only, down=welcome).start()
    try:
        async with Client(proxy.address) as c:
            if forge:
                assert c.server_time is None
            else:
                assert c.server_time is not None and c.server_time > 0
    finally:
        await proxy.close()
    assert [(w["version"], bool(w["time_signature"])) for w in welcomes] == [(1, True)]


async def test_a_v1_only_peer_on_tcp_gets_both_signatures(start_server: Any, raw_peer: Any) -> None:
    server = await start_server()
    peer = await raw_peer(server.address, hello=False)
    nonce = os.urandom(32)
    wire = await peer.request(
        "hello", versions=[1], client_id=peer.client_id, user="u", host="h", nonce=nonce
    )
    wire.pop("t")
    w = m.Welcome(**wire)
    assert w.version == 1 and len(w.time_signature) == 64
    verify_welcome(w, nonce, peer.client_id)
    assert verify_server_time(w, nonce, peer.client_id) == w.time


# ----------------------------------------------------------------------- version 3: batches


def test_a_v3_hello_waits_for_its_batch_and_each_welcome_proves_its_own_nonce(
    service: LicenseService,
) -> None:
    """The core leaves a version-3 welcome unsigned; ``sign_welcomes`` signs a batch once, and
    each welcome verifies for its own nonce only."""
    hellos = [hello([1, 2, 3], os.urandom(32), os.urandom(16)) for _ in range(5)]
    replies = [service.handle(Session(), h, 0.0, WALL) for h in hellos]
    assert all(r.message is None and r.welcome is not None for r in replies)
    welcomes = service.sign_welcomes([r.welcome for r in replies if r.welcome is not None])
    assert len({w.signature for w in welcomes}) == 1 and all(w.version == 3 for w in welcomes)
    for h, w in zip(hellos, welcomes, strict=True):
        assert verify_welcome(w, h.nonce, h.client_id).server_key == w.server_key
        assert verify_server_time(w, h.nonce, h.client_id) == WALL
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(welcomes[0], hellos[1].nonce, hellos[0].client_id)
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(dataclasses.replace(welcomes[0], time=WALL + 1), *_ids(hellos[0]))
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(dataclasses.replace(welcomes[0], batch_path=b""), *_ids(hellos[0]))
    # Presented as version 2, a version-3 signature proves nothing.
    with pytest.raises(ServerUntrusted, match="did not sign"):
        verify_welcome(dataclasses.replace(welcomes[0], version=2), *_ids(hellos[0]))
    # What the server sends: the same welcomes as frames made from the server's fixed parts.
    unsigned = [r.welcome for r in replies if r.welcome is not None]
    frames = service.welcome_frames(unsigned)
    assert frames == [encode_frame(m.to_wire(w)) for w in welcomes]
    assert service.welcome_frames(unsigned[:1]) == [
        encode_frame(m.to_wire(w)) for w in service.sign_welcomes(unsigned[:1])
    ]  # a batch of one: no path, so the frame has one entry less


def _ids(h: m.Hello) -> tuple[bytes, bytes]:
    return h.nonce, h.client_id


async def test_hellos_arriving_together_share_one_signature(
    start_server: Any, raw_peer: Any
) -> None:
    """On TCP: clients saying hello at once get version-3 welcomes under one signature, each
    with its own path; a version-2 peer among them gets its own signature, as before."""
    server = await start_server()
    peers = [await raw_peer(server.address, hello=False) for _ in range(9)]
    nonces = [os.urandom(32) for _ in peers]

    async def say_hello(i: int) -> dict[str, Any]:
        versions = [1, 2] if i == 0 else [1, 2, 3]
        wire: dict[str, Any] = await peers[i].request(
            "hello", versions=versions, client_id=peers[i].client_id, user="u", host="h",
            nonce=nonces[i],
        )  # fmt: skip
        wire.pop("t")
        return wire

    wires = await asyncio.gather(*(say_hello(i) for i in range(len(peers))))
    welcomes = [m.Welcome(**w) for w in wires]
    assert welcomes[0].version == 2 and "batch_path" not in wires[0]
    assert {w.version for w in welcomes[1:]} == {3}
    assert len({w.signature for w in welcomes[1:]}) < len(welcomes) - 1  # batched
    assert welcomes[0].signature not in {w.signature for w in welcomes[1:]}
    for w, nonce, peer in zip(welcomes, nonces, peers, strict=True):
        verify_welcome(w, nonce, peer.client_id)
        assert verify_server_time(w, nonce, peer.client_id) == w.time


@pytest.mark.parametrize("split", [False, True])
async def test_a_v3_welcome_is_the_first_reply_to_requests_sent_behind_it(
    start_server: Any, raw_peer: Any, split: bool
) -> None:
    """A client that sends its checkout right behind its hello (in the same write, or in the
    next one before the welcome came) still gets the welcome first: what follows the hello waits
    for the batch's signature."""
    server = await start_server()
    peer = await raw_peer(server.address, hello=False)
    nonce = os.urandom(32)
    hello_frame = encode_frame(
        {"t": "hello", "id": 1, "versions": [1, 2, 3], "client_id": peer.client_id,
         "user": "u", "host": "h", "nonce": nonce}
    )  # fmt: skip
    rest = encode_frame({"t": "checkout", "id": 2, "product": "cad"}) + encode_frame(
        {"t": "status", "id": 3}
    )
    if split:
        await peer.send_raw(hello_frame)
        for _ in range(10_000):  # bounded: until the server has read the hello (about 1 ms)
            if any(c.welcoming for c in server.connections):
                break
            await asyncio.sleep(0)
        assert any(c.welcoming for c in server.connections)
        await peer.send_raw(rest)
    else:
        await peer.send_raw(hello_frame + rest)
    replies = [await peer.recv() for _ in range(3)]
    assert [r["t"] for r in replies] == ["welcome", "granted", "status_reply"]
    welcome = dict(replies[0])
    welcome.pop("t")
    assert verify_server_time(m.Welcome(**welcome), nonce, peer.client_id) == welcome["time"]


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_a_client_gone_before_its_welcome_costs_nothing(
    start_server: Any, raw_peer: Any, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """A client that says hello and checks out, and goes before its batch is signed: nothing is
    logged as an error and the next client is served. A peer that closed its side had its
    checkout read before its end, and answered as always (the seat's lease then runs out); a
    connection the server aborts has what it held dropped unread."""
    server = await start_server()
    peer = await raw_peer(server.address, hello=False)
    hello_frame = encode_frame(
        {"t": "hello", "id": 1, "versions": [3], "client_id": peer.client_id,
         "user": "u", "host": "h", "nonce": os.urandom(32)}
    )  # fmt: skip
    await peer.send_raw(hello_frame + encode_frame({"t": "checkout", "id": 2, "product": "cad"}))
    for _ in range(10_000):  # bounded: until the server has read the hello
        if any(c.welcoming for c in server.connections):
            break
        await asyncio.sleep(0)
    conn = next(c for c in server.connections if c.welcoming)
    if how == "close":
        peer.close()
    else:
        conn.abort()  # the server's side gives up on it (a stalled connection's sweep)
    await asyncio.sleep(0.05)
    assert not conn.welcoming and conn.held is None
    assert server.service.pool.in_use("cad") == (1 if how == "close" else 0)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    async with Client(server.address) as c:
        assert (await c.acquire("cad")).lease_id
