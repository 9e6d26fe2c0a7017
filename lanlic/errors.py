"""Every error lanlic raises, each with a stable ``code`` that travels on the wire.

The tree::

    LanlicError                       code            whose fault
    ├── ProtocolError                                 the peer broke the protocol
    │   ├── BadFrame                  bad_frame       bytes that are not a frame / not msgpack
    │   ├── BadMessage                bad_message     a map with missing or mistyped fields
    │   ├── UnknownMessage            unknown_message a message type we do not know
    │   ├── UnexpectedMessage         unexpected_message  a known message in the wrong state
    │   ├── UnsupportedVersion        unsupported_version no protocol version in common
    │   └── ReplayedHello             replayed_hello  a hello whose nonce this client id used before
    ├── LicenseRefused                                the request was fine; the answer is no
    │   ├── NoSeat                    no_seat
    │   ├── UnknownProduct            unknown_product
    │   ├── VersionNotLicensed        version_not_licensed
    │   ├── LicenseExpired            license_expired
    │   ├── LeaseUnknown              lease_unknown
    │   ├── LimitReached              limit_reached   the seat policy's MAX for this user/group
    │   └── NotAllowed                not_allowed     the seat policy's INCLUDE/EXCLUDE
    ├── BorrowRefused                 (code per reason) a borrow, return or enrollment refused:
    │                                 not_borrowable, wrong_borrow_kind, borrow_too_long,
    │                                 no_borrowable_seat, not_enrolled, borrow_unknown ...
    ├── BorrowedFileError             (code per reason) a borrowed file refused offline:
    │                                 file_tampered, file_untrusted_server, file_wrong_machine,
    │                                 file_no_key, file_not_yet_valid, file_expired,
    │                                 clock_set_back, file_returned
    ├── NetworkKeyError               (the server refuses to start on this key)
    │   ├── KeyMalformed              key_malformed   not a network key file at all
    │   ├── KeyUnsigned               key_unsigned    no signature in the file
    │   ├── KeyBadSignature           key_bad_signature  signature does not match (edited)
    │   ├── KeyWrongVendor            key_wrong_vendor   signed by another vendor
    │   └── KeyExpired                key_expired
    ├── ServerUnavailable             server_unavailable  client side: no server answered
    ├── ServerUntrusted               server_untrusted    client side: the server did not prove
    │   │                                                 it holds its key, or serves another vendor
    │   └── ServerKeyChanged          server_key_changed  client side: another key than the one
    │                                                     pinned for this site (an impostor?)
    ├── ServerBusy                    server_busy     the server is at its connection cap
    ├── SeatLost                      seat_lost       client side: a held seat is gone for good
    ├── MachineUnidentified           machine_unidentified  client side: the OS offers neither a
    │                                                 machine id nor a MAC to fingerprint it
    └── InternalError                 internal_error  a bug on the server; the request is dropped

Expected outcomes of a well-formed request (``no_seat`` and friends) are values in the sans-IO
core; they become exceptions only at the client API, where raising is what Python users expect.
"""

from __future__ import annotations

__all__ = [
    "BadFrame",
    "BadMessage",
    "BorrowRefused",
    "BorrowedFileError",
    "ClusterUnsupported",
    "InternalError",
    "KeyBadSignature",
    "KeyExpired",
    "KeyMalformed",
    "KeyUnsigned",
    "KeyWrongVendor",
    "LanlicError",
    "LeaseUnknown",
    "LicenseExpired",
    "LicenseRefused",
    "LimitReached",
    "MachineUnidentified",
    "NetworkKeyError",
    "NoSeat",
    "NotAllowed",
    "ProtocolError",
    "ReplayedHello",
    "SeatLost",
    "ServerBusy",
    "ServerKeyChanged",
    "ServerUnavailable",
    "ServerUntrusted",
    "UnexpectedMessage",
    "UnknownMessage",
    "UnknownProduct",
    "UnsupportedVersion",
    "VersionNotLicensed",
    "error_for_code",
]


class LanlicError(Exception):
    """Base of every lanlic error. ``code`` is stable and is what goes on the wire."""

    code: str = "error"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ProtocolError(LanlicError):
    """The peer sent something the protocol does not allow."""

    code = "protocol_error"


class BadFrame(ProtocolError):
    """A frame that is too large, truncated, or whose body is not a msgpack map."""

    code = "bad_frame"


class BadMessage(ProtocolError):
    """A map that is a message, but with missing fields or fields of the wrong type."""

    code = "bad_message"


class UnknownMessage(ProtocolError):
    """A message type this side does not know."""

    code = "unknown_message"


class UnexpectedMessage(ProtocolError):
    """A known message that the connection's state does not allow (e.g. before the handshake)."""

    code = "unexpected_message"


class UnsupportedVersion(ProtocolError):
    """Client and server share no protocol version."""

    code = "unsupported_version"


