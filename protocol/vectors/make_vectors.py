"""Generate the protocol test vectors: ``python protocol/vectors/make_vectors.py``.

Writes ``frames.json`` and ``sessions.json`` beside this file. The output is deterministic, so a
test can regenerate both and compare them with the committed files. Only msgpack, the standard
library and ``lanlic.proto`` are used.

In the JSON, bytes inside a message are written as ``{"$bin": "<hex>"}``. The welcome vectors'
``server_key`` and ``signature`` are fixed filler bytes, not a real key and signature.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lanlic.proto import messages as m
from lanlic.proto.framing import MAX_FRAME, encode_frame

HERE = Path(__file__).resolve().parent

CLIENT_ID = bytes(range(16))
NONCE = bytes(range(0x20, 0x40))
LEASE_A = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
LEASE_B = bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf")
SERVER_KEY = bytes(range(0x40, 0x60))
SIGNATURE = bytes(range(0x80, 0xC0))
SERVER_ID = "sha256:" + "5e" * 16
VENDOR_FP = "sha256:" + "7a" * 16


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"$bin": obj.hex()}
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [jsonable(v) for v in obj]
    return obj


HELLO = m.Hello(
    id=1,
    versions=[1],
    client_id=CLIENT_ID,
    user="alice",
    host="ws-17.example.lan",
    app="cadpro 2024.1",
    nonce=NONCE,
)

#: The reference client's hello: every version it speaks (1 and 2), so the server answers in 2.
HELLO_V2 = dataclasses.replace(HELLO, versions=[1, 2])
#: The reference client's hello since version 3: versions 1, 2 and 3, answered in 3.
HELLO_V3 = dataclasses.replace(HELLO, versions=[1, 2, 3])
#: A version-3 welcome's path: one step, its sibling on the right (SPEC 4, "Version 3").
BATCH_PATH = b"\x00" + bytes(range(32))
#: A server time for the version-2 welcome (UTC seconds, float64 in the signed bytes).
TIME = 1800000000.25

#: The welcome to ``HELLO`` (version 1); the welcomes of versions 2 and 3 add to it.
WELCOME = m.Welcome(
    id=1,
    version=1,
    server_id=SERVER_ID,
    lease_s=60.0,
    heartbeat_s=20.0,
    server_key=SERVER_KEY,
    signature=SIGNATURE,
    vendor_fp=VENDOR_FP,
    customer="Acme Engineering Ltd",
)

VALID: list[tuple[str, m.Message]] = [
    ("hello", HELLO),
    ("hello_v2", HELLO_V2),
    ("hello_v3", HELLO_V3),
    (
        "hello_several_versions_unicode",
        m.Hello(
            id=1,
            versions=[1, 2, 7],
            client_id=CLIENT_ID,
            user="zoë",
            host="büro-3",
            app="",
            nonce=NONCE,
        ),
    ),
    (
        "hello_user_at_limit",
        m.Hello(
            id=1, versions=[1], client_id=CLIENT_ID, user="u" * 256, host="h", app="", nonce=NONCE
        ),
    ),
    ("checkout", m.Checkout(id=2, product="cadpro", version="2024.1")),
    ("checkout_any_version", m.Checkout(id=3, product="cadpro", version="")),
    ("checkout_max_id", m.Checkout(id=m.MAX_REQUEST_ID, product="cadpro", version="2024.1")),
    ("checkout_product_upper_case", m.Checkout(id=2, product="CADPRO", version="2024.1")),
    ("checkout_version_leading_zero", m.Checkout(id=2, product="cadpro", version="02024.01")),
    ("renew", m.Renew(id=4, leases=[LEASE_A, LEASE_B])),
    ("renew_empty", m.Renew(id=5, leases=[])),
    ("renew_duplicate_lease", m.Renew(id=4, leases=[LEASE_A, LEASE_B, LEASE_A])),
    ("release", m.Release(id=6, leases=[LEASE_A])),
    ("release_duplicate_lease", m.Release(id=6, leases=[LEASE_A, LEASE_A])),
    ("status", m.Status(id=7)),
    ("bye", m.Bye(id=8)),
    (
        "hello_no_shared_version",
        m.Hello(id=1, versions=[4, 7], client_id=CLIENT_ID, user="alice", host="h", nonce=NONCE),
    ),
    ("welcome", WELCOME),
    ("welcome_v2", dataclasses.replace(WELCOME, version=2, time=TIME)),
    ("welcome_v3", dataclasses.replace(WELCOME, version=3, time=TIME, batch_path=BATCH_PATH)),
    ("granted", m.Granted(id=2, lease=LEASE_A, product="cadpro", lease_s=60.0)),
    (
        "renewed",
        m.Renewed(id=4, leases=[LEASE_A], lost=[m.Lost(lease=LEASE_B, code="lease_unknown")]),
    ),
    ("released", m.Released(id=6, leases=[LEASE_A], lost=[])),
    (
        "status_reply",
        m.StatusReply(
            id=7,
            server_id=SERVER_ID,
            customer="Acme Engineering Ltd",
            expires="2026-12-31",
            products=[
                {
                    "name": "cadpro",
                    "seats": 10,
                    "in_use": 1,
                    "borrowed": 1,
                    "held": 0,
                    "held_until": None,
                    "free": 8,
                    "borrowable": 2,
                    "max_borrow_days": 14,
                    "addon": False,
                    "versions": ["2024", "2025.2"],
                    "holders": [
                        {
                            "user": "alice",
                            "host": "ws-17.example.lan",
                            "app": "cadpro 2024.1",
                            "version": "2024.1",
                            "since": 1764300000.5,
                            "last_heartbeat": 1764300040.25,
                        }
                    ],
                    "holders_total": 1,
                    "queue": [
                        {"position": 1, "user": "bob", "host": "ws-07", "since": 1765500100.0}
                    ],
                },
                {
                    "name": "cadpro-render",
                    "seats": 2,
                    "in_use": 0,
                    "borrowed": 0,
                    "held": 0,
                    "held_until": None,
                    "free": 2,
                    "borrowable": 0,
                    "max_borrow_days": 0,
                    "addon": True,
                    "versions": None,
                    "holders": [],
                    "holders_total": 0,
                    "queue": [],
                },
            ],
            borrows=[
                {
                    "borrow_id": "b-5f3a",
                    "product": "cadpro",
                    "user": "bob",
                    "host": "lt-bob",
                    "start": 1764300000.0,
                    "end": 1765509600.0,
                }
            ],
        ),
    ),
    ("goodbye", m.Goodbye(id=8, released=1)),
    ("error", m.Error(id=2, code="no_seat", message="all 10 seats of 'cadpro' are in use")),
    ("error_unreadable_request", m.Error(id=0, code="bad_frame", message="empty frame")),
    (
        "notice_lease_removed",
        m.Notice(kind="lease_removed", message="removed by an administrator", leases=[LEASE_A]),
    ),
    ("notice_shutdown", m.Notice(kind="shutdown", message="server stopping", leases=[])),
    ("enroll", m.Enroll(id=9, request=b'{"format": "lanlic-enrollment-request", "version": 1}')),
    (
        "enrolled",
        m.Enrolled(id=9, response=b'{"format": "lanlic-enrollment-response", "version": 1}'),
    ),
    (
        "borrow",
        m.Borrow(
            id=10,
            request_id=bytes(range(100, 116)),
            product="cadpro",
            days=14.0,
            container_key=bytes(range(32)),
            proof=bytes(range(64)),
            version="2024.1",
        ),
    ),
    (
        "borrowed",
        m.Borrowed(
            id=10,
            borrow_id="b-5f3a",
            file=b'{"format": "lanlic-borrowed-license", "version": 1}',
            end=1765509600.0,
        ),
    ),
    (
        "return",
        m.Return(id=11, borrow_id="b-5f3a", container_key=bytes(range(32)), proof=bytes(range(64))),
    ),
    ("returned", m.Returned(id=11, borrow_id="b-5f3a", already=False)),
    (
        "present",
        m.Present(
            id=13,
            file=b'{"format": "lanlic-borrowed-license", "version": 1}',
            proof=bytes(range(64)),
        ),
    ),
    ("presented", m.Presented(id=13, borrow_id="b-5f3a", state="adopted", end=1765509600.0)),
    (
        "reclaim",
        m.Reclaim(id=12, seats=[{"lease": LEASE_A, "product": "cadpro", "version": "2024.1"}]),
    ),
    (
        "reclaimed",
        m.Reclaimed(id=12, leases=[LEASE_A], epoch=4, lost=[m.Lost(lease=LEASE_B, code="no_seat")]),
    ),
    ("wait", m.Wait(id=14, product="cadpro", version="2024.1")),
    ("queued", m.Queued(id=14, ticket=bytes(range(200, 216)), product="cadpro", position=2)),
    ("unwait", m.Unwait(id=15, ticket=bytes(range(200, 216)))),
    ("unwaited", m.Unwaited(id=15, ticket=bytes(range(200, 216)), left=True)),
]


def _wire(msg: m.Message, **changes: Any) -> dict[str, Any]:
    out = m.to_wire(msg)
    out.update(changes)
    return out


def _without(msg: m.Message, name: str) -> dict[str, Any]:
    out = m.to_wire(msg)
    del out[name]
    return out


_STATUS = {"t": "status", "id": 7}
_RENEW = m.Renew(id=4, leases=[LEASE_A])
_GRANTED = m.Granted(id=2, lease=LEASE_A, product="cadpro", lease_s=60.0)
_CHECKOUT = m.Checkout(id=2, product="cadpro", version="2024.1")
_BORROW = dict(VALID)["borrow"]


def _nested(depth: int) -> bytes:
    # {"t": "status", "id": 7, "x": [[...[nil]...]]} with `depth` arrays
    return b"\x83\xa1t\xa6status\xa2id\x07\xa1x" + b"\x91" * depth + b"\xc0"


# (name, frame bytes, error code, fatal)
INVALID: list[tuple[str, bytes, str, bool]] = [
    ("length_over_limit", struct.pack(">I", MAX_FRAME + 1), "bad_frame", True),
    ("length_max_u32", b"\xff\xff\xff\xff", "bad_frame", True),
    ("zero_length", struct.pack(">I", 0), "bad_frame", False),
    ("not_msgpack", frame(b"\xc1"), "bad_frame", False),
    ("truncated_msgpack", frame(b"\x82\xa1t\xa6status"), "bad_frame", False),
    ("trailing_bytes", frame(pack(_STATUS) + b"\xc0"), "bad_frame", False),
    ("two_maps_in_one_frame", frame(pack(_STATUS) + pack(_STATUS)), "bad_frame", False),
    ("body_is_array", frame(pack(["status", 7])), "bad_frame", False),
    ("body_is_int", frame(pack(7)), "bad_frame", False),
    ("body_is_nil", frame(b"\xc0"), "bad_frame", False),
    ("key_int", frame(pack({"t": "status", "id": 7, 1: "x"})), "bad_frame", False),
    ("key_bin", frame(pack({b"t": "status", b"id": 7})), "bad_frame", False),
    ("key_nil", frame(b"\x81\xc0\x07"), "bad_frame", False),
    (
        "nested_key_bin",
        frame(
            pack(
                _wire(m.StatusReply(7, SERVER_ID, "c", "2026-12-31", []), products=[{b"name": "x"}])
            )
        ),
        "bad_frame",
        False,
    ),
    ("ext_type", frame(pack({**_STATUS, "x": msgpack.ExtType(5, b"ab")})), "bad_frame", False),
    ("ext_empty", frame(b"\x83\xa1t\xa6status\xa2id\x07\xa1x\xc7\x00\x05"), "bad_frame", False),
    ("ext_timestamp", frame(pack({**_STATUS, "x": msgpack.Timestamp(0)})), "bad_frame", False),
    ("invalid_utf8", frame(b"\x82\xa1t\xa6stat\xff\xfe\xa2id\x07"), "bad_frame", False),
    ("deep_nesting", frame(_nested(17)), "bad_frame", False),
    ("very_deep_nesting", frame(_nested(5000)), "bad_frame", False),
    (
        "array_header_2e32_minus_1",
        frame(b"\x83\xa1t\xa6status\xa2id\x07\xa1x\xdd\xff\xff\xff\xff"),
        "bad_frame",
        False,
    ),
    (
        "map_header_2e32_minus_1",
        frame(b"\x83\xa1t\xa6status\xa2id\x07\xa1x\xdf\xff\xff\xff\xff"),
        "bad_frame",
        False,
    ),
    (
        "str_header_2e32_minus_1",
        frame(b"\x83\xa1t\xa6status\xa2id\x07\xa1x\xdb\xff\xff\xff\xff"),
        "bad_frame",
        False,
    ),
    (
        "bin_header_2e32_minus_1",
        frame(b"\x83\xa1t\xa6status\xa2id\x07\xa1x\xc6\xff\xff\xff\xff"),
        "bad_frame",
        False,
    ),
    ("type_missing", frame(pack({"id": 7})), "bad_message", False),
    ("type_not_str", frame(pack({"t": 1, "id": 7})), "bad_message", False),
    ("type_bin", frame(pack({"t": b"status", "id": 7})), "bad_message", False),
    ("type_unknown", frame(pack({"t": "teleport", "id": 7})), "unknown_message", False),
    ("type_lost_is_not_a_message", frame(pack({"t": "lost", "id": 7})), "unknown_message", False),
    ("id_missing", frame(pack({"t": "status"})), "bad_message", False),
    ("id_as_string", frame(pack({"t": "status", "id": "7"})), "bad_message", False),
    ("id_bool", frame(pack({"t": "status", "id": True})), "bad_message", False),
    ("id_float", frame(pack({"t": "status", "id": 7.0})), "bad_message", False),
    ("id_negative", frame(pack({"t": "status", "id": -1})), "bad_message", False),
    ("id_2e63", frame(pack({"t": "status", "id": 2**63})), "bad_message", False),
    ("id_2e64_minus_1", frame(pack({"t": "status", "id": 2**64 - 1})), "bad_message", False),
    ("id_nil", frame(pack({"t": "status", "id": None})), "bad_message", False),
    ("hello_missing_client_id", frame(pack(_without(HELLO, "client_id"))), "bad_message", False),
    ("hello_missing_user", frame(pack(_without(HELLO, "user"))), "bad_message", False),
    (
        "hello_client_id_15_bytes",
        frame(pack(_wire(HELLO, client_id=CLIENT_ID[:15]))),
        "bad_message",
        False,
    ),
    (
        "hello_client_id_as_str",
        frame(pack(_wire(HELLO, client_id=CLIENT_ID.hex()))),
        "bad_message",
        False,
    ),
    ("hello_nonce_31_bytes", frame(pack(_wire(HELLO, nonce=NONCE[:31]))), "bad_message", False),
    ("hello_versions_empty", frame(pack(_wire(HELLO, versions=[]))), "bad_message", False),
    ("hello_versions_bool", frame(pack(_wire(HELLO, versions=[True]))), "bad_message", False),
    ("hello_versions_zero", frame(pack(_wire(HELLO, versions=[0]))), "bad_message", False),
    ("hello_versions_not_list", frame(pack(_wire(HELLO, versions=1))), "bad_message", False),
    ("hello_user_over_limit", frame(pack(_wire(HELLO, user="u" * 257))), "bad_message", False),
    ("hello_user_huge", frame(pack(_wire(HELLO, user="u" * 10_000))), "bad_message", False),
    ("hello_user_as_bin", frame(pack(_wire(HELLO, user=b"alice"))), "bad_message", False),
    ("checkout_missing_product", frame(pack(_without(_CHECKOUT, "product"))), "bad_message", False),
    ("checkout_product_nil", frame(pack(_wire(_CHECKOUT, product=None))), "bad_message", False),
    (
        "renew_lease_15_bytes",
        frame(pack(_wire(_RENEW, leases=[LEASE_A[:15]]))),
        "bad_message",
        False,
    ),
    (
        "renew_lease_17_bytes",
        frame(pack(_wire(_RENEW, leases=[LEASE_A + b"\x00"]))),
        "bad_message",
        False,
    ),
    (
        "renew_lease_as_str",
        frame(pack(_wire(_RENEW, leases=[LEASE_A.hex()]))),
        "bad_message",
        False,
    ),
    ("renew_leases_not_list", frame(pack(_wire(_RENEW, leases=LEASE_A))), "bad_message", False),
    (
        "renew_4097_leases",
        frame(pack(_wire(_RENEW, leases=[LEASE_A] * (m.MAX_LEASES_PER_REQUEST + 1)))),
        "bad_message",
        False,
    ),
    (
        "granted_lease_s_nan",
        frame(pack(_wire(_GRANTED, lease_s=float("nan")))),
        "bad_message",
        False,
    ),
    (
        "granted_lease_s_inf",
        frame(pack(_wire(_GRANTED, lease_s=float("inf")))),
        "bad_message",
        False,
    ),
    ("granted_lease_s_negative", frame(pack(_wire(_GRANTED, lease_s=-1.0))), "bad_message", False),
    ("granted_lease_s_bool", frame(pack(_wire(_GRANTED, lease_s=True))), "bad_message", False),
    ("granted_lease_s_str", frame(pack(_wire(_GRANTED, lease_s="60"))), "bad_message", False),
    (
        "goodbye_released_bool",
        frame(pack({"t": "goodbye", "id": 8, "released": True})),
        "bad_message",
        False,
    ),
    (
        "renewed_lost_entry_without_code",
        frame(pack({"t": "renewed", "id": 4, "leases": [], "lost": [{"lease": LEASE_B}]})),
        "bad_message",
        False,
    ),
    (
        "status_reply_products_not_maps",
        frame(pack(_wire(m.StatusReply(7, SERVER_ID, "c", "2026-12-31", []), products=[1]))),
        "bad_message",
        False,
    ),
    (
        "error_message_over_limit",
        frame(pack(_wire(m.Error(id=2, code="no_seat"), message="x" * 4097))),
        "bad_message",
        False,
    ),
    # The additions of protocol 1.0 (SPEC, changelog).
    ("hello_nonce_as_str", frame(pack(_wire(HELLO, nonce=""))), "bad_message", False),
    ("hello_nonce_hex_str", frame(pack(_wire(HELLO, nonce=NONCE.hex()))), "bad_message", False),
    ("status_id_zero", frame(pack({"t": "status", "id": 0})), "bad_message", False),
    ("checkout_id_zero", frame(pack(_wire(_CHECKOUT, id=0))), "bad_message", False),
    (
        "checkout_version_letters",
        frame(pack(_wire(_CHECKOUT, version="abc"))),
        "bad_message",
        False,
    ),
    (
        "checkout_version_suffix",
        frame(pack(_wire(_CHECKOUT, version="2024.1-beta"))),
        "bad_message",
        False,
    ),
    (
        "checkout_version_empty_part",
        frame(pack(_wire(_CHECKOUT, version="16."))),
        "bad_message",
        False,
    ),
    (
        "checkout_version_nine_parts",
        frame(pack(_wire(_CHECKOUT, version="1.2.3.4.5.6.7.8.9"))),
        "bad_message",
        False,
    ),
    (
        "checkout_version_ten_digits",
        frame(pack(_wire(_CHECKOUT, version="1234567890"))),
        "bad_message",
        False,
    ),
    (
        "checkout_version_non_ascii_digit",
        frame(pack(_wire(_CHECKOUT, version="\u0661\u0666"))),
        "bad_message",
        False,
    ),
    ("borrow_days_zero", frame(pack(_wire(_BORROW, days=0.0))), "bad_message", False),
    ("borrow_days_int_zero", frame(pack(_wire(_BORROW, days=0))), "bad_message", False),
    ("borrow_days_negative", frame(pack(_wire(_BORROW, days=-1.0))), "bad_message", False),
    ("borrow_version_letters", frame(pack(_wire(_BORROW, version="abc"))), "bad_message", False),
    (
        "reclaim_version_letters",
        frame(
            pack(
                {
                    "t": "reclaim",
                    "id": 12,
                    "seats": [{"lease": LEASE_A, "product": "cadpro", "version": "abc"}],
                }
            )
        ),
        "bad_message",
        False,
    ),
    (
        "map_16385_entries",
        frame(pack({"t": "status", "id": 7, **{f"k{i:05}": 0 for i in range(16383)}})),
        "bad_frame",
        False,
    ),
]


def error_id(data: bytes, code: str) -> int:
    """The id SPEC section 3 says an error about ``data`` carries: the frame's ``id`` when the
    body is a map whose ``id`` is an integer in 1..2**63-1, else 0."""
    if code == "bad_frame":
        return 0
    body = msgpack.unpackb(data[4:])
    rid = body.get("id")
    return rid if type(rid) is int and 1 <= rid <= m.MAX_REQUEST_ID else 0


def frames() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, msg in VALID:
        wire = m.to_wire(msg)
        out.append(
            {
                "name": name,
                "hex": encode_frame(wire).hex(),
                "valid": True,
                "message": jsonable(wire),
            }
        )
    for name, data, code, fatal in INVALID:
        out.append(
            {
                "name": name,
                "hex": data.hex(),
                "valid": False,
                "error": code,
                "id": error_id(data, code),
                "fatal": fatal,
            }
        )
    names = [v["name"] for v in out]
    assert len(names) == len(set(names)), "duplicate vector names"
    return out


# ---------------------------------------------------------------------------------- sessions
#
# A session is one client's conversation with a server, step by step; sessions.json's format is
# described in protocol/README.md ("Sessions"). Each session has a client id and a nonce of its
# own (derived from its name), so the sessions can be played one after another against one real
# server: none repeats another's hello (replayed_hello), and each ends holding no seat.

_FRAMES = {name: msg for name, msg in VALID}
_INVALID = {name: (data, code, fatal) for name, data, code, fatal in INVALID}

#: The reply to each request type (SPEC section 7).
REPLY = {
    "hello": "welcome",
    "checkout": "granted",
    "renew": "renewed",
    "release": "released",
    "status": "status_reply",
    "bye": "goodbye",
    "enroll": "enrolled",
    "borrow": "borrowed",
    "return": "returned",
    "present": "presented",
    "reclaim": "reclaimed",
}


def session_ids(name: str) -> tuple[bytes, bytes]:
    """(client_id, nonce) of a session: its own, fixed, so the file is deterministic."""
    return (
        hashlib.sha256(b"lanlic session client_id " + name.encode()).digest()[:16],
        hashlib.sha256(b"lanlic session nonce " + name.encode()).digest(),
    )


class _Session:
    def __init__(self, name: str, about: str) -> None:
        self.name = name
        self.client_id, self.nonce = session_ids(name)
        self.steps: list[dict[str, Any]] = []
        self.out = {
            "name": name,
            "about": about,
            "client_id": self.client_id.hex(),
            "nonce": self.nonce.hex(),
            "steps": self.steps,
        }

    def send(self, vector: str, expect: str, batch: bool = False, **match: Any) -> _Session:
        """Send frame vector ``vector`` (a hello with this session's client id and nonce)."""
        if vector in _FRAMES:
            msg = _FRAMES[vector]
            if isinstance(msg, m.Hello):
                msg = dataclasses.replace(msg, client_id=self.client_id, nonce=self.nonce)
            data = encode_frame(m.to_wire(msg))
            rid = getattr(msg, "id", 0)
            rid = rid if 1 <= rid <= m.MAX_REQUEST_ID else 0
        else:
            data, code, _ = _INVALID[vector]
            rid = error_id(data, code)
        kind, _, what = expect.partition(":")
        assert kind in ("reply", "error", "fatal", "closed"), expect
        if kind == "reply":
            assert REPLY[_FRAMES[vector].TYPE] == what, (vector, expect)
        step: dict[str, Any] = {"send": vector, "hex": data.hex(), "expect": expect}
        if kind != "closed":
            step["id"] = rid
        if match:
            step["match"] = jsonable(match)
        if batch:
            step["batch"] = True
        self.steps.append(step)
        return self

    def connect(self) -> _Session:
        self.steps.append({"connect": True})
        return self


def _sessions() -> list[dict[str, Any]]:
    S = _Session
    lost_a = [{"lease": LEASE_A, "code": "lease_unknown"}]
    out = [
        S("happy_path", "hello, checkout, renew, status, release, bye")
        .send("hello", "reply:welcome")
        .send("checkout", "reply:granted", product="cadpro")
        .send("renew", "reply:renewed", leases=[],
              lost=[*lost_a, {"lease": LEASE_B, "code": "lease_unknown"}])
        .send("status", "reply:status_reply")
        .send("release", "reply:released", leases=[], lost=lost_a)
        .send("bye", "reply:goodbye", released=1)
        .send("checkout", "closed", batch=True),
        S("request_before_hello", "requests before hello are unexpected; the state stays")
        .send("checkout", "error:unexpected_message")
        .send("status", "error:unexpected_message")
        .send("bye", "error:unexpected_message")
        .send("hello", "reply:welcome")
        .send("checkout", "reply:granted")
        .send("bye", "reply:goodbye", released=1),
        S("second_hello", "a second hello is unexpected; the session goes on")
        .send("hello", "reply:welcome")
        .send("hello", "error:unexpected_message")
        .send("status", "reply:status_reply")
        .send("bye", "reply:goodbye", released=0),
        S("nothing_after_bye", "frames after bye, even in the same write, get no reply")
        .send("hello", "reply:welcome")
        .send("bye", "reply:goodbye", released=0)
        .send("checkout", "closed", batch=True)
        .send("hello", "closed", batch=True),
        S("server_message_from_client", "a server's message sent by a client is unexpected")
        .send("welcome", "error:unexpected_message")
        .send("hello", "reply:welcome")
        .send("granted", "error:unexpected_message")
        .send("notice_shutdown", "error:unexpected_message")
        .send("status", "reply:status_reply")
        .send("bye", "reply:goodbye"),
        S("bad_hello_then_good_hello", "malformed frames before hello keep the connection")
        .send("hello_client_id_15_bytes", "error:bad_message")
        .send("type_unknown", "error:unknown_message")
        .send("not_msgpack", "error:bad_frame")
        .send("hello_nonce_as_str", "error:bad_message")
        .send("hello", "reply:welcome")
        .send("bye", "reply:goodbye"),
        S("bad_frames_keep_the_connection", "non-fatal errors leave the session in step")
        .send("hello", "reply:welcome")
        .send("zero_length", "error:bad_frame")
        .send("not_msgpack", "error:bad_frame")
        .send("body_is_array", "error:bad_frame")
        .send("key_bin", "error:bad_frame")
        .send("deep_nesting", "error:bad_frame")
        .send("array_header_2e32_minus_1", "error:bad_frame")
        .send("map_16385_entries", "error:bad_frame")
        .send("type_unknown", "error:unknown_message")
        .send("checkout_missing_product", "error:bad_message")
        .send("renew_lease_15_bytes", "error:bad_message")
        .send("id_2e64_minus_1", "error:bad_message")
        .send("status_id_zero", "error:bad_message")
        .send("checkout_version_suffix", "error:bad_message")
        .send("borrow_days_zero", "error:bad_message")
        .send("checkout", "reply:granted")
        .send("bye", "reply:goodbye", released=1),
        S("products_and_versions", "product names are exact; versions are dotted numbers")
        .send("hello", "reply:welcome")
        .send("checkout_product_upper_case", "error:unknown_product")
        .send("checkout_version_letters", "error:bad_message")
        .send("checkout_any_version", "reply:granted", product="cadpro")
        .send("bye", "reply:goodbye", released=1),
        S("duplicate_leases", "a lease listed twice in renew or release counts once")
        .send("hello", "reply:welcome")
        .send("renew_duplicate_lease", "reply:renewed", leases=[],
              lost=[*lost_a, {"lease": LEASE_B, "code": "lease_unknown"}])
        .send("release_duplicate_lease", "reply:released", leases=[], lost=lost_a)
        .send("bye", "reply:goodbye"),
        S("version_2", "the reference client's hello (versions 1 and 2) is answered in version 2, "
          "whose one signature covers the server's time")
        .send("hello_v2", "reply:welcome", version=2)
        .send("checkout", "reply:granted", product="cadpro")
        .send("bye", "reply:goodbye", released=1),
        S("version_3", "the reference client's hello (versions 1, 2 and 3) is answered in version "
          "3, whose signature covers a batch of handshakes")
        .send("hello_v3", "reply:welcome", version=3)
        .send("checkout", "reply:granted", product="cadpro")
        .send("bye", "reply:goodbye", released=1),
        S("no_shared_version", "a hello with no version the server speaks")
        .send("hello_no_shared_version", "fatal:unsupported_version"),
        S("replayed_hello", "a hello repeated word for word while its client id is known")
        .send("hello", "reply:welcome")
        .connect()
        .send("hello", "fatal:replayed_hello"),
        S("over_limit_closes", "a length over the limit is fatal")
        .send("hello", "reply:welcome")
        .send("status", "reply:status_reply")
        .send("length_over_limit", "fatal:bad_frame"),
        S("over_limit_before_hello", "a length over the limit is fatal before hello too")
        .send("length_max_u32", "fatal:bad_frame"),
    ]  # fmt: skip
    return [s.out for s in out]


SESSIONS: list[dict[str, Any]] = _sessions()


def render() -> dict[str, str]:
    """The generated files' contents, by file name."""

    def dump(obj: Any) -> str:
        return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    return {"frames.json": dump(frames()), "sessions.json": dump(SESSIONS)}


def main() -> None:
    for name, text in render().items():
        (HERE / name).write_text(text, encoding="utf-8")
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
