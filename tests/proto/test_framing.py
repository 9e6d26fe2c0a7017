"""FrameDecoder: split points, the size limit at the header, and hostile bytes (Hypothesis)."""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lanlic.errors import BadFrame, ProtocolError
from lanlic.proto import messages as m
from lanlic.proto.connection import ConnState, FatalError, RequestError, ServerConnection
from lanlic.proto.framing import (
    HEADER_SIZE,
    MAX_FRAME,
    FrameDecoder,
    FrameTooLarge,
    decode_body,
    encode_frame,
)

STATUS = {"t": "status", "id": 7}
CHECKOUT = {"t": "checkout", "id": 8, "product": "cadpro", "version": "2024.1"}


def header(n: int) -> bytes:
    return struct.pack(">I", n)


def padded(size: int) -> dict[str, Any]:
    """A status map whose msgpack encoding is exactly ``size`` bytes (size > 70 KiB)."""
    probe = {**STATUS, "pad": "x" * 70_000}
    overhead = len(msgpack.packb(probe)) - 70_000
    out = {**STATUS, "pad": "x" * (size - overhead)}
    assert len(msgpack.packb(out)) == size
    return out


def test_every_split_of_two_frames_gives_the_same_frames() -> None:
    stream = encode_frame(STATUS) + encode_frame(CHECKOUT)
    for i in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed(stream[:i]) + decoder.feed(stream[i:])
        assert got == [STATUS, CHECKOUT], i
        assert decoder.buffered == 0


def test_every_three_way_split_gives_the_same_frames() -> None:
    stream = encode_frame(STATUS) + encode_frame(CHECKOUT)
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            decoder = FrameDecoder()
            got = decoder.feed(stream[:i]) + decoder.feed(stream[i:j]) + decoder.feed(stream[j:])
            assert got == [STATUS, CHECKOUT], (i, j)


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    big = padded(MAX_FRAME)
    data = encode_frame(big)
    assert len(data) == HEADER_SIZE + MAX_FRAME
    decoder = FrameDecoder()
    [got] = decoder.feed(data)
    assert got == big
    assert m.parse(got) == m.Status(id=7)  # the unknown "pad" field is ignored


def test_encode_refuses_a_frame_over_max_frame() -> None:
    with pytest.raises(BadFrame):
        encode_frame(padded(MAX_FRAME + 1))


def test_max_frame_plus_one_is_refused_at_the_header() -> None:
    decoder = FrameDecoder()
    head = header(MAX_FRAME + 1)
    assert decoder.feed(head[:3]) == []
    assert decoder.buffered == 3
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(head[3:])  # not one byte of the body has arrived
    assert info.value.code == "bad_frame"
    assert isinstance(info.value, BadFrame)
    assert decoder.buffered == 0


def test_the_limit_is_the_decoders() -> None:
    decoder = FrameDecoder(max_frame=16)
    assert decoder.feed(header(16)) == []
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame=16).feed(header(17))


def test_frames_before_an_over_limit_header_are_kept() -> None:
    data = encode_frame(STATUS) + encode_frame({"t": "status", "id": 9}) + header(MAX_FRAME + 1)
    with pytest.raises(FrameTooLarge) as info:
        FrameDecoder().feed(data)
    assert info.value.frames == [STATUS, {"t": "status", "id": 9}]
    conn = ServerConnection()
    conn.receive_data(encode_frame(m.to_wire(m.Hello(1, [1], bytes(16), "u", "h"))))
    events = conn.receive_data(data)
    assert events[:2] == [m.Status(id=7), m.Status(id=9)]
    assert isinstance(events[2], FatalError) and events[2].error.code == "bad_frame"


def test_buffered_reports_a_half_frame() -> None:
    data = encode_frame(CHECKOUT)
    half = len(data) // 2
    decoder = FrameDecoder()
    assert decoder.buffered == 0
    assert decoder.feed(data[:2]) == []
    assert decoder.buffered == 2
    assert decoder.feed(data[2:half]) == []
    assert decoder.buffered == half
    assert decoder.feed(data[half:]) == [CHECKOUT]
    assert decoder.buffered == 0


def test_empty_frame_is_an_error_and_the_stream_stays_in_step() -> None:
    [empty, status] = FrameDecoder().feed(header(0) + encode_frame(STATUS))
    assert isinstance(empty, BadFrame)
    assert status == STATUS


@pytest.mark.parametrize(
    "body",
    [b"\x81\xc4\x01t\x01", b"\x81\x01\x01", b"\x81\xa1x\x81\xc4\x01k\x01"],
    ids=["bin_key", "int_key", "nested_bin_key"],
)
def test_map_keys_must_be_str(body: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_body(body)


# ------------------------------------------------------------------------------ hostile bytes

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.binary(max_size=4), children, max_size=5)
    ),
    max_leaves=10,
)

