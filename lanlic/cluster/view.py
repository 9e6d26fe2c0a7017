"""What a cluster member shows of the whole cluster: the admin page's products, holders and
borrows, and ``lanlic status``, the same from any member.

- **Counts** (in use, borrowed, free per product) come from the member's watch-fed mirror of
  etcd, as its checkouts see them: no round trip.
- **Holders** are read from etcd when asked (one range read of the pool's seat keys): each key
  names its member, client, client lease and, since this view, the user, host and checkout time
  (``lanlic.cluster.etcd.Holder``). Leases this member granted add what only it knows (the
  application, version and last heartbeat: renewals stay in the member's memory); for another
  member's they are ``None``. A key written before user and host were added shows them empty.
- **Borrows** are read from the borrow records when asked (``active_borrows``: one range read;
  the reaper's last read, up to ``REAP_INTERVAL`` old, if etcd does not answer).
- **Remove** (the admin's "remove a holder"): a seat this member granted is removed as on a
  single server (the lease ends, its client is told at once, the key is deleted). A seat held
  through another member is refused (``HeldByOtherMember``, naming it): deleting its key from
  here would free the seat at once while its application, told nothing until its next renewal
  (up to a heartbeat later), goes on using it, so another client could be granted the same seat
  meanwhile. Remove it on that member's page.
- **Enrollments** are read from etcd when asked; one accepted on the page is written there, as
  ``lanlic admin enroll --accept`` through any member does.
- **History** is the cluster's (``lanlic.cluster.history``): every member's rows from etcd,
  merged by time, each naming the member that served it; the usage chart walks them back from
  the cluster's counts. The CSV export has the single server's columns and ``member``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from lanlic.admin import views
from lanlic.cluster.etcd import Unreachable
from lanlic.core.service import MAX_STATUS_HOLDERS
from lanlic.errors import LanlicError, ServerUnavailable
from lanlic.proto import messages as m

if TYPE_CHECKING:
    from lanlic.cluster.etcd import SeatRecord
    from lanlic.cluster.history import MemberRow
    from lanlic.cluster.service import ClusterService

__all__ = [
    "CSV_HEADER",
    "HeldByOtherMember",
    "HistoryNotKept",
    "active_borrows",
    "cluster_holders",
    "cluster_status",
    "enrollment_rows",
    "history_csv",
    "product_rows",
    "remove_refusal",
]


class HeldByOtherMember(LanlicError):
    """An admin asked one member to remove a seat that another member granted."""

    code = "held_by_other_member"


class HistoryNotKept(LanlicError):
    """A cluster member that runs without its database keeps no history (it hands the rows it
    writes there to the cluster's history in etcd)."""

    code = "history_not_kept"


async def active_borrows(service: ClusterService, wall: float) -> list[dict[str, Any]]:
    """The cluster's active borrows, soonest end first, as ``status`` lists them: read from the
    borrow records now, or the reaper's last read if etcd does not answer."""
    try:
        active = await service.lending.records.active()
    except (LanlicError, Unreachable):
        return service.lending.listing()
    entries = sorted((e for e, _mod in active if e.end > wall), key=lambda e: e.end)
    return [
        {"borrow_id": e.borrow_id, "product": e.product, "user": e.user, "host": e.host,
         "start": e.start, "end": e.end}
        for e in entries
    ]  # fmt: skip


async def enrollment_rows(service: ClusterService) -> list[dict[str, Any]]:
    """The machines and portable keys enrolled in the cluster (etcd), newest first."""
    try:
        records = await service.lending.records.enrollments()
    except Unreachable as e:
        raise ServerUnavailable("etcd did not answer; try again") from e
    rows = sorted(records, key=lambda e: e.enrolled_at, reverse=True)
    return [
        {"container_fp": e.container_fp, "kind": e.kind, "machine_fp": e.machine_fp,
         "user": e.user, "host": e.host, "enrolled_at": e.enrolled_at, "via": e.via}
        for e in rows
    ]  # fmt: skip


def product_rows(service: ClusterService, now: float, wall: float) -> list[dict[str, Any]]:
    """The admin page's product rows with the cluster's counts (the mirror), as ``status``."""
    rows = views.product_rows(service, now, wall)
    mirror = service.seats.mirror
    for row in rows:
        taken = mirror.in_use(row["name"])  # seat keys: in use and borrowed
        borrowed = mirror.borrowed(row["name"])
        row.update(in_use=max(0, taken - borrowed), borrowed=borrowed, held=0, held_until=None)
        row["free"] = max(0, row["seats"] - taken)
    return rows


def cluster_holders(
    service: ClusterService, records: list[SeatRecord], now: float, wall: float
) -> list[dict[str, Any]]:
    """Every seat in use in the cluster (``records``: ``EtcdSeats.read_seats``), oldest first:
    the admin page's holder rows (``lease`` hex, ``member``, ``here``: granted by this member)."""
    me = service.seats.member
    out = []
    for rec in records:
        h = rec.holder
        if h is None:
            continue  # a borrow's seat (the borrows list shows it)
        try:
            lease = service.pool.lease(bytes.fromhex(h.lease))
        except ValueError:
            lease = None
        row: dict[str, Any] = {
            "lease": h.lease,
            "product": rec.product,
            "user": h.user,
            "host": h.host,
            "app": "",
            "version": "",
            "since": float(h.since) if h.since else None,
            "last_heartbeat": None,
            "expires_in": None,
            "member": h.member,
            "here": False,
        }
        if lease is not None and h.member == me and lease.product == rec.product:
            row.update(
                user=lease.holder.user,
                host=lease.holder.host,
                app=lease.holder.app,
                version=lease.holder.version,
                since=wall - (now - lease.since),
                last_heartbeat=wall - (now - lease.renewed),
                expires_in=lease.expires - now,
                here=True,
            )
        out.append(row)
    out.sort(key=lambda r: (r["since"] or 0.0, r["lease"]))
    return out


def holder_page(
    rows: list[dict[str, Any]],
    *,
    product: str | None = None,
    query: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> dict[str, Any]:
    """One page of ``cluster_holders``, filtered as the single server's ``views.holder_page``."""
    if product:
        rows = [r for r in rows if r["product"] == product]
    if query:
        q = query.casefold()
        rows = [r for r in rows if any(q in str(r[f]).casefold() for f in ("user", "host", "app"))]
    return {
        "total": len(rows),
        "offset": offset,
        "limit": limit,
        "items": rows[offset : offset + limit],
    }


def remove_refusal(records: list[SeatRecord], lease_hex: str, member: str) -> HeldByOtherMember:
    """The refusal for removing a seat granted by another member, or LookupError if no seat in
    use names ``lease_hex``."""
    for rec in records:
        h = rec.holder
        if h is not None and h.lease == lease_hex and h.member != member:
            return HeldByOtherMember(
                f"the {rec.product} seat of {h.user or '?'}@{h.host or '?'} is held through "
                f"member {h.member}: remove it on that member's admin page (removing it here "
                "would free the seat while its application, not yet told, still uses it)"
            )
    raise LookupError(lease_hex)


async def cluster_status(service: ClusterService, request_id: int) -> m.Message:
    """``status`` on a member: the cluster's counts (the mirror) and every member's holders (one
    read of etcd). If etcd does not answer, this member's own holders, as before."""
    now, wall = service.clock()
    reply = service.status(request_id, now, wall)
    try:
        records, _revision = await service.seats.read_seats()
    except LanlicError:
        return reply
    reply.borrows[:] = await active_borrows(service, wall)
    rows = cluster_holders(service, records, now, wall)
    budget = MAX_STATUS_HOLDERS
    for p in reply.products:
        mine = [r for r in rows if r["product"] == p["name"]]
        listed = mine[: max(0, budget)]
        budget -= len(listed)
        p["holders"] = [
            {k: r[k] for k in ("user", "host", "app", "version", "since", "last_heartbeat",
                               "member")}
            for r in listed
        ]  # fmt: skip
        p["holders_total"] = len(mine)
    return reply


#: The single server's export columns (``lanlic.admin.export``) and the member that served it.
CSV_HEADER: Final = "time_utc,unix_time,event,product,user,host,detail,count,member\r\n"


def history_csv(rows: Sequence[MemberRow]) -> bytes:
    """The CSV lines of the cluster's rows, as ``lanlic.admin.export`` writes a single server's
    (every cell through ``views.csv_cell``; the member's name too, which comes from etcd)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    for r in rows:
        when = dt.datetime.fromtimestamp(int(r.at), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        cells = [when, f"{r.at:.3f}", r.event, r.product, r.user, r.host, r.detail, str(r.count),
                 r.member]  # fmt: skip
        w.writerow([views.csv_cell(c) for c in cells])
    return out.getvalue().encode()
