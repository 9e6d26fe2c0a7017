"""Play the protocol vectors against a server over TCP and judge its answers by protocol/SPEC.md.

Two kinds of case:

* **sessions** (sessions.json): one client's conversation, step by step. A step sends one frame
  (``hex``) and expects ``reply:T`` (a ``T`` carrying the step's ``id``, and the fields in
  ``match``), ``error:CODE`` (an ``error`` with that code and ``id``; the connection stays open),
  ``fatal:CODE`` (that ``error``, then the server closes) or ``closed`` (no reply: the server
  closes). A step marked ``batch`` is written in one write with the step before it, and
  ``{"connect": true}`` opens another connection (earlier ones stay open until the session ends).
* **invalid frames** (frames.json, ``valid: false``): after a hello of the runner's own (a fresh
  client id and nonce, the welcome's signature checked), the frame must get ``error`` with the
  vector's ``error`` code and ``id``; then the server closes if the vector is ``fatal``, else the
  session goes on (a ``bye`` gets its ``goodbye``).

Every ``welcome`` is checked as a client must (SPEC 4): its version the highest the hello and the
SPEC share; in version 1 the signature over the handshake domain and
``[nonce, client_id, server_id, vendor_fp]``, in version 2 over the version-2 handshake domain and
``[nonce, client_id, server_id, vendor_fp, time]`` (with no ``time_signature``); and ``server_id``
the fingerprint of ``server_key``. Notices (SPEC 7) that arrive between replies are skipped.
Every wait is bounded by ``timeout``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = ["CaseResult", "find_vectors", "run"]

#: SPEC 2: the largest frame body.
MAX_FRAME = 262144
#: SPEC 4: the handshake signature's domain prefix, by protocol version.
HANDSHAKE_DOMAINS = {
    1: b"lanlic/v1/handshake\x00",
    2: b"lanlic/v2/handshake\x00",
    3: b"lanlic/v3/handshake-batch\x00",
}
#: The protocol versions the SPEC defines; the runner's own hello offers them all.
VERSIONS = (1, 2, 3)
#: SPEC 4, version 3: a step of a welcome's ``batch_path`` (side byte, sibling hash), and the
#: most steps a path may have.
BATCH_STEP = 33
BATCH_MAX_STEPS = 16


class Failed(Exception):
    """The server did not answer as the SPEC says; the message says how."""


class NotApplicable(Exception):
    """The case needs a protocol version the server does not implement (``versions``)."""


@dataclass(frozen=True, slots=True)
class CaseResult:
    kind: str
    """``session`` or ``invalid``."""
    name: str
    passed: bool
    reason: str = ""
    """Why it failed, or why it does not apply ("" when it passed)."""
    applicable: bool = True
    """False: the case needs a protocol version the server does not implement, so it was not
    played (``passed`` is False too; it counts as neither a pass nor a failure)."""

    def line(self) -> str:
        verdict = "N/A" if not self.applicable else "PASS" if self.passed else "FAIL"
        return f"{verdict} {self.kind} {self.name}" + (f": {self.reason}" if self.reason else "")


def find_vectors(given: str | Path | None = None) -> Path:
    """The vectors folder: ``given``, else protocol/vectors of the source tree this runs from."""
    if given is not None:
        folder = Path(given)
    else:
        folder = Path(__file__).resolve().parents[2] / "protocol" / "vectors"
    if not (folder / "sessions.json").is_file() or not (folder / "frames.json").is_file():
        raise FileNotFoundError(
            f"no protocol vectors (sessions.json, frames.json) in {folder}; "
            "pass --vectors DIR (protocol/vectors of the lanlic source)"
        )
    return folder


def from_json(obj: Any) -> Any:
    """Undo the vectors' JSON encoding of bytes as ``{"$bin": hex}``."""
    if isinstance(obj, dict):
        if set(obj) == {"$bin"}:
            return bytes.fromhex(obj["$bin"])
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def fingerprint(raw_key: bytes) -> str:
    """SPEC 4: ``sha256:`` and the first 16 bytes of SHA-256 of the raw key, lowercase hex."""
    return "sha256:" + hashlib.sha256(raw_key).digest()[:16].hex()


