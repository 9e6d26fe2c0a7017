"""Atheris harness: hostile bytes through the server's protocol core.

Each input is fed to ``FrameDecoder`` + ``messages.parse`` + the ``ServerConnection`` state
machine three ways: as a raw stream (in one piece and cut in two), as the body of one frame of
the right length (so the msgpack decoder sees it, not just the length check), and after a valid
hello (so the ``ready`` state's table is reached). Only lanlic's ``ProtocolError`` family may come
out; anything else, or a frame or message that does not round-trip, is a crash.

    python tools/fuzz/fuzz_decoder.py -atheris_runs=100000 -dict=tools/fuzz/msgpack.dict

Extra arguments are libFuzzer's (``-max_total_time=60``, ``-max_len=...``, a corpus folder; with
none, it starts from a temporary one seeded with protocol/vectors/frames.json).
"""

from __future__ import annotations

import struct
import sys

import atheris
from seeds import corpus_argv, frames

with atheris.instrument_imports():
    from lanlic.errors import ProtocolError
    from lanlic.proto import messages as m
    from lanlic.proto.connection import FatalError, RequestError, ServerConnection
    from lanlic.proto.framing import FrameDecoder, FrameTooLarge, encode_frame

HELLO = encode_frame(m.to_wire(m.Hello(1, [1], bytes(16), "u", "h")))


def decode(chunks: list[bytes]) -> list[str]:
    decoder = FrameDecoder()
    out: list[str] = []
    for chunk in chunks:
        try:
            items = decoder.feed(chunk)
        except FrameTooLarge as exc:
            items, fatal = exc.frames, exc
        else:
            fatal = None
        for item in items:
            if isinstance(item, ProtocolError):
                out.append(f"error:{item.code}")
                continue
            if type(item) is not dict or any(type(k) is not str for k in item):
                raise AssertionError(f"decoder gave {type(item).__name__}")
            try:
                msg = m.parse(item)
            except ProtocolError as exc:
                out.append(f"error:{exc.code}")
                continue
            if m.parse(m.to_wire(msg)) != msg:
                raise AssertionError(f"{msg!r} does not round-trip")
            out.append(f"message:{msg.TYPE}")
        if fatal is not None:
            out.append("fatal")
            break
    return out


def connection(chunks: list[bytes]) -> list[str]:
    conn = ServerConnection()
    out: list[str] = []
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            if isinstance(event, m.Message):
                out.append(event.TYPE)
            elif isinstance(event, RequestError | FatalError):
                if not isinstance(event.error, ProtocolError):
                    raise AssertionError(f"{event!r} carries no ProtocolError")
                out.append(event.error.code)
                if isinstance(event, FatalError):
                    return out
            else:
                raise AssertionError(f"unexpected event {event!r}")
    return out


def test_one_input(data: bytes) -> None:
    cut = data[0] % (len(data) + 1) if data else 0
    framed = struct.pack(">I", len(data)) + data
    for stream in (data, framed, HELLO + framed):
        whole = decode([stream])
        if decode([stream[:cut], stream[cut:]]) != whole:
            raise AssertionError("the result depends on where the stream was cut")
        connection([stream])
        connection([stream[:cut], stream[cut:]])


def main() -> None:
    vectors = frames()
    seeds = [*vectors, b"".join(vectors), HELLO + b"".join(vectors)]
    with corpus_argv(sys.argv, seeds) as argv:
        atheris.Setup(argv, test_one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