class ReplayedHello(ProtocolError):
    """A hello with a nonce its client id has already used: a recorded session played back (the
    server refuses it and closes; a real client makes a fresh nonce for every connection)."""

    code = "replayed_hello"


class LicenseRefused(LanlicError):
    """A well-formed request that the licence says no to."""

    code = "refused"


class NoSeat(LicenseRefused):
    code = "no_seat"


class UnknownProduct(LicenseRefused):
    code = "unknown_product"


class VersionNotLicensed(LicenseRefused):
    code = "version_not_licensed"


class LicenseExpired(LicenseRefused):
    code = "license_expired"


class LeaseUnknown(LicenseRefused):
    """The lease does not exist, has expired, or belongs to another client (we do not say which)."""

    code = "lease_unknown"


class LimitReached(LicenseRefused):
    """The seat policy caps this user's or group's seats of the product (MAX), or the borrowed
    seats one user may have, and the cap is reached. A seat given back makes room."""

    code = "limit_reached"


class NotAllowed(LicenseRefused):
    """The seat policy does not let this user, host or address use the product (INCLUDE or
    EXCLUDE). Waiting does not help."""

    code = "not_allowed"


class _CodedError(LanlicError):
    """An error family whose members differ only by code: the code is given per instance."""

    CODES: frozenset[str] = frozenset()

    def __init__(self, message: str = "", code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            if code not in self.CODES:
                raise ValueError(f"{type(self).__name__} has no code {code!r}")
            self.code = code


class BorrowRefused(_CodedError):
    """The server says no to a borrow, a return or an enrollment; ``code`` says why."""

    code = "borrow_refused"
    CODES = frozenset(
        {
            "borrow_refused",
            "not_borrowable",
            "wrong_borrow_kind",
            "borrow_too_long",
            "no_borrowable_seat",
            "not_enrolled",
            "borrow_unknown",
            "bad_proof",
            "store_failed",
        }
    )


class BorrowedFileError(_CodedError):
    """A borrowed licence file (or enrollment document) that must not be used; ``code`` says
    why."""

    code = "borrowed_file"
    CODES = frozenset(
        {
            "borrowed_file",
            "file_tampered",
            "file_untrusted_server",
            "file_wrong_machine",
            "file_no_key",
            "file_not_yet_valid",
            "file_expired",
            "clock_set_back",
            "file_returned",
        }
    )


class NetworkKeyError(LanlicError):
    """A network key file that must not be served."""

    code = "key_invalid"


class KeyMalformed(NetworkKeyError):
    code = "key_malformed"


class KeyUnsigned(NetworkKeyError):
    code = "key_unsigned"


class KeyBadSignature(NetworkKeyError):
    code = "key_bad_signature"


class KeyWrongVendor(NetworkKeyError):
    code = "key_wrong_vendor"


class KeyExpired(NetworkKeyError):
    code = "key_expired"


class ServerUnavailable(LanlicError):
    code = "server_unavailable"


class ServerUntrusted(LanlicError):
    """The server could not prove who it is: no valid signature over this connection's nonce, a
    server id that does not name its key, or another vendor's key than the one asked for."""

    code = "server_untrusted"


class ServerKeyChanged(ServerUntrusted):
    """The server proved it holds a key, but not the one pinned for its site (lanlic.laptop.trust).

    Like SSH's changed host key: either an impostor, or a server replaced on purpose, which the
    user confirms with ``lanlic trust --server HOST:PORT``."""

    code = "server_key_changed"


class ServerBusy(LanlicError):
    code = "server_busy"


class SeatLost(LanlicError):
    code = "seat_lost"


class MachineUnidentified(LanlicError):
    """This machine cannot be fingerprinted: the OS offers neither a machine id nor a MAC
    address (the message says where lanlic looked). Borrowed files need a fingerprint."""

    code = "machine_unidentified"


class InternalError(LanlicError):
    code = "internal_error"


class ClusterUnsupported(LanlicError):
    """A request for something a cluster of servers on etcd does not do yet (the queue:
    docs/cluster.md). A single server does it."""

    code = "cluster_unsupported"


def _all_subclasses(cls: type[LanlicError]) -> list[type[LanlicError]]:
    out: list[type[LanlicError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_BY_CODE: dict[str, type[LanlicError]] = {c.code: c for c in _all_subclasses(LanlicError)}
for _cls in (BorrowRefused, BorrowedFileError):
    for _code in _cls.CODES:
        _BY_CODE[_code] = _cls


def error_for_code(code: str, message: str = "") -> LanlicError:
    """Rebuild the exception for a code received on the wire (unknown codes stay LanlicError)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = LanlicError(message or code)
        err.code = code
        return err
    if issubclass(cls, _CodedError):
        return cls(message, code)
    return cls(message)
