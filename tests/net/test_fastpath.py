"""The server's fast path against the general path.

Renew, release and checkout are answered from wire map to frame bytes (``lease_request``,
``LicenseService.renew_frame`` ...) and the awaited hello is read (``hello_request``,
``ServerConnection.take_hello``) without building message objects; everything else, and every
request the fast path does not accept, goes through ``parse`` and ``handle``. These tests hold the
two to the same answers: the same fields accepted, the same bytes out, the same pool and history
after any sequence, and the connection's state table and reply order kept over real sockets.
"""

from __future__ import annotations

import itertools
import secrets
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lanlic.core.netkey import ProductEntitlement
from lanlic.core.service import LicenseService, ServiceConfig, Session
from lanlic.errors import ProtocolError
from lanlic.proto import messages as m
from lanlic.proto.connection import ConnState, RequestError, ServerConnection
from lanlic.proto.framing import encode_frame
from lanlic.proto.requests import checkout_request, hello_request, lease_request

# ------------------------------------------------------------------------------- the fields

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.sampled_from(["", "cad", "x" * 256, "x" * 257]),
    st.binary(max_size=20),
)
_values = st.one_of(
    _scalars,
    st.lists(st.binary(min_size=15, max_size=17), max_size=3),
    st.lists(_scalars, max_size=2),
    st.sampled_from([[bytes(16)] * 4096, [bytes(16)] * 4097]),
)
_maps = st.fixed_dictionaries(
    {},
    optional={
        "id": _values,
        "leases": _values,
        "product": _values,
        "version": _values,
        "unknown_field": _values,
    },
)


@settings(max_examples=400, deadline=None)
@given(t=st.sampled_from(["renew", "release", "checkout"]), fields=_maps)
def test_fast_fields_accept_exactly_what_parse_accepts(t: str, fields: dict[str, Any]) -> None:
    wire = {"t": t, **fields}
    fast = checkout_request(wire) if t == "checkout" else lease_request(wire)
    try:
        msg = m.parse(wire)
    except ProtocolError:
        assert fast is None
        return
    assert fast is not None
    if isinstance(msg, m.Checkout):
        assert fast == (msg.id, msg.product, msg.version)
    else:
        assert isinstance(msg, (m.Renew, m.Release))
        assert fast == (msg.id, msg.leases)


_hello_values = st.one_of(
    _values,
    st.sampled_from([[1, 2, 3], [3], [0], [2**31 - 1], [2**31], [True], [1.0], list(range(1, 66)),
                     list(range(1, 65)), [], "x" * 256]),
    st.binary(min_size=15, max_size=17),
    st.binary(min_size=31, max_size=33),
)  # fmt: skip
_hello_maps = st.fixed_dictionaries(
    {},
    optional={
        name: _hello_values
        for name in ("id", "versions", "client_id", "user", "host", "app", "nonce", "extra")
    },
)
_good_hello = st.fixed_dictionaries(
    {
        "id": st.integers(1, 2**63 - 1),
        "versions": st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=64),
        "client_id": st.binary(min_size=16, max_size=16),
        "user": st.text(max_size=256),
        "host": st.text(max_size=256),
    },
    optional={"app": st.text(max_size=256), "nonce": st.sampled_from([b"", bytes(32)])},
)


_HELLO = {"id": 1, "versions": [3], "client_id": bytes(16), "user": "u", "host": "h"}


@settings(max_examples=600, deadline=None)
@given(fields=_hello_maps | _good_hello)
@example(fields={**_HELLO, "versions": list(range(1, 65))})
@example(fields={**_HELLO, "versions": list(range(1, 66))})
@example(fields={**_HELLO, "versions": [2**31]})
@example(fields={**_HELLO, "nonce": bytes(31)})
@example(fields={**_HELLO, "app": "x" * 257})
def test_the_hello_reader_accepts_exactly_what_parse_accepts(fields: dict[str, Any]) -> None:
    wire = {"t": "hello", **fields}
    fast = hello_request(wire)
    try:
        msg = m.parse(wire)
    except ProtocolError:
        assert fast is None
        return
    assert isinstance(msg, m.Hello)
    assert fast == (msg.id, msg.versions, msg.client_id, msg.user, msg.host, msg.app, msg.nonce)


def test_a_hello_taken_on_the_fast_path_moves_the_state_as_event_for_does() -> None:
    """``take_hello`` takes the awaited hello of nothing but a hello's fields; a second hello,
    or one with a field of its own, is left to ``event_for`` (which refuses the second and
    checks the other's map)."""
    hello: dict[str, Any] = {"t": "hello", "id": 1, "versions": [3],
                             "client_id": bytes(16), "user": "u", "host": "h"}  # fmt: skip
    conn = ServerConnection()
    assert conn.take_hello({**hello, "extra": [[1]]}) is None
    assert conn.take_hello({**hello, "id": 0}) is None
    assert conn.state is ConnState.AWAIT_HELLO
    assert conn.take_hello(hello) == (1, [3], bytes(16), "u", "h", "", b"")
    assert conn.state is ConnState.READY
    assert conn.take_hello(hello) is None
    event = conn.event_for(hello)
    assert isinstance(event, RequestError) and event.error.code == "unexpected_message"
    other = ServerConnection()
    assert isinstance(other.event_for({**hello, "extra": 1}), m.Hello)
    assert other.state is ConnState.READY


