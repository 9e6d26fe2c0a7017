"""Length-prefixed msgpack framing, with no I/O.

A frame is a 4-byte big-endian length followed by exactly that many bytes of one msgpack map.
The decoder is fed whatever bytes a read delivered and hands back every complete frame at once,
so the adapter can process a whole read before it yields (the fast path batches this way).

The length is checked the moment the 4-byte header is complete, before any of the body is
buffered: a peer cannot make us hold more than ``MAX_FRAME`` bytes of one frame.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import msgpack

from lanlic.errors import BadFrame

__all__ = [
    "HEADER_SIZE",
    "MAX_FRAME",
    "FrameDecoder",
    "FrameTooLarge",
    "check_map",
    "decode_body",
    "encode_frame",
]

HEADER_SIZE = 4

#: The largest frame body accepted, in bytes. A renew of 1,000 leases is about 19 KiB and a
#: status reply for a busy site about 40 KiB; 256 KiB leaves room for growth while bounding the
#: memory one connection can pin to a small constant.
MAX_FRAME = 256 * 1024

# msgpack limits: no single string/bin/array/map in a valid frame can be larger than the frame,
# and we never nest deeper than a few levels. Without these an array header claiming 2**32
# elements would make the unpacker try to allocate for them.
_MAX_CONTAINER = 16 * 1024
_MAX_DEPTH = 16

_header = struct.Struct(">I")


# A Packer is cheaper to reuse than to make per frame (``packb`` makes one each call), but it is
# not thread-safe: one per thread (the blocking client runs its loop on a thread of its own).
_packers = threading.local()


def encode_frame(message: dict[str, Any]) -> bytes:
    """Encode one message map as a frame (header + msgpack body)."""
    try:
        pack = _packers.pack
    except AttributeError:
        pack = _packers.pack = msgpack.Packer(use_bin_type=True).pack
    body: bytes = pack(message)
    if len(body) > MAX_FRAME:
        raise BadFrame(f"frame of {len(body)} bytes exceeds the limit of {MAX_FRAME}")
    return _header.pack(len(body)) + body


def _check_depth(obj: Any, depth: int = 0) -> None:
    # msgpack builds only exact dicts and lists here, so ``type(x) is`` is exact (and cheaper).
    if depth > _MAX_DEPTH:
        raise BadFrame(f"frame nests deeper than {_MAX_DEPTH} levels")
    if type(obj) is dict:
        # strict_map_key still lets bin keys through; the protocol allows only str keys.
        for k in obj:
            if type(k) is not str:
                raise BadFrame("map keys must be msgpack str")
        values: Any = obj.values()
    else:
        values = obj
    for v in values:
        t = type(v)
        if t is dict:
            _check_depth(v, depth + 1)
        elif t is list:
            # Most lists hold only scalars (lease ids): look before descending into one.
            if depth >= _MAX_DEPTH:
                raise BadFrame(f"frame nests deeper than {_MAX_DEPTH} levels")
            for x in v:
                tx = type(x)
                if tx is dict or tx is list:
                    _check_depth(v, depth + 1)
                    break


def _no_ext(code: int, data: bytes) -> Any:
    raise BadFrame(f"msgpack extension type {code} is not allowed")


_unpackb = msgpack.unpackb


def check_map(obj: dict[str, Any]) -> None:
    """Raise ``BadFrame`` if a decoded map nests deeper than the protocol allows or has a key
    that is not a string, at any depth (what ``decode_body`` checks after msgpack)."""
    _check_depth(obj)


def decode_body(body: bytes | bytearray, check: bool = True) -> dict[str, Any]:
    """Decode one frame body into a map with string keys, or raise ``BadFrame``.

    Anything msgpack can raise on hostile bytes is turned into ``BadFrame`` here, so callers
    have one error path. ``check=False`` leaves out ``check_map`` (the nesting and the keys),
    for a caller that checks every map it does not take apart field by field itself.
    """
    n = len(body)
    try:
        if n <= _MAX_CONTAINER:
            # The fast path for every frame of ordinary size. msgpack >= 1.0 defaults to
            # raw=False, use_list=True, strict_map_key=True and timestamp=0, and bounds every
            # str and bin by the body's length, every array by it and every map by half of it:
            # for a body this small that is within the limits below, so only the ext rules need
            # saying (and each keyword costs time on every frame).
            obj = msgpack.unpackb(body, ext_hook=_no_ext, max_ext_len=0)
        else:
            obj = msgpack.unpackb(
                body,
                raw=False,
                use_list=True,
                strict_map_key=True,
                ext_hook=_no_ext,
                max_str_len=n,
                max_bin_len=n,
                max_array_len=min(n, _MAX_CONTAINER),
                max_map_len=min(n, _MAX_CONTAINER),
                max_ext_len=0,
                timestamp=0,
            )
    except BadFrame:
        raise
    except RecursionError as exc:
        raise BadFrame("frame nests too deeply") from exc
    except Exception as exc:  # msgpack raises many types on hostile input
        raise BadFrame(f"frame body is not valid msgpack ({type(exc).__name__})") from exc
    if not isinstance(obj, dict):
        raise BadFrame(f"frame body is a msgpack {type(obj).__name__}, not a map")
    if check:
        check_map(obj)
    return obj


class FrameTooLarge(BadFrame):
    """A header announced more than the limit (fatal). Raised by ``FrameDecoder.feed``.

    ``frames`` holds what the same ``feed`` call completed before the bad header, so the result
    does not depend on how the stream was split into reads.
    """

    def __init__(self, message: str, frames: list[dict[str, Any] | BadFrame]) -> None:
        super().__init__(message)
        self.frames = frames


class FrameDecoder:
    """Incremental frame decoder: ``feed(bytes)`` returns the complete frames' bodies.

    Each returned item is either a decoded map or a ``BadFrame`` for a frame whose boundaries
    were sound but whose body was not a msgpack map: the stream is still in step after it, so
    the connection can answer with an error and carry on. A header announcing more than
    ``MAX_FRAME`` raises ``FrameTooLarge`` (a ``BadFrame``) from ``feed`` itself, carrying the
    frames completed before it: the stream cannot be trusted after that and the connection must
    be closed.
    """

    __slots__ = ("_buf", "_need", "check", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME, check: bool = True) -> None:
        self.max_frame = max_frame
        self.check = check
        """False: maps are not yet put through ``check_map`` (see ``decode_body``)."""
        self._buf = bytearray()
        self._need = -1  # body length once a header is read, else -1

    @property
    def buffered(self) -> int:
        """Bytes held that are not yet a complete frame (a truncated frame at EOF if > 0)."""
        return len(self._buf) + (HEADER_SIZE if self._need >= 0 else 0)

    def feed(self, data: bytes) -> list[dict[str, Any] | BadFrame]:
        buf = self._buf
        # When nothing is held over (the usual case: reads end on a frame boundary), frames are
        # cut straight from ``data`` and only a trailing partial frame is copied into the buffer.
        src: bytes | bytearray
        if buf:
            buf += data
            src = buf
        else:
            src = data
        out: list[dict[str, Any] | BadFrame] = []
        check = self.check
        pos = 0
        end = len(src)
        need = self._need
        while True:
            if need < 0:
                if end - pos < HEADER_SIZE:
                    break
                (need,) = _header.unpack_from(src, pos)
                pos += HEADER_SIZE
                if need > self.max_frame:
                    del buf[:]
                    self._need = -1
                    raise FrameTooLarge(
                        f"frame length {need} exceeds the limit of {self.max_frame}", out
                    )
            if end - pos < need:
                break
            body = src[pos : pos + need]
            pos += need
            need = -1
            if not body:
                out.append(BadFrame("empty frame"))
                continue
            if not check and len(body) <= _MAX_CONTAINER:
                # ``decode_body(body, False)`` inlined for the frames of every request: a
                # valid map goes out as is; anything else is decoded again by
                # ``decode_body``, which says exactly what is wrong.
                try:
                    obj = _unpackb(body, ext_hook=_no_ext, max_ext_len=0)
                except Exception:  # noqa: S110 - decode_body below names the error
                    pass
                else:
                    if type(obj) is dict:
                        out.append(obj)
                        continue
            try:
                out.append(decode_body(body, check))
            except BadFrame as exc:
                out.append(exc)
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += src[pos:]
        self._need = need
        return out
