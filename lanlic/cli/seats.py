"""The seat commands of ``lanlic``: ``checkout`` and ``enable`` (hold a seat), ``status`` (who
holds what), ``servers`` (what answers on the LAN) and ``trust`` (the pinned server keys).

Each reaches the server as the client library does: ``--server``, else ``$LANLIC_SERVER`` or
``client.toml``, else mDNS. ``checkout`` uses a licence borrowed onto this machine first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

from lanlic import osdeps
from lanlic.cli.common import (
    CliError,
    Commands,
    add_find,
    address,
    checked_interfaces,
    connect,
    explicit_server,
    hold_seconds,
    iso_utc,
    local_time,
    print_json,
    run_async,
    seconds,
    table,
    vendor_key,
    with_client,
)
from lanlic.errors import LanlicError

__all__ = ["register"]


def cmd_checkout(args: argparse.Namespace) -> int:
    from lanlic.net.client import Seat

    async def run() -> int:
        lost = asyncio.Event()

        def on_lost(seat: Seat, reason: LanlicError) -> None:
            # Said at once: closing afterwards may take a while when the server is unreachable.
            if args.json:
                print_json({"event": "lost", "product": seat.product, "error": reason.code,
                             "message": reason.message})  # fmt: skip
            lost.set()

        stop = asyncio.Event()
        lic = _borrowed_licence(args)
        if lic is not None and not await _borrow_still_on(args):
            print(
                f"lanlic: the server says the borrow of {args.product} is over (returned or "
                "expired): its file is deactivated here; taking a network seat",
                file=sys.stderr,
            )
            lic = None
        if lic is not None:
            return await _hold_borrowed(args, lic, stop)
        client = await connect(args, args.product, app=args.app, on_seat_lost=on_lost)
        async with client:
            from lanlic.net.waiting import position_printer

            wait = getattr(args, "wait", False)
            shown = position_printer(args.product, args.json) if wait else None
            seat = await client.acquire(
                args.product, args.version or "", wait, getattr(args, "timeout", None), shown
            )
            # Before the "checked out" line: a signal sent as soon as it is read must release.
            loop = asyncio.get_running_loop()
            osdeps.on_stop(loop, stop.set)
            if args.json:
                print_json(
                    {
                        "event": "checked_out",
                        "product": seat.product,
                        "lease": seat.lease_id.hex(),
                        "server_id": client.server_id,
                        "source": seat.source,
                    }
                )
            else:
                print(
                    f"checked out {seat.product} from {client.address[0]}:{client.address[1]}"
                    + (
                        f", holding for {args.hold:g} s"
                        if args.hold is not None
                        else ", Ctrl-C to release"
                    ),
                    flush=True,
                )
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
            await asyncio.wait(waiters, timeout=args.hold, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if seat.lost:
                assert seat.reason is not None
                raise seat.reason
            await client.release(seat)
            if args.json:
                print_json({"event": "released", "product": seat.product})
            else:
                print(f"released {seat.product}", flush=True)
        return 0

    result: int = run_async(run())
    return result


def _borrowed_licence(args: argparse.Namespace) -> Any:
    """A valid borrowed licence for ``args.product`` on this machine, or None (a refused one is
    said on stderr, then the network is tried)."""
    from lanlic.laptop.borrower import Borrower

    key = getattr(args, "portable_key", None)
    try:
        return Borrower(portable_key=Path(key) if key else None).offline(
            args.product, args.version or ""
        )
    except LanlicError as exc:
        if exc.code != "borrow_unknown":
            print(
                f"lanlic: borrowed licence not usable: {exc.code}: {exc.message}", file=sys.stderr
            )
    except OSError as exc:
        print(f"lanlic: borrowed licences unreadable: {exc}", file=sys.stderr)
    return None


async def _borrow_still_on(args: argparse.Namespace) -> bool:
    """With a server address given (``--server``, ``LANLIC_SERVER``, ``client.toml``), ask it
    whether the borrow of ``args.product`` is still on (a copy of the file restored from a
    backup taken before its return is not; no offline check can tell). A server that does not
    answer within a couple of seconds leaves the decision to the file, as offline."""
    from lanlic.laptop.borrower import Borrower
    from lanlic.net.client import Client

    server = args.server or explicit_server()
    if not server:
        return True
    key = getattr(args, "portable_key", None)
    borrower = Borrower(portable_key=Path(key) if key else None)
    client = Client(
        server, vendor_key=vendor_key(args.vendor), connect_timeout=1.0, request_timeout=1.0
    )
    try:
        async with asyncio.timeout(2.5):
            states = await borrower.check_online(client, args.product)
    except (LanlicError, TimeoutError, OSError):
        return True
    finally:
        await client.close()
    return states.get(args.product) not in ("returned", "expired")


async def _hold_borrowed(args: argparse.Namespace, lic: Any, stop: asyncio.Event) -> int:
    """Hold a borrowed licence: no network, nothing to give back at the end."""
    loop = asyncio.get_running_loop()
    osdeps.on_stop(loop, stop.set)
    source = "borrowed (license file)" if lic.kind == "act" else "borrowed (portable key)"
    until = local_time(lic.end)
    if args.json:
        print_json(
            {"event": "checked_out", "product": lic.product, "source": source,
             "borrow_id": lic.borrow_id, "end": lic.end}
        )  # fmt: skip
    else:
        print(f"using the {source} licence of {lic.product}, valid until {until}", flush=True)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(args.hold):
            await stop.wait()
    if args.json:
        print_json({"event": "released", "product": lic.product, "source": source})
    else:
        print(f"done with {lic.product} (the borrowed licence stays on this machine)", flush=True)
    return 0


# ------------------------------------------------------------------------ servers and trust


def cmd_servers(args: argparse.Namespace) -> int:
    from lanlic.discovery import Announcement, Browser
    from lanlic.errors import ServerUntrusted
    from lanlic.laptop.trust import TrustStore, fingerprint_of
    from lanlic.net.finder import PROBE_TIMEOUT, probe

    vendor = vendor_key(args.vendor)
    vendor_fp = fingerprint_of(vendor) if vendor is not None else None
    interfaces = checked_interfaces(args.interface)
    trust = TrustStore.default()

    async def look(ann: Announcement) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": ann.name,
            "address": ann.addresses[0],
            "addresses": list(ann.addresses),
            "port": ann.port,
            "site": ann.site,
            "server_fp": ann.server_fp,
            "vendor_fp": ann.vendor_fp,
            "products": list(ann.products),
            "products_complete": ann.products_complete,
            "verified": False,
            "pinned": "unverified",
            "error": None,
        }
        loop = asyncio.get_running_loop()
        try:
            probed = await probe((ann.addresses[0], ann.port), deadline=loop.time() + PROBE_TIMEOUT)
        except LanlicError as exc:
            row["error"] = f"{exc.code}: {exc.message}"
            row["pinned"] = "refused" if isinstance(exc, ServerUntrusted) else "unreachable"
            return row
        ident = probed.identity
        row.update(verified=True, site=ident.site, server_fp=ident.server_fp)
        row["vendor_fp"] = ident.vendor_fp
        pin = trust.lookup(ident.vendor_fp, ident.site)
        if pin is None:
            row["pinned"] = "no"
        elif pin.server_key == ident.server_key:
            row["pinned"] = "yes"
        else:
            row["pinned"] = "KEY CHANGED"
            row["error"] = f"pinned key for this site is {pin.server_fp}"
        return row

    async def run() -> list[dict[str, Any]]:
        found: dict[str, Announcement] = {}
        loop = asyncio.get_running_loop()
        async with Browser(interfaces) as browser:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(loop.time() + args.timeout):
                    while True:
                        ann = await browser.next()
                        if vendor_fp is None or ann.vendor_fp == vendor_fp:
                            found[ann.name] = ann  # a later announcement updates an earlier one
        return list(await asyncio.gather(*(look(a) for a in found.values())))

    rows: list[dict[str, Any]] = run_async(run())
    rows.sort(key=lambda r: (r["site"], r["name"]))
    if args.json:
        print_json({"servers": rows})
        return 0
    if not rows:
        where = ", ".join(args.interface) if args.interface else "every interface"
        print(f"no lanlic server answered on {where} within {args.timeout:g} s")
        return 0
    for r in rows:
        print(f"{r['name']}  {r['address']}:{r['port']}  pinned: {r['pinned']}")
        print(f"  site {r['site']!r}, server {r['server_fp']}, vendor {r['vendor_fp']}")
        more = "" if r["products_complete"] else ", ..."
        print(f"  products: {', '.join(r['products'])}{more}")
        if r["error"]:
            print(f"  {r['error']}")
    return 0


def cmd_trust(args: argparse.Namespace) -> int:
    from lanlic.laptop.trust import TrustStore

    trust = TrustStore.default()
    if args.list:
        pins = trust.pins()
        if args.json:
            print_json({"pins": [p.to_json() for p in pins]})
        elif not pins:
            print(f"no pinned servers ({trust.path})")
        for p in [] if args.json else pins:
            print(f"{p.site!r}  server {p.server_fp}  vendor {p.vendor_fp}")
            print(f"  pinned {p.pinned_at} ({p.source}){' at ' + p.address if p.address else ''}")
        return 0
    if args.forget is not None:
        vendor = vendor_key(args.vendor)
        gone = trust.forget(args.forget, None if vendor is None else _fp(vendor))
        if not gone:
            raise CliError(f"no pin for site {args.forget!r}; see lanlic trust --list")
        if args.json:
            print_json({"forgotten": [p.to_json() for p in gone]})
        else:
            for p in gone:
                print(f"forgot {p.site!r} (server {p.server_fp}, vendor {p.vendor_fp})")
        return 0
    return _trust_server(args, trust)


def _fp(vendor: Any) -> str:
    from lanlic.laptop.trust import fingerprint_of

    return fingerprint_of(vendor)


def _trust_server(args: argparse.Namespace, trust: Any) -> int:
    from lanlic.net.client import format_address, parse_servers
    from lanlic.net.finder import PROBE_TIMEOUT, probe

    try:
        members = parse_servers(args.server)
    except ValueError as exc:
        raise CliError(str(exc)) from None

    async def run() -> list[Any]:
        # Every member of a redundant server must prove the same key; one that is down is
        # passed over, as long as one answers.
        loop = asyncio.get_running_loop()
        found, error = [], None
        for member in members:
            try:
                found.append(await probe(member, deadline=loop.time() + PROBE_TIMEOUT))
            except LanlicError as exc:
                if len(members) == 1:
                    raise
                error = exc
        if not found:
            assert error is not None
            raise error
        return found

    probed = run_async(run())
    where = ",".join(format_address(p.address) for p in probed)
    ident = probed[0].identity
    for other in probed[1:]:
        if other.identity.server_key != ident.server_key:
            raise CliError(
                f"{format_address(other.address)} presents {other.identity.server_fp}, but "
                f"{format_address(probed[0].address)} presents {ident.server_fp}: the members of "
                "one server share one key; nothing pinned"
            )
    old = trust.lookup(ident.vendor_fp, ident.site)
    facts = {
        "address": where,
        "site": ident.site,
        "vendor_fp": ident.vendor_fp,
        "server_fp": ident.server_fp,
        "previous_fp": old.server_fp if old is not None else None,
    }
    if not args.json:
        print(f"{where} proved it holds the server key {ident.server_fp}")
        print(f"  site {ident.site!r}, vendor {ident.vendor_fp}")
        if old is None:
            print("  this site is not pinned yet")
        elif old.server_key == ident.server_key:
            print("  already pinned: nothing to do")
        else:
            print(f"  REPLACES the pinned key {old.server_fp} (pinned {old.pinned_at})")
    if args.expect is not None and args.expect.strip().lower() != ident.server_fp:
        raise CliError(
            f"{where} presents {ident.server_fp}, not the expected {args.expect}: not pinned"
        )
    if old is not None and old.server_key == ident.server_key:
        if args.json:
            print_json({**facts, "pinned": True, "changed": False})
        return 0
    if args.expect is None and not args.yes:
        if not sys.stdin.isatty():
            raise CliError("not pinned: confirm with --yes, or --expect FINGERPRINT")
        answer = input(f"pin {ident.server_fp} for {ident.site!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CliError("not pinned")
    trust.pin(ident, where)
    if args.json:
        print_json({**facts, "pinned": True, "changed": True})
    else:
        print(f"pinned {ident.server_fp} for {ident.site!r}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        async with await connect(args, None) as client:
            return await client.status()

    status: dict[str, Any] = run_async(run())
    if args.json:
        status.pop("t", None)
        status.pop("id", None)
        for p in status["products"]:
            if p.get("held_until"):
                p["held_until_utc"] = iso_utc(p["held_until"])
            for h in p["holders"]:  # a cluster's other members' holders: times may be null
                h["since_utc"] = iso_utc(h["since"]) if h["since"] is not None else None
                beat = h["last_heartbeat"]
                h["last_heartbeat_utc"] = iso_utc(beat) if beat is not None else None
        for b in status.get("borrows", []):
            b["start_utc"], b["end_utc"] = iso_utc(b["start"]), iso_utc(b["end"])
        print_json(status)
        return 0
    print(f"{status['customer']} (key expires {status['expires']}), server {status['server_id']}")
    rows = [
        (p["name"] + (" (add-on)" if p["addon"] else ""), str(p["seats"]), str(p["in_use"]),
         str(p["borrowed"]), str(p.get("held", 0)), str(p["free"]))
        for p in status["products"]
    ]  # fmt: skip
    table(("PRODUCT", "SEATS", "IN USE", "BORROWED", "HELD", "FREE"), rows, right=(1, 2, 3, 4, 5))
    for p in status["products"]:
        if p.get("held") and p.get("held_until"):
            print(f"  {p['name']}: {p['held']} held for clients reconnecting after a restart,"
                  f" until {local_time(p['held_until'])} or each is reclaimed")  # fmt: skip
    for p in status["products"]:
        for h in p["holders"]:
            app = f" {h['app']}" if h["app"] else ""
            ver = f" v{h['version']}" if h["version"] else ""
            since = f" since {local_time(h['since'])}" if h["since"] is not None else ""
            if h["last_heartbeat"] is not None:
                beat = f", last heartbeat {local_time(h['last_heartbeat'])}"
            else:  # held through another member of a cluster, which keeps its renewals
                beat = f", through member {h.get('member', '?')}"
            print(f"  {p['name']}: {h['user']}@{h['host']}{app}{ver}{since}{beat}")
        more = p.get("holders_total", len(p["holders"])) - len(p["holders"])
        if more > 0:
            print(f"  {p['name']}: ... and {more} more (the admin page lists them all)")
    from lanlic.net.waiting import queue_lines

    for line in queue_lines(status):
        print(line)
    borrows = status.get("borrows", [])
    if borrows:
        print("borrowed:")
    for b in borrows:
        print(
            f"  {b['product']}: {b['user']}@{b['host']} from {local_time(b['start'])}"
            f" until {local_time(b['end'])} ({b['borrow_id']})"
        )
    sys.stdout.flush()
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    """An add-on is enabled by holding one of its seats, like ``checkout``."""

    async def addon_check(client: Any) -> Any:
        return await client.status()

    status = run_async(with_client(args, args.product, addon_check))
    product = next((p for p in status["products"] if p["name"] == args.product), None)
    if product is not None and not product["addon"]:
        raise CliError(f"{args.product} is not an add-on; use: lanlic checkout {args.product}")
    return cmd_checkout(args)


# ------------------------------------------------------------------------------- arguments


def register(commands: Commands) -> None:
    def holding(sp: argparse.ArgumentParser) -> None:
        add_find(sp)
        sp.add_argument("--version", dest="version", help="the application's version")
        sp.add_argument(
            "--hold",
            type=hold_seconds,
            metavar="S",
            help="seconds to hold (default: until Ctrl-C; 0: take a seat and give it back at once)",
        )
        sp.add_argument("--app", default="lanlic-cli", help="application name shown to the admin")

    sp = commands.add("checkout", cmd_checkout, "take a seat and hold it")
    sp.add_argument("product")
    holding(sp)
    sp.add_argument(
        "--wait", action="store_true",
        help="with no seat free, wait in the server's queue (first come, first served), "
        "printing the place in line as it changes; after a server restart, join its new line",
    )  # fmt: skip
    sp.add_argument(
        "--timeout", type=seconds, metavar="S",
        help="with --wait: give up after S seconds (no_seat)",
    )  # fmt: skip
    sp.add_argument(
        "--portable-key", metavar="PATH", help="use a licence borrowed into this portable key"
    )

    sp = commands.add("enable", cmd_enable, "enable an add-on: take one of its seats and hold it")
    sp.add_argument("product", metavar="ADDON")
    holding(sp)

    sp = commands.add("status", cmd_status, "show products, seats, holders and who waits")
    add_find(sp)

    sp = commands.add("servers", cmd_servers, "list the licence servers announced on the LAN")
    sp.add_argument(
        "--timeout", type=seconds, default=2.0, metavar="S", help="seconds to listen (default 2)"
    )
    sp.add_argument(
        "--interface", action="append", metavar="IP", help="browse on this interface only"
    )
    sp.add_argument("--vendor", help="only servers of this vendor: fingerprint or .pub file")

    sp = commands.add("trust", cmd_trust, "pin, list or forget trusted server keys")
    what = sp.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--server",
        type=address,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="pin the key this server (every member of it) presents",
    )
    what.add_argument("--list", action="store_true", help="list the pinned servers")
    what.add_argument("--forget", metavar="SITE", help="drop the pin of a site (customer name)")
    sp.add_argument("--vendor", help="with --forget: only this vendor's site")
    sp.add_argument("--expect", metavar="FINGERPRINT", help="pin only if the key is this one")
    sp.add_argument("--yes", action="store_true", help="pin without asking")