# ------------------------------------------------------------------------------ the service

PRODUCTS = (
    ProductEntitlement("cad", seats=3, versions=("10", "16")),
    ProductEntitlement("render", seats=1, addon=True),
)
LEASE_S = 10.0


def _twin_services(vendor_key: Ed25519PrivateKey) -> list[tuple[LicenseService, list[Any]]]:
    key = make_key(vendor_key, PRODUCTS)
    server_key = Ed25519PrivateKey.generate()
    out = []
    for _ in range(2):
        service = LicenseService(key, server_key, ServiceConfig(lease_seconds=LEASE_S))
        counter = itertools.count(1)
        service.pool._new_lease_id = lambda c=counter: next(c).to_bytes(16, "big")  # type: ignore[misc]
        events: list[Any] = []
        service.set_event_sink(events.append)
        out.append((service, events))
    return out


_leases = st.lists(st.tuples(st.integers(0, 12), st.booleans()), min_size=1, max_size=3)
_op = st.one_of(
    st.tuples(
        st.just("checkout"),
        st.integers(0, 2),
        st.sampled_from(["cad", "render", "nope"]),
        st.sampled_from(["", "16", "17"]),
    ),
    # One lease (the packed replies), or several, repeats included (the general pair calls).
    st.tuples(st.just("renew"), st.integers(0, 2), _leases),
    st.tuples(st.just("release"), st.integers(0, 2), _leases),
    st.tuples(st.just("tick"), st.sampled_from([0.5, 4.0, 9.99, 10.0, 25.0])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=40))
def test_fast_and_general_paths_give_the_same_bytes_pool_and_history(
    vendor_key: Ed25519PrivateKey, ops: list[tuple[Any, ...]]
) -> None:
    (general, general_events), (fast, fast_events) = _twin_services(vendor_key)
    sessions: list[tuple[Session, Session]] = []
    for i in range(3):
        hello = m.Hello(1, [1], secrets.token_bytes(16), f"user{i}", f"host{i}", "app")
        pair = (Session(), Session())
        general.handle(pair[0], hello, 0.0, 1.7e9)
        fast.handle(pair[1], hello, 0.0, 1.7e9)
        sessions.append(pair)
    now, wall, rid = 1.0, 1.7e9, 100
    for op in ops:
        if op[0] == "tick":
            now += op[1]
            wall += op[1]
            general.expire(now)
            fast.expire(now)
            continue
        rid += 1
        s_general, s_fast = sessions[op[1]]
        if op[0] == "checkout":
            wire: dict[str, Any] = {"t": "checkout", "id": rid, "product": op[2]}
            if op[3]:
                wire["version"] = op[3]
            answer = fast.checkout_frame(s_fast, wire, now, wall)
        else:
            # A lease this or another client holds, a dead one, or one never issued.
            leases = [
                n.to_bytes(16, "big") if ours else secrets.token_bytes(16) for n, ours in op[2]
            ]
            wire = {"t": op[0], "id": rid, "leases": leases}
            fn = fast.renew_frame if op[0] == "renew" else fast.release_frame
            answer = fn(s_fast, wire, now, wall)
        reply = general.handle(s_general, m.parse(wire), now, wall).message
        assert answer is not None and reply is not None
        assert answer == encode_frame(m.to_wire(reply)), (wire, answer)
    for product in ("cad", "render"):
        assert general.pool.in_use(product) == fast.pool.in_use(product)
    assert sorted(
        (x.id, x.owner, x.product, x.expires, x.holder) for x in general.pool.leases()
    ) == sorted((x.id, x.owner, x.product, x.expires, x.holder) for x in fast.pool.leases())
    assert general_events == fast_events
    fast.pool.check_invariant()


# ------------------------------------------------------------------------- over real sockets


async def test_one_read_mixing_fast_and_general_requests_is_answered_in_order(
    start_server, raw_peer
) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    peer = await raw_peer(server.address)
    lease = (await peer.request("checkout", product="cad"))["lease"]
    frames: list[dict[str, Any]] = [
        {"t": "renew", "id": 1, "leases": [lease]},
        {"t": "renew", "id": 2, "leases": [b"short"]},  # not for the fast path: the exact error
        {"t": "status", "id": 3},
        {"t": "checkout", "id": 4, "product": "nope"},
        {"t": "release", "id": 5, "leases": [lease]},
        {"t": "renew", "id": 6, "leases": [lease]},
        {"t": "bye", "id": 7},
        {"t": "renew", "id": 8, "leases": [lease]},  # after bye: never answered
    ]
    await peer.send_raw(b"".join(encode_frame(f) for f in frames))
    replies = [await peer.recv() for _ in range(7)]
    assert [r["id"] for r in replies] == [1, 2, 3, 4, 5, 6, 7]
    assert replies[0]["t"] == "renewed" and replies[0]["leases"] == [lease]
    assert replies[1]["t"] == "error" and replies[1]["code"] == "bad_message"
    assert "leases" in replies[1]["message"]
    assert replies[2]["t"] == "status_reply"
    assert replies[3]["code"] == "unknown_product"
    assert replies[4]["t"] == "released" and replies[4]["leases"] == [lease]
    assert replies[5]["lost"] == [{"lease": lease, "code": "lease_unknown"}]
    assert replies[6]["t"] == "goodbye"
    assert await peer.closed_by_server()
    assert server.service.pool.in_use("cad") == 0


