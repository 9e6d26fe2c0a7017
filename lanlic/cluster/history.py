"""The cluster's history in etcd: every member publishes the rows it writes, any member reads
them all, merged by time, each row naming the member that served it.

A member keeps its own ``lanlic.db`` as a single server does (its record, its admin password,
``lanlic admin history --data``); ``MemberHistoryStore`` is that database, and every batch the
server's history writer puts in it (one a second) is also handed, packed on the writer's
thread, to the member's ``ClusterHistory``, which puts the rows in etcd from the loop in the
background: never on a request's path, one put at a time, in order, at most one key per
``PUBLISH_INTERVAL`` (the second-by-second batches of that time go together), at once when the
member's admin page reads the history or records an admin action (``flush``), or it
stops.

**Keys**: ``{prefix}.history/{time of its oldest row, 20-digit ns}-{tag}-{first}-{last}``: the
tag names the member's data folder (kept in its database), ``first`` and ``last`` the run of its
``lanlic.db`` row numbers the key holds; the value is a msgpack map ``{"member": NAME, "rows":
[[at, event, product, user, host, detail, count], ...]}`` (the SQLite row's fields). Key order
is time order, so a time range is a key range. The keys sit beside the site's ``{prefix}/``, not
under it: every member watches ``{prefix}/`` (its seats and the queue), and every member's
batches would go to every member's watch for nothing. A key is cut short when its rows would
span more than ``SPAN`` seconds (refusals are counted a minute at a time and stamped with the
first) or weigh more than ``MAX_VALUE`` bytes (etcd refuses requests over 1.5 MiB by default):
so a key at time t holds rows of ``[t, t + SPAN)`` only, and a read from ``since`` that starts
at key ``since - SPAN`` misses none.

**Losses**: a put that fails is tried again (from ``RETRY_FIRST`` up to ``RETRY_MAX`` seconds
apart) until it is done, and counted (``put_failures``). What waits is bounded: past
``MAX_PENDING_ROWS`` rows the oldest are dropped from the queue for etcd (counted in
``dropped_rows``, logged; they stay in the member's own ``lanlic.db``). A member killed with
SIGKILL has not put the rows of its last ``PUBLISH_INTERVAL`` and the key in flight (or, while
etcd did not answer, all since); they are in its ``lanlic.db`` but for the last second its
server had not written (a single server loses that too). Keys go out in row-number order, so
when it starts again with its data folder it reads the last row number etcd has of its tag
(``CATCH_UP_SECONDS`` back) and puts the rows after it first, named for the run that served
them: once restarted, it has lost from the cluster's history only that last unwritten second.

**Reading** is by key range, ``KEYS_PER_READ`` keys per request: the admin page's table reads
backwards from its end until it holds the page's rows, the CSV export forwards a page at a time,
the usage chart the range it draws.

**Retention**: each member deletes, with range deletes, the batches older than the retention of
its own database (``lanlic admin retention --days``, 400 days unless set), every
``PRUNE_INTERVAL`` of the server (10 minutes; the first a few seconds after start). Members prune
every member's batches, so the shortest setting among them wins; two members pruning at once is
harmless (deleting keys already gone deletes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import msgpack

from lanlic.cluster.etcd import EtcdSeats, Unreachable
from lanlic.cluster.stopping import end_within
from lanlic.errors import ServerUnavailable
from lanlic.store import Store
from lanlic.store import history as hist

__all__ = [
    "ClusterHistory",
    "HistoryPage",
    "MemberHistoryStore",
    "MemberRow",
    "batch_key",
    "cut_batch",
    "decode_batch",
    "encode_batches",
    "history_prefix",
    "pack_rows",
]

log = logging.getLogger("lanlic.cluster.history")

#: Seconds between two puts of one member at least: the rows its server writes each second
#: meanwhile go together in one key (a key a second from each member would be some 86,400 keys
#: a day for etcd to index, keep and prune).
PUBLISH_INTERVAL: Final = 5.0
#: Seconds of row times one key may span: a read from ``since`` starts this much earlier.
SPAN: Final = 120.0
#: Bytes of rows one key holds at most: about 550 rows, decoded in about 1.5 ms. With
#: ``KEYS_PER_READ`` a read's reply stays under gRPC's 4 MiB message limit (aetcd leaves it at
#: its default; past it a read fails as if etcd were unreachable); a put under etcd's 1.5 MiB.
MAX_VALUE: Final = 32 * 1024
#: Bytes of values a read decodes between two turns of the loop (about 1,000 rows, 3 ms).
YIELD_BYTES: Final = 64 * 1024
#: Rows waiting for etcd at most; past it the oldest batches are dropped (kept in lanlic.db).
MAX_PENDING_ROWS: Final = 100_000
#: Seconds before a failed put is tried again, doubling up to ``RETRY_MAX``.
RETRY_FIRST: Final = 0.2
RETRY_MAX: Final = 5.0
#: Keys read per etcd request: at most 3.2 MiB of values (``MAX_VALUE``).
KEYS_PER_READ: Final = 100
#: Seconds of keys one range delete of the pruning covers at most.
PRUNE_STEP: Final = 86400.0
#: Range deletes of one pruning at most (a bounded loop; the next pruning goes on).
PRUNE_ROUNDS: Final = 1000
#: Seconds back a member looks, at start, for rows its last run wrote and never put in etcd.
CATCH_UP_SECONDS: Final = 86400.0
#: The meta key of a data folder's tag (its keys' names in etcd).
TAG_KEY: Final = "cluster_history_tag"
#: The meta key of the member name of the folder's last run (``host:pid``).
MEMBER_KEY: Final = "cluster_history_member"
_SELECT: Final = "SELECT seq, at, event, product, user, host, detail, count FROM history"
#: Byte limits when decoding a batch (a value over MAX_VALUE plus one row is not ours).
_UNPACK_LIMIT: Final = 2 * MAX_VALUE


@dataclass(frozen=True, slots=True)
class MemberRow:
    """A history row (``lanlic.core.records.HistoryRow``) and the member that served it."""

    at: float
    event: str
    product: str
    user: str
    host: str
    detail: str
    count: int
    member: str

    def json(self) -> dict[str, Any]:
        return {
            "at": self.at, "event": self.event, "product": self.product, "user": self.user,
            "host": self.host, "detail": self.detail, "count": self.count, "member": self.member,
        }  # fmt: skip


def history_prefix(prefix: str) -> bytes:
    """Where a site's history batches are: beside ``{prefix}/``, outside every member's watch."""
    return f"{prefix.rstrip('/')}.history/".encode()


def _ns(at: float) -> bytes:
    return b"%020d" % max(0, int(at * 1e9))


def batch_key(prefix: str, at: float, tag: str, first: int, last: int) -> bytes:
    """The key of the rows ``first`` to ``last`` (the member's ``lanlic.db`` row numbers) of the
    data folder ``tag``, the oldest of them at ``at``."""
    return history_prefix(prefix) + _ns(at) + f"-{tag}-{first}-{last}".encode()


def _key_seqs(head: bytes, key: bytes) -> tuple[str, int, int] | None:
    """(tag, first row, last row) of a history key; None for another key."""
    parts = key[len(head) + 21 :].decode("ascii", "replace").split("-")
    if len(parts) != 3 or not parts[1].isdecimal() or not parts[2].isdecimal():
        return None
    return parts[0], int(parts[1]), int(parts[2])


def _key_at(head: bytes, at: float) -> bytes:
    """The first key of a batch whose first row is at ``at`` or later (for range bounds)."""
    return head + _ns(at)


def _range_end(head: bytes) -> bytes:
    return head[:-1] + bytes([head[-1] + 1])


def _key_time(head: bytes, key: bytes) -> float:
    try:
        return int(key[len(head) : len(head) + 20]) / 1e9
    except ValueError:
        return 0.0


Packed = tuple[int, float, bytes]
"""A row as ``ClusterHistory`` queues it: its ``lanlic.db`` row number, its time, its msgpack."""


def pack_rows(rows: Sequence[Sequence[object]]) -> list[Packed]:
    """Rows ``(seq, at, event, product, user, host, detail, count)`` as read back from the
    member's database, packed (on its writer thread, off the loop)."""
    packer = msgpack.Packer()
    return [
        (cast(int, r[0]), cast(float, r[1]), packer.pack([*r[1:7], cast(int, r[7])])) for r in rows
    ]


def cut_batch(
    prefix: str, member: str, tag: str, rows: Sequence[Packed]
) -> tuple[bytes, bytes, int]:
    """The next key of ``rows`` (in row-number order): ``(key, value, how many rows)``, as many
    rows as span less than ``SPAN`` seconds and weigh at most ``MAX_VALUE`` bytes, so that each
    key holds a run of row numbers with no gap."""
    lo = hi = rows[0][1]
    size = n = 0
    for _seq, at, packed in rows:
        if n and (max(hi, at) - min(lo, at) >= SPAN or size + len(packed) > MAX_VALUE):
            break
        lo, hi = min(lo, at), max(hi, at)
        size += len(packed)
        n += 1
    packer = msgpack.Packer()
    value = (
        packer.pack_map_header(2) + packer.pack("member") + packer.pack(member)
        + packer.pack("rows") + packer.pack_array_header(n) + b"".join(p for *_, p in rows[:n])
    )  # fmt: skip
    return batch_key(prefix, lo, tag, rows[0][0], rows[n - 1][0]), value, n


def encode_batches(
    prefix: str, member: str, tag: str, seqs: itertools.count[int], rows: Sequence[Sequence[object]]
) -> list[tuple[bytes, bytes, int]]:
    """``rows`` (the SQLite rows ``(at, event, product, user, host, detail[, count])``, numbered
    from ``seqs``) as ``(key, value, rows)`` for etcd, as a member writes them (tests, tools)."""
    packed = pack_rows([(next(seqs), *r[:6], cast(int, r[6]) if len(r) > 6 else 1) for r in rows])
    out = []
    while packed:
        key, value, n = cut_batch(prefix, member, tag, packed)
        out.append((key, value, n))
        del packed[:n]
    return out


def decode_batch(value: bytes) -> tuple[str, list[MemberRow]] | None:
    """A batch's member and rows; None if the value is not one (written by something else)."""
    try:
        d = msgpack.unpackb(
            value, raw=False, max_bin_len=0, max_ext_len=0, max_str_len=_UNPACK_LIMIT,
            max_array_len=_UNPACK_LIMIT, max_map_len=16,
        )  # fmt: skip
        member = d["member"]
        if not isinstance(member, str):
            return None
        rows = [
            MemberRow(float(at), str(ev), str(p), str(u), str(h), str(det), int(n), member)
            for at, ev, p, u, h, det, n in d["rows"]
        ]
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        return None
    return member, rows


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of the cluster's history, newest first (as the admin page's table reads it)."""

    total: int
    """Rows that match: exact unless ``more``, then those read so far (more than the page)."""
    items: list[MemberRow]
    more: bool
    """The read stopped once it held the page: older rows are left unread and uncounted."""


class ClusterHistory:
    """One member's door to the cluster's history: ``handed`` (from the database's writer
    thread) publishes, the rest reads and prunes. ``start()`` on the loop, ``close()`` after."""

    def __init__(self, seats: EtcdSeats) -> None:
        self.seats = seats
        self.member = seats.member
        self.tag = secrets.token_hex(4)
        """Names the keys of this member's data folder (``MemberHistoryStore`` keeps it in
        the folder's database; a random one without it), with each key's row numbers."""
        self.head = history_prefix(seats.prefix)
        self._rows: list[Packed] = []
        """Rows handed and not yet cut into a key, in row-number order."""
        self._caught_up: asyncio.Event | None = None
        """Set once the rows a previous run of this member wrote and never put are in etcd
        (``attach``): keys go out in row-number order, so the next run knows what is out."""
        self._flight: tuple[bytes, bytes, int] | None = None
        """The key being put: the same key and value until etcd took it (a put whose reply
        was lost, put again, writes nothing new)."""
        self._last_put = -PUBLISH_INTERVAL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._catch_up_task: asyncio.Task[None] | None = None
        self.put_failures = 0
        """Puts etcd did not answer (each tried again)."""
        self.dropped_rows = 0
        """Rows dropped from the queue for etcd past ``MAX_PENDING_ROWS``."""
        self.published_rows = 0

    # ------------------------------------------------------------------------- publishing

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._task = self._loop.create_task(self._publish(), name="history-publish")

    def attach(self, path: Path, tag: str, upto: int, served_by: str = "") -> None:
        """The member's database (``MemberHistoryStore``, made on the loop before the server
        runs): its folder's tag, and its last row number before this run. The rows up to it
        that no key of the tag holds (the last seconds of a run killed with SIGKILL, or of etcd
        away) are put first, named for the member that served them (``served_by``: the name of
        the folder's last run), then this run's."""
        assert self._caught_up is not None and self._loop is not None
        assert self._idle is not None
        self.tag = tag
        if upto > 0:
            self._caught_up.clear()
            self._idle.clear()
            self._catch_up_task = self._loop.create_task(
                self._catch_up(path, upto, served_by or self.member)
            )

    async def _catch_up(self, path: Path, upto: int, served_by: str) -> None:
        """Put, first, the rows up to ``upto`` that etcd lacks; the publisher waits for it."""
        assert self._caught_up is not None and self._wake is not None
        pause = RETRY_FIRST
        try:
            while True:
                try:
                    after = await self._published_upto(time.time() - CATCH_UP_SECONDS)
                    break
                except ServerUnavailable as exc:
                    log.info("history: cannot read what etcd has of this member (%s)", exc)
                    await asyncio.sleep(pause)
                    pause = min(RETRY_MAX, pause * 2)
            if after < upto:
                since = time.time() - CATCH_UP_SECONDS
                rows = await asyncio.to_thread(
                    lambda: pack_rows(_rows_after(path, after, upto, since))
                )
                if rows:
                    log.warning(
                        "history: %d row(s) this member wrote before it stopped were not in "
                        "etcd; putting them now", len(rows),
                    )  # fmt: skip
                while rows:
                    key, value, n = cut_batch(self.seats.prefix, served_by, self.tag, rows)
                    await self._put(key, value, n)
                    del rows[:n]
        except Exception:  # the database could not be read: this run's rows still go
            log.exception("history: the rows of this member's last run were not put in etcd")
        finally:
            self._caught_up.set()
            self._wake.set()

    async def _published_upto(self, since: float) -> int:
        """The last row number a key of this member's tag holds in etcd, among the keys from
        ``since`` (0: none): the keys go out in row-number order."""
        last = 0
        lo, hi = _key_at(self.head, since - SPAN), _range_end(self.head)
        while lo < hi:
            try:
                got, more = await self.seats.read_range(
                    lo, hi, limit=KEYS_PER_READ * 16, keys_only=True
                )
            except Unreachable as e:
                raise ServerUnavailable("etcd did not answer") from e
            for key, _value in got:
                seqs = _key_seqs(self.head, key)
                if seqs is not None and seqs[0] == self.tag:
                    last = max(last, seqs[2])
            if not more or not got:
                return last
            lo = got[-1][0] + b"\0"
        return last

    @property
    def waiting(self) -> int:
        """Rows handed and not yet in etcd."""
        return len(self._rows) + (self._flight[2] if self._flight else 0)

    def handed(self, rows: Sequence[Sequence[object]]) -> None:
        """Rows the member's database just wrote, ``(seq, at, event, product, user, host,
        detail, count)`` (called on its writer thread): packed here, off the loop, then queued
        on the loop for etcd."""
        loop = self._loop
        if loop is None or not rows:
            return
        packed = pack_rows(rows)
        with contextlib.suppress(RuntimeError):  # the loop has closed: the member is gone
            loop.call_soon_threadsafe(self._enqueue, packed)

    def _enqueue(self, packed: list[Packed]) -> None:
        assert self._wake is not None and self._idle is not None
        self._rows += packed
        over = len(self._rows) - MAX_PENDING_ROWS
        if over > 0:
            del self._rows[:over]  # the oldest
            self.dropped_rows += over
            log.error(
                "history: etcd is not taking the history; %d row(s) dropped from the cluster's "
                "history (%d in all), kept in this member's lanlic.db", over, self.dropped_rows,
            )  # fmt: skip
        self._idle.clear()
        self._wake.set()

    async def _publish(self) -> None:
        """One put at a time; at most one per ``PUBLISH_INTERVAL`` unless rows are left over
        from the last cut (a backlog goes at once) or a reader is waiting (``flush``)."""
        assert self._wake is not None and self._idle is not None and self._hurry is not None
        assert self._caught_up is not None
        loop = asyncio.get_running_loop()
        backlog = False
        await self._caught_up.wait()
        while True:
            if self._flight is None:
                if not self._rows:
                    self._idle.set()
                    self._hurry.clear()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                wait = self._last_put + PUBLISH_INTERVAL - loop.time()
                if wait > 0 and not backlog and not self._hurry.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):  # not wait_for (lanlic.cluster.stopping)
                            await self._hurry.wait()
                    continue
                self._flight = cut_batch(self.seats.prefix, self.member, self.tag, self._rows)
                del self._rows[: self._flight[2]]
                backlog = bool(self._rows)
            await self._put(*self._flight)
            self._flight = None
            self._last_put = loop.time()

    async def _put(self, key: bytes, value: bytes, n: int) -> None:
        """Put one key, again and again until etcd takes it (the same key and value: a put
        whose reply was lost, put again, writes nothing new)."""
        pause = RETRY_FIRST
        while True:
            try:
                await self.seats.put(key, value)  # no etcd lease: it outlives us
                break
            except Unreachable as exc:
                self.put_failures += 1
                log.info(
                    "history: etcd did not take a batch of %d row(s) (%s); trying again in "
                    "%.1f s (%d failed put(s) so far)", n, exc, pause, self.put_failures,
                )  # fmt: skip
                await asyncio.sleep(pause)
                pause = min(RETRY_MAX, pause * 2)
        self.published_rows += n

    async def flush(self, within: float) -> bool:
        """Put every row handed so far now, and wait until etcd has them, for at most
        ``within`` seconds."""
        if self._idle is None or self._hurry is None:
            return True
        self._hurry.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._idle.wait()
        return self._idle.is_set()

    async def close(self, within: float = 5.0) -> None:
        """Put what waits (for at most ``within`` seconds), then stop."""
        if not await self.flush(within):
            log.warning(
                "history: %d row(s) not put in etcd before stopping (kept in lanlic.db)",
                self.waiting,
            )
        tasks = [self._task, self._prune_task, self._catch_up_task]
        await end_within(tasks, self.seats.stop_timeout, "history: stopping")

    # ---------------------------------------------------------------------------- reading

    async def _scan(
        self, lo: bytes, hi: bytes, *, descending: bool = False
    ) -> AsyncIterator[tuple[list[tuple[bytes, bytes]], bool]]:
        """The keys of ``[lo, hi)`` with their values, ``KEYS_PER_READ`` a request, each read
        with whether the range holds more."""
        while lo < hi:
            try:
                got, more = await self.seats.read_range(
                    lo, hi, limit=KEYS_PER_READ, descending=descending
                )
            except Unreachable as e:
                raise ServerUnavailable("etcd did not answer the history read; try again") from e
            more = more and bool(got)
            if got:
                yield got, more
            if not more:
                return
            if descending:
                hi = got[-1][0]
            else:
                lo = got[-1][0] + b"\0"

    def _bounds(self, f: hist.Filters) -> tuple[bytes, bytes]:
        lo = self.head if f.since is None else _key_at(self.head, f.since - SPAN)
        hi = _range_end(self.head) if f.until is None else _key_at(self.head, f.until)
        return lo, hi

    async def _decoded(
        self, chunk: list[tuple[bytes, bytes]], f: hist.Filters
    ) -> list[tuple[float, bytes, int, MemberRow]]:
        """The matching rows of ``chunk`` as ``(at, key, index, row)``, the order they merge
        in. Decoding runs on the member's loop, which serves the seats: it gives the loop a
        turn every ``YIELD_BYTES`` (a long read is slower, the seats are not)."""
        out: list[tuple[float, bytes, int, MemberRow]] = []
        done = 0
        for key, value in chunk:
            got = decode_batch(value)
            if got is None:
                log.warning("history: %r in etcd is not a history batch; skipped", key)
                continue
            out += [(r.at, key, i, r) for i, r in enumerate(got[1]) if f.matches(r)]
            done += len(value)
            if done >= YIELD_BYTES:
                done = 0
                await asyncio.sleep(0)
        return out

    async def page(self, f: hist.Filters, *, offset: int = 0, limit: int = 100) -> HistoryPage:
        """Rows ``offset`` to ``offset + limit`` of the matching ones, newest first. Read from
        the newest key back until the rows newer than anything unread fill the page and one
        more (so that ``more`` is known), or the range ends."""
        want = offset + limit
        lo, hi = self._bounds(f)
        found: list[tuple[float, bytes, int, MemberRow]] = []
        more = False
        async for chunk, unread in self._scan(lo, hi, descending=True):
            found += await self._decoded(chunk, f)
            settled = _key_time(self.head, chunk[-1][0]) + SPAN  # unread rows are older
            if unread and sum(1 for x in found if x[0] >= settled) > want:
                more = True
                break
        found.sort(reverse=True, key=lambda x: x[:3])
        return HistoryPage(len(found), [x[3] for x in found[offset:want]], more)

    async def rows(self, f: hist.Filters) -> AsyncIterator[list[MemberRow]]:
        """Every matching row, oldest first, a few hundred keys' rows at a time."""
        lo, hi = self._bounds(f)
        heap: list[tuple[float, bytes, int, MemberRow]] = []
        async for chunk, _unread in self._scan(lo, hi):
            for item in await self._decoded(chunk, f):
                heapq.heappush(heap, item)
            settled = _key_time(self.head, chunk[-1][0])  # unread keys' rows are at least this
            out = []
            while heap and heap[0][0] < settled:
                out.append(heapq.heappop(heap)[3])
            if out:
                yield out
        if heap:
            yield [x[3] for x in sorted(heap, key=lambda x: x[:3])]

    async def events_since(
        self, since: float, events: Sequence[str]
    ) -> list[tuple[float, str, str, int]]:
        """``(at, product, event, count)`` of the given kinds from ``since`` on, oldest first,
        every member's (as ``lanlic.store.history.events_since`` reads one database)."""
        kinds = set(events)
        out = []
        async for rows in self.rows(hist.Filters(since=since)):
            out += [(r.at, r.product, r.event, r.count) for r in rows if r.event in kinds]
        return out

    # --------------------------------------------------------------------------- retention

    def prune_soon(self, now: float, keep_days: int) -> None:
        """From the database's writer thread, at the end of its own pruning: prune etcd too."""
        loop = self._loop
        if loop is not None and keep_days > 0:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._start_prune, now, keep_days)

    def _start_prune(self, now: float, keep_days: int) -> None:
        if self._prune_task is None or self._prune_task.done():
            assert self._loop is not None
            self._prune_task = self._loop.create_task(self._prune_logged(now, keep_days))

    async def _prune_logged(self, now: float, keep_days: int) -> None:
        try:
            gone = await self.prune(now, keep_days)
        except ServerUnavailable as exc:
            log.info("history: pruning etcd's batches failed (%s); next time", exc)
            return
        if gone:
            log.info("history: %d batch(es) older than %d days deleted from etcd", gone, keep_days)

    async def prune(self, now: float, keep_days: int) -> int:
        """Delete the batches whose rows are all older than ``keep_days`` days (every
        member's), a day of keys per range delete; how many this call deleted."""
        if keep_days <= 0:
            return 0
        end = _key_at(self.head, now - keep_days * 86400.0 - SPAN)
        gone = 0
        try:
            for _ in range(PRUNE_ROUNDS):
                oldest, _more = await self.seats.read_range(self.head, end, limit=1)
                if not oldest:
                    break
                step = _key_at(self.head, _key_time(self.head, oldest[0][0]) + PRUNE_STEP)
                gone += await self.seats.delete_range(self.head, min(step, end))
        except Unreachable as e:
            raise ServerUnavailable("etcd did not answer the pruning") from e
        return gone


