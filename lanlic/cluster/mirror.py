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
    """The etcd revision up to which the mirror has seen every change (a full read, then the
    watch's events in order); a watch resumes at this revision, not the next: one transaction
    writes several keys at one revision (batched claims), and a watch cut between their events
    would otherwise skip the rest; seeing an event again changes nothing. A transaction's reply
    does not move it: it says nothing of the changes before it that the watch has not shown
    yet, and a watch resumed past one of those would never show it (a seat deleted by another
    member would look taken for good)."""

    leases: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Client lease (as stored in the seat's key) -> (product, seat index): a member presented a
    lease it did not grant finds the seat to adopt without reading etcd."""

    _lease_at: dict[tuple[str, int], str] = field(default_factory=dict)

    _gone: dict[tuple[str, int], int] = field(default_factory=dict)
    """(product, seat index) -> the revision of the newest delete seen of its key. A put no newer
    than it is stale: a transaction's reply (another member's key, read by our losing claim)
    processed after the watch had shown that key deleted. Without this, the stale put marked the
    seat taken until the next change of its key, which may never come: a member then refused
    checkouts with free seats in etcd."""

    _loaded_at: int = 0
    """The revision of the last full read: a key absent from it was gone by then."""

    def load(self, keys: list[tuple[bytes, int, str]], revision: int) -> None:
        """Replace the mirror with a full read (key, mod_revision, client lease) at ``revision``."""
        self.taken = {}
        self.leases = {}
        self._lease_at = {}
        self._gone = {}
        self._loaded_at = 0
        for key, mod, lease in keys:
            self.put(key, mod, lease)
        self.revision = revision
        self._loaded_at = revision

    def put(self, key: bytes, mod_revision: int, lease: str = "", *, watched: bool = False) -> None:
        """The key is taken as of ``mod_revision`` (``watched``: an event of the watch, in order,
        which also moves ``revision``; else a transaction's reply)."""
        seat = parse_seat_key(self.prefix, key)
        if seat is not None:
            product, index = seat
            held = self.taken.setdefault(product, {})
            # An older event never overwrites a newer state learnt from a transaction's reply,
            # and a put no newer than the key's last delete (or than a full read without it)
            # never brings the seat back.
            current = held.get(index)
            stale = current is None and mod_revision <= self._gone.get(seat, self._loaded_at)
            if not stale and (current is None or current <= mod_revision):
                held[index] = mod_revision
                if lease:
                    self._forget(seat)
                    self.leases[lease] = seat
                    self._lease_at[seat] = lease
        if watched:
            self.revision = max(self.revision, mod_revision)

    def delete(self, key: bytes, revision: int, *, watched: bool = False) -> None:
        """The key was deleted at ``revision`` (``watched``: as for ``put``)."""
        seat = parse_seat_key(self.prefix, key)
        if seat is not None:
            product, index = seat
            held = self.taken.get(product, {})
            if held.get(index, 0) <= revision:
                held.pop(index, None)
                self._forget(seat)
            self._gone[seat] = max(self._gone.get(seat, 0), revision)
        if watched:
            self.revision = max(self.revision, revision)

    def _forget(self, seat: tuple[str, int]) -> None:
        old = self._lease_at.pop(seat, None)
        if old is not None and self.leases.get(old) == seat:
            del self.leases[old]

    def mod_revision(self, product: str, index: int) -> int | None:
        """The seat key's ``mod_revision`` as last seen, None if it is free as far as we know."""
        return self.taken.get(product, {}).get(index)

    def seat_of(self, lease: str) -> tuple[str, int] | None:
        """The (product, index) whose key names this client lease, as last seen."""
        return self.leases.get(lease)

    def free(self, product: str, seats: int) -> list[int]:
        held = self.taken.get(product, {})
        return [i for i in range(seats) if i not in held]

    def in_use(self, product: str) -> int:
        return len(self.taken.get(product, {}))

    def borrowed(self, product: str) -> int:
        """Seats taken by keys that name no client lease: borrows (``lanlic.cluster.borrows``),
        which take a seat's key as a checkout does, valued with the borrow instead."""
        return sum(1 for i in self.taken.get(product, {}) if (product, i) not in self._lease_at)
