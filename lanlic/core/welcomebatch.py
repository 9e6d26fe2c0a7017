"""Many welcomes under one signature (protocol version 3, SPEC section 4).

An Ed25519 signature is most of what a hello costs the server: a crowd arriving at once (the
morning's logins, every client of a server that restarted or failed over) waits on one core's
signing rate. In version 3 the server signs, once for the hellos that reach it within a moment
of each other (``lanlic.net.server.WELCOME_BATCH_WAIT``), the root of a hash tree whose leaves
are their handshakes; each welcome carries that one signature and its own path from its leaf
to the root.

A client checks its welcome by hashing its own handshake (its fresh nonce is in it) into a leaf,
folding the path into a root and verifying the server's signature over that root. The leaf and
node hashes are domain-separated (RFC 6962's 0x00 and 0x01), so no node can pass for a leaf;
forging a welcome would take a second preimage of SHA-256 or the server's key.

A path is a string of 33-byte steps from the leaf up: a side byte, 0 when the sibling is on the
right (``parent = node(self, sibling)``) and 1 when it is on the left, then the sibling's hash.
A node with no sibling at its level (the last of an odd count) goes up unchanged, with no step.
A batch of one has an empty path: the root is the leaf.

Pure functions, no I/O: the server's adapter decides what one batch is.
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = ["MAX_BATCH", "MAX_STEPS", "STEP", "build", "leaf", "root_of"]

LEAF: Final = b"\x00"
NODE: Final = b"\x01"
#: One step of a path: the side byte and the sibling's SHA-256.
STEP: Final = 33
#: The most steps a client folds: a batch has at most 2**16 welcomes (the server's are far
#: smaller), and a longer path is refused before any hashing.
MAX_STEPS: Final = 16
#: The most welcomes one signature covers (``MAX_STEPS`` levels).
MAX_BATCH: Final = 1 << MAX_STEPS


def leaf(handshake: bytes) -> bytes:
    """The leaf of one handshake (the bytes version 2 signs, without the domain)."""
    return hashlib.sha256(LEAF + handshake).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


def build(leaves: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The root over ``leaves`` (at least one, at most ``MAX_BATCH``), and each leaf's path."""
    if not 1 <= len(leaves) <= MAX_BATCH:
        raise ValueError(f"a batch has 1 to {MAX_BATCH} leaves, not {len(leaves)}")
    paths = [bytearray() for _ in leaves]
    level = list(leaves)
    # The leaves under each node of the level, in order: a step goes on each of their paths.
    under: list[list[int]] = [[i] for i in range(len(leaves))]
    while len(level) > 1:
        up: list[bytes] = []
        up_under: list[list[int]] = []
        for i in range(0, len(level) - 1, 2):
            left, right = level[i], level[i + 1]
            for j in under[i]:
                paths[j] += b"\x00" + right
            for j in under[i + 1]:
                paths[j] += b"\x01" + left
            up.append(_node(left, right))
            up_under.append(under[i] + under[i + 1])
        if len(level) % 2:
            up.append(level[-1])
            up_under.append(under[-1])
        level, under = up, up_under
    return level[0], [bytes(p) for p in paths]


def root_of(leaf_hash: bytes, path: bytes) -> bytes | None:
    """The root ``path`` folds ``leaf_hash`` into, or None for a path that is not one (a
    length that is not whole steps, more than ``MAX_STEPS`` steps, a side byte not 0 or 1)."""
    if len(path) % STEP or len(path) > MAX_STEPS * STEP:
        return None
    h = leaf_hash
    for at in range(0, len(path), STEP):
        side, sibling = path[at], path[at + 1 : at + STEP]
        if side == 0:
            h = _node(h, sibling)
        elif side == 1:
            h = _node(sibling, h)
        else:
            return None
    return h
