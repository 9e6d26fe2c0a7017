"""What the load generator writes and reads for each target, as cheap as Python allows.

Three targets share one generator: ``lanlic`` and ``ceiling`` speak the lanlic framing (a 4-byte
length, then one msgpack map); ``redis`` speaks RESP and runs the TTL-semaphore Lua scripts
below. Every target answers a connection's requests in order, so a reply is matched to the oldest
request outstanding on its connection (no id lookups on the hot path).

A reply becomes a ``(status, value)`` pair: ``OK`` with the lease id for a granted checkout,
``NO_SEAT`` for a refusal, ``LOST`` for a renew or release the server did not honour, ``ERROR``
with the error code for anything else.
"""

from __future__ import annotations

import secrets
import struct
from typing import Any, ClassVar, Final

import msgpack

from lanlic.proto.messages import PROTOCOL_VERSIONS

__all__ = [
    "ACQUIRE_LUA",
    "CHECKOUT",
    "ERROR",
    "HELLO",
    "LOST",
    "NO_SEAT",
    "OK",
    "RELEASE",
    "RENEW",
    "RENEW_LUA",
    "FrameWire",
    "RedisWire",
    "Wire",
    "resp_command",
    "wire_for",
]

# Operations.
HELLO: Final = 0
CHECKOUT: Final = 1
RENEW: Final = 2
RELEASE: Final = 3
BYE: Final = 4
STATUS: Final = 5

# Reply statuses.
OK: Final = 0
NO_SEAT: Final = 1
LOST: Final = 2
ERROR: Final = 3

_header = struct.Struct(">I")
_packb = msgpack.packb
_unpackb = msgpack.unpackb

#: Acquire or re-acquire one seat: KEYS[1] the lease set, ARGV = member, ttl in ms, seats.
#: Scores are deadlines in ms on the Redis server's clock, so expiry is the server's business, as
#: in lanlic.
ACQUIRE_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
"""

#: Renew one held seat: 1 if it was still held (its deadline moves), 0 if it had expired.
RENEW_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
"""

REDIS_KEY: Final = b"lanlic:bench:seats"


