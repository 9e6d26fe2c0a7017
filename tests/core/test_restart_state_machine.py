"""Never over-grant across crashes and restarts: a Hypothesis state machine over the real server
(``LicenseServer`` and its async store path, with a real SQLite file), clients with their own
view of what they hold, a hostile client, time, crashes and clean stops.

Every store call the server makes waits until the machine runs it (``restart_rig``), so
reservation raises, lease batches and the checkouts, releases and batches around them interleave
in any order, and a crash can fall between any two.

The checks are the machine's own, not the pool's ``check_invariant``:

* what the clients believe they hold, plus the borrowed seats, never exceeds the key;
* the reservation in the database file (read through a connection of the machine's own: what a
  crash now would leave) is never below the seats the clients believe they hold;
* every seat a client believes it holds in this epoch is a lease the server has for that client;
* a reclaim by a hostile client of a made-up lease id, of another client's lease, or of a lease
  of its own whose release a batch recorded, never succeeds;
* after a clean stop, the next start holds exactly the seats of the leases still out;
* when the reclaim window is over, no seat is held.

``COUNTS`` (and Hypothesis ``event``) show that the runs reach reclaims, refused reclaims,
lowered reservations and the return of held seats; ``test_the_machine_reaches_...`` holds it.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import make_key
from hypothesis import HealthCheck, event, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from restart_rig import Rig, disk_reservations

from lanlic.core import netkey
from lanlic.core.netkey import ProductEntitlement
from lanlic.proto import messages as m

LEASE = 10.0
MARGIN = 1.0  # the client stops counting a seat this long before the server would free it
PRODUCTS = (ProductEntitlement("cad", seats=4), ProductEntitlement("cam", seats=2))
SEATS = {p.name: p.seats for p in PRODUCTS}
CLIENTS = [bytes([i]) * 16 for i in range(1, 5)]
HOSTILE = b"\xee" * 16
VENDOR = netkey.generate_vendor_key()
SERVER_KEY = Ed25519PrivateKey.generate()
KEY = make_key(VENDOR, PRODUCTS)

COUNTS: Counter[str] = Counter()
"""What the runs reached, over all runs in this process."""


WALK = [False]
"""True while the seeded walk below drives the machine (outside Hypothesis: no events)."""


def reached(what: str) -> None:
    COUNTS[what] += 1
    if not WALK[0]:
        event(what)


@dataclass
class Held:
    product: str
    epoch: int
    deadline: float
    """When the client stops counting it (its last confirmed renew + lease - margin)."""


class CrashingServer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="lanlic-sm-"))
        self.db = self.dir / "lanlic.db"
        self.loop = asyncio.new_event_loop()
        self.now = 1000.0
        self.views: dict[bytes, dict[bytes, Held]] = {c: {} for c in [*CLIENTS, HOSTILE]}
        self.released: list[bytes] = []
        """The hostile client's released leases no batch has been taken since."""
        self.in_batch: list[list[bytes]] = []
        """Its releases in each batch started and not yet written, oldest first."""
        # Lists and dicts in the order things happened, never sorted by lease id: the ids are
        # random, and a draw that depended on their order would not replay.
        self.recorded_released: dict[bytes, None] = {}
        """Its releases that a written batch recorded: never to be taken back."""
        self.life: Rig | None = None
        self.reclaims = 0
        self.boot()

    def teardown(self) -> None:
        # Steer the search towards runs that take many seats back.
        if not WALK[0]:
            target(float(self.reclaims), label="reclaims")
        if self.life is not None:
            self.life.crash()
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------------- the server

    @property
    def rig(self) -> Rig:
        assert self.life is not None
        return self.life

    def boot(self) -> None:
        """Start (or restart) the server from what the database file holds."""
        self.life = Rig(self.loop, self.db, KEY, SERVER_KEY, LEASE, lambda: self.now)
        self.life.executor.after_each = self.after_write
        self.life.boot()
        for c in [*CLIENTS, HOSTILE]:
            self.rig.hello(c)
        self.in_batch = []
        self.batches_seen = 0

    def after_write(self) -> None:
        ran = self.rig.executor.ran
        name, ok = ran[-1]
        if name == "write_batch" and ok and self.in_batch:
            self.recorded_released.update(dict.fromkeys(self.in_batch.pop(0)))
        self.disk_covers_what_clients_believe()

    def collect(self) -> None:
        """Replies that waited for the store, heard by their clients."""
        for c, conn in self.rig.conns.items():
            while conn.inbox:
                self.hear(c, conn.inbox.pop(0))

    def hear(self, client: bytes, reply: m.Message) -> None:
        if isinstance(reply, m.Granted):
            self.views[client][reply.lease] = Held(
                reply.product, reply.epoch, self.now + LEASE - MARGIN
            )
            COUNTS["granted"] += 1
        elif isinstance(reply, m.Error):
            COUNTS[f"refused {reply.code}"] += 1
            assert reply.code in ("no_seat", "server_busy"), reply
            if reply.code == "no_seat":
                self.a_full_product_is_really_full()

    def a_full_product_is_really_full(self) -> None:
        pool = self.rig.service.pool
        for p in SEATS:
            if pool.free(p) > 0:
                continue
            # No seat is free: leases, borrows and seats held for reclaims fill the key.
            live = sum(1 for x in pool.leases(p) if x.expires > self.now)
            assert live + pool.borrowed(p) + pool.held(p) >= SEATS[p]
            if not self.rig.service.guard.reclaim_until:  # the window is over
                assert pool.held(p) == 0

    # -------------------------------------------------------------------------- the rules

    @rule(
        client=st.sampled_from([*CLIENTS, HOSTILE]),
        product=st.sampled_from(["cad", "cam"]),
        n=st.integers(1, 3),
    )
    def checkout(self, client: bytes, product: str, n: int) -> None:
        for _ in range(n):
            reply = self.rig.ask(client, m.Checkout(2, product))
            if reply is not None:
                self.hear(client, reply)

    @precondition(lambda self: self.rig.executor.queue)
    @rule()
    def one_store_write_finishes(self) -> None:
        self.rig.write_one()
        self.collect()

    @rule()
    def lease_batch_starts(self) -> None:
        """The housekeeping sweep's batch (its write waits in the queue like any other)."""
        guard = self.rig.service.guard
        before = dict(guard.reserved)
        if self.rig.server._lease_task is None:
            self.in_batch.append(self.released)
            self.released = []
        self.rig.start_batch()
        if any(n < before.get(p, 0) for p, n in guard.reserved.items()):
            reached("lowered")

    @rule(client=st.sampled_from(CLIENTS))
    def heartbeat(self, client: bytes) -> None:
        """What the client library does: reclaim old-epoch seats, renew the others."""
        self.beat(client, by_renew=False)

    @rule(client=st.sampled_from(CLIENTS))
    def heartbeat_renewing_all(self, client: bytes) -> None:
        """A client that simply renews every seat after a restart (SPEC 13 takes such a renew
        as the lease's reclaim)."""
        self.beat(client, by_renew=True)

    def beat(self, client: bytes, by_renew: bool) -> None:
        view = self.views[client]
        epoch = self.rig.service.guard.epoch
        old = [(k, h) for k, h in view.items() if h.epoch != epoch]
        if old and not by_renew:
            seats = [{"lease": k, "product": h.product, "version": ""} for k, h in old]
            reply = self.rig.ask(client, m.Reclaim(3, seats))
            assert isinstance(reply, m.Reclaimed)
            for k in reply.leases:
                view[k] = Held(view[k].product, reply.epoch, self.now + LEASE - MARGIN)
                self.reclaims += 1
                reached("reclaimed")
            # Every seat a client still counts on finds a held seat (or its own lease again).
            assert not reply.lost, f"a real holder's reclaim was refused: {reply.lost}"
        ids = [k for k, h in view.items() if h.epoch == epoch or by_renew]
        if ids:
            reply = self.rig.ask(client, m.Renew(4, ids))
            assert isinstance(reply, m.Renewed)
            for k in reply.leases:
                if view[k].epoch != epoch:
                    self.reclaims += 1
                    reached("reclaimed by renew")
                view[k] = Held(view[k].product, epoch, self.now + LEASE - MARGIN)
            for lost in reply.lost:
                assert view[lost.lease].epoch == epoch, (
                    f"a real holder's reclaim was refused: {lost}"
                )
                del view[lost.lease]

    @precondition(lambda self: any(self.views.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from([c for c in self.views if self.views[c]]))
        lease = data.draw(st.sampled_from(list(self.views[client])))
        # The client forgets the seat first, whatever the server answers.
        self.release_one(client, lease)

    def release_one(self, client: bytes, lease: bytes) -> None:
        held = self.views[client].pop(lease)
        reply = self.rig.ask(client, m.Release(5, [lease]))
        assert isinstance(reply, m.Released)
        if client == HOSTILE and lease in reply.leases:
            assert held.epoch == self.rig.service.guard.epoch
            self.released.append(lease)

    @rule(data=st.data())
    def hostile_reclaims_a_made_up_lease(self, data: st.DataObject) -> None:
        self.hostile_reclaim(data, "made_up")

    @rule(data=st.data())
    def hostile_reclaims_another_clients_lease(self, data: st.DataObject) -> None:
        self.hostile_reclaim(data, "another's")

    @rule(data=st.data())
    def hostile_reclaims_a_lease_it_released(self, data: st.DataObject) -> None:
        self.hostile_reclaim(data, "own released")

    @rule(data=st.data())
    def hostile_reclaims_its_lease_as_another_product(self, data: st.DataObject) -> None:
        self.hostile_reclaim(data, "own")

    def hostile_reclaim(self, data: st.DataObject, kind: str) -> None:
        """A client asks back seats that are not its own to ask back."""
        if kind == "made_up":
            lease = os.urandom(16)
        elif kind == "another's":
            theirs = [k for c in CLIENTS for k in self.views[c]]
            if not theirs:
                return
            lease = data.draw(st.sampled_from(theirs))
        elif kind == "own":
            # One it holds, under the wrong product: the tag binds the product too.
            if not self.views[HOSTILE]:
                self.checkout(HOSTILE, data.draw(st.sampled_from(["cad", "cam"])), 1)
                self.rig.drain()
                self.collect()
            mine = list(self.views[HOSTILE])
            if not mine:
                return
            lease = data.draw(st.sampled_from(mine))
            product = "cam" if self.views[HOSTILE][lease].product == "cad" else "cad"
            reply = self.rig.ask(HOSTILE, m.Reclaim(6, [{"lease": lease, "product": product}]))
            assert isinstance(reply, m.Reclaimed) and not reply.leases
            reached("forged reclaim refused (own, other product)")
            return
        else:
            if not self.recorded_released:
                return
            lease = data.draw(st.sampled_from(list(self.recorded_released)))
        product = data.draw(st.sampled_from(["cad", "cam"]))
        if data.draw(st.booleans()):
            reply = self.rig.ask(HOSTILE, m.Reclaim(6, [{"lease": lease, "product": product}]))
            assert isinstance(reply, m.Reclaimed)
            taken = reply.leases
        else:
            reply = self.rig.ask(HOSTILE, m.Renew(6, [lease]))
            assert isinstance(reply, m.Renewed)
            taken = reply.leases
        assert not taken, f"a {kind} lease was taken back by a client it was not granted to"
        reached(f"forged reclaim refused ({kind})")

    @rule(product=st.sampled_from(["cad", "cam"]))
    def hostile_churns(self, product: str) -> None:
        """The hostile client takes a seat and gives it back, and a batch records that: a
        release it may later pretend never happened."""
        reply = self.rig.ask(HOSTILE, m.Checkout(7, product))
        if reply is None:
            self.rig.drain()
            self.collect()
        else:
            self.hear(HOSTILE, reply)
        for lease in [k for k, h in self.views[HOSTILE].items() if h.product == product]:
            self.release_one(HOSTILE, lease)
        self.lease_batch_starts()
        self.rig.drain()
        self.collect()

    @rule(client=st.sampled_from(CLIENTS))
    def rush_then_quiet(self, client: bytes) -> None:
        """A client takes every seat it can, then gives them all back, batches in between:
        the reservation rises and then comes down."""
        for _ in range(SEATS["cad"]):
            reply = self.rig.ask(client, m.Checkout(8, "cad"))
            self.rig.drain()
            self.collect()
            if reply is not None:
                self.hear(client, reply)
        for _ in range(2):
            self.lease_batch_starts()
            self.rig.drain()
        for lease in list(self.views[client]):
            self.release_one(client, lease)
        for _ in range(2):
            self.lease_batch_starts()
            self.rig.drain()

    def everyone_takes_a_seat(self, product: str) -> None:
        for client in CLIENTS:
            reply = self.rig.ask(client, m.Checkout(9, product))
            if reply is not None:
                self.hear(client, reply)
        self.rig.drain()
        self.collect()

    @rule(product=st.sampled_from(["cad", "cam"]))
    def crash_and_everyone_comes_back(self, product: str) -> None:
        """Every client takes a seat (if one is free), a crash, and every client takes its
        seats back at its next heartbeat."""
        self.everyone_takes_a_seat(product)
        self.crash()
        for client in CLIENTS:
            self.beat(client, by_renew=False)

    @rule(product=st.sampled_from(["cad", "cam"]))
    def crash_and_everyone_renews(self, product: str) -> None:
        """The same, but every client simply renews its seats (taken as their reclaims)."""
        self.everyone_takes_a_seat(product)
        self.crash()
        for client in CLIENTS:
            self.beat(client, by_renew=True)

    @rule()
    def crash_and_nobody_comes_back(self) -> None:
        """A crash, and the clients stay away past the window: the held seats return."""
        self.crash()
        self.time_passes(1.5 * LEASE)

    @rule(dt=st.sampled_from([0.5, 2.0, 4.0, LEASE - MARGIN, LEASE, 1.5 * LEASE]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        for view in self.views.values():
            for k in [k for k, h in view.items() if h.deadline <= self.now]:
                del view[k]  # the client gives up on its own clock
        service = self.rig.service
        service.expire(self.now)
        freed = service.guard.close_window(self.now)
        if freed:
            reached("held seats returned")

    @rule()
    def crash(self) -> None:
        """SIGKILL or power cut: memory is gone, store calls not yet run never happen."""
        self.rig.crash()
        self.released = []
        self.boot()
        COUNTS["crash"] += 1
        self.count_held()

    @rule()
    def clean_stop(self) -> None:
        """Ctrl-C: ``LicenseServer.stop``; the next start holds exactly the seats still out."""
        self.rig.stop()
        self.collect()
        pool = self.rig.service.pool
        out = {p: pool.in_use(p) + pool.held(p) for p in SEATS}
        self.recorded_released.update(dict.fromkeys(self.released))
        for batch in self.in_batch:
            self.recorded_released.update(dict.fromkeys(batch))
        self.released = []
        self.boot()
        pool = self.rig.service.pool
        for p in SEATS:
            assert pool.held(p) == min(out[p], SEATS[p] - pool.borrowed(p)), (p, out)
        COUNTS["clean stop"] += 1
        self.count_held()

    def count_held(self) -> None:
        held = sum(self.rig.service.pool.held(p) for p in SEATS)
        if held:
            COUNTS["started holding seats"] += 1

    # ------------------------------------------------------------------------ the property

    def believed(self, product: str) -> int:
        return sum(1 for v in self.views.values() for h in v.values() if h.product == product)

    @invariant()
    def never_over_granted(self) -> None:
        for product, seats in SEATS.items():
            borrowed = self.rig.service.pool.borrowed(product)
            assert self.believed(product) + borrowed <= seats, product

    def disk_covers_what_clients_believe(self) -> None:
        on_disk = disk_reservations(self.db)
        pool = self.rig.service.pool
        for product in SEATS:
            n = on_disk.get(product, 0)
            assert n >= self.believed(product), (product, n, self.believed(product))
            assert n >= pool.in_use(product) + pool.held(product), (product, n)

    @invariant()
    def disk_bound_holds(self) -> None:
        self.disk_covers_what_clients_believe()

    @invariant()
    def every_seat_believed_is_the_servers(self) -> None:
        pool = self.rig.service.pool
        epoch = self.rig.service.guard.epoch
        old: Counter[str] = Counter()
        for client, view in self.views.items():
            for lease_id, h in view.items():
                if h.epoch == epoch:
                    lease = pool.lease(lease_id)
                    assert lease is not None and lease.owner == client, "a seat nobody has"
                    assert lease.product == h.product
                else:
                    old[h.product] += 1
        for product, n in old.items():
            # Seats of an older epoch not taken back yet wait in the held ones.
            assert n <= pool.held(product), (product, n, pool.held(product))

    @invariant()
    def nothing_held_after_the_window(self) -> None:
        guard = self.rig.service.guard
        if not guard.in_window(self.now) and not guard.reclaim_until:
            for p in SEATS:
                assert self.rig.service.pool.held(p) == 0


#: Under tools/mutate.py (one run per mutant) the machine runs shorter.
MUTATION = os.environ.get("LANLIC_HYPOTHESIS_PROFILE") == "mutation"

CrashingServer.TestCase.settings = settings(
    max_examples=25 if MUTATION else 80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestNeverOverGrantAcrossCrashes = CrashingServer.TestCase


class _SeededDraws:
    """``data.draw`` for the seeded walk below: a choice among a ``sampled_from``'s elements,
    or a coin."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def draw(self, strategy: Any) -> Any:
        elements = getattr(strategy, "elements", None)
        if elements is not None:
            return self.rng.choice(list(elements))
        return self.rng.random() < 0.5


def test_the_machine_reaches_reclaims_refusals_lowering_and_returned_holds() -> None:
    """The machine is only as good as the states it reaches. Hypothesis's swarm testing turns
    whole rules off per run, so this walks the same machine, rules and checks with a seeded
    choice of rule at every step, and counts what it reached."""
    COUNTS.clear()
    WALK[0] = True
    rng = random.Random(20261130)
    rules = [
        name for name, fn in vars(CrashingServer).items()
        if callable(fn) and hasattr(fn, "hypothesis_stateful_rule")
    ]  # fmt: skip
    checks = [
        name for name, fn in vars(CrashingServer).items()
        if callable(fn) and hasattr(fn, "hypothesis_stateful_invariant")
    ]  # fmt: skip
    assert len(rules) >= 15 and len(checks) == 4, (rules, checks)
    for _ in range(12):  # the thresholds below hold from about 6 walks on
        machine = CrashingServer()
        try:
            for _ in range(60):
                name = rng.choice(rules)
                fn = getattr(machine, name)
                kwargs: dict[str, Any] = {}
                for arg, strategy in fn.hypothesis_stateful_rule.arguments.items():
                    kwargs[arg] = (
                        _SeededDraws(rng) if arg == "data" else _SeededDraws(rng).draw(strategy)
                    )
                if name == "one_store_write_finishes" and not machine.rig.executor.queue:
                    continue
                if name == "release" and not any(machine.views.values()):
                    continue
                fn(**kwargs)
                for check in checks:
                    getattr(machine, check)()
        finally:
            machine.teardown()
    WALK[0] = False
    print(dict(COUNTS))
    assert COUNTS["reclaimed"] >= 20, COUNTS
    assert COUNTS["reclaimed by renew"] >= 10, COUNTS
    for kind in ("made_up", "another's", "own released", "own, other product"):
        assert COUNTS[f"forged reclaim refused ({kind})"] >= 3, (kind, COUNTS)
    assert COUNTS["held seats returned"] >= 3, COUNTS
    assert COUNTS["clean stop"] >= 3, COUNTS
    assert COUNTS["lowered"] >= 10, COUNTS
