"""The ``ended`` keys of borrows are pruned past their retention, each once, with two members'
reapers racing (``EtcdBorrows.prune_ended``; the reaper calls it through ``ClusterDesk.reap``)."""

from __future__ import annotations

import asyncio
import time

from etcd_cluster import EtcdCluster

from lanlic.cluster.borrows import BorrowEntry, EtcdBorrows
from lanlic.cluster.etcd import EtcdSeats

PREFIX = "/lanlic/test-prune"
RETENTION = 100.0


def member(endpoints: list[str], name: str) -> EtcdSeats:
    return EtcdSeats(endpoints, prefix=PREFIX, products={"cad": 8}, member=name)


async def test_ended_keys_past_their_retention_are_pruned_once_by_racing_reapers(
    etcd_cluster: EtcdCluster,
) -> None:
    eps = etcd_cluster.endpoints
    a, b = member(eps, "a"), member(eps[1:] + eps[:1], "b")
    await a.start()
    await b.start()
    try:
        ra, rb = EtcdBorrows(a), EtcdBorrows(b)
        now = time.time()
        # Ends: three past their retention, one past its end but within it, two still to come
        # (returned early: a laptop may present or return those files again).
        ends = [now - 1000, now - 500, now - RETENTION - 1, now - 50, now + 100, now + 1000]
        for i, end in enumerate(ends):
            entry = BorrowEntry(
                f"b-{i}", f"{i:032x}", "cad", "sha256:00", "ann", "lap", end - 2000, end,
                b"file", i, i % 3,
            )  # fmt: skip
            made, new = await (ra, rb)[i % 2].create(entry)
            assert new and made == entry
            got = await (rb, ra)[i % 2].get(entry.borrow_id)
            assert got is not None
            assert await (rb, ra)[i % 2].end(got[0], got[1], "returned", now)
        old = {"b-0", "b-1", "b-2"}

        # Both reapers wake at once: both read the ended keys before either deletes.
        seen_a, seen_b = await asyncio.gather(
            ra.old_ended(now, RETENTION), rb.old_ended(now, RETENTION)
        )
        assert {k.key for k in seen_a} == {k.key for k in seen_b}
        assert len(seen_a) == len(old)
        gone_a, gone_b = await asyncio.gather(ra.delete_ended(seen_a), rb.delete_ended(seen_b))
        # Each key deleted once, by one of them (without the compare both counted every key).
        assert set(gone_a) | set(gone_b) == old, (gone_a, gone_b)
        assert not set(gone_a) & set(gone_b), (gone_a, gone_b)

        for i in range(len(ends)):
            ended = await ra.ended(f"b-{i}")
            assert (ended is None) == (f"b-{i}" in old), i
        # A later prune, both racing whole, finds nothing more to do.
        again = await asyncio.gather(ra.prune_ended(now, RETENTION), rb.prune_ended(now, RETENTION))
        assert again == [[], []]
    finally:
        await a.close()
        await b.close()
