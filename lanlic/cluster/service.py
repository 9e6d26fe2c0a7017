"""The licence service of one cluster member: the seats are keys in etcd (``EtcdSeats``), the
leases this member granted stay in its memory (``SeatPool``) for renewals.

What differs from a single server (``LicenseService``), request by request:

- checkout: the key's and the request's checks as ever; then the fence, and a full pool in the
  watch-fed mirror, answer at once; otherwise the seat's key is claimed in etcd (naming the client
  id and the new lease id) and only then is the lease added to the local pool and granted.
- renew: refused with ``server_unavailable`` while the fence is shut (this member cannot prove its
  etcd lease outlives the client's), so the client moves to another member. Renewals otherwise
  never touch etcd.
- a lease this member did not grant, presented by ``reclaim`` or ``renew`` (the client's member
  died or was cut off): *adopted*. The seat is found by the lease id its key names, the key must
  name this client id and this lease id, and it is re-put under this member's etcd lease with a
  ``mod_revision`` compare (``EtcdSeats.adopt``). The key in etcd is the record of who may take
  the seat back: it holds the exact 128-bit lease id and client id, so no keyed tag (the single
  server's restart rule, SPEC 13) is needed and no secret is shared between members for it.
- release, expiry, goodbye: the local lease ends at once and the key is deleted in the background
  (compare on ``mod_revision``), retried until it is gone or this member's etcd lease, and the key
  with it, could have expired.
- the etcd lease lost (``EtcdSeats.lease_lost``: the member was stopped or cut off past it, etcd
  deleted every key under it): every local lease ends, its client is told (``notice``
  ``lease_lost``: not removed on purpose, so a client may check out again), and the member
  takes a new etcd lease before answering again.
- borrow, return, present, enroll: ``lanlic.cluster.desk`` (the single server's rules, the
  records in etcd: ``lanlic.cluster.borrows``); every member runs a reaper that ends borrows at
  their end on its anchored wall clock, racing the others' with a ``mod_revision`` compare.
- the queue (``wait``): one line per product shared by every member, a waiter key per place in
  etcd (``lanlic.cluster.queue``); a plain checkout never jumps a non-empty line.
- the history: written to the member's own ``lanlic.db`` as a single server's, and each batch
  also put in etcd in the background (``history``, ``lanlic.cluster.history``), where every
  member's admin page reads the whole cluster's.

Not sans-IO: it starts tasks on the running loop (``start`` inside it).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lanlic.cluster.borrows import EtcdBorrows
from lanlic.cluster.desk import ClusterDesk
from lanlic.cluster.etcd import EtcdSeats, SeatHold, Unreachable
from lanlic.cluster.history import ClusterHistory
from lanlic.cluster.queue import MemberQueue
from lanlic.cluster.stopping import end_within
from lanlic.cluster.view import cluster_status
from lanlic.core.netkey import NetworkKey
from lanlic.core.pool import Denied, Holder, Lease
from lanlic.core.service import LicenseService, Reply, ServiceConfig, Session, _once
from lanlic.errors import LanlicError
from lanlic.proto import messages as m

__all__ = ["ClusterService", "etcd_ttl_for"]

log = logging.getLogger("lanlic.cluster")

#: Seconds between two tries to delete a seat's key that etcd did not take.
RELEASE_RETRY = 0.5

#: Seconds between two tries to take a new etcd lease after the old one was lost.
RECOVER_RETRY = 0.5

#: Longest sleep of the borrow reaper (seconds): it reads the active borrows at least this
#: often, and otherwise sleeps until the next end it knows of, so every member's reaper wakes
#: at that end (they race; one transaction ends the borrow).
REAP_INTERVAL = 5.0


def etcd_ttl_for(lease_seconds: float) -> int:
    """The member's etcd lease TTL for a client lease of ``lease_seconds``.

    The fence lets the member answer only while ``sent + ttl > now + lease + margin`` for the
    last answered keepalive, sent every ``ttl / 10``: so ``0.9 * ttl`` must exceed the lease with
    room to spare, or one late keepalive would shut it. A third more than the lease, plus one."""
    return max(3, math.ceil(lease_seconds * 4 / 3) + 1)


class ClusterService(LicenseService):
    wire_fast_path = False

    def __init__(
        self,
        key: NetworkKey,
        server_key: Ed25519PrivateKey,
        seats: EtcdSeats,
        config: ServiceConfig | None = None,
    ) -> None:
        super().__init__(key, server_key, config or ServiceConfig())
        self.seats = seats
        self.holds: dict[bytes, SeatHold] = {}
        """Lease id -> the seat's key this member holds for it in etcd."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._ending: set[bytes] = set()
        """Leases ended here whose seat key is being deleted (never adopted back meanwhile)."""
        self._guard_task: asyncio.Task[None] | None = None
        self.lost_total = 0
        """Leases ended because this member's etcd lease was lost (for tests and logs)."""
        self.lending = ClusterDesk(key, self.desk, server_key, EtcdBorrows(seats), self._event)
        self._reaper_task: asyncio.Task[None] | None = None
        self.reaped = 0
        """Borrows this member's reaper ended (another member's may have ended others)."""
        self.queue = MemberQueue(self)
        seats.on_change = self.queue.drain  # a seat freed or the line moved: serve its head
        self.history = ClusterHistory(seats)
        """The cluster's history in etcd: fed by the member's database (``MemberHistoryStore``),
        read by the admin page."""

    # ---------------------------------------------------------------------------- life

    async def start(self) -> None:
        """Take the etcd lease and load the mirror; watch for the lease's loss."""
        await self.seats.start()
        loop = asyncio.get_running_loop()
        self._guard_task = loop.create_task(self._guard_lease())
        self._reaper_task = loop.create_task(self._reap_borrows())
        self.history.start()

    async def close(self) -> None:
        """Stop. The seats stay in etcd under this member's lease until it expires, so their
        clients, told ``shutdown``, take them to another member (adopt)."""
        bound = self.seats.stop_timeout  # each step; what takes longer is logged and left
        await end_within([self._guard_task, self._reaper_task], bound, "member: stopping")
        if self._tasks:  # key deletes in flight: a moment to finish, then cancelled
            await asyncio.wait(list(self._tasks), timeout=bound)
        await end_within(list(self._tasks), bound, "member: stopping")
        # The server has stopped and written its last batch: put what waits, bounded.
        await self.history.close(within=self.seats.call_timeout * 5)
        await self.seats.close()

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------ requests

    def handle(self, session: Session, msg: m.Message, now: float, wall: float) -> Reply:
        if isinstance(msg, m.Borrow):
            return Reply(None, later=lambda: self.lending.borrow(msg, wall))
        if isinstance(msg, m.Return):
            return Reply(None, later=lambda: self.lending.return_(msg, wall))
        if isinstance(msg, m.Present):
            return Reply(None, later=lambda: self.lending.present(msg, wall))
        if isinstance(msg, m.Enroll):
            return Reply(None, later=lambda: self.lending.enroll(msg, wall))
        if isinstance(msg, m.Wait):
            return self._wait_in_line(session, msg, now, wall)
        if isinstance(msg, m.Unwait):
            return Reply(self.queue.unwait(session, msg))
        if isinstance(msg, m.Status):
            return Reply(None, later=lambda: cluster_status(self, msg.id))
        if isinstance(msg, m.Bye):
            released = self.pool.release_owner(session.client_id, now)
            for lease in released:
                self._lease_event("release", lease, "bye")
                self._settle(lease.id)
            return Reply(m.Goodbye(id=msg.id, released=len(released)), close=True)
        return super().handle(session, msg, now, wall)

    # ------------------------------------------------------------------------ the queue

    def _wait_in_line(self, session: Session, msg: m.Wait, now: float, wall: float) -> Reply:
        """A seat at once if one is free and nobody waits for it (the checkout's path and
        refusals), else a place in the shared line."""
        ask = m.Checkout(msg.id, msg.product, msg.version)
        first = self._checkout(session, ask, now, wall, queued=True)
        if first.message is not None and (
            not isinstance(first.message, m.Error) or first.message.code != "no_seat"
        ):
            return first
        claim = first.later

        async def seat_or_line() -> m.Message:
            if claim is not None:
                got = await claim()
                if not isinstance(got, m.Error) or got.code != "no_seat":
                    return got
            return await self.queue.join(session, msg, wall)

        return Reply(None, later=seat_or_line)

    @property
    def waiting(self) -> bool:
        return bool(self.queue.mine)

    def drain_queue(self, now: float) -> None:
        self.queue.drain()

    def waiting_owners(self) -> set[bytes]:
        return self.queue.owners()

    def drop_waiters(self, owners: set[bytes]) -> None:
        for owner in owners:
            for w in self.queue.owner_gone(owner):
                self.outbox.append(
                    (owner, m.Error(w.rid, "no_seat", "dropped from the queue: no heartbeat"))
                )

    def client_gone(self, client_id: bytes) -> None:
        client = self._clients.get(client_id)
        last = client is not None and client.connections <= 1
        super().client_gone(client_id)
        if last:  # a place in line lasts as long as a connection of its client
            self.queue.owner_gone(client_id)

    def _fence_open(self) -> bool:
        return self.seats.fence.may_answer(self.seats.clock(), self.pool.lease_seconds)

    @staticmethod
    def _unavailable(rid: int) -> m.Error:
        return m.Error(
            rid,
            "server_unavailable",
            "this member cannot prove its etcd lease outlives a client lease: try another",
        )

    def _checkout(
        self, session: Session, msg: m.Checkout, now: float, wall: float, *, queued: bool = False
    ) -> Reply:
        """``queued``: a ``wait``'s first try; ``no_seat`` then puts it in line, no refusal."""
        rid, product, version = msg.id, msg.product, msg.version
        h = session.holder
        if self._key_expired(wall):
            return Reply(
                m.Error(rid, "license_expired", f"the network key expired on {self.key.expires}")
            )
        ent = self.pool.products.get(product)
        if ent is None:
            denied = Denied("unknown_product", f"no product {product!r} in the network key")
        elif not ent.allows_version(version):
            lo, hi = ent.versions or ("", "")
            denied = Denied(
                "version_not_licensed",
                f"{product} version {version!r} is not licensed (licensed: {lo} to {hi})",
            )
        elif not self._fence_open():
            return Reply(self._unavailable(rid))
        elif self.seats.mirror.in_use(product) >= ent.seats:
            denied = Denied("no_seat", f"all {ent.seats} seats of {product} are in use")
        elif (waiting := self.seats.line.waiting(product)) and (
            ent.seats - self.seats.mirror.in_use(product) <= waiting
        ):
            denied = Denied("no_seat", f"{waiting} waiting in line for {product}'s free seats")
        else:
            denied = None
        if denied is not None:
            if not (queued and denied.code == "no_seat"):
                self._event("refusal", product, h.user, h.host, denied.code)
            return Reply(m.Error(rid, denied.code, denied.message))
        holder = h.at_version(version)
        owner = session.client_id
        lease_id = self.pool.random_bytes(16)

        async def claim() -> m.Message:
            try:
                who = (h.user, h.host, int(wall))
                hold = await self.seats.checkout(product, owner.hex(), lease_id.hex(), who)
            except LanlicError as exc:
                if not (queued and exc.code == "no_seat"):
                    self._event("refusal", product, h.user, h.host, exc.code)
                return m.Error(rid, exc.code, exc.message)
            granted = self._hold(hold, lease_id, owner, holder)
            if isinstance(granted, m.Error):
                return m.Error(rid, granted.code, granted.message)
            self._lease_event("checkout", granted, version)
            return self._granted_msg(rid, granted)

        return Reply(None, later=claim)

    def _hold(
        self, hold: SeatHold, lease_id: bytes, owner: bytes, holder: Holder
    ) -> Lease | m.Error:
        """A seat's key is ours in etcd: make the local lease (or give the key back if the
        fence shut while etcd answered: the client must not count on it)."""
        if not self._fence_open():
            self._end(lease_id, hold)
            return self._unavailable(0)
        now, _wall = self.clock()
        got = self.pool.adopt(lease_id, hold.product, owner, holder, now)
        if isinstance(got, Denied):
            # Leases here whose seats another member adopted since (their clients moved on)
            # count in the local pool until they end: drop them, and try once more.
            self._moved_away(list(self.holds))
            got = self.pool.adopt(lease_id, hold.product, owner, holder, now)
        if isinstance(got, Denied):  # pragma: no cover - the pool now counts live seats only
            self._end(lease_id, hold)
            return m.Error(0, got.code, got.message)
        self.holds[lease_id] = hold
        return got.lease

    def _renew(self, session: Session, msg: m.Renew, now: float) -> Reply:
        if not self._fence_open():
            return Reply(self._unavailable(msg.id))
        leases = _once(msg.leases)
        moved = self._moved_away(leases)
        if moved:
            leases = [x for x in leases if x not in moved]
        renewed, gone = self.pool.renew_pair(leases, session.client_id, now)
        if not gone and not moved:
            return Reply(m.Renewed(id=msg.id, leases=renewed, lost=[]))
        items: list[tuple[bytes, str | None, str]] = [(x, None, "") for x in moved]
        lost = []
        for lease_id in gone:
            if lease_id in self.holds:  # ours, and it ran out here: not to be taken back
                self._settle(lease_id)
                lost.append(m.Lost(lease_id, "lease_unknown"))
            else:
                items.append((lease_id, None, ""))

        async def adopt_then_answer() -> m.Message:
            results = await self._adopt_all(session, items)
            back = [x for x, code in results if code is None]
            more = [m.Lost(x, code) for x, code in results if code is not None]
            return m.Renewed(id=msg.id, leases=renewed + back, lost=lost + more)

        if not items:
            return Reply(m.Renewed(id=msg.id, leases=renewed, lost=lost))
        return Reply(None, later=adopt_then_answer)

    def _reclaim(self, session: Session, msg: m.Reclaim, now: float) -> Reply:
        if not self._fence_open():
            return Reply(self._unavailable(msg.id))
        items: list[tuple[bytes, str | None, str]] = [
            (x["lease"], x["product"], x.get("version", "")) for x in msg.seats
        ]

        async def adopt_then_answer() -> m.Message:
            results = await self._adopt_all(session, items)
            return m.Reclaimed(
                id=msg.id,
                leases=[x for x, code in results if code is None],
                epoch=self.guard.epoch,
                lost=[m.Lost(x, code) for x, code in results if code is not None],
            )

        return Reply(None, later=adopt_then_answer)

    async def _adopt_all(
        self, session: Session, items: list[tuple[bytes, str | None, str]]
    ) -> list[tuple[bytes, str | None]]:
        return list(await asyncio.gather(*(self._adopt(session, x, p, v) for x, p, v in items)))

    async def _adopt(
        self, session: Session, lease_id: bytes, product: str | None, version: str
    ) -> tuple[bytes, str | None]:
        """Take over the seat whose key names this lease for this client: (lease id, None) if
        it is ours now, else the refusal's code."""
        owner = session.client_id
        now, _wall = self.clock()
        self._moved_away([lease_id])
        mine = self.pool.lease(lease_id)
        if mine is not None:
            if mine.owner == owner and (product is None or mine.product == product):
                self.pool.renew_pair([lease_id], owner, now)
                return lease_id, None
            return lease_id, "lease_unknown"
        if lease_id in self.holds or lease_id in self._ending:
            return lease_id, "lease_unknown"  # ours once, ended here
        h = session.holder
        try:
            seat = await self.seats.locate(lease_id.hex(), product)
            if seat is None or (product is not None and seat[0] != product):
                return lease_id, "lease_unknown"
            ent = self.pool.products[seat[0]]
            if version and not ent.allows_version(version):
                return lease_id, "version_not_licensed"
            who = (h.user, h.host, int(_wall))
            hold = await self.seats.adopt(seat[0], seat[1], owner.hex(), lease_id.hex(), who)
        except LanlicError as exc:
            return lease_id, exc.code
        got = self._hold(hold, lease_id, owner, h.at_version(version))
        if isinstance(got, m.Error):
            return lease_id, got.code
        self._event("adopt", got.product, h.user, h.host, version)
        return lease_id, None

    def _moved_away(self, lease_ids: list[bytes]) -> list[bytes]:
        """Leases granted here whose seat key has changed since (another member adopted it: the
        client moved there, and may now be back): dropped here without a word, so that they
        are adopted back from etcd rather than renewed from a stale memory. Renewing them here
        would let the other member's expiry delete the key under a seat still in use."""
        moved = []
        for lease_id in lease_ids:
            hold = self.holds.get(lease_id)
            if hold is None:
                continue
            if self.seats.mirror.mod_revision(hold.product, hold.index) != hold.mod_revision:
                del self.holds[lease_id]
                now, _wall = self.clock()
                self.pool.release([lease_id], None, now)
                moved.append(lease_id)
        return moved

    def _release(self, session: Session, msg: m.Release, now: float) -> Reply:
        reply = super()._release(session, msg, now)
        for lease_id in msg.leases:
            self._settle(lease_id)
        return reply

    def _expired(self, leases: list[Lease]) -> None:
        super()._expired(leases)
        for lease in leases:
            self._settle(lease.id)

    def remove(self, lease_id: bytes, now: float) -> Lease | None:
        lease = super().remove(lease_id, now)
        self._settle(lease_id)
        return lease

    def status(self, request_id: int, now: float, wall: float) -> m.StatusReply:
        """As a single server's, but the counts are the cluster's (the mirror: every member
        sees every seat); the holders listed are this member's."""
        reply = super().status(request_id, now, wall)
        for p in reply.products:
            borrowed = self.seats.mirror.borrowed(p["name"])
            taken = self.seats.mirror.in_use(p["name"])  # seat keys: in use and borrowed
            p["in_use"] = max(0, taken - borrowed)
            p["borrowed"] = borrowed
            p["free"] = max(0, p["seats"] - taken)
            line = self.seats.line
            p["queue"] = [  # the cluster's line, every member's waiters (the watch's view)
                {"position": i, "user": who[0], "host": who[1], "since": who[2]}
                for i, key in enumerate(line.order(p["name"]), 1)
                for who in [line.who.get(key, ("", "", 0.0))]
            ]
        reply.borrows[:] = self.lending.listing()  # as the reaper last read them
        return reply

    # ---------------------------------------------------------------- keys in etcd

    def _settle(self, lease_id: bytes) -> None:
        """The local lease ``lease_id`` may have ended: if so, delete its seat's key."""
        if self.pool.lease(lease_id) is not None:
            return
        hold = self.holds.pop(lease_id, None)
        if hold is not None:
            self._end(lease_id, hold)

    def _end(self, lease_id: bytes, hold: SeatHold) -> None:
        """Delete the seat's key in the background. Until that is done the key still names the
        client and its lease under our etcd lease: ``_ending`` keeps an adopt from granting it
        again (the delete would then take the key from under a granted seat)."""
        self._ending.add(lease_id)
        self._spawn(self._free(lease_id, hold))

    async def _free(self, lease_id: bytes, hold: SeatHold) -> None:
        """Delete a seat's key, retrying while etcd does not answer, until it is gone or the etcd
        lease it is under is (etcd said so, or the member took a new one). Not by a deadline:
        while the lease lives, a key left behind would hold its seat for good."""
        under = self.seats.lease_id
        try:
            while True:
                try:
                    await self.seats.release(hold)
                    return
                except (LanlicError, Unreachable) as exc:
                    if self.seats.fence.lost or self.seats.lease_id != under:
                        return
                    log.info("etcd: releasing %s failed (%s); retrying", hold.key.decode(), exc)
                    await asyncio.sleep(RELEASE_RETRY)
        finally:
            self._ending.discard(lease_id)

    async def _reap_borrows(self) -> None:
        """End borrows at their end (anchored wall time), racing the other members' reapers."""
        while True:
            try:
                _now, wall = self.clock()
            except RuntimeError:  # the adapter has not set the clock yet
                await asyncio.sleep(0.1)
                continue
            try:
                ended, upcoming = await self.lending.reap(wall)
            except (LanlicError, Unreachable) as exc:
                log.info("etcd: reading the borrows failed (%s); retrying", exc)
                await asyncio.sleep(RECOVER_RETRY)
                continue
            for entry in ended:
                self.reaped += 1
                log.info(
                    "borrow %s of %s (%s@%s) expired: ended by this member's reaper "
                    "(%d so far)",
                    entry.borrow_id, entry.product, entry.user, entry.host, self.reaped,
                )  # fmt: skip
            pause = REAP_INTERVAL if upcoming is None else upcoming - wall
            await asyncio.sleep(min(REAP_INTERVAL, max(0.01, pause)))

    async def _guard_lease(self) -> None:
        """When etcd says this member's lease is gone, end every local lease (their keys were
        deleted with it), tell their clients, and take a new lease before answering again."""
        while True:
            await self.seats.lease_lost.wait()
            ended: dict[bytes, list[bytes]] = {}
            now, _wall = self.clock()
            for lease_id in list(self.holds):
                lease = self.pool.lease(lease_id)
                if lease is not None:
                    self.pool.release([lease_id], None, now)
                    self._lease_event("seat_lost", lease, "this member's etcd lease expired")
                    ended.setdefault(lease.owner, []).append(lease_id)
            self.holds.clear()
            count = sum(len(x) for x in ended.values())
            self.lost_total += count
            log.warning(
                "etcd lease lost (this member was stopped or cut off from etcd past it): "
                "%d seat(s) it held are gone; their clients are told",
                count,
            )
            for owner, leases in ended.items():
                self.outbox.append(
                    (
                        owner,
                        m.Notice(
                            kind="lease_lost",
                            message="the server lost its etcd lease: the seat is gone",
                            leases=leases,
                        ),
                    )
                )
            while True:
                try:
                    await self.seats.recover()
                    break
                except (LanlicError, Unreachable) as exc:
                    log.info("etcd: no new lease yet (%s); retrying", exc)
                    await asyncio.sleep(RECOVER_RETRY)
            log.warning("etcd: serving again under a new lease %x", self.seats.lease_id)
