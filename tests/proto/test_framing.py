"""FrameDecoder: split points, the size limit at the header, and hostile bytes (Hypothesis)."""

from __future__ import annotations

import itertools
import struct
import threading
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
    check_map,
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
    with pytest.raises(BadFrame) as info:
        encode_frame(padded(MAX_FRAME + 1))
    assert info.value.message == f"frame of {MAX_FRAME + 1} bytes exceeds the limit of {MAX_FRAME}"


def test_each_thread_encodes_with_its_own_packer_the_same_bytes() -> None:
    """bytes stay msgpack bin and str stays str, on a thread's first frame as on later ones."""
    msg = {"t": "renew", "id": 3, "leases": [b"\x00" * 16], "note": "é"}
    want = struct.pack(">I", len(body := msgpack.packb(msg, use_bin_type=True))) + body
    got: list[bytes] = []
    for _ in range(2):
        worker = threading.Thread(target=lambda: got.append(encode_frame(msg)))
        worker.start()
        worker.join()
    assert got == [want, want] and encode_frame(msg) == want


def test_max_frame_plus_one_is_refused_at_the_header() -> None:
    decoder = FrameDecoder()
    head = header(MAX_FRAME + 1)
    assert decoder.feed(head[:3]) == []
    assert decoder.buffered == 3
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(head[3:])  # not one byte of the body has arrived
    assert info.value.code == "bad_frame"
    assert info.value.message == f"frame length {MAX_FRAME + 1} exceeds the limit of {MAX_FRAME}"
    assert str(info.value) == f"bad_frame: {info.value.message}"
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
    assert isinstance(empty, BadFrame) and empty.message == "empty frame"
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


# ------------------------------------------------------------------------------ nesting depth
# The top map is level 0; a frame may nest containers (maps or lists) 16 levels below it, and not
# one more: the limit is exact, whichever kinds of container make up the levels.


def nested_maps(levels: int) -> dict[str, Any]:
    """A map with ``levels`` maps nested below it."""
    obj: dict[str, Any] = {"v": 1}
    for _ in range(levels):
        obj = {"a": obj}
    return obj


def nested_lists(levels: int) -> dict[str, Any]:
    """A map holding ``levels`` lists nested in each other (the innermost holds a scalar)."""
    obj: Any = [1]
    for _ in range(levels - 1):
        obj = [obj]
    return {"a": obj}


def nested_mixed(levels: int, first: str) -> dict[str, Any]:
    """Maps and lists taking turns, ``levels`` of them below the top map."""
    obj: Any = 1
    for i in range(levels):
        obj = [obj] if (i % 2 == 0) == (first == "list") else {"a": obj}
    return {"a": obj}