async def test_fast_path_follows_the_state_table_within_one_read(start_server, raw_peer) -> None:  # type: ignore[no-untyped-def]
    server = await start_server()
    peer = await raw_peer(server.address, hello=False)
    lease = secrets.token_bytes(16)
    hello = {
        "t": "hello",
        "id": 2,
        "versions": [1],
        "client_id": peer.client_id,
        "user": "u",
        "host": "h",
        "nonce": secrets.token_bytes(32),
    }
    stream = (
        encode_frame({"t": "renew", "id": 1, "leases": [lease]})  # before the hello
        + encode_frame(hello)
        + encode_frame({"t": "renew", "id": 3, "leases": [lease]})  # after it, same read
        + (10**9).to_bytes(4, "big")  # then a header over the limit
    )
    await peer.send_raw(stream)
    early, welcome, renewed, fatal = [await peer.recv() for _ in range(4)]
    assert (early["id"], early["code"]) == (1, "unexpected_message")
    assert welcome["t"] == "welcome"
    assert renewed["t"] == "renewed" and renewed["lost"][0]["lease"] == lease
    assert fatal["code"] == "bad_frame" and "limit" in fatal["message"]
    assert await peer.closed_by_server()


async def test_fast_requests_with_a_bad_map_get_the_frame_errors_of_the_general_path(
    start_server, raw_peer
) -> None:  # type: ignore[no-untyped-def]
    """The server's maps are not checked for nesting and key types before the fast path looks
    at them: a renew, release or checkout carrying anything beyond its own fields goes to the
    general path, which checks, so a field nested too deep or a key that is not a string is
    still a ``bad_frame`` there, and a harmless unknown field is still ignored."""
    server = await start_server()
    peer = await raw_peer(server.address)
    lease = (await peer.request("checkout", product="cad"))["lease"]
    deep: Any = 1
    for _ in range(17):
        deep = [deep]
    frames = [
        msgpack.packb({"t": "renew", "id": 1, "leases": [lease], "x": deep}),
        msgpack.packb({"t": "checkout", "id": 2, "product": "cad", "x": {"y": deep}}),
        msgpack.packb({"t": "release", "id": 3, "leases": [lease], b"k": 1}),
        msgpack.packb({"t": "checkout", "id": 4, "product": "cad", "version": "", "x": [[1]]}),
        msgpack.packb({"t": "release", "id": 5, "leases": [lease], "x": {"y": [1]}}),
    ]
    await peer.send_raw(b"".join(len(f).to_bytes(4, "big") + f for f in frames))
    replies = [await peer.recv() for _ in range(5)]
    assert [(r["id"], r.get("code")) for r in replies[:3]] == [(0, "bad_frame")] * 3
    assert "nests deeper" in replies[0]["message"] and "nests deeper" in replies[1]["message"]
    assert replies[2]["message"] == "map keys must be msgpack str"
    assert (replies[3]["t"], replies[3]["id"]) == ("granted", 4)
    assert (replies[4]["t"], replies[4]["leases"]) == ("released", [lease])
    assert server.service.pool.in_use("cad") == 1  # the second checkout's seat


async def test_a_hello_with_a_bad_map_gets_the_frame_error_of_the_general_path(
    start_server, raw_peer
) -> None:  # type: ignore[no-untyped-def]
    """A hello with a field of its own goes to the general path: one nested too deep is a
    ``bad_frame`` there, the connection still awaits its hello, and a good one is welcomed."""
    server = await start_server()
    peer = await raw_peer(server.address, hello=False)
    deep: Any = 1
    for _ in range(17):
        deep = [deep]
    hello = {"t": "hello", "id": 1, "versions": [1, 2, 3], "client_id": peer.client_id,
             "user": "u", "host": "h", "nonce": secrets.token_bytes(32)}  # fmt: skip
    await peer.send_raw(encode_frame({**hello, "x": deep}))
    refused = await peer.recv()
    assert (refused["id"], refused["code"]) == (0, "bad_frame")
    assert "nests deeper" in refused["message"]
    await peer.send_raw(encode_frame({**hello, "id": 2, "x": "harmless"}))
    welcome = await peer.recv()
    assert (welcome["t"], welcome["id"], welcome["version"]) == ("welcome", 2, 3)
