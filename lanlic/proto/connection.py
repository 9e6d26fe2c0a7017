"""The server side of one connection as a state machine, with no I/O (bytes in, events out).

Everything that decides which message is allowed when lives in ``TRANSITIONS``. A message the
table does not allow in the current state is an ``UnexpectedMessage`` naming the state and the
message; the connection stays in its state, so the peer can be told and carry on.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from lanlic.errors import BadFrame, ProtocolError, UnexpectedMessage
from lanlic.proto import messages as m
from lanlic.proto.framing import MAX_FRAME, FrameDecoder, FrameTooLarge, encode_frame

__all__ = ["TRANSITIONS", "ConnState", "FatalError", "RequestError", "ServerConnection"]


class ConnState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    READY = "ready"
    CLOSED = "closed"


TRANSITIONS: dict[ConnState, dict[type[m.Message], ConnState]] = {
    ConnState.AWAIT_HELLO: {m.Hello: ConnState.READY},
    ConnState.READY: {
        m.Checkout: ConnState.READY,
        m.Renew: ConnState.READY,
        m.Release: ConnState.READY,
        m.Status: ConnState.READY,
        m.Enroll: ConnState.READY,
        m.Borrow: ConnState.READY,
        m.Return: ConnState.READY,
        m.Bye: ConnState.CLOSED,
    },
    ConnState.CLOSED: {},
}


@dataclass(frozen=True, slots=True)
class RequestError:
    """A frame that could not become an allowed request; answer with an error and go on."""

    id: int
    error: ProtocolError


@dataclass(frozen=True, slots=True)
class FatalError:
    """The stream cannot be trusted any more: send the error, then close the connection."""

    error: ProtocolError


Event = m.Message | RequestError | FatalError


class ServerConnection:
    """Feed it bytes with ``receive_data``; it yields requests and errors in order."""

    __slots__ = ("_decoder", "state")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.state = ConnState.AWAIT_HELLO
        self._decoder = FrameDecoder(max_frame)

    @property
    def has_partial_frame(self) -> bool:
        return self._decoder.buffered > 0

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        try:
            frames = self._decoder.feed(data)
        except BadFrame as exc:
            frames = exc.frames if isinstance(exc, FrameTooLarge) else []
            fatal: FatalError | None = FatalError(exc)
        else:
            fatal = None
        for item in frames:
            events.append(self._event_for(item))
        if fatal is not None:
            events.append(fatal)
            self.state = ConnState.CLOSED
        return events

    def _event_for(self, item: dict[str, Any] | BadFrame) -> Event:
        if isinstance(item, BadFrame):
            return RequestError(0, item)
        try:
            msg = m.parse(item)
        except ProtocolError as exc:
            return RequestError(m.request_id_of(item), exc)
        if self.state is ConnState.CLOSED:
            return RequestError(m.request_id_of(item), UnexpectedMessage("connection is closing"))
        nxt = TRANSITIONS[self.state].get(type(msg))
        if nxt is None:
            return RequestError(
                m.request_id_of(item),
                UnexpectedMessage(f"{msg.TYPE!r} is not allowed in state {self.state.value!r}"),
            )
        self.state = nxt
        return msg

    @staticmethod
    def send(msg: m.Message) -> bytes:
        return encode_frame(m.to_wire(msg))
