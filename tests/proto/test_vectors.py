"""Run protocol/vectors/*.json against the protocol core, whole and one byte at a time."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import msgpack
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
    return bytes.fromhex(BY_NAME[send]["hex"])


#: The reply to each request (SPEC section 7), to read a session's ``reply:X`` as the request the
#: state machine must hand on.
REPLY_TO = {
    "welcome": "hello",
    "granted": "checkout",
    "renewed": "renew",
    "released": "release",
    "status_reply": "status",
    "goodbye": "bye",
}


def state_machine_view(step: dict[str, Any]) -> list[str]:
    """What ``ServerConnection`` alone yields for a step (the service decides the rest): a
    reply's request, an error, a fatal frame error; a hello refused by the service (no shared
    version, a replay) is still a hello to the state machine; nothing once closed."""
    kind, _, what = step["expect"].partition(":")
    if kind == "reply":
        return [f"message:{REPLY_TO[what]}"]
    if kind == "fatal" and what in ("unsupported_version", "replayed_hello"):
        return ["message:hello"]
    if kind == "closed":
        return []
    if kind == "error" and what not in FRAME_AND_STATE_ERRORS:
        return [f"message:{BY_NAME[step['send']]['message']['t']}"]  # the service refuses it
    return [step["expect"]]


#: The errors the protocol core itself gives; every other refusal is the service's.
FRAME_AND_STATE_ERRORS = {"bad_frame", "bad_message", "unknown_message", "unexpected_message"}


@pytest.mark.parametrize("one_byte", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("session", SESSIONS, ids=[s["name"] for s in SESSIONS])
def test_session(session: dict[str, Any], one_byte: bool) -> None:
    conn = ServerConnection()
    steps = session["steps"]
    for n, step in enumerate(steps):
        if step.get("connect"):
            conn = ServerConnection()
            continue
        events = []
        for piece in pieces(bytes.fromhex(step["hex"]), one_byte):
            events.extend(conn.receive_data(piece))
            if events and isinstance(events[-1], FatalError):
                break
        assert [event_name(e) for e in events] == state_machine_view(step), f"step {n}"
        for e in events:
            if isinstance(e, RequestError):
                assert e.id == step["id"], f"step {n}: error id"
            elif isinstance(e, m.Message):
                assert getattr(e, "id", None) == step["id"], f"step {n}: request id"
        if step["expect"].startswith("fatal:"):
            assert n == len(steps) - 1, "a fatal error must end the session"
        assert not conn.has_partial_frame


def test_sessions_are_well_formed() -> None:
    """Every step names a frame vector and sends its bytes (a hello: with the session's own
    client id and nonce); each session has its own ids, so played one after another against a
    real server no hello is a replay of another session's."""
    ids = set()
    for session in SESSIONS:
        client_id, nonce = bytes.fromhex(session["client_id"]), bytes.fromhex(session["nonce"])
        assert len(client_id) == 16 and len(nonce) == 32
        ids.add(client_id)
        for step in session["steps"]:
            if step.get("connect"):
                assert set(step) == {"connect"}
                continue
            vector = BY_NAME[step["send"]]
            kind, _, what = step["expect"].partition(":")
            assert kind in ("reply", "error", "fatal", "closed"), step
            assert ("id" in step) == (kind != "closed")
            if vector["valid"] and vector["message"]["t"] == "hello":
                sent = m.parse(decode_one(step["hex"]))
                assert isinstance(sent, m.Hello)
                assert (sent.client_id, sent.nonce) == (client_id, nonce)
                expected = m.to_wire(
                    dataclasses.replace(
                        m.parse(from_json(vector["message"])), client_id=client_id, nonce=nonce
                    )
                )
                assert step["hex"] == encode_frame(expected).hex()
            else:
                assert step["hex"] == vector["hex"]
            if kind == "reply":
                assert REPLY_TO[what] == vector["message"]["t"]
    assert len(ids) == len(SESSIONS)


def decode_one(hex_frame: str) -> dict[str, Any]:
    items = FrameDecoder().feed(bytes.fromhex(hex_frame))
    assert len(items) == 1 and type(items[0]) is dict
    return items[0]


def test_invalid_vectors_name_the_error_id() -> None:
    """SPEC 3: an error carries the frame's id when it is a map with an ``id`` in 1..2^63-1,
    else 0 (which no request may use)."""
    for v in FRAMES:
        if v["valid"]:
            continue
        data = bytes.fromhex(v["hex"])
        want = 0
        if v["error"] != "bad_frame":
            rid = msgpack.unpackb(data[4:]).get("id")
            want = rid if type(rid) is int and 1 <= rid < 2**63 else 0
        assert v["id"] == want, v["name"]


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