SHAPES = {
    "maps": nested_maps,
    "lists": nested_lists,
    "list_then_map": lambda n: nested_mixed(n, "list"),
    "map_then_list": lambda n: nested_mixed(n, "map"),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_sixteen_levels_are_accepted_and_seventeen_refused(shape: str) -> None:
    make = SHAPES[shape]
    assert decode_body(packed(make(16))) == make(16)
    for levels in (17, 18, 40, 1000):
        with pytest.raises(BadFrame, match="nest"):
            decode_body(packed(make(levels)))


@pytest.mark.parametrize("shape", SHAPES)
def test_the_depth_check_looks_past_a_shallow_first_value(shape: str) -> None:
    """A shallow container first (a list holding a map, a map, scalars) does not end the look:
    a value after it nesting too deep is still refused, within a map and within a list."""
    deep = SHAPES[shape](17)["a"]
    firsts: list[Any] = [[{"x": 1}], {"x": 1}, [1, 2], "text", [[1]]]
    for first in firsts:
        with pytest.raises(BadFrame, match="nest"):
            decode_body(packed({"a": first, "b": deep}))
        with pytest.raises(BadFrame, match="nest"):
            decode_body(packed({"a": [first, deep]}))
        with pytest.raises(BadFrame, match="nest"):
            decode_body(packed({"a": [1, "x", first, deep]}))
    fine = SHAPES[shape](16)["a"]
    assert decode_body(packed({"a": [{"x": 1}], "b": fine})) == {"a": [{"x": 1}], "b": fine}


def test_keys_are_checked_in_maps_within_lists_and_after_the_first_value() -> None:
    for body in (
        {"a": [{b"k": 1}]},
        {"a": [1, [{b"k": 2}]]},
        {"a": 1, "b": {"c": {b"k": 1}}},
        {"a": [[1], {b"k": 1}]},
    ):
        with pytest.raises(BadFrame) as info:
            decode_body(packed(body))
        assert info.value.message == "map keys must be msgpack str"


def test_a_frame_must_be_a_map() -> None:
    for obj in ([1, 2], "text", 5, None, b"bin"):
        with pytest.raises(BadFrame, match="not a map"):
            decode_body(packed(obj))


# ------------------------------------------------------------------------------ the large path
# Bodies over 16 KiB take the decode with every limit spelled out; the same rules hold there.


def test_a_large_frame_decodes_to_the_same_types_as_a_small_one() -> None:
    small = {"s": "text", "b": b"\x00\x01", "l": [1, [2]], "m": {"k": "v"}, "f": 1.5}
    large = {**small, "pad": "x" * 20_000}
    for obj in (small, large):
        got = decode_body(packed(obj))
        assert got == obj
        assert type(got["s"]) is str and type(got["b"]) is bytes
        assert type(got["l"]) is list and type(got["l"][1]) is list


@pytest.mark.parametrize("pad", [0, 20_000])
def test_timestamps_and_other_extensions_are_refused(pad: int) -> None:
    for ext in (msgpack.Timestamp(1, 0), msgpack.ExtType(5, b"x"), msgpack.ExtType(1, b"")):
        with pytest.raises(BadFrame):
            decode_body(packed({"t": ext, "pad": "x" * pad}))


@pytest.mark.parametrize("pad", [0, 20_000])
def test_nesting_and_keys_are_checked_in_large_frames_too(pad: int) -> None:
    with pytest.raises(BadFrame, match="nest"):
        decode_body(packed({**nested_maps(17), "pad": "x" * pad}))
    with pytest.raises(BadFrame, match="keys"):
        decode_body(packed({"pad": "x" * pad, "m": {b"k": 2}}))
    with pytest.raises(BadFrame, match="keys"):
        decode_body(packed({"pad": "x" * pad, b"k": 2}))


def test_containers_of_16k_items_are_accepted_and_one_more_refused() -> None:
    for items in ([0] * 16384, {str(i): 0 for i in range(16384)}):
        assert decode_body(packed({"c": items})) == {"c": items}
    for items in ([0] * 16385, {str(i): 0 for i in range(16385)}):
        with pytest.raises(BadFrame, match="not valid msgpack"):
            decode_body(packed({"c": items}))


def test_a_claimed_size_bigger_than_the_body_is_refused_without_allocating() -> None:
    """Headers of a str, bin, array and map claiming far more than the body holds."""
    for claim in (b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
                  b"\xdf\xff\xff\xff\xff"):  # fmt: skip
        for pad in (0, 20_000):
            body = b"\x82\xa1p" + packed("x" * pad) + b"\xa1c" + claim
            with pytest.raises(BadFrame):
                decode_body(body)


def test_a_recursion_error_is_a_bad_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    import lanlic.proto.framing as framing

    def deep(*args: Any, **kw: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(framing.msgpack, "unpackb", deep)
    with pytest.raises(BadFrame) as info:
        decode_body(packed(STATUS))
    assert info.value.message == "frame nests too deeply"


@pytest.mark.parametrize("pad", [0, 20_000])
def test_an_extension_with_data_is_refused_by_its_size_before_any_hook(pad: int) -> None:
    """``max_ext_len=0``: an extension carrying data never reaches the hook (one that carries
    none is named by the hook, below)."""
    for ext in (b"\xd4\x05x", b"\xc7\x01\x05x"):
        body = b"\x82\xa1p" + packed("x" * pad) + b"\xa1t" + ext
        with pytest.raises(BadFrame) as info:
            decode_body(body)
        assert info.value.message == "frame body is not valid msgpack (ValueError)"


def test_decode_errors_name_what_was_wrong() -> None:
    with pytest.raises(BadFrame, match=r"not valid msgpack \(.*Error\)"):
        decode_body(b"\xc1")
    with pytest.raises(BadFrame, match="is a msgpack list, not a map"):
        decode_body(packed([1]))
    with pytest.raises(BadFrame, match="extension type 5 is not allowed"):
        decode_body(b"\x81\xa1t" + b"\xc7\x00\x05")  # an empty ext 5 passes max_ext_len
    large = b"\x82\xa1p" + packed("x" * 20_000) + b"\xa1t\xc7\x00\x05"
    with pytest.raises(BadFrame) as info:
        decode_body(large)
    assert info.value.message == "msgpack extension type 5 is not allowed"


# ----------------------------------------------------------------------- the unchecked decoder
# The server's decoder leaves ``check_map`` to whoever takes a map (ServerConnection.event_for,
# or the fast path for the shapes it checks field by field): apart from that, it must decode
# every body exactly as ``decode_body`` does.

_bodies = st.one_of(
    st.binary(max_size=40),
    st.builds(packed, msgpack_values),
    st.sampled_from(
        [
            b"\x81\xa1t\xc7\x00\x05",
            b"\x81\xa1t\xd4\x05x",
            b"\x81\xa1t\xd6\xff\x00\x00\x00\x01",
            packed(nested_maps(17)),
            packed({"a": {b"k": 1}}),
            b"\xc1",
            packed([1]),
        ]
    ),
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_bodies, max_size=6))
def test_the_unchecked_decoder_decodes_as_decode_body_less_the_map_check(
    bodies: list[bytes],
) -> None:
    stream = b"".join(struct.pack(">I", len(b)) + b for b in bodies)
    unchecked = FrameDecoder(check=False).feed(stream)
    checked = FrameDecoder().feed(stream)
    assert len(unchecked) == len(checked) == len(bodies)
    for got, want in zip(unchecked, checked, strict=True):
        if isinstance(want, BadFrame):
            if isinstance(got, dict):  # only the map check is left to the taker
                with pytest.raises(BadFrame) as info:
                    check_map(got)
                assert info.value.message == want.message
            else:
                assert isinstance(got, BadFrame) and got.message == want.message
        else:
            assert got == want
            check_map(got)