def _rows_after(path: Path, after: int, upto: int, since: float) -> list[tuple[Any, ...]]:
    """The rows ``after < seq <= upto`` from ``since`` on, in row-number order, the newest
    ``MAX_PENDING_ROWS`` at most (a reader of its own: the server's writer may be writing)."""
    db = hist.open_reader(path)
    try:
        got = db.execute(
            _SELECT + " WHERE seq > ? AND seq <= ? AND at >= ? ORDER BY seq DESC LIMIT ?",
            (after, upto, since, MAX_PENDING_ROWS),
        ).fetchall()
    finally:
        db.close()
    return got[::-1]


class MemberHistoryStore(Store):
    """A cluster member's ``lanlic.db`` (its own record of what it served): each batch the
    server writes here is read back with its row numbers and handed to the cluster's history in
    etcd, and each pruning of it prunes etcd's batches to the same retention. Made on the loop
    before the server runs (``serve``), after ``ClusterService.start``."""

    def __init__(self, path: Path, history: ClusterHistory) -> None:
        super().__init__(path)
        self.cluster_history = history
        tag = self.meta(TAG_KEY)
        if not tag:
            tag = secrets.token_hex(4)
            self.set_meta(TAG_KEY, tag)
        self._last_seq = int(self._db.execute("SELECT coalesce(max(seq), 0) FROM history")
                             .fetchone()[0])  # fmt: skip
        served_by = self.meta(MEMBER_KEY) or ""  # the folder's last run: its rows' member
        self.set_meta(MEMBER_KEY, history.member)
        history.attach(self.path, tag, self._last_seq, served_by)

    def append_history_rows(self, rows: Sequence[Sequence[object]]) -> None:
        super().append_history_rows(rows)  # raises if not written: the server keeps them
        # Read back, with their row numbers, what is new here (another process's rows too).
        got = self._db.execute(_SELECT + " WHERE seq > ? ORDER BY seq", (self._last_seq,))
        new = got.fetchall()
        if new:
            self._last_seq = int(new[-1][0])
            self.cluster_history.handed(new)

    def prune_history(self, now: float, batch: int = hist.PRUNE_BATCH) -> int:
        gone = super().prune_history(now, batch)
        if gone < batch:  # the server calls again until less than a batch went: its last call
            self.cluster_history.prune_soon(now, self.retention().keep_days)
        return gone
