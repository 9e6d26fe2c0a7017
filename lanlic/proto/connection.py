"""The server side of one connection as a state machine, with no I/O (bytes in, events out).

Everything that decides which message is allowed when lives in ``TRANSITIONS``. A message the
table does not allow in the current state is an ``UnexpectedMessage`` naming the state and the
message; the connection stays in its state, so the peer can be told and carry on. ``closed`` is
the exception: after ``bye`` (or a fatal error) nothing more is read, so frames that followed in
the same read are dropped unanswered, as those of a later read would be by a closed socket.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from lanlic.errors import BadFrame, ProtocolError, UnexpectedMessage
from lanlic.proto import messages as m
from lanlic.proto.framing import MAX_FRAME, FrameDecoder, FrameTooLarge, check_map, encode_frame
from lanlic.proto.requests import HelloFields, hello_request

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
        m.Present: ConnState.READY,
        m.Reclaim: ConnState.READY,
        m.Wait: ConnState.READY,
        m.Unwait: ConnState.READY,
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

_STEADY: dict[ConnState, frozenset[str]] = {
    state: frozenset(cls.TYPE for cls, nxt in table.items() if nxt is state)
    for state, table in TRANSITIONS.items()
}


class ServerConnection:
    """Feed it bytes with ``receive_data``; it yields requests and errors in order."""

    __slots__ = ("_decoder", "state")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.state = ConnState.AWAIT_HELLO
        # Maps come out of the decoder unchecked for nesting and key types: ``event_for``
        # checks each before parsing it, and the adapter's fast path takes only maps whose
        # every key and value it checks itself (so they could not fail ``check_map``). The
        # check was a third of decoding a renew.
        self._decoder = FrameDecoder(max_frame, check=False)

    @property
    def has_partial_frame(self) -> bool:
        return self._decoder.buffered > 0

    def receive_data(self, data: bytes) -> list[Event]:
        frames, fatal = self.receive_frames(data)
        events: list[Event] = []
        for item in frames:
            event = self.event_for(item)
            if event is not None:
                events.append(event)
        if fatal is not None and self.state is not ConnState.CLOSED:
            events.append(self.fail(fatal))
        return events

    # ``receive_data`` in three steps, for an adapter with a fast path (lanlic.net.server): it
    # takes this read's frames, answers some itself (requests of a type in ``steady_types``,
    # through ``requests.lease_request`` and friends), hands every other frame to ``event_for``
    # in order, and ends with ``fail`` if a fatal error followed the frames.

    def receive_frames(
        self, data: bytes
    ) -> tuple[list[dict[str, Any] | BadFrame], FatalError | None]:
        """This read's complete frames (maps, or ``BadFrame``), and the fatal error after them.
        The maps are not yet through ``check_map``: hand each to ``event_for``, unless every one
        of its keys and values is checked by the taker (the fast path's exact shapes)."""
        try:
            return self._decoder.feed(data), None
        except BadFrame as exc:
            return (exc.frames if isinstance(exc, FrameTooLarge) else []), FatalError(exc)

    @property
    def steady_types(self) -> frozenset[str]:
        """Message types the table allows now that leave the state as it is."""
        return _STEADY[self.state]

    def fail(self, fatal: FatalError) -> FatalError:
        """The stream cannot be trusted any more: no request is taken after this."""
        self.state = ConnState.CLOSED
        return fatal

    def take_hello(self, item: dict[str, Any]) -> HelloFields | None:
        """The fields of ``item``, a ``hello`` map, if it is the well-formed hello this state
        awaits and has no field but a hello's (so ``check_map`` could not fail it), read with
        no message built (``requests.hello_request``); the state moves on as ``event_for``
        would move it. None: hand the frame to ``event_for``, which says what is wrong."""
        if self.state is not ConnState.AWAIT_HELLO:
            return None
        if len(item) != 6 + ("app" in item) + ("nonce" in item):  # t, id, versions, client_id,
            return None  # user, host (app and nonce may be left out): nothing else
        fields = hello_request(item)
        if fields is not None:
            self.state = ConnState.READY
        return fields

    def event_for(self, item: dict[str, Any] | BadFrame) -> Event | None:
        """Turn one frame into a request (moving the state along the table) or an error; None
        once the connection is closed (after ``bye``), when nothing more is read."""
        if self.state is ConnState.CLOSED:
            return None
        if isinstance(item, BadFrame):
            return RequestError(0, item)
        try:
            check_map(item)
        except BadFrame as exc:
            return RequestError(0, exc)
        try:
            msg = m.parse(item)
        except ProtocolError as exc:
            return RequestError(m.request_id_of(item), exc)
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
