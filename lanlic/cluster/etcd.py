"""The seat store on etcd: several lanlic members share one pool, each seat in use one key.

One key per seat in use, ``{prefix}/seats/{product}/{index}``, under the serving member's single
etcd lease, valued with who holds it (JSON: member, client id, client lease id, claim token).
Renewals of a client's lease stay in the member's memory; only the member's own lease is kept alive
in etcd.

- checkout: a transaction that creates a free seat's key (compare ``create_revision == 0``), the
  seat picked from a watch-fed mirror (:mod:`lanlic.cluster.mirror`), so a full pool is refused
  with no round trip. A lost race moves on to another free seat.
- release: delete with a ``mod_revision`` compare, so a seat someone else took meanwhile stays.
- adopt (failover): a member presented a lease by a client whose member died checks the key's
  client id and client lease id, then re-puts the same key under its own lease with a
  ``mod_revision`` compare.
- unknown outcomes: a write whose reply was lost (the etcd member died, a timeout) may have
  committed. We read the key back, on the next endpoint, before doing anything else; a claim
  carries a random token so that we can tell our write from another's.
- the fence (:mod:`lanlic.cluster.fence`): checkout and adopt raise ``ServerUnavailable`` unless
  the member's etcd lease provably outlives the client lease it would grant.

aetcd has no type hints; this is the one module that touches it, and it turns replies into typed
values here. One aetcd client talks to one endpoint: we keep the list and move on when a call fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.rpc
import aetcd.watcher
import grpc

from lanlic.cluster.fence import Fence
from lanlic.cluster.mirror import SeatMirror, parse_seat_key, seat_key, seats_prefix
from lanlic.cluster.queue import WaitLine, queue_prefix
from lanlic.cluster.stopping import close_within, end_within
from lanlic.errors import (
    LanlicError,
    LeaseUnknown,
    NoSeat,
    ServerBusy,
    ServerUnavailable,
    UnknownProduct,
)

log = logging.getLogger(__name__)

CLAIM_ATTEMPTS = 8
"""Free seats tried per checkout before answering ``server_busy`` (each loss is another member's
win, so the mirror learns the seat is taken)."""

READ_BACK_SECONDS = 5.0
"""How long an unknown outcome may take to read back (a leader election takes about a second)."""

BATCH_SIZE = 16
"""Seat claims of one product sent in one transaction at most (nested transactions, each with its
own ``create_revision == 0`` compare: each claim wins or loses on its own)."""

BATCHES_IN_FLIGHT = 2
"""Claim transactions of one product in flight at once from one member. Checkouts that arrive
meanwhile wait and go together in the next one: a member under load sends a few large
transactions instead of thousands of small ones, which queued in gRPC and etcd past the call
timeout (an unknown outcome, a read-back, another endpoint: ``server_unavailable`` to clients)."""

STOP_CALLS = 2
"""A stop (``close``, ``recover``, a move to another endpoint) waits for a task to end, or an etcd
client to close, at most this many call timeouts; what takes longer is logged and left behind
(``lanlic.cluster.stopping``: on Python 3.11 a cancellation can be lost inside a library)."""

DOUBT_SECONDS = 30.0
"""How long a claim whose reply was lost is watched for a late commit: a transaction that timed out
here may still be applied by etcd after our read-back found no key."""


class Unreachable(Exception):
    """An etcd call failed or timed out: for a write, the outcome is unknown."""


@dataclass(frozen=True)
class Holder:
    """Who holds a seat, as stored in the seat's key."""

    member: str
    client: str
    lease: str
    token: str
    user: str = ""
    """Who and where (the client's hello), so that any member's admin page and status can show
    every holder; absent in keys written before they were added (read as "")."""
    host: str = ""
    since: int = 0
    """When the seat was checked out (UTC seconds; kept when another member adopts it)."""

    def encode(self) -> bytes:
        d: dict[str, Any] = {
            "member": self.member, "client": self.client, "lease": self.lease, "token": self.token
        }  # fmt: skip
        if self.user or self.host or self.since:
            d.update(user=self.user, host=self.host, since=self.since)
        return json.dumps(d).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Holder | None:
        try:
            d = json.loads(raw)
            return cls(
                str(d["member"]), str(d["client"]), str(d["lease"]), str(d["token"]),
                str(d.get("user", "")), str(d.get("host", "")), int(d.get("since", 0)),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


@dataclass(frozen=True)
class SeatHold:
    """A seat this member holds in etcd."""

    product: str
    index: int
    key: bytes
    mod_revision: int
    holder: Holder


@dataclass(frozen=True)
class SeatRecord:
    """A seat key as read from etcd (``EtcdSeats.read_seats``): holder None for a borrow."""

    product: str
    index: int
    mod_revision: int
    holder: Holder | None


@dataclass
class _Claim:
    """One checkout waiting for, or riding in, a batched claim transaction."""

    client: str
    client_lease: str
    done: asyncio.Future[SeatHold]
    attempts: int = 0
    who: tuple[str, str, int] = ("", "", 0)
    """(user, host, since) for the seat's key (``Holder``)."""


@dataclass(frozen=True)
class KeyState:
    """A key as etcd returned it."""

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


# -- transactions, in our own terms (``EtcdSeats.txn``): aetcd stays inside this module ----------


@dataclass(frozen=True)
class Created:
    """Compare: the key's create revision is ``revision`` (0: the key does not exist)."""

    key: bytes
    revision: int = 0


@dataclass(frozen=True)
class Modified:
    """Compare: the key's last change was at ``revision`` (nobody changed it since we read it)."""

    key: bytes
    revision: int


@dataclass(frozen=True)
class Put:
    """Write ``value``; ``leased``: under the member's etcd lease (gone with it), else none."""

    key: bytes
    value: bytes
    leased: bool = False


@dataclass(frozen=True)
class Delete:
    key: bytes


@dataclass(frozen=True)
class Get:
    """Read the key within the transaction (its state, as of the transaction's revision)."""

    key: bytes


Compare = Created | Modified
Op = Put | Delete | Get


def _lease_in(value: bytes) -> str:
    """The client lease a seat key's value names ("" if it names none)."""
    got = Holder.decode(value)
    return "" if got is None else got.lease


def _cancel_requested() -> bool:
    """True if the running task was asked to stop (a cancellation a library may have lost)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _retrieved(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


def _key_state(kv: Any) -> KeyState:
    return KeyState(
        key=bytes(kv.key),
        value=bytes(kv.value),
        mod_revision=int(kv.mod_revision),
        create_revision=int(kv.create_revision),
        lease=int(kv.lease),
    )


@dataclass(frozen=True)
class EtcdTls:
    """PEM bytes for a TLS connection to etcd with a client certificate (etcd's
    ``--client-cert-auth``): in production write access to etcd mints seats, so members prove who
    they are."""

    ca: bytes
    cert: bytes
    key: bytes


class _TlsClient(aetcd.Client):  # type: ignore[misc]  # aetcd is untyped
    """aetcd 1.0 opens only plaintext channels; this is its ``connect`` with a TLS channel."""

    def __init__(self, *args: Any, tls: EtcdTls, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls = tls

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if getattr(self, "_is_connecting", False):  # another task is connecting
            # asyncio.timeout, not wait_for: 3.11's wait_for can lose a cancellation (stopping.py)
            async with asyncio.timeout(self._connect_wait_timeout):
                await self._connected.wait()
            return
        try:
            self._is_connecting = True
            creds = grpc.ssl_channel_credentials(self._tls.ca, self._tls.key, self._tls.cert)
            target = f"{self._host}:{self._port}"
            self.channel = grpc.aio.secure_channel(target, creds, options=self._options.items())
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(
                aetcd.rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
            )
            self._connected.set()
        finally:
            self._is_connecting = False


class EtcdSeats:
    """One member's view of the shared pool. ``start()`` before use, ``close()`` after."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        prefix: str,
        products: dict[str, int],
        member: str,
        etcd_ttl: int = 5,
        client_lease: float = 2.0,
        call_timeout: float = 1.0,
        tls: EtcdTls | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        if etcd_ttl <= client_lease:
            raise ValueError("the member's etcd lease must outlive the client lease it grants")
        self.endpoints = list(endpoints)
        self.prefix = prefix.rstrip("/")
        self.products = dict(products)
        self.member = member
        self.etcd_ttl = etcd_ttl
        self.client_lease = client_lease
        self.call_timeout = call_timeout
        self.stop_timeout = STOP_CALLS * call_timeout
        """The bound of each step of a stop (see ``STOP_CALLS``)."""
        self.tls = tls
        self.clock = clock
        self.fence = Fence()
        self.mirror = SeatMirror(self.prefix)
        self.line = WaitLine(self.prefix)
        """The seat queue's waiters (``lanlic.cluster.queue``), fed by the same watch."""
        self.on_change: Callable[[], None] | None = None
        """Called after each watched change of a seat or a waiter (the queue's drain)."""
        self.lease_id = 0
        self._endpoint = 0
        self._generation = 0
        self._client: Any = None
        self._retired: list[Any] = []
        """Clients of endpoints we moved away from: closed once their calls had time to end
        (closing a gRPC channel cancels the calls still on it)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._watch_task: asyncio.Task[None] | None = None
        self._doubtful: dict[bytes, tuple[str, float]] = {}
        """Claims whose reply was lost (key -> token, when): the keepalive loop reads them again
        for ``DOUBT_SECONDS`` and deletes those that did commit, so no seat leaks under our live
        lease (a timed-out transaction may be applied after our read-back found nothing)."""
        self._queued: dict[str, collections.deque[_Claim]] = {}
        """Per product: checkouts waiting for the next claim transaction."""
        self._in_flight: dict[str, int] = {}
        """Per product: claim transactions in flight."""
        self._reserved: dict[str, set[int]] = {}
        """Per product: seats named in a claim transaction in flight (not picked meanwhile)."""
        self._batches: set[asyncio.Task[None]] = set()
        self._releases: collections.deque[tuple[SeatHold, asyncio.Future[None]]] = (
            collections.deque()
        )
        """Releases waiting for the next release transaction."""
        self._releases_in_flight = 0
        self._settling: asyncio.Task[None] | None = None
        self._keepalive_client: Any = None
        """The keepalive's own client (own channel and connection): a keepalive never waits
        behind a member's queue of transactions, so the fence reflects etcd, not our load."""
        self._keepalive_endpoint = -1
        self._closed = False
        self.lease_lost = asyncio.Event()
        """Set when etcd says this member's lease is gone: every seat it held was deleted."""

    # -- connection ------------------------------------------------------------------------------

    def _connect(self) -> None:
        self._client = self._new_client(self._endpoint)

    def _new_client(self, endpoint: int, *, own_connection: bool = False) -> Any:
        host, _, port = self.endpoints[endpoint].rpartition(":")
        # gRPC shares one connection between channels to the same target unless told not to.
        options = {"grpc.use_local_subchannel_pool": 1} if own_connection else None
        if self.tls is None:
            return aetcd.Client(
                host=host, port=int(port), timeout=self.call_timeout, options=options
            )
        return _TlsClient(
            host=host, port=int(port), timeout=self.call_timeout, tls=self.tls, options=options
        )

    async def _rotate(self, generation: int) -> None:
        """Move to the next endpoint, once per failure however many calls saw it."""
        if generation != self._generation or self._closed:
            return
        self._generation += 1
        old = self._client
        self._endpoint = (self._endpoint + 1) % len(self.endpoints)
        self._connect()
        log.info("etcd: moving to %s", self.endpoints[self._endpoint])
        self._retired.append(old)
        # The watch follows: a watch left on a silent endpoint would starve the mirror.
        watch = self._watch_task
        if watch is not None and watch is not asyncio.current_task() and not watch.done():
            watch.cancel()
            self._watch_task = asyncio.create_task(self._watch_loop(), name="etcd-watch")
        if len(self._retired) > 2:  # calls on these timed out long since
            old_clients, self._retired = self._retired[:-2], self._retired[-2:]
            await close_within(
                (c.close() for c in old_clients), self.stop_timeout, "etcd: closing an old client"
            )

    async def _call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(client)`` once; a failure moves to the next endpoint and raises Unreachable."""
        generation = self._generation
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can return a result to a task that
            # was cancelled meanwhile, and that task then runs on (``lanlic.cluster.stopping``).
            async with asyncio.timeout(self.call_timeout):
                return await fn(self._client)
        except (aetcd.exceptions.ClientError, TimeoutError, OSError) as e:
            await self._rotate(generation)
            raise Unreachable(str(e)) from e
        except asyncio.CancelledError as e:
            # gRPC raises CancelledError in calls on a channel that was closed under them; only a
            # cancellation of our own task is one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            await self._rotate(generation)
            raise Unreachable("the etcd channel was closed") from e

    async def read(self, key: bytes, deadline_s: float = READ_BACK_SECONDS) -> KeyState | None:
        """A linearizable read, retried on the next endpoints until ``deadline_s`` passes."""
        deadline = self.clock() + deadline_s
        while True:
            try:
                kv = await self._call(lambda c: c.get(key))
                return None if kv is None else _key_state(kv)
            except Unreachable:
                if self.clock() > deadline:
                    raise
                await asyncio.sleep(0.05)

    # -- reads and writes for the cluster's other records (borrows, the queue) -------------------

    async def read_prefix(self, head: bytes, *, keys_only: bool = False) -> list[KeyState]:
        """Every key under ``head``, read once (linearizable) on the current endpoint.
        ``keys_only``: values left out (read as empty). Unreachable if etcd did not answer (the
        store has moved to its next endpoint)."""
        got = await self._call(lambda c: c.get_prefix(head, keys_only=keys_only))
        return [_key_state(kv) for kv in got]

    async def put(self, key: bytes, value: bytes, *, leased: bool = False) -> None:
        """Write one key (``leased``: under this member's etcd lease). Unreachable: the outcome
        is unknown (read it back)."""
        lease = self.lease_id if leased else None
        await self._call(lambda c: c.put(key, value, lease=lease))

    async def delete(self, key: bytes) -> None:
        """Delete one key. Unreachable: the outcome is unknown."""
        await self._call(lambda c: c.delete(key))

    async def txn(
        self, compare: list[Compare], success: list[Op], failure: list[Op]
    ) -> tuple[bool, list[list[KeyState]]]:
        """One transaction: if every compare holds, the ``success`` operations, else the
        ``failure`` ones. Returns whether the compares held and, per operation of the branch
        taken, what it read: the key's state for a ``Get`` (an empty list if it has none), an
        empty list for a ``Put`` or a ``Delete``. Unreachable: the outcome is unknown (it may
        have committed: read back before trying again)."""
        tx = self._client.transactions

        def compares(cs: list[Compare]) -> list[Any]:
            return [
                tx.create(c.key) == c.revision
                if isinstance(c, Created)
                else tx.mod(c.key) == c.revision
                for c in cs
            ]

        def ops(os: list[Op]) -> list[Any]:
            out = []
            for o in os:
                if isinstance(o, Put):
                    out.append(tx.put(o.key, o.value, lease=self.lease_id if o.leased else None))
                elif isinstance(o, Delete):
                    out.append(tx.delete(o.key))
                else:
                    out.append(tx.get(o.key))
            return out

        ok, responses = await self._call(
            lambda c: c.transaction(
                compare=compares(compare), success=ops(success), failure=ops(failure)
            )
        )
        read = [
            [_key_state(kv) for _value, kv in r] if isinstance(r, list) else [] for r in responses
        ]
        return bool(ok), read

    def note_seat(self, state: KeyState) -> None:
        """The mirror learns a seat key's state that a transaction read (a watch event may
        come later; the mirror keeps the newer)."""
        self.mirror.put(state.key, state.mod_revision, _lease_in(state.value))

    @contextlib.contextmanager
    def reserving(self, product: str, index: int) -> Iterator[None]:
        """While inside, no checkout of this member picks seat ``index`` (a claim for it is in
        flight elsewhere: the queue's)."""
        reserved = self._reserved.setdefault(product, set())
        reserved.add(index)
        try:
            yield
        finally:
            reserved.discard(index)

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Take an etcd lease and load the mirror; may be called again after it failed."""
        if self._client is None:
            self._connect()
        await self._new_lease()
        await self._load_mirror()
        self._tasks = [asyncio.create_task(self._keepalive_loop(), name="etcd-keepalive")]
        self._watch_task = asyncio.create_task(self._watch_loop(), name="etcd-watch")

    async def recover(self) -> None:
        """After ``lease_lost``: take a new etcd lease and answer again. The seats held under the
        old lease are gone; the server must already have told their clients (seat_lost)."""
        if not self.lease_lost.is_set():
            return
        await end_within(self._tasks, self.stop_timeout, "etcd: recovering")
        self._tasks = []
        # The mirror first, then the lease: a failure of either leaves ``lease_lost`` set and
        # the fence shut, so the caller's retry does both again (a new lease taken before a
        # failed reload used to reopen the fence with no keepalive running).
        await self._load_mirror()
        await self._new_lease()
        self.lease_lost.clear()
        self._tasks = [asyncio.create_task(self._keepalive_loop(), name="etcd-keepalive")]

    async def close(self, *, revoke: bool = False) -> None:
        """Stop. ``revoke`` deletes every seat this member holds (a clean shutdown whose clients
        were told); without it the seats stay until the lease expires, for others to adopt.
        Every step is bounded (``stop_timeout``): a task that does not end when cancelled, or a
        client whose close does not finish, is logged and left behind, never waited for."""
        self._closed = True
        tasks = [*self._tasks, *self._batches, self._watch_task]
        self._watch_task = None
        await end_within(tasks, self.stop_timeout, "etcd: stopping")
        if revoke and self.lease_id:
            with contextlib.suppress(Unreachable):  # _call is bounded by the call timeout
                await self._call(lambda c: c.revoke_lease(self.lease_id))
        clients = [*self._retired, self._client, self._keepalive_client]
        await close_within(
            (c.close() for c in clients if c is not None), self.stop_timeout, "etcd: closing"
        )
        self._retired = []
        self._client = None
        self._keepalive_client = None

    async def _new_lease(self) -> None:
        deadline = self.clock() + READ_BACK_SECONDS
        while True:
            sent = self.clock()
            try:
                lease = await self._call(lambda c: c.lease(self.etcd_ttl))
                break
            except Unreachable:
                # A grant whose reply was lost leaves an orphan lease with no keys: harmless.
                if self.clock() > deadline:
                    raise
        self.lease_id = int(lease.id)
        self.fence.reset()
        self.fence.keepalive_answered(sent, int(lease.ttl))

    async def _refresh(self) -> Any:
        """One keepalive on the keepalive's own client, at the endpoint the member uses; a
        failure moves the member to the next endpoint (as any call's) and raises Unreachable."""
        if self._keepalive_client is None or self._keepalive_endpoint != self._endpoint:
            if self._keepalive_client is not None:
                old = self._keepalive_client
                await close_within([old.close()], self.stop_timeout, "etcd: closing a keepalive")
            self._keepalive_endpoint = self._endpoint
            self._keepalive_client = self._new_client(self._endpoint, own_connection=True)
        generation = self._generation
        try:
            async with asyncio.timeout(self.call_timeout):  # not wait_for: see _call
                return await self._keepalive_client.refresh_lease(self.lease_id)
        except (aetcd.exceptions.ClientError, TimeoutError, OSError) as e:
            await self._rotate(generation)
            raise Unreachable(str(e)) from e

    async def _keepalive_loop(self) -> None:
        interval = self.etcd_ttl / 10
        while not self._closed:
            sent = self.clock()
            try:
                reply = await self._refresh()
            except Unreachable as e:
                log.info("etcd: keepalive failed (%s); retrying", e)
                await asyncio.sleep(min(interval, 0.1))
                continue
            if reply is None:
                # The stream closed without an answer: nothing is known, the lease is not
                # lost (taking this for TTL 0 would drop every seat this member holds).
                await asyncio.sleep(min(interval, 0.1))
                continue
            self.fence.keepalive_answered(sent, int(reply.TTL))
            settling = self._settling
            if self._doubtful and not self.fence.lost and (settling is None or settling.done()):
                # In a task of its own: its reads and releases never delay the next keepalive.
                self._settling = asyncio.create_task(self._settle_doubtful(), name="etcd-doubt")
                self._batches.add(self._settling)
                self._settling.add_done_callback(self._batches.discard)
            if self.fence.lost:
                log.warning(
                    "etcd lease %x expired: every seat this member held is gone", self.lease_id
                )
                self.lease_lost.set()
                return
            await asyncio.sleep(interval)

    async def _settle_doubtful(self) -> None:
        for key, (token, since) in list(self._doubtful.items()):
            try:
                state = await self.read(key, deadline_s=0)
            except Unreachable:
                return
            got = Holder.decode(state.value) if state is not None else None
            if state is not None and got is not None and got.token == token:
                hold = SeatHold("", 0, key, state.mod_revision, got)
                try:
                    await self.release(hold)
                except ServerUnavailable:
                    return
                log.info("etcd: a claim whose reply was lost had committed: %s freed", key)
                del self._doubtful[key]
            elif self.clock() - since > DOUBT_SECONDS:
                del self._doubtful[key]  # too old to commit now

    async def _load_mirror(self) -> None:
        head = seats_prefix(self.prefix)
        got = await self._call(lambda c: c.get_prefix(head))
        keys = [(bytes(kv.key), int(kv.mod_revision), _lease_in(bytes(kv.value))) for kv in got]
        self.mirror.load(keys, int(got.header.revision))
        # The line is read after: the watch resumes at the seats' revision, and its events
        # replayed over this later read change nothing (puts of present keys, deletes kept).
        waiters = await self._call(lambda c: c.get_prefix(queue_prefix(self.prefix)))
        self.line.load(
            [(bytes(kv.key), int(kv.create_revision), bytes(kv.value)) for kv in waiters]
        )

    async def _watch_loop(self) -> None:
        head = f"{self.prefix}/".encode()  # the seats and the queue's waiters
        queue_head = queue_prefix(self.prefix)
        while not self._closed:
            generation = self._generation
            try:
                watch = await self._client.watch_prefix(
                    head, start_revision=max(1, self.mirror.revision)
                )
                if _cancel_requested():
                    # aetcd creates the watch under Python 3.11's wait_for, which returns the
                    # watch to a task cancelled in that moment (a stop, or a move to another
                    # endpoint): it would watch on, and the stop wait for it. Honour the cancel.
                    raise asyncio.CancelledError
                async for event in watch:
                    kv = event.kv
                    key = bytes(kv.key)
                    if event.kind == "DELETE":
                        self.mirror.delete(key, int(kv.mod_revision), watched=True)
                        self.line.delete(key)
                    elif key.startswith(queue_head):
                        self.line.put(key, int(kv.create_revision), bytes(kv.value))
                        self.mirror.put(key, int(kv.mod_revision), watched=True)
                    else:
                        self.mirror.put(
                            key, int(kv.mod_revision), _lease_in(bytes(kv.value)), watched=True
                        )
                    if self.on_change is not None:
                        self.on_change()
            except aetcd.exceptions.RevisionCompactedError:
                await self._load_mirror_retrying()
            except (aetcd.exceptions.ClientError, OSError, asyncio.CancelledError) as e:
                # gRPC raises CancelledError when the channel under the watch is closed (a retired
                # endpoint): only a cancellation of this task ends the watch.
                task = asyncio.current_task()
                if isinstance(e, asyncio.CancelledError) and task is not None and task.cancelling():
                    raise
                log.info("etcd watch broke (%r); resuming at %d", e, self.mirror.revision)
                await self._rotate(generation)
                await asyncio.sleep(0.05)

    async def _load_mirror_retrying(self) -> None:
        while not self._closed:
            try:
                await self._load_mirror()
                return
            except Unreachable:
                await asyncio.sleep(0.05)

    # -- the fence -------------------------------------------------------------------------------

    def check_fence(self) -> None:
        """Raise ServerUnavailable unless this member may grant a client lease now."""
        if not self.fence.may_answer(self.clock(), self.client_lease):
            raise ServerUnavailable(
                "this member cannot prove its etcd lease outlives a client lease: try another"
            )

    # -- seats -----------------------------------------------------------------------------------

    async def checkout(
        self, product: str, client: str, client_lease: str, who: tuple[str, str, int] = ("", "", 0)
    ) -> SeatHold:
        """Claim a free seat of ``product`` for a client, or raise NoSeat, ServerBusy,
        ServerUnavailable.

        Claims are batched per product: while ``BATCHES_IN_FLIGHT`` claim transactions are in
        flight, further checkouts wait and go together in the next one, up to ``BATCH_SIZE``,
        each on its own seat with its own ``create_revision == 0`` compare. One checkout alone
        goes at once, in a transaction of one."""
        self.check_fence()
        seats = self.products.get(product)
        if seats is None:
            raise UnknownProduct(product)
        if not self._in_flight.get(product) and not self.free_seats(product):
            raise NoSeat(f"all {seats} seats of {product} are in use")
        claim = _Claim(client, client_lease, asyncio.get_running_loop().create_future(), who=who)
        claim.done.add_done_callback(_retrieved)  # a cancelled caller's refusal is not an error
        self._queued.setdefault(product, collections.deque()).append(claim)
        self._pump(product)
        return await asyncio.shield(claim.done)  # a cancelled caller's won seat is given back

    def free_seats(self, product: str) -> list[int]:
        """Seats free as far as the mirror knows and not named in a claim in flight."""
        reserved = self._reserved.get(product, set())
        return [i for i in self.mirror.free(product, self.products[product]) if i not in reserved]

    def _pump(self, product: str) -> None:
        """Send the next batch of ``product``'s waiting claims if a transaction slot is free."""
        queue = self._queued.get(product)
        while queue and self._in_flight.get(product, 0) < BATCHES_IN_FLIGHT and not self._closed:
            free = self.free_seats(product)
            if not free:
                if self._in_flight.get(product, 0):
                    return  # the claims in flight may lose and free their seats: wait for them
                seats = self.products[product]
                while queue:
                    claim = queue.popleft()
                    if not claim.done.done():
                        claim.done.set_exception(
                            NoSeat(f"all {seats} seats of {product} are in use")
                        )
                return
            random.shuffle(free)  # spreads members over the free seats; not secret
            batch: list[tuple[_Claim, int]] = []
            while queue and free and len(batch) < BATCH_SIZE:
                batch.append((queue.popleft(), free.pop()))
            self._in_flight[product] = self._in_flight.get(product, 0) + 1
            self._reserved.setdefault(product, set()).update(i for _, i in batch)
            task = asyncio.create_task(self._send_batch(product, batch), name="etcd-claims")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _send_batch(self, product: str, batch: list[tuple[_Claim, int]]) -> None:
        """One claim transaction for ``batch``; each claim gets its seat, a refusal, or another
        turn (it lost its seat's race: the mirror now knows the winner)."""
        outcomes: list[KeyState | LanlicError | None]
        holders = [
            Holder(self.member, c.client, c.client_lease, secrets.token_hex(8), *c.who)
            for c, _ in batch
        ]
        keys = [seat_key(self.prefix, product, i) for _, i in batch]
        try:
            self.check_fence()
            outcomes = list(await self._create_many(keys, holders))
        except LanlicError as e:
            outcomes = [e] * len(batch)
        except Exception as e:  # never leave a checkout waiting  # pragma: no cover
            log.exception("etcd: a claim transaction failed")
            outcomes = [ServerUnavailable(f"etcd claim failed: {e}")] * len(batch)
        finally:
            self._in_flight[product] -= 1
            self._reserved[product].difference_update(i for _, i in batch)
        retry = []
        for (claim, index), key, holder, got in zip(batch, keys, holders, outcomes, strict=True):
            if isinstance(got, KeyState):
                hold = SeatHold(product, index, key, got.mod_revision, holder)
                if claim.done.done():  # its checkout was cancelled: give the seat back
                    self._spawn_release(hold)
                else:
                    claim.done.set_result(hold)
            elif isinstance(got, LanlicError):
                if not claim.done.done():
                    claim.done.set_exception(got)
            else:
                claim.attempts += 1
                if claim.attempts >= CLAIM_ATTEMPTS:
                    if not claim.done.done():
                        claim.done.set_exception(
                            ServerBusy(f"lost {CLAIM_ATTEMPTS} races for seats of {product}")
                        )
                else:
                    retry.append(claim)
        queue = self._queued.setdefault(product, collections.deque())
        queue.extendleft(reversed(retry))  # the losers go first in the next batch
        self._pump(product)

    def _spawn_release(self, hold: SeatHold) -> None:
        async def give_back() -> None:
            with contextlib.suppress(LanlicError):
                await self.release(hold)

        task = asyncio.create_task(give_back(), name="etcd-give-back")
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    async def _create_many(
        self, keys: list[bytes], holders: list[Holder]
    ) -> list[KeyState | LanlicError | None]:
        """Create each key for its holder under our lease, in one transaction of nested ones:
        per key, its state if we won it, None if another holds it, or ServerUnavailable (the
        reply was lost and the outcome could not be read back: settled later)."""
        tx = self._client.transactions
        nested = [
            tx.txn(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, holder.encode(), lease=self.lease_id), tx.get(key)],
                failure=[tx.get(key)],
            )
            for key, holder in zip(keys, holders, strict=True)
        ]
        try:
            _ok, responses = await self._call(
                lambda c: c.transaction(compare=[], success=nested, failure=[])
            )
        except Unreachable:
            log.info("etcd: a claim transaction of %d went unanswered; reading back", len(keys))
            return list(
                await asyncio.gather(
                    *(self.read_back_claim(k, h) for k, h in zip(keys, holders, strict=True))
                )
            )
        out: list[KeyState | LanlicError | None] = []
        for key, response in zip(keys, responses, strict=True):
            txn = response.response_txn
            kvs = txn.responses[-1].response_range.kvs
            state = _key_state(kvs[0]) if kvs else None
            if state is not None:
                self.mirror.put(key, state.mod_revision, _lease_in(state.value))
            out.append(state if txn.succeeded else None)
        return out

    async def read_back_claim(self, key: bytes, holder: Holder) -> KeyState | LanlicError | None:
        """A claim whose reply was lost may have committed, or may yet: read it back and judge
        by our token; not ours (yet), keep watching it for a late commit."""
        try:
            state = await self.read(key)
        except Unreachable:
            self._doubtful[key] = (holder.token, self.clock())
            return ServerUnavailable("etcd did not answer; the claim is settled later")
        if state is not None:
            self.mirror.put(key, state.mod_revision, _lease_in(state.value))
            got = Holder.decode(state.value)
            if got is not None and got.token == holder.token:
                return state
        self._doubtful[key] = (holder.token, self.clock())
        return None

    async def release(self, hold: SeatHold) -> None:
        """Give a seat back: delete its key unless it changed hands since ``hold``. Batched like
        claims: releases arriving while ``BATCHES_IN_FLIGHT`` release transactions are in
        flight go together in the next, each delete with its own ``mod_revision`` compare."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_retrieved)
        self._releases.append((hold, done))
        self._pump_releases()
        await asyncio.shield(done)

    def _pump_releases(self) -> None:
        queue = self._releases
        while queue and self._releases_in_flight < BATCHES_IN_FLIGHT and not self._closed:
            batch: list[tuple[SeatHold, asyncio.Future[None]]] = []
            later: list[tuple[SeatHold, asyncio.Future[None]]] = []
            keys: set[bytes] = set()
            while queue and len(batch) < BATCH_SIZE:
                item = queue.popleft()
                # etcd refuses a transaction naming one key twice: the same seat released twice
                # at once waits for the next one.
                (later if item[0].key in keys else batch).append(item)
                keys.add(item[0].key)
            queue.extendleft(reversed(later))
            self._releases_in_flight += 1
            task = asyncio.create_task(self._send_releases(batch), name="etcd-releases")
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _send_releases(self, batch: list[tuple[SeatHold, asyncio.Future[None]]]) -> None:
        tx = self._client.transactions
        nested = [
            tx.txn(
                compare=[tx.mod(h.key) == h.mod_revision], success=[tx.delete(h.key)], failure=[]
            )
            for h, _ in batch
        ]
        outcomes: list[BaseException | bool]
        try:
            await self._call(lambda c: c.transaction(compare=[], success=nested, failure=[]))
            for h, _ in batch:
                self.mirror.delete(h.key, h.mod_revision)
            outcomes = [False] * len(batch)
        except Unreachable:
            outcomes = list(
                await asyncio.gather(
                    *(self._release_lost(h) for h, _ in batch), return_exceptions=True
                )
            )
        finally:
            self._releases_in_flight -= 1
        again = []
        for item, outcome in zip(batch, outcomes, strict=True):
            done = item[1]
            if outcome is True:
                again.append(item)  # in a later batch: never waiting here, holding a slot
            elif done.done():
                continue
            elif isinstance(outcome, BaseException):
                done.set_exception(outcome)
            else:
                done.set_result(None)
        self._releases.extendleft(reversed(again))
        self._pump_releases()

    async def _release_lost(self, hold: SeatHold) -> bool:
        """A release whose reply was lost: either it committed, or the key is still ours: read
        back; True if it must be sent again."""
        try:
            state = await self.read(hold.key)
        except Unreachable as e:
            raise ServerUnavailable("etcd did not answer the release; try again") from e
        if state is not None and state.mod_revision == hold.mod_revision:
            return True
        if state is None:
            self.mirror.delete(hold.key, hold.mod_revision)
        return False

    async def locate(self, client_lease: str, product: str | None = None) -> tuple[str, int] | None:
        """The seat (product, index) whose key names ``client_lease``: from the mirror, else (a
        key too new for our watch to have shown, ``product`` known) by reading that product's
        seats. None: no seat names it."""
        seat = self.mirror.seat_of(client_lease)
        if seat is not None or product is None or product not in self.products:
            return seat
        head = seats_prefix(self.prefix) + f"{product}/".encode()
        try:
            got = await self._call(lambda c: c.get_prefix(head))
        except Unreachable as e:
            raise ServerUnavailable("etcd did not answer; try again") from e
        for kv in got:
            if _lease_in(bytes(kv.value)) == client_lease:
                return parse_seat_key(self.prefix, bytes(kv.key))
        return None

    async def read_seats(self) -> tuple[list[SeatRecord], int]:
        """Every seat key of the pool with what its value says, read now (linearizable), and the
        revision read at: the admin page's and status's cluster-wide list of holders. A borrow's
        key names no client (``holder`` None). ServerUnavailable when etcd does not answer."""
        head = seats_prefix(self.prefix)
        try:
            got = await self._call(lambda c: c.get_prefix(head))
        except Unreachable as e:
            raise ServerUnavailable("etcd did not answer; try again") from e
        out = []
        for kv in got:
            seat = parse_seat_key(self.prefix, bytes(kv.key))
            if seat is not None:
                holder = Holder.decode(bytes(kv.value))
                out.append(SeatRecord(seat[0], seat[1], int(kv.mod_revision), holder))
        return out, int(got.header.revision)

    async def adopt(
        self,
        product: str,
        index: int,
        client: str,
        client_lease: str,
        who: tuple[str, str, int] = ("", "", 0),
    ) -> SeatHold:
        """Take over a seat whose member died, for the client that holds it: the key must name
        this client and its lease; it is re-put under our lease unless it changed meanwhile."""
        self.check_fence()
        if product not in self.products or not 0 <= index < self.products[product]:
            raise LeaseUnknown("no such seat")
        key = seat_key(self.prefix, product, index)
        for _ in range(CLAIM_ATTEMPTS):
            try:
                state = await self.read(key)
            except Unreachable as e:
                raise ServerUnavailable("etcd did not answer; try again") from e
            old = Holder.decode(state.value) if state is not None else None
            if state is None or old is None or (old.client, old.lease) != (client, client_lease):
                raise LeaseUnknown("the seat's key is gone or names another client")
            if state.lease == self.lease_id:
                return SeatHold(product, index, key, state.mod_revision, old)
            user, host = (old.user, old.host) if old.user or old.host else who[:2]
            since = old.since or who[2]
            holder = Holder(
                self.member, client, client_lease, secrets.token_hex(8), user, host, since
            )
            self.check_fence()
            won = await self._replace(key, state.mod_revision, holder)
            if won is not None:
                return SeatHold(product, index, key, won.mod_revision, holder)
        raise ServerBusy("the seat kept changing while adopting it; try again")

    async def _replace(self, key: bytes, mod_revision: int, holder: Holder) -> KeyState | None:
        tx = self._client.transactions
        value = holder.encode()
        try:
            won, responses = await self._call(
                lambda c: c.transaction(
                    compare=[tx.mod(key) == mod_revision],
                    success=[tx.put(key, value, lease=self.lease_id), tx.get(key)],
                    failure=[],
                )
            )
        except Unreachable:
            try:
                state = await self.read(key)
            except Unreachable as e:
                raise ServerUnavailable("etcd did not answer; try again") from e
            got = Holder.decode(state.value) if state is not None else None
            if state is not None and got is not None and got.token == holder.token:
                return state
            return None
        if not won:
            return None
        state = _key_state(responses[-1][0][1])
        self.mirror.put(key, state.mod_revision, holder.lease)
        return state

    # -- ranges of plain keys: the history's batches (lanlic.cluster.history) ---------------------
    # Apart from the seats' code on purpose: keys with no etcd lease (the history outlives the
    # member that wrote it), read a page at a time and pruned by time.

    async def read_range(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int,
        descending: bool = False,
        keys_only: bool = False,
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """At most ``limit`` keys of ``[start, end)`` with their values (empty if
        ``keys_only``), in key order (reversed if ``descending``), and whether the range holds
        more (linearizable). aetcd's ``get_range`` has no limit: the request is built here.
        Unreachable if etcd did not answer."""
        rpc = aetcd.rpc
        request = rpc.RangeRequest(
            key=start,
            range_end=end,
            limit=limit,
            sort_order=rpc.RangeRequest.DESCEND if descending else rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.KEY,
            keys_only=keys_only,
        )

        async def ranged(c: Any) -> Any:
            await c.connect()
            try:
                return await c.kvstub.Range(request, timeout=self.call_timeout, metadata=c.metadata)
            except grpc.aio.AioRpcError as e:
                raise aetcd.exceptions.ClientError(e.details()) from e

        got = await self._call(ranged)
        return [(bytes(kv.key), bytes(kv.value)) for kv in got.kvs], bool(got.more)

    async def delete_range(self, start: bytes, end: bytes) -> int:
        """Delete every key of ``[start, end)``; how many there were (0 if another member
        deleted them first). Unreachable if etcd did not answer."""
        got = await self._call(lambda c: c.delete_range(start, end))
        return int(got.deleted)


async def read_holders(client: Any, prefix: str) -> dict[bytes, tuple[Holder | None, int]]:
    """Every seat key under the prefix with its holder and etcd lease (for auditors and status)."""
    got = await client.get_prefix(seats_prefix(prefix.rstrip("/")))
    return {bytes(kv.key): (Holder.decode(bytes(kv.value)), int(kv.lease)) for kv in got}
