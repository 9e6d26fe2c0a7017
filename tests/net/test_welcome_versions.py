"""The welcome of each protocol version (SPEC 4, 12 "Offline use"): version 2 signs the handshake
and the server's time once; version 1 signs them apart. A peer of either version keeps working,
and in neither can a time be edited past the client."""

from __future__ import annotations

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
    w = dataclasses.replace(welcome_of(service, hello([1, 2], nonce, cid)), version=3)
    with pytest.raises(ServerUntrusted, match="version 3"):
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


async def test_the_client_speaks_v2_and_refuses_an_edited_time(start_server: Any) -> None:
    """The reference client offers [1, 2], gets version 2 and takes the signed time; a welcome
    whose time was edited on the way fails the handshake like a bad signature does today."""
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
        assert offered == [list(m.PROTOCOL_VERSIONS)] and 2 in m.PROTOCOL_VERSIONS
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