def frame(body: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


class Conn:
    """One TCP connection, reading whole frames with a deadline."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Failed(f"could not send ({exc}): the server closed the connection?") from None

    def _read(self, n: int) -> bytes | None:
        """Exactly ``n`` bytes, or None at a clean end of stream before the first of them."""
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise Failed(f"no answer within {self.timeout} s") from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf:
                    raise Failed(f"the server closed in the middle of a frame ({self.buf[:8]!r})")
                return None
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> dict[str, Any] | None:
        """The next frame's map, skipping notices; None when the server closed."""
        while True:
            header = self._read(4)
            if header is None:
                return None
            (n,) = struct.unpack(">I", header)
            if n == 0 or n > MAX_FRAME:
                raise Failed(f"the server sent a frame of length {n}")
            body = self._read(n)
            if body is None:
                raise Failed("the server closed in the middle of a frame")
            try:
                obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
            except Exception as exc:
                raise Failed(f"the server sent a body that is not msgpack ({exc})") from None
            if type(obj) is not dict:
                raise Failed(f"the server sent a body that is not a map: {obj!r:.80}")
            if obj.get("t") == "notice":
                continue
            return obj

    def expect_close(self, after: str) -> None:
        got = self.frame()
        if got is not None:
            raise Failed(f"expected the server to close after {after}, got {_show(got)}")

    def close(self) -> None:
        self.sock.close()


def _show(obj: dict[str, Any]) -> str:
    t = obj.get("t")
    if t == "error":
        return f"error {obj.get('code')!r} id {obj.get('id')!r} ({obj.get('message', '')!s:.100})"
    return f"{t!r} id {obj.get('id')!r}"


def check_welcome(
    welcome: dict[str, Any], hello: dict[str, Any], versions: tuple[int, ...] = VERSIONS
) -> None:
    """SPEC 4 and 7: a welcome a client may accept for this hello, from a server that
    implements ``versions``."""
    for name, kind in (("server_id", str), ("server_key", bytes), ("signature", bytes)):
        if type(welcome.get(name)) is not kind:
            raise Failed(f"welcome.{name} is missing or not {kind.__name__}")
    offered = hello.get("versions")
    shared = set(offered).intersection(versions) if type(offered) is list else set()
    if not shared:
        raise Failed(f"a welcome to a hello of versions {offered!r}: none is in the SPEC")
    version = max(shared)
    if welcome.get("version") != version:
        raise Failed(f"welcome.version is {welcome.get('version')!r}, not {version}")
    for name in ("lease_s", "heartbeat_s"):
        if type(welcome.get(name)) not in (int, float) or not 0 < welcome[name] < 1e12:
            raise Failed(f"welcome.{name} is not a positive number")
    key = welcome["server_key"]
    if len(key) != 32 or welcome["server_id"] != fingerprint(key):
        raise Failed(f"welcome.server_id {welcome['server_id']!r} is not server_key's fingerprint")
    vendor_fp = welcome.get("vendor_fp", "")
    items = [hello.get("nonce", b""), hello["client_id"], welcome["server_id"], vendor_fp]
    if version >= 2:
        time = welcome.get("time", 0)
        if type(time) not in (int, float) or not 0 <= time < 1e12:
            raise Failed(f"welcome.time {time!r} is not a time")
        if bool(time) != bool(hello.get("nonce")):
            raise Failed(f"welcome.time is {time!r} for a hello {'with' if time else 'without'}"
                         " a nonce")  # fmt: skip
        if welcome.get("time_signature", b""):
            raise Failed(
                f"a version-{version} welcome has a time_signature (its signature covers time)"
            )
        items.append(float(time))
    handshake = msgpack.packb(items, use_bin_type=True)
    signed = HANDSHAKE_DOMAINS[version] + (
        _batch_root(handshake, welcome.get("batch_path", b"")) if version >= 3 else handshake
    )
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(welcome["signature"], signed)
    except (InvalidSignature, ValueError):
        raise Failed(
            f"welcome.signature does not verify over the version-{version} handshake (SPEC 4)"
        ) from None


def _batch_root(handshake: bytes, path: Any) -> bytes:
    """SPEC 4, version 3: the root the welcome's ``batch_path`` folds this handshake's leaf into."""
    whole = type(path) is bytes and len(path) % BATCH_STEP == 0
    if not whole or len(path) > BATCH_MAX_STEPS * BATCH_STEP:
        raise Failed(
            f"welcome.batch_path is not 0 to {BATCH_MAX_STEPS} steps of {BATCH_STEP} bytes: "
            f"{path!r:.80}"
        )
    h = hashlib.sha256(b"\x00" + handshake).digest()  # the leaf
    for at in range(0, len(path), BATCH_STEP):
        side, sibling = path[at], path[at + 1 : at + BATCH_STEP]
        if side not in (0, 1):
            raise Failed(f"welcome.batch_path has a step whose side byte is {side}, not 0 or 1")
        pair = h + sibling if side == 0 else sibling + h
        h = hashlib.sha256(b"\x01" + pair).digest()  # a node
    return h


def check_reply(
    got: dict[str, Any] | None,
    step: dict[str, Any],
    sent: bytes,
    versions: tuple[int, ...] = VERSIONS,
) -> None:
    expect: str = step["expect"]
    kind, _, what = expect.partition(":")
    if got is None:
        raise Failed(f"expected {expect} id {step['id']}, the server closed")
    want_t = what if kind == "reply" else "error"
    if got.get("t") != want_t or (kind != "reply" and got.get("code") != what):
        raise Failed(f"expected {expect} id {step['id']}, got {_show(got)}")
    if type(got.get("id")) is not int or got["id"] != step["id"]:
        raise Failed(f"expected {expect} with id {step['id']}, got id {got.get('id')!r}")
    for name, value in from_json(step.get("match", {})).items():
        if got.get(name) != value:
            raise Failed(f"{what}.{name} is {got.get(name)!r}, expected {value!r}")
    if what == "welcome":
        check_welcome(got, msgpack.unpackb(sent[4:], raw=False), versions)


def _groups(steps: list[dict[str, Any]]) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """(number, step) in writes: a ``batch`` step goes in one write with the step before it."""
    group: list[tuple[int, dict[str, Any]]] = []
    for n, step in enumerate(steps):
        if group and not step.get("batch"):
            yield group
            group = []
        group.append((n, step))
    if group:
        yield group


def needs(session: dict[str, Any], versions: tuple[int, ...]) -> str | None:
    """Why ``session`` does not apply to a server of ``versions`` (None: it does). A session
    applies unless one of its hellos that must be welcomed offers none of them, or its welcome
    must be in a version other than the highest the hello and the server share."""
    for step in session["steps"]:
        if step.get("expect") != "reply:welcome" or "hex" not in step:
            continue
        hello = msgpack.unpackb(bytes.fromhex(step["hex"])[4:], raw=False)
        offered = hello.get("versions") if type(hello) is dict else None
        shared = set(offered).intersection(versions) if type(offered) is list else set()
        wanted = step.get("match", {}).get("version")
        if not shared:
            return f"its hello offers versions {offered!r}, none of them the server's"
        if wanted is not None and wanted != max(shared):
            return f"needs protocol version {wanted}, which the server does not implement"
    return None


def play_session(
    session: dict[str, Any],
    host: str,
    port: int,
    timeout: float,
    versions: tuple[int, ...] = VERSIONS,
) -> None:
    why = needs(session, versions)
    if why is not None:
        raise NotApplicable(why)
    conns = [Conn(host, port, timeout)]
    try:
        for group in _groups(session["steps"]):
            if group[0][1].get("connect"):
                conns.append(Conn(host, port, timeout))
                continue
            conn = conns[-1]
            conn.send(b"".join(bytes.fromhex(step["hex"]) for _, step in group))
            for n, step in group:
                try:
                    if step["expect"] == "closed":
                        conn.expect_close("the step before")
                        break  # the connection is gone: no later step of the batch is read
                    check_reply(conn.frame(), step, bytes.fromhex(step["hex"]), versions)
                    if step["expect"].startswith("fatal:"):
                        conn.expect_close(step["expect"])
                except Failed as exc:
                    raise Failed(f"step {n} ({step['send']}): {exc}") from None
    finally:
        for c in conns:
            c.close()


def play_invalid(
    vector: dict[str, Any],
    host: str,
    port: int,
    timeout: float,
    versions: tuple[int, ...] = VERSIONS,
) -> None:
    conn = Conn(host, port, timeout)
    try:
        hello = {
            "t": "hello",
            "id": 1,
            "versions": list(versions),
            "client_id": secrets.token_bytes(16),
            "user": "conformance",
            "host": "conformance",
            "app": "lanlic.conformance",
            "nonce": secrets.token_bytes(32),
        }
        conn.send(frame(hello))
        welcome = conn.frame()
        if welcome is None or welcome.get("t") != "welcome" or welcome.get("id") != 1:
            raise Failed(f"the hello got {_show(welcome) if welcome else 'a close'}")
        check_welcome(welcome, hello, versions)
        conn.send(bytes.fromhex(vector["hex"]))
        step = {"expect": f"error:{vector['error']}", "id": vector["id"]}
        check_reply(conn.frame(), step, b"")
        if vector["fatal"]:
            conn.expect_close("a fatal error")
            return
        conn.send(frame({"t": "bye", "id": 2}))
        check_reply(conn.frame(), {"expect": "reply:goodbye", "id": 2}, b"")
        conn.expect_close("goodbye")
    finally:
        conn.close()


def run(
    host: str,
    port: int,
    vectors: Path,
    timeout: float = 5.0,
    versions: tuple[int, ...] = VERSIONS,
) -> Iterator[CaseResult]:
    """Every case, in the vectors' order; each result as soon as its case is over.
    ``versions``: the protocol versions the server implements (a server of 1.0 only: ``(1,)``);
    the runner's own hello offers them, each welcome is checked against them, and a session
    that needs another is reported not applicable rather than played."""
    unknown = set(versions) - set(VERSIONS)
    if not versions or unknown:
        raise ValueError(f"versions {sorted(unknown) or '(none)'}: the SPEC defines {VERSIONS}")
    sessions = json.loads((vectors / "sessions.json").read_text("utf-8"))
    frames = json.loads((vectors / "frames.json").read_text("utf-8"))
    cases: list[tuple[str, dict[str, Any]]] = [("session", s) for s in sessions]
    cases += [("invalid", v) for v in frames if not v["valid"]]
    for kind, case in cases:
        try:
            if kind == "session":
                play_session(case, host, port, timeout, versions)
            else:
                play_invalid(case, host, port, timeout, versions)
        except NotApplicable as exc:
            yield CaseResult(kind, case["name"], False, str(exc), applicable=False)
        except Failed as exc:
            yield CaseResult(kind, case["name"], False, str(exc))
        except OSError as exc:
            yield CaseResult(kind, case["name"], False, f"connection failed: {exc}")
        else:
            yield CaseResult(kind, case["name"], True)
