"""The fence: a member answers checkout, renew and adopt only while its etcd lease is provably alive
for longer than the lease it would give a client.

Every seat key a member holds lives under the member's one etcd lease. etcd's leader sets a lease's
expiry to (the moment it handles a keepalive) + TTL, which is after the moment we sent that
keepalive; a leader change only ever extends leases. So ``sent_at + ttl`` of the last answered
keepalive is a lower bound on when the member's keys can vanish, on our monotonic clock, give or
take the clocks' rate difference, which ``margin`` covers. A client granted a seat now trusts it
for ``client_lease`` seconds; the member may grant it only if the keys outlive that.

Pure: no I/O, no clock; the caller passes ``now`` and the send time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Fence:
    margin: float = 0.25
    """Seconds kept in hand for clock-rate drift between this host and etcd's leader, and for the
    time between our check and the client receiving the answer."""

    alive_until: float = -math.inf
    """Lower bound, on our monotonic clock, of the member's etcd lease expiry."""

    lost: bool = False
    """etcd said the lease is gone (TTL <= 0): every key under it was deleted."""

    def keepalive_answered(self, sent_at: float, ttl: float) -> None:
        """A keepalive sent at ``sent_at`` came back with ``ttl`` seconds (etcd's full TTL)."""
        if ttl <= 0:
            self.lost = True
            self.alive_until = -math.inf
            return
        self.alive_until = max(self.alive_until, sent_at + ttl)

    def may_answer(self, now: float, client_lease: float) -> bool:
        """True while the etcd lease outlives a client lease granted now, with the margin."""
        return not self.lost and now + client_lease + self.margin < self.alive_until

    def reset(self) -> None:
        """A new etcd lease was granted: nothing is proven about it until its first keepalive."""
        self.lost = False
        self.alive_until = -math.inf
