"""The fast path's commonest replies, packed from fixed parts: the same bytes as ``encode_frame``.

A ``granted``, ``released`` or ``renewed`` reply is a map whose keys, and most of whose values,
never change: only the request id and the lease ids do. Building the map and packing it cost
about as much as the checkout it answers (a dict of six entries, then msgpack walking it); here
the constant parts are bytes made once, and a reply is one ``join``. The output is
byte-for-byte what ``encode_frame`` makes of the same map, keys in the same order
(tests/proto/test_replybytes.py holds the two equal on generated values), so a peer cannot tell
which path answered.

Only replies that fit the shapes below are made here (every lease id of ``LEASE_ID_SIZE``
bytes, nothing lost, fewer than 65,536 leases); the caller encodes anything else as a map.
"""

from __future__ import annotations

import struct
from typing import Final

import msgpack

from lanlic.proto.messages import LEASE_ID_SIZE

__all__ = [
    "granted",
    "granted_tail",
    "released_one",
    "renewed",
    "uint",
    "welcome_v3",
    "welcome_v3_parts",
]

_u8 = struct.Struct(">BB").pack
_u16 = struct.Struct(">BH").pack
_u32 = struct.Struct(">BI").pack
_u64 = struct.Struct(">BQ").pack
_header = struct.Struct(">I").pack
_f64 = struct.Struct(">Bd").pack


def _uint(v: int) -> bytes:
    # msgpack's smallest form of a non-negative integer (what its Packer chooses).
    if v < 0x80:
        return bytes((v,))
    if v < 0x100:
        return _u8(0xCC, v)
    if v < 0x10000:
        return _u16(0xCD, v)
    if v < 0x100000000:
        return _u32(0xCE, v)
    return _u64(0xCF, v)


#: Request ids below this are packed once, here (clients count their ids up from 1).
_SMALL: Final = 4096
_UINTS: Final = tuple(_uint(v) for v in range(_SMALL))
#: Frame headers for bodies below this many bytes (every reply made here is smaller).
_HEADERS: Final = tuple(_header(n) for n in range(256))


def uint(v: int) -> bytes:
    """``v`` (0 <= v < 2**64) as msgpack packs it."""
    return _UINTS[v] if v < _SMALL else _uint(v)


def _str(s: str) -> bytes:
    packed: bytes = msgpack.packb(s, use_bin_type=True)
    return packed


_BIN_LEASE: Final = bytes((0xC4, LEASE_ID_SIZE))  # bin 8 of a lease id's length

_GRANTED: Final = b"\x86" + _str("t") + _str("granted") + _str("id")
_GRANTED_LEASE: Final = _str("lease") + _BIN_LEASE


def granted_tail(product: str, lease_s: float, epoch: int) -> bytes:
    """The part of a ``granted`` after its lease id, the same for every grant of ``product``
    in one epoch: make it once and pass it to ``granted``."""
    packed: bytes = msgpack.packb(
        {"product": product, "lease_s": lease_s, "epoch": epoch}, use_bin_type=True
    )
    return packed[1:]  # without its own map header: these are entries of the granted map


def granted(rid: int, lease_id: bytes, tail: bytes) -> bytes:
    """``{"t": "granted", "id": rid, "lease": lease_id, **tail}`` as a frame."""
    rb = _UINTS[rid] if rid < _SMALL else _uint(rid)  # ``uint`` inlined: one call less a reply
    n = len(_GRANTED) + len(rb) + len(_GRANTED_LEASE) + LEASE_ID_SIZE + len(tail)
    head = _HEADERS[n] if n < 256 else _header(n)
    return b"".join((head, _GRANTED, rb, _GRANTED_LEASE, lease_id, tail))


_RELEASED: Final = b"\x84" + _str("t") + _str("released") + _str("id")
_RENEWED: Final = b"\x84" + _str("t") + _str("renewed") + _str("id")
_LEASES: Final = _str("leases")
_NONE_LOST: Final = _str("lost") + b"\x90"
_ONE_LEASE: Final = _LEASES + b"\x91" + _BIN_LEASE


