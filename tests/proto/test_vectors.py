"""Run protocol/vectors/*.json against the protocol core, whole and one byte at a time."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from lanlic.errors import BadFrame, ProtocolError
from lanlic.proto import messages as m
from lanlic.proto.connection import FatalError, RequestError, ServerConnection
from lanlic.proto.framing import FrameDecoder, FrameTooLarge, encode_frame

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
FRAMES: list[dict[str, Any]] = json.loads((VECTORS / "frames.json").read_text("utf-8"))
SESSIONS: list[dict[str, Any]] = json.loads((VECTORS / "sessions.json").read_text("utf-8"))
BY_NAME = {v["name"]: v for v in FRAMES}
MESSAGE_TYPES = {
    cls.TYPE
    for cls in vars(m).values()
    if isinstance(cls, type) and issubclass(cls, m.Message) and cls.TYPE not in ("", "lost")
}


def from_json(obj: Any) -> Any:
    """Undo the vectors' JSON encoding of bytes as {"$bin": hex}."""
    if isinstance(obj, dict):
        if set(obj) == {"$bin"}:
            return bytes.fromhex(obj["$bin"])
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def pieces(data: bytes, one_byte: bool, size: int = 1) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] if one_byte else [data]


@dataclasses.dataclass
class Outcome:
    """What one vector became: messages, non-fatal error codes, and the fatal code if any."""

    results: list[str]
    messages: list[m.Message]
    fatal: str | None
    buffered: int


def decode(data: bytes, one_byte: bool, size: int = 1) -> Outcome:
    decoder = FrameDecoder()
    out = Outcome([], [], None, 0)
    for piece in pieces(data, one_byte, size):
        try:
            items = decoder.feed(piece)
        except BadFrame as exc:
            assert isinstance(exc, FrameTooLarge)
            items, out.fatal = exc.frames, exc.code
        for item in items:
            if isinstance(item, BadFrame):
                out.results.append(f"error:{item.code}")
                continue
            assert type(item) is dict
            try:
                msg = m.parse(item)
            except ProtocolError as exc:
                out.results.append(f"error:{exc.code}")
            else:
                out.results.append(f"message:{msg.TYPE}")
                out.messages.append(msg)
        if out.fatal is not None:
            break  # the connection is closed: nothing after a fatal error is read
    out.buffered = decoder.buffered
    return out


def test_generated_files_are_up_to_date() -> None:
    spec = importlib.util.spec_from_file_location("make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for name, text in mod.render().items():
        assert (VECTORS / name).read_text("utf-8") == text, f"{name}: run make_vectors.py"


def test_vectors_cover_the_protocol() -> None:
    assert len(BY_NAME) == len(FRAMES), "duplicate vector names"
    assert {v["message"]["t"] for v in FRAMES if v["valid"]} == MESSAGE_TYPES
    codes = {v["error"] for v in FRAMES if not v["valid"]}
    assert codes == {"bad_frame", "bad_message", "unknown_message"}
    assert any(v["fatal"] for v in FRAMES if not v["valid"])


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("vector", FRAMES, ids=[v["name"] for v in FRAMES])
def test_frame_vector(vector: dict[str, Any], one_byte: bool) -> None:
    data = bytes.fromhex(vector["hex"])
    out = decode(data, one_byte)
    if vector["valid"]:
        assert out.fatal is None
        assert out.buffered == 0
        assert len(out.messages) == 1 and len(out.results) == 1
        wire = m.to_wire(out.messages[0])
        assert wire == from_json(vector["message"])
        assert encode_frame(wire).hex() == vector["hex"]
    elif vector["fatal"]:
        assert out.results == []
        assert out.fatal == vector["error"]
        assert out.buffered == 0
    else:
        assert out.fatal is None
        assert out.buffered == 0
        assert out.results == [f"error:{vector['error']}"]


def test_all_vectors_as_one_stream() -> None:
    """Non-fatal vectors back to back stay in step, however the stream is cut."""
    stream = b"".join(bytes.fromhex(v["hex"]) for v in FRAMES if v["valid"] or not v["fatal"])
    expected = [
        f"message:{v['message']['t']}" if v["valid"] else f"error:{v['error']}"
        for v in FRAMES
        if v["valid"] or not v["fatal"]
    ]
    assert decode(stream, one_byte=False).results == expected
    for size in (1, 3, 997):
        assert decode(stream, one_byte=True, size=size).results == expected


def event_name(event: m.Message | RequestError | FatalError) -> str:
    if isinstance(event, RequestError):
        return f"error:{event.error.code}"
    if isinstance(event, FatalError):
        return f"fatal:{event.error.code}"
    return f"message:{event.TYPE}"


def step_bytes(send: str) -> bytes:
    return bytes.fromhex(BY_NAME[send]["hex"] if send in BY_NAME else send)


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("session", SESSIONS, ids=[s["name"] for s in SESSIONS])
def test_session(session: dict[str, Any], one_byte: bool) -> None:
    conn = ServerConnection()
    steps = session["steps"]
    for n, step in enumerate(steps):
        events = []
        for piece in pieces(step_bytes(step["send"]), one_byte):
            events.extend(conn.receive_data(piece))
            if events and isinstance(events[-1], FatalError):
                break
        assert [event_name(e) for e in events] == [step["expect"]], f"step {n}: {step['send']}"
        if step["expect"].startswith("fatal:"):
            assert n == len(steps) - 1, "a fatal error must end the session"
        assert not conn.has_partial_frame


def test_sessions_only_use_known_vectors_and_outcomes() -> None:
    for session in SESSIONS:
        for step in session["steps"]:
            assert step["send"] in BY_NAME, step["send"]
            kind, _, what = step["expect"].partition(":")
            assert kind in ("message", "error", "fatal")
            assert what in MESSAGE_TYPES if kind == "message" else what


def test_request_errors_echo_the_request_id() -> None:
    conn = ServerConnection()
    [early] = conn.receive_data(step_bytes("checkout"))
    assert isinstance(early, RequestError) and early.id == BY_NAME["checkout"]["message"]["id"]
    [unknown] = conn.receive_data(step_bytes("type_unknown"))
    assert isinstance(unknown, RequestError) and unknown.id == 7
    [unreadable] = conn.receive_data(step_bytes("id_2e64_minus_1"))
    assert isinstance(unreadable, RequestError) and unreadable.id == 0
    [not_a_map] = conn.receive_data(step_bytes("body_is_array"))
    assert isinstance(not_a_map, RequestError) and not_a_map.id == 0
