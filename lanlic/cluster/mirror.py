"""Which seats are taken, as last seen through etcd's watch: a full pool is refused without a round
trip, and a checkout picks a seat that is free as far as we know (etcd's transaction decides).

Keys: ``{prefix}/seats/{product}/{index}``. Pure: fed puts and deletes with their revisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def seat_key(prefix: str, product: str, index: int) -> bytes:
    return f"{prefix}/seats/{product}/{index}".encode()


def seats_prefix(prefix: str) -> bytes:
    return f"{prefix}/seats/".encode()


def parse_seat_key(prefix: str, key: bytes) -> tuple[str, int] | None:
    """(product, index) for a seat key under the prefix, None for anything else."""
    head = seats_prefix(prefix)
    if not key.startswith(head):
        return None
    product, sep, index = key[len(head) :].decode("utf-8", "replace").rpartition("/")
    if not sep or not product or not index.isdecimal():
        return None
    return product, int(index)


@dataclass
class SeatMirror:
    prefix: str
    taken: dict[str, dict[int, int]] = field(default_factory=dict)
    """product -> {seat index: mod_revision of the key as last seen}."""

    revision: int = 0
    """The etcd revision this mirror reflects; a watch resumes at revision + 1."""

    def load(self, keys: list[tuple[bytes, int]], revision: int) -> None:
        """Replace the mirror with a full read (key, mod_revision) at ``revision``."""
        self.taken = {}
        for key, mod in keys:
            self.put(key, mod)
        self.revision = revision

    def put(self, key: bytes, mod_revision: int) -> None:
        seat = parse_seat_key(self.prefix, key)
        if seat is not None:
            product, index = seat
            held = self.taken.setdefault(product, {})
            # An older event never overwrites a newer state learnt from a transaction's reply.
            if held.get(index, 0) <= mod_revision:
                held[index] = mod_revision
        self.revision = max(self.revision, mod_revision)

    def delete(self, key: bytes, revision: int) -> None:
        seat = parse_seat_key(self.prefix, key)
        if seat is not None:
            product, index = seat
            held = self.taken.get(product, {})
            if held.get(index, 0) <= revision:
                held.pop(index, None)
        self.revision = max(self.revision, revision)

    def free(self, product: str, seats: int) -> list[int]:
        held = self.taken.get(product, {})
        return [i for i in range(seats) if i not in held]

    def in_use(self, product: str) -> int:
        return len(self.taken.get(product, {}))
