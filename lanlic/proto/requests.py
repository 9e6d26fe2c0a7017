"""The fast path's readers of the commonest requests: ``renew``, ``release`` and ``checkout``
maps checked as ``messages.parse`` checks them, without building a message.

A module of their own so that they are compiled with the rest of the hot path
(lanlic/hotpath.py); ``messages`` is not (mypyc does not build its dataclass hierarchy).
"""

from __future__ import annotations

from typing import Any

from lanlic.proto.messages import (
    LEASE_ID_SIZE,
    MAX_LEASES_PER_REQUEST,
    MAX_NAME,
    MAX_REQUEST_ID,
    is_version,
)

__all__ = ["checkout_request", "lease_request"]


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
