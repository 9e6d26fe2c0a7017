"""Messages: every type round-trips, unknown fields are ignored, missing fields are named."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lanlic.errors import BadMessage, UnknownMessage
from lanlic.proto import messages as m
from lanlic.proto.framing import FrameDecoder, encode_frame

LEASE_A = bytes(range(16))
LEASE_B = bytes(range(16, 32))

SAMPLES: list[m.Message] = [
    m.Hello(1, [1, 2], bytes(16), "alice", "ws-17", app="cadpro 2024.1", nonce=bytes(32)),
    m.Checkout(2, "cadpro", version="2024.1"),
    m.Renew(3, [LEASE_A, LEASE_B]),
    m.Release(4, [LEASE_A]),
    m.Status(5),
    m.Bye(6),
    m.Welcome(1, 1, "sha256:" + "5e" * 16, 60.0, 20.0, bytes(32), bytes(64), "SHA256:ab", "Acme"),
    m.Granted(2, LEASE_A, "cadpro", 60.0),
    m.Renewed(3, [LEASE_A], lost=[m.Lost(LEASE_B, "lease_unknown")]),
    m.Released(4, [], lost=[m.Lost(LEASE_A, "lease_unknown"), m.Lost(LEASE_B, "lease_unknown")]),
    m.StatusReply(
        5,
        "sha256:" + "5e" * 16,
        "Acme",
        "2026-12-31",
        [
            {
                "name": "cadpro",
                "seats": 10,
                "in_use": 1,
                "borrowed": 0,
                "free": 9,
                "borrowable": 2,
                "addon": False,
                "versions": ["10", "16"],
                "holders": [
                    {
                        "user": "alice",
                        "host": "ws-17",
                        "app": "cadpro",
                        "version": "2024.1",
                        "since": 1764300000.5,
                        "last_heartbeat": 1764300040.25,
                    }
                ],
            }
        ],
    ),
    m.Goodbye(6, released=2),
    m.Error(2, "no_seat", message="all seats in use"),
    m.Notice("lease_removed", message="by admin", leases=[LEASE_A]),
    m.Enroll(7, request=b'{"format": "lanlic-enrollment-request"}'),
    m.Enrolled(7, response=b'{"format": "lanlic-enrollment-response"}'),
    m.Borrow(8, bytes(16), "cadpro", 14.0, bytes(32), bytes(64), version="16"),
    m.Borrowed(8, "b-1", b'{"format": "lanlic-borrowed-license"}', 1764300000.0),
    m.Return(9, "b-1", bytes(32), bytes(64)),
    m.Returned(9, "b-1", already=True),
    m.Present(10, b"{}", bytes(64)),
    m.Presented(10, "b-1", "adopted", 1.8e9),
    m.Reclaim(10, [{"lease": LEASE_A, "product": "cadpro", "version": "16"}]),
    m.Reclaimed(10, [LEASE_A], 3, lost=[m.Lost(LEASE_B, "no_seat")]),
    m.Wait(11, "cadpro", "16"),
    m.Queued(11, b"t" * 16, "cadpro", 3),
    m.Unwait(12, b"t" * 16),
    m.Unwaited(12, b"t" * 16, False),
]

IDS = [s.TYPE for s in SAMPLES]


def through_the_wire(msg: m.Message) -> m.Message:
    [wire] = FrameDecoder().feed(encode_frame(m.to_wire(msg)))
    assert isinstance(wire, dict)
    return m.parse(wire)


def test_samples_cover_every_message_type() -> None:
    defined = {
        cls
        for cls in vars(m).values()
        if isinstance(cls, type) and issubclass(cls, m.Message) and cls.TYPE not in ("", "lost")
    }
    assert {type(s) for s in SAMPLES} == defined


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_round_trip(msg: m.Message) -> None:
    assert through_the_wire(msg) == msg
    assert m.to_wire(through_the_wire(msg)) == m.to_wire(msg)


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_unknown_fields_are_ignored(msg: m.Message) -> None:
    wire = m.to_wire(msg)
    wire.update({"zz_future": [1, {"nested": b"\x00"}], "x_vendor": "anything", "t2": None})
    assert m.parse(wire) == msg


def required_fields(msg: m.Message) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(msg)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_each_missing_required_field_is_named(msg: m.Message) -> None:
    names = required_fields(msg)
    assert names or msg.TYPE == "notice"
    for name in names:
        wire = m.to_wire(msg)
        del wire[name]
        with pytest.raises(BadMessage) as info:
            m.parse(wire)
        assert repr(name) in str(info.value), name
        assert info.value.code == "bad_message"


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_missing_optional_fields_take_their_defaults(msg: m.Message) -> None:
    wire = {k: v for k, v in m.to_wire(msg).items() if k == "t" or k in required_fields(msg)}
    parsed = m.parse(wire)
    for f in dataclasses.fields(parsed):
        if f.name not in wire:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            assert getattr(parsed, f.name) == default


def test_type_field_is_required_and_must_be_known() -> None:
    with pytest.raises(BadMessage):
        m.parse({"id": 1})
    with pytest.raises(BadMessage):
        m.parse({"t": b"status", "id": 1})
    with pytest.raises(UnknownMessage):
        m.parse({"t": "lost", "lease": LEASE_A, "code": "x"})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", -1),
        ("id", m.MAX_REQUEST_ID + 1),
        ("id", True),
        ("id", 1.0),
        ("product", "p" * (m.MAX_NAME + 1)),
        ("product", b"cadpro"),
        ("version", None),
    ],
)
def test_mistyped_fields_are_named(field: str, value: object) -> None:
    wire = {**m.to_wire(m.Checkout(2, "cadpro", "1")), field: value}
    with pytest.raises(BadMessage) as info:
        m.parse(wire)
    assert repr(field) in str(info.value)


def test_numbers_in_float_fields_may_be_ints_on_the_wire() -> None:
    wire = {**m.to_wire(m.Granted(2, LEASE_A, "cadpro", 60.0)), "lease_s": 60}
    parsed = m.parse(wire)
    assert isinstance(parsed, m.Granted) and parsed.lease_s == 60.0


def test_request_id_of() -> None:
    assert m.request_id_of({"id": 42}) == 42
    for bad in (-1, 2**64 - 1, "42", True, None):
        assert m.request_id_of({"id": bad}) == 0


names = st.text(max_size=m.MAX_NAME)
lease_ids = st.lists(st.binary(min_size=16, max_size=16), max_size=20)
request_ids = st.integers(m.MIN_REQUEST_ID, m.MAX_REQUEST_ID)
versions = st.just("") | st.lists(st.integers(0, 10**9 - 1), min_size=1, max_size=8).map(
    lambda parts: ".".join(map(str, parts))
)
some_messages = st.one_of(
    st.builds(
        m.Hello,
        request_ids,
        st.lists(st.integers(1, 2**31 - 1), min_size=1, max_size=64),
        st.binary(min_size=16, max_size=16),
        names,
        names,
        app=names,
        nonce=st.binary(min_size=32, max_size=32) | st.just(b""),
    ),
    st.builds(m.Checkout, request_ids, names, version=versions),
    st.builds(m.Renew, request_ids, lease_ids),
    st.builds(m.Release, request_ids, lease_ids),
    st.builds(
        m.Granted, request_ids, st.binary(min_size=16, max_size=16), names, st.floats(0, 1e8)
    ),
    st.builds(m.Error, request_ids, names, message=st.text(max_size=4096)),
)


@settings(max_examples=150, deadline=None)
@given(some_messages)
def test_round_trip_property(msg: m.Message) -> None:
    assert through_the_wire(msg) == msg
