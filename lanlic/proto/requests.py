"""The fast path's readers of the commonest requests: ``renew``, ``release`` and ``checkout``
maps, and the ``hello`` every connection starts with, checked as ``messages.parse`` checks
them, without building a message.

A module of their own so that they are compiled with the rest of the hot path
(lanlic/hotpath.py); ``messages`` is not (mypyc does not build its dataclass hierarchy).
"""

from __future__ import annotations

from typing import Any

from lanlic.proto.messages import (
    CLIENT_ID_SIZE,
    LEASE_ID_SIZE,
    MAX_LEASES_PER_REQUEST,
    MAX_NAME,
    MAX_REQUEST_ID,
    MAX_VERSIONS_OFFERED,
    NONCE_SIZE,
    VERSION_LIMIT,
    is_version,
)

__all__ = ["HelloFields", "checkout_request", "hello_request", "lease_request"]

#: A hello's fields: (id, versions, client_id, user, host, app, nonce).
HelloFields = tuple[int, list[int], bytes, str, str, str, bytes]


def lease_request(wire: dict[str, Any]) -> tuple[int, list[bytes]] | None:
    """``(id, leases)`` of a ``renew`` or ``release`` map that ``parse`` accepts, else None.

    The server's fast path for its commonest requests: the same checks as ``parse`` (unknown
    fields ignored), without building a message. On None, ``parse`` says what is wrong.
    tests/net/test_fastpath.py holds the two to the same answer on generated maps.
    """
    rid = wire.get("id")
    leases = wire.get("leases")
    if (
        type(rid) is not int
        or not 0 < rid <= MAX_REQUEST_ID
        or type(leases) is not list
        or len(leases) > MAX_LEASES_PER_REQUEST
    ):
        return None
    for item in leases:
        if type(item) is not bytes or len(item) != LEASE_ID_SIZE:
            return None
    return rid, leases


def checkout_request(wire: dict[str, Any]) -> tuple[int, str, str] | None:
    """``(id, product, version)`` of a ``checkout`` map that ``parse`` accepts, else None."""
    rid = wire.get("id")
    product = wire.get("product")
    version = wire.get("version", "")
    if (
        type(rid) is not int
        or not 0 < rid <= MAX_REQUEST_ID
        or type(product) is not str
        or len(product) > MAX_NAME
        or type(version) is not str
        or not (version == "" or is_version(version))
    ):
        return None
    return rid, product, version


def hello_request(wire: dict[str, Any]) -> HelloFields | None:
    """The fields of a ``hello`` map that ``parse`` accepts (``app`` and ``nonce`` empty when
    left out), else None."""
    rid = wire.get("id")
    versions = wire.get("versions")
    client_id = wire.get("client_id")
    user = wire.get("user")
    host = wire.get("host")
    app = wire.get("app", "")
    nonce = wire.get("nonce", b"")
    if (
        type(rid) is not int
        or not 0 < rid <= MAX_REQUEST_ID
        or type(versions) is not list
        or not 0 < len(versions) <= MAX_VERSIONS_OFFERED
        or type(client_id) is not bytes
        or len(client_id) != CLIENT_ID_SIZE
        or type(user) is not str
        or len(user) > MAX_NAME
        or type(host) is not str
        or len(host) > MAX_NAME
        or type(app) is not str
        or len(app) > MAX_NAME
        or type(nonce) is not bytes
        or (len(nonce) != NONCE_SIZE and len(nonce) != 0)
    ):
        return None
    for v in versions:
        if type(v) is not int or not 0 < v < VERSION_LIMIT:
            return None
    return rid, versions, client_id, user, host, app, nonce