FIELD_NAMES = sorted(
    {f for cls in (m.Hello, m.Welcome, m.StatusReply, m.Renewed, m.Notice) for f in cls.__slots__}
    | {f for cls in (m.Borrow, m.Borrowed, m.Enroll, m.Return, m.Reclaim) for f in cls.__slots__}
    | {"id", "product", "version", "lease", "lease_s", "code", "message", "released"}
)
KNOWN_TYPES = ["hello", "checkout", "renew", "release", "status", "bye", "welcome", "granted"]
KNOWN_TYPES += ["renewed", "released", "status_reply", "goodbye", "error", "notice", "lost"]
KNOWN_TYPES += ["enroll", "enrolled", "borrow", "borrowed", "return", "returned", "reclaim"]
KNOWN_TYPES += ["reclaimed"]

field_values = (
    msgpack_values
    | st.binary(min_size=16, max_size=16)
    | st.lists(st.binary(min_size=15, max_size=17), max_size=3)
    | st.lists(st.dictionaries(st.sampled_from(["lease", "code"]), msgpack_values, max_size=2))
)
message_like = st.builds(
    lambda t, fields: {"t": t, **fields},
    st.sampled_from(KNOWN_TYPES) | st.text(max_size=5),
    st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=8),
)


def packed(obj: Any) -> bytes:
    return bytes(msgpack.packb(obj, use_bin_type=True))


framed_bodies = st.lists(
    st.one_of(
        st.binary(max_size=64),
        msgpack_values.map(packed),
        message_like.map(packed),
        message_like.map(packed).flatmap(
            lambda b: st.integers(0, max(len(b) - 1, 0)).map(lambda i: b[:i] + b"\xc1" + b[i:])
        ),
    ),
    max_size=4,
).map(lambda bodies: b"".join(header(len(b)) + b for b in bodies))

hostile = st.one_of(
    st.binary(max_size=200),
    framed_bodies,
    st.tuples(framed_bodies, st.binary(max_size=12)).map(lambda p: p[0] + p[1]),
)


def run(data: bytes, cuts: list[int]) -> list[str]:
    """Feed ``data`` cut at ``cuts``; every result must be a dict or a ProtocolError."""
    decoder = FrameDecoder()
    out: list[str] = []
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    for a, b in itertools.pairwise(bounds):
        try:
            items = decoder.feed(data[a:b])
        except ProtocolError as exc:
            assert isinstance(exc, FrameTooLarge)
            items = exc.frames
            fatal: str | None = f"fatal:{exc.code}"
        else:
            fatal = None
        for item in items:
            if isinstance(item, ProtocolError):
                out.append(f"error:{item.code}:{item}")
                continue
            assert type(item) is dict
            assert all(type(k) is str for k in item)
            try:
                msg = m.parse(item)
            except ProtocolError as exc:
                out.append(f"error:{exc.code}:{exc}")
            else:
                assert isinstance(msg, m.Message)
                assert m.parse(m.to_wire(msg)) == msg
                out.append(f"message:{msg.TYPE}")
        if fatal is not None:
            out.append(fatal)
            break
    return out


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_hostile_bytes_only_give_maps_or_protocol_errors(data: bytes, cuts: list[int]) -> None:
    assert run(data, cuts) == run(data, [])


@settings(max_examples=100, deadline=None)
@given(data=framed_bodies)
def test_hostile_frames_through_the_connection(data: bytes) -> None:
    whole = ServerConnection().receive_data(data)
    conn = ServerConnection()
    bytewise = [e for i in range(len(data)) for e in conn.receive_data(data[i : i + 1])]
    assert [type(e) for e in whole] == [type(e) for e in bytewise]
    assert not any(isinstance(e, FatalError) for e in whole)


HELLO = encode_frame(m.to_wire(m.Hello(1, [1], bytes(16), "u", "h")))


def events_of(conn: ServerConnection, chunks: list[bytes]) -> list[str]:
    """Feed ``chunks`` until the first fatal error (the server closes there); each event must be
    a message, or a request error or fatal error carrying a ProtocolError with its wire code."""
    out: list[str] = []
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            if isinstance(event, m.Message):
                out.append(f"message:{event.TYPE}")
            elif isinstance(event, RequestError):
                assert isinstance(event.error, ProtocolError) and event.error.code
                assert 0 <= event.id <= m.MAX_REQUEST_ID
                out.append(f"error:{event.id}:{event.error.code}")
            else:
                assert isinstance(event, FatalError)
                assert isinstance(event.error, ProtocolError)
                out.append(f"fatal:{event.error.code}")
                assert conn.state is ConnState.CLOSED
                return out
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile, after_hello=st.booleans())
def test_arbitrary_bytes_through_the_connection_whole_and_byte_by_byte(
    data: bytes, after_hello: bool
) -> None:
    """Any bytes at all (over-limit headers included), in either state: the decoder, ``parse``
    and the state table give messages or lanlic ProtocolErrors only, and the same ones whether
    the bytes come at once or one at a time."""
    stream = (HELLO if after_hello else b"") + data
    whole = events_of(ServerConnection(), [stream])
    bytewise = events_of(ServerConnection(), [stream[i : i + 1] for i in range(len(stream))])
    assert whole == bytewise