def released_one(rid: int, lease_id: bytes) -> bytes:
    """``{"t": "released", "id": rid, "leases": [lease_id], "lost": []}`` as a frame."""
    rb = _UINTS[rid] if rid < _SMALL else _uint(rid)  # ``uint`` inlined: one call less a reply
    n = len(_RELEASED) + len(rb) + len(_ONE_LEASE) + LEASE_ID_SIZE + len(_NONE_LOST)
    return b"".join((_HEADERS[n], _RELEASED, rb, _ONE_LEASE, lease_id, _NONE_LOST))


def renewed(rid: int, leases: list[bytes]) -> bytes:
    """``{"t": "renewed", "id": rid, "leases": leases, "lost": []}`` as a frame; every lease id
    must be ``LEASE_ID_SIZE`` bytes, and there must be fewer than 65,536 of them."""
    rb = _UINTS[rid] if rid < _SMALL else _uint(rid)  # ``uint`` inlined: one call less a reply
    k = len(leases)
    if k == 1:
        n = len(_RENEWED) + len(rb) + len(_ONE_LEASE) + LEASE_ID_SIZE + len(_NONE_LOST)
        return b"".join((_HEADERS[n], _RENEWED, rb, _ONE_LEASE, leases[0], _NONE_LOST))
    array = bytes((0x90 | k,)) if k < 16 else _u16(0xDC, k)
    body = b"".join(
        (_RENEWED, rb, _LEASES, array, _BIN_LEASE, _BIN_LEASE.join(leases), _NONE_LOST)
        if k
        else (_RENEWED, rb, _LEASES, array, _NONE_LOST)
    )
    return _header(len(body)) + body


# A version-3 welcome (SPEC 4): every hello of a burst is answered with one, so it is made here
# too. Its entries in ``to_wire`` order: t, id, version, server_id, lease_s, heartbeat_s,
# server_key | signature | vendor_fp, customer, epoch | time | time_signature (empty in version
# 3) | batch_path (left out when empty: a batch of one). Only the request id, the signature, the
# time and the path differ from one welcome to the next.
_WELCOME: Final = _str("t") + _str("welcome") + _str("id")
_NO_TIME_SIGNATURE: Final = _str("time_signature") + b"\xc4\x00"
_BATCH_PATH: Final = _str("batch_path")


def welcome_v3_parts(
    server_id: str,
    lease_s: float,
    heartbeat_s: float,
    server_key: bytes,
    vendor_fp: str,
    customer: str,
    epoch: int,
) -> tuple[bytes, bytes]:
    """The fixed parts of a server's version-3 welcomes (the same for every welcome of one
    epoch): make them once and pass them to ``welcome_v3``."""
    first: bytes = msgpack.packb(
        {
            "version": 3,
            "server_id": server_id,
            "lease_s": lease_s,
            "heartbeat_s": heartbeat_s,
            "server_key": server_key,
        },
        use_bin_type=True,
    )
    second: bytes = msgpack.packb(
        {"vendor_fp": vendor_fp, "customer": customer, "epoch": epoch}, use_bin_type=True
    )
    # Without their own map headers: these are entries of the welcome's map.
    return first[1:] + _str("signature"), second[1:] + _str("time")


def _bin(b: bytes) -> bytes:
    n = len(b)
    if n < 0x100:
        return bytes((0xC4, n)) + b
    if n < 0x10000:
        return _u16(0xC5, n) + b
    return _u32(0xC6, n) + b


def welcome_v3(
    rid: int, parts: tuple[bytes, bytes], signature: bytes, time: float, batch_path: bytes
) -> bytes:
    """The version-3 ``welcome`` frame answering request ``rid``: ``parts`` from
    ``welcome_v3_parts``, then the batch's ``signature``, the server's ``time`` and this
    welcome's ``batch_path``."""
    first, second = parts
    rb = _UINTS[rid] if rid < _SMALL else _uint(rid)
    t: bytes = _f64(0xCB, time) if type(time) is float else msgpack.packb(time)
    body = b"".join(
        (
            b"\x8e" if batch_path else b"\x8d",  # a map of 14 entries, or 13 without the path
            _WELCOME,
            rb,
            first,
            _bin(signature),
            second,
            t,
            _NO_TIME_SIGNATURE,
            _BATCH_PATH + _bin(batch_path) if batch_path else b"",
        )
    )
    return _header(len(body)) + body
