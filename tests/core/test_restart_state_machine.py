"""Never over-grant across crashes: a Hypothesis state machine over a licence service with a
real SQLite store, clients with their own view of what they hold, time, and crashes.

The property that matters to a customer is not the server's own count but what the clients
believe: at no moment may the seats that clients still count as held, plus the borrowed ones,
exceed the key. A crash wipes the server's memory (the store keeps what was written) at any
step, including between a reservation's write and its grant.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lanlic.core import netkey
from lanlic.core.lending import Durable
from lanlic.core.netkey import ProductEntitlement
from lanlic.core.records import LeaseRecord
from lanlic.core.service import LicenseService, ServiceConfig, Session
from lanlic.proto import messages as m
from lanlic.store import Store

LEASE = 10.0
MARGIN = 1.0  # the client stops counting a seat this long before the server would free it
PRODUCTS = (ProductEntitlement("cad", seats=4), ProductEntitlement("cam", seats=2))
SEATS = {p.name: p.seats for p in PRODUCTS}
CLIENTS = [bytes([i]) * 16 for i in range(1, 5)]
VENDOR = netkey.generate_vendor_key()
SERVER_KEY = Ed25519PrivateKey.generate()
KEY = make_key(VENDOR, PRODUCTS)


@dataclass
class Held:
    product: str
    epoch: int
    deadline: float
    """When the client stops counting it (its last confirmed renew + lease - margin)."""


class CrashingServer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="lanlic-sm-")
        self.store = Store(f"{self.dir}/lanlic.db")  # type: ignore[arg-type]
        self.now = 1000.0
        self.views: dict[bytes, dict[bytes, Held]] = {c: {} for c in CLIENTS}
        self.pending: list[tuple[bytes, Durable]] = []
        self.boot()

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------------- the server

    def boot(self) -> None:
        """Start (or restart after a crash) from what the store holds."""
        self.service = LicenseService(
            KEY, SERVER_KEY, ServiceConfig(lease_seconds=LEASE, heartbeat_seconds=LEASE / 3)
        )
        self.service.clock = lambda: (self.now, 0.0)
        self.service.desk.load(self.store, 0.0)
        epoch = self.store.begin_epoch()
        self.service.guard.start(epoch, self.store.reservations(), self.store.leases(), self.now)
        self.synced = {r.lease_id for r in self.store.leases()}
        self.sessions = {}
        for c in CLIENTS:
            s = Session()
            self.service.handle(s, m.Hello(1, [1], c, "u", "h", nonce=bytes(32)), self.now, 0.0)
            self.sessions[c] = s
        self.pending = []

    def ask(self, client: bytes, msg: m.Message) -> m.Message | None:
        reply = self.service.handle(self.sessions[client], msg, self.now, 0.0)
        if reply.durable is not None:
            self.pending.append((client, reply.durable))
            return None
        return reply.message

    # -------------------------------------------------------------------------- the rules

    @rule(client=st.sampled_from(CLIENTS), product=st.sampled_from(["cad", "cam"]))
    def checkout(self, client: bytes, product: str) -> None:
        reply = self.ask(client, m.Checkout(2, product))
        if reply is not None:
            self.hear(client, reply)

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), crash_before_answer=st.booleans())
    def finish_a_durable_write(self, data: st.DataObject, crash_before_answer: bool) -> None:
        i = data.draw(st.integers(0, len(self.pending) - 1))
        client, durable = self.pending.pop(i)
        result = durable.write(self.store)
        if crash_before_answer:
            self.crash()  # written, never answered
            return
        self.hear(client, durable.commit(result))

    def hear(self, client: bytes, reply: m.Message) -> None:
        if isinstance(reply, m.Granted):
            self.views[client][reply.lease] = Held(
                reply.product, reply.epoch, self.now + LEASE - MARGIN
            )

    @rule(client=st.sampled_from(CLIENTS))
    def heartbeat(self, client: bytes) -> None:
        """What the client library does: reclaim old-epoch seats, renew the others."""
        view = self.views[client]
        epoch = self.service.guard.epoch
        old = [(k, h) for k, h in view.items() if h.epoch != epoch]
        if old:
            seats = [{"lease": k, "product": h.product, "version": ""} for k, h in old]
            reply = self.ask(client, m.Reclaim(3, seats))
            assert isinstance(reply, m.Reclaimed)
            for k in reply.leases:
                view[k] = Held(view[k].product, reply.epoch, self.now + LEASE - MARGIN)
            for lost in reply.lost:
                del view[lost.lease]
        ids = [k for k, h in view.items() if h.epoch == epoch]
        if ids:
            reply = self.ask(client, m.Renew(4, ids))
            assert isinstance(reply, m.Renewed)
            for k in reply.leases:
                view[k].deadline = self.now + LEASE - MARGIN
            for lost in reply.lost:
                if lost.code == "reclaim":
                    view[lost.lease].epoch = -1  # reclaim it next time
                else:
                    del view[lost.lease]

    @precondition(lambda self: any(self.views.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from([c for c in CLIENTS if self.views[c]]))
        lease = data.draw(st.sampled_from(sorted(self.views[client])))
        # The client forgets the seat first, whatever the server answers.
        del self.views[client][lease]
        self.ask(client, m.Release(5, [lease]))

    @rule(dt=st.sampled_from([0.5, 2.0, 4.0, LEASE - MARGIN, LEASE, 1.5 * LEASE]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        for view in self.views.values():
            for k in [k for k, h in view.items() if h.deadline <= self.now]:
                del view[k]  # the client gives up on its own clock
        self.service.expire(self.now)
        self.service.guard.close_window(self.now)

    @rule()
    def batch_written(self) -> None:
        """The adapter's once-a-second batch: lease changes and lowered reservations."""
        pool = self.service.pool
        current = set(pool.lease_ids())
        added = []
        for k in current - self.synced:
            lease = pool.lease(k)
            assert lease is not None
            added.append(LeaseRecord(k, lease.product, lease.owner, "u", "h", 0))
        self.store.sync_leases(added, list(self.synced - current))
        self.synced = current
        lowered = self.service.guard.to_lower()
        if lowered:
            self.store.set_reservations(lowered)

    @rule()
    def crash(self) -> None:
        """Power cut: memory is gone, unanswered writes are gone, the store stays."""
        self.boot()

    # ------------------------------------------------------------------------ the property

    @invariant()
    def never_over_granted(self) -> None:
        self.service.pool.check_invariant()
        for product, seats in SEATS.items():
            believed = sum(
                1 for view in self.views.values() for h in view.values() if h.product == product
            )
            borrowed = self.service.pool.borrowed(product)
            assert believed + borrowed <= seats, (product, believed, borrowed, seats)

    @invariant()
    def server_counts_what_clients_hold(self) -> None:
        # Every seat a client believes in is one the server holds (in use, or held for it).
        pool = self.service.pool
        for product in SEATS:
            believed = sum(
                1 for view in self.views.values() for h in view.values() if h.product == product
            )
            assert believed <= pool.in_use(product) + pool.held(product)


CrashingServer.TestCase.settings = settings(max_examples=120, stateful_step_count=40, deadline=None)
TestNeverOverGrantAcrossCrashes = CrashingServer.TestCase