def resp_command(*args: bytes | str | int) -> bytes:
    """One RESP command as a multi-bulk array."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class Wire:
    """Encodes requests and splits replies for one target; one instance per connection."""

    needs_hello = True
    """Whether a session starts with a hello (Redis has none)."""
    by_id = False
    """Whether replies are matched by request id (else in order: Redis answers in order)."""
    IDS = 1 << 30
    """Request ids run 1..IDS per connection and then start again."""

    def hello(self, rid: int, client_id: bytes) -> bytes:
        raise NotImplementedError

    def checkout(self, rid: int, product: str) -> tuple[bytes, Any]:
        """The request, and the value a granted reply stands for when the reply carries none."""
        raise NotImplementedError

    def renew(self, rid: int, lease: Any) -> bytes:
        raise NotImplementedError

    def release(self, rid: int, lease: Any) -> bytes:
        raise NotImplementedError

    def bye(self, rid: int) -> bytes | None:
        raise NotImplementedError

    def feed(self, buf: bytearray, data: bytes) -> list[Any]:
        """Append ``data`` to ``buf`` and return the complete replies, removing them from it."""
        raise NotImplementedError

    def classify(self, op: int, reply: Any, arg: Any) -> tuple[int, Any]:
        raise NotImplementedError


def _frame(obj: dict[str, Any]) -> bytes:
    body: bytes = _packb(obj)
    return _header.pack(len(body)) + body


class FrameWire(Wire):
    """lanlic frames. With ``ceiling=True`` any map answers any request (the bare server).

    Replies are matched by id (``by_id``): lanlic answers a request that must reach the disk
    first (a borrow, a checkout that raises the durable seat reservation) after later ones.
    Request ids cycle through 1..``IDS`` per connection, and the frames for them are made once:
    the generator's time goes to the socket, not to msgpack.
    """

    by_id = True
    IDS = 256

    # Shared by every connection of the process, made on first use.
    _tables: ClassVar[dict[str, list[bytes]]] = {}

    def __init__(self, ceiling: bool = False) -> None:
        self.ceiling = ceiling
        self._renew = self._table("renew")
        self._release = self._table("release")

    @classmethod
    def _table(cls, t: str) -> list[bytes]:
        """Frames of ``t`` for one 16-byte lease, per id, without the lease that ends them."""
        table = cls._tables.get(t)
        if table is None:
            lease = bytes(16)
            table = cls._tables[t] = [b""] + [
                _frame({"t": t, "id": i, "leases": [lease]})[:-16] for i in range(1, cls.IDS + 1)
            ]
        return table

    def hello(self, rid: int, client_id: bytes) -> bytes:
        # The reference client's hello: every version it speaks and a fresh nonce, so the
        # server does for the bench what it does for a real client (version 2: one signature).
        return _frame(
            {
                "t": "hello",
                "id": rid,
                "versions": list(PROTOCOL_VERSIONS),
                "client_id": client_id,
                "user": "bench",
                "host": "bench-host",
                "app": "lanlic-bench",
                "nonce": secrets.token_bytes(32),
            }
        )

    def checkout(self, rid: int, product: str) -> tuple[bytes, Any]:
        frames = self._tables.get(f"checkout:{product}")
        if frames is None:
            frames = self._tables[f"checkout:{product}"] = [b""] + [
                _frame({"t": "checkout", "id": i, "product": product})
                for i in range(1, self.IDS + 1)
            ]
        return frames[rid], None

    def renew(self, rid: int, lease: Any) -> bytes:
        if len(lease) == 16:
            frame: bytes = self._renew[rid] + lease
            return frame
        return _frame({"t": "renew", "id": rid, "leases": [lease]})

    def release(self, rid: int, lease: Any) -> bytes:
        if len(lease) == 16:
            frame: bytes = self._release[rid] + lease
            return frame
        return _frame({"t": "release", "id": rid, "leases": [lease]})

    def bye(self, rid: int) -> bytes | None:
        return _frame({"t": "bye", "id": rid})

    def status(self, rid: int) -> bytes:
        return _frame({"t": "status", "id": rid})

    def feed(self, buf: bytearray, data: bytes) -> list[Any]:
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        else:
            src = data
        out = []
        pos = 0
        end = len(src)
        while end - pos >= 4:
            (n,) = _header.unpack_from(src, pos)
            if end - pos - 4 < n:
                break
            obj = _unpackb(src[pos + 4 : pos + 4 + n])
            pos += 4 + n
            if type(obj) is dict and obj.get("t") != "notice":  # a notice is pushed, no reply
                out.append(obj)
        if src is buf:
            del buf[:pos]
        elif pos < end:
            buf += src[pos:]
        return out

    def classify(self, op: int, reply: Any, arg: Any) -> tuple[int, Any]:
        t = reply.get("t")
        if self.ceiling:
            return (OK, _CEILING_LEASE) if t == "ok" else (ERROR, str(t))
        if t == "error":
            code = reply.get("code", "")
            return (NO_SEAT, code) if code == "no_seat" else (ERROR, code)
        if t == "granted":
            return OK, reply["lease"]
        if t == "renewed" or t == "released":
            return (OK, None) if not reply["lost"] else (LOST, None)
        return OK, reply


_CEILING_LEASE: Final = bytes(16)


class RedisWire(Wire):
    """RESP to a Redis running the scripts above (their SHA1s passed in)."""

    needs_hello = False

    def __init__(self, acquire_sha: str, renew_sha: str, ttl_ms: int, seats: int) -> None:
        self._acq = acquire_sha.encode()
        self._ren = renew_sha.encode()
        self._ttl = str(ttl_ms).encode()
        self._seats = str(seats).encode()
        self._prefix = secrets.token_hex(4).encode()
        self._n = 0

    def hello(self, rid: int, client_id: bytes) -> bytes:
        raise AssertionError("redis has no hello")

    def checkout(self, rid: int, product: str) -> tuple[bytes, Any]:
        self._n += 1
        member = b"%s:%d" % (self._prefix, self._n)
        cmd = (
            b"*7\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n$%d\r\n%s\r\n"
            b"$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (
                self._acq,
                len(REDIS_KEY),
                REDIS_KEY,
                len(member),
                member,
                len(self._ttl),
                self._ttl,
                len(self._seats),
                self._seats,
            )
        )
        return cmd, member

    def renew(self, rid: int, lease: Any) -> bytes:
        return (
            b"*6\r\n$7\r\nEVALSHA\r\n$40\r\n%s\r\n$1\r\n1\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (self._ren, len(REDIS_KEY), REDIS_KEY, len(lease), lease, len(self._ttl), self._ttl)
        )

    def release(self, rid: int, lease: Any) -> bytes:
        return b"*3\r\n$4\r\nZREM\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(REDIS_KEY),
            REDIS_KEY,
            len(lease),
            lease,
        )

    def bye(self, rid: int) -> bytes | None:
        return None

    def feed(self, buf: bytearray, data: bytes) -> list[Any]:
        # Our commands only ever get one-line replies: :int, +simple or -error.
        buf += data
        out: list[Any] = []
        pos = 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            kind = buf[pos]
            line = bytes(buf[pos + 1 : eol])
            pos = eol + 2
            if kind == 0x3A:  # ':'
                out.append(int(line))
            elif kind == 0x2D:  # '-'
                out.append(line.decode(errors="replace"))
            else:
                out.append(line)
        if pos:
            del buf[:pos]
        return out

    def classify(self, op: int, reply: Any, arg: Any) -> tuple[int, Any]:
        if type(reply) is int:
            if reply == 1:
                return OK, arg
            return (NO_SEAT, None) if op == CHECKOUT else (LOST, None)
        return ERROR, str(reply)


def wire_for(target: str, redis: dict[str, Any] | None = None) -> Wire:
    if target == "redis":
        assert redis is not None
        return RedisWire(redis["acquire"], redis["renew"], redis["ttl_ms"], redis["seats"])
    return FrameWire(ceiling=target.startswith("ceiling"))
