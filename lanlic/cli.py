"""The ``lanlic`` command: parses arguments, then calls the library.

Every command takes ``--json`` for machine-readable output, and fails with a non-zero exit and a
one-line reason on stderr (``lanlic: <code>: <message>``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lanlic import __version__, osdeps
from lanlic.errors import LanlicError, NetworkKeyError

if TYPE_CHECKING:
    from lanlic.net.client import Client

__all__ = ["main"]

DEMO_PORT = 7766


class CliError(LanlicError):
    code = "usage"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, default=str), flush=True)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ----------------------------------------------------------------------------------- vendor


def cmd_vendor_keygen(args: argparse.Namespace) -> int:
    from lanlic.core import signing
    from lanlic.core.netkey import generate_vendor_key
    from lanlic.vendorkeys import write_vendor_keypair

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = generate_vendor_key()
    try:
        key_path, pub_path = write_vendor_keypair(out, key)
    except FileExistsError:
        raise CliError(f"{out / 'vendor.key'} already exists; refusing to overwrite it") from None
    fp = signing.fingerprint(key.public_key())
    if args.json:
        _print_json({"private": str(key_path), "public": str(pub_path), "fingerprint": fp})
    else:
        print(f"wrote {key_path} (keep it secret) and {pub_path}\nvendor fingerprint {fp}")
    return 0


def cmd_vendor_issue(args: argparse.Namespace) -> int:
    from lanlic.core import netkey
    from lanlic.vendorkeys import load_vendor_private

    try:
        expires = dt.date.fromisoformat(args.expires)
    except ValueError:
        raise CliError(f"--expires must be YYYY-MM-DD, not {args.expires!r}") from None
    try:
        products = [netkey.parse_product_spec(p) for p in args.product]
        content = netkey.issue_network_key(
            load_vendor_private(Path(args.vendor_key)),
            customer=args.customer,
            expires=expires,
            borrow_kind=args.borrow_kind,
            products=products,
            issued=_today(),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    Path(args.out).write_bytes(content)
    if args.json:
        _print_json({"out": args.out, "customer": args.customer, "products": len(products)})
    else:
        print(f"wrote network key {args.out} for {args.customer!r}, {len(products)} product(s)")
    return 0


# ------------------------------------------------------------------------------------ serve


def cmd_serve(args: argparse.Namespace) -> int:
    from lanlic.core.service import LicenseService, ServiceConfig
    from lanlic.net.server import LicenseServer
    from lanlic.server.datadir import DataDir, default_data_dir
    from lanlic.store import Store
    from lanlic.vendorkeys import load_vendor_public

    if args.demo:
        from lanlic.server.demo import ensure_demo

        data = Path(args.data) if args.data else default_data_dir() / "demo"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        license_path, pub_path = ensure_demo(data, _today())
        host = args.host or "127.0.0.1"
        port = DEMO_PORT if args.port is None else args.port
    else:
        if not args.license or not args.vendor_pub:
            raise CliError("serve needs --license FILE and --vendor-pub FILE (or --demo)")
        license_path, pub_path = Path(args.license), Path(args.vendor_pub)
        data = Path(args.data) if args.data else default_data_dir()
        host = args.host or "0.0.0.0"  # noqa: S104 - a LAN server listens on the LAN
        port = DEMO_PORT if args.port is None else args.port
    from lanlic.admin.keys import INSTALLED_KEY, choose_network_key, read_installed_key

    try:
        vendor_pub = load_vendor_public(pub_path)
        # A renewed key installed from the admin page is served in place of --license.
        choice = choose_network_key(
            license_path.read_bytes(), read_installed_key(data), vendor_pub, _today()
        )
        key = choice.key
        key_file = data / INSTALLED_KEY if choice.installed else license_path
        if choice.note:
            print(f"lanlic: note: {choice.note}; serving {key_file}", file=sys.stderr)
    except OSError as exc:
        raise CliError(f"cannot read {license_path}: {exc.strerror}") from None
    except NetworkKeyError as exc:
        exc.message = f"{license_path}: {exc.message}"
        raise
    datadir = DataDir(data)
    datadir.lock()
    try:
        if getattr(args, "restore", None):
            from lanlic.cli_admin import restore_for_serve

            restore_for_serve(args, data)
        store = Store(data / "lanlic.db")
        try:  # acknowledged borrows missing (a lost WAL): refuse, unless told to go on
            accept = getattr(args, "accept_lost_borrows", False)
            for note in store.check_ledger(accept, time.time()):
                print(f"lanlic: warning: {note}", file=sys.stderr, flush=True)
        except BaseException:
            store.close()
            raise
    except BaseException:
        datadir.unlock()
        raise
    config = ServiceConfig(lease_seconds=args.lease, heartbeat_seconds=args.heartbeat)
    service = LicenseService(key, datadir.server_key(), config)

    async def run() -> None:
        server = LicenseServer(service, host, port, store=store)
        await server.load_store()
        try:
            await server.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        try:
            announcer = None if args.no_mdns else _announcer(service, server, args.interface)
        except CliError:
            await server.stop()
            raise
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        osdeps.on_stop(loop, stop.set)
        announced: list[asyncio.Future[bool]] = []
        admin = None
        if not args.no_admin:
            from lanlic.admin.app import serve_admin

            try:
                admin = await serve_admin(
                    server, args.admin_host, args.admin_port, port, vendor_pub, data, key_file,
                    lambda: _discovery_state(announcer, announced[0] if announced else None),
                )  # fmt: skip
            except BaseException:
                await server.stop()
                raise
        h, p = server.address
        datadir.write_address(h, p)
        if args.json:
            _print_json(
                {
                    "event": "listening",
                    "host": h,
                    "port": p,
                    "server_id": service.server_id,
                    "customer": key.customer,
                    "data": str(data),
                    "admin_host": admin.host if admin else None,
                    "admin_port": admin.port if admin else None,
                }
            )
        else:
            print(
                f"lanlic {__version__}: serving {key.customer!r} on {h}:{p}\n"
                f"  server id {service.server_id}, data folder {data}\n"
                f"  products: "
                + ", ".join(f"{x.name} ({x.seats} seats)" for x in key.products)
                + f"\n  try: lanlic checkout {key.products[0].name} --server {h}:{p}"
                + (f"\n  admin page: {admin.url}" if admin else "")
                + "\n  stop with Ctrl-C",
                flush=True,
            )
        announcing = None
        if announcer is not None:
            announcing = asyncio.ensure_future(_announce(announcer, args.json))
            announced.append(announcing)
        await stop.wait()
        if announcing is not None and announcer is not None:
            announcing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcing
            await announcer.close()  # the mDNS goodbye, before clients are told to reconnect
        if admin is not None:
            await admin.stop()
        await server.stop()
        if not args.json:
            print("lanlic: stopped", flush=True)

    try:
        _run_async(run())
    finally:
        store.close()
        datadir.clear_address()
        datadir.unlock()
    return 0


def _announcer(service: Any, server: Any, interfaces: list[str] | None) -> Any:
    from lanlic.net.announce import announcer_for

    try:
        return announcer_for(service, server.host, server.port, interfaces)
    except ValueError as exc:
        raise CliError(f"--interface: {exc}") from None


async def _announce(announcer: Any, as_json: bool) -> bool:
    """Register over mDNS (about 1.2 s of probing); a failure leaves the server serving."""
    where = ", ".join(announcer.interfaces) if announcer.interfaces else "every interface"
    try:
        await announcer.start()
    except Exception as exc:
        print(f"lanlic: warning: cannot announce over mDNS on {where}: {exc}", file=sys.stderr)
        return False
    if as_json:
        _print_json({"event": "announced", "name": announcer.name, "interfaces": where})
    else:
        print(f"  announced over mDNS as {announcer.name!r} on {where}", flush=True)
    return True


def _discovery_state(announcer: Any, task: asyncio.Future[bool] | None) -> dict[str, Any]:
    """What the admin page shows of the mDNS announcement."""
    if announcer is None:
        return {"enabled": False}
    where = ", ".join(announcer.interfaces) if announcer.interfaces else "every interface"
    if task is None or not task.done():
        state = "probing"
    elif task.cancelled():
        state = "stopped"
    else:
        state = "announced" if task.result() else "failed"
    return {"enabled": True, "state": state, "name": announcer.name, "interfaces": where}


# ---------------------------------------------------------------------------- client side


def _vendor_key(text: str | None) -> Any:
    """``--vendor``: a fingerprint (``sha256:...``) or a vendor public key file."""
    if text is None:
        return None
    if text.strip().lower().startswith("sha256:"):
        from lanlic.laptop.trust import fingerprint_of

        try:
            return fingerprint_of(text)
        except ValueError as exc:
            raise CliError(f"--vendor: {exc}") from None
    from lanlic.vendorkeys import load_vendor_public

    try:
        return load_vendor_public(Path(text))
    except OSError as exc:
        raise CliError(f"--vendor: cannot read {text}: {exc.strerror}") from None


async def _connect(args: argparse.Namespace, product: str | None, **kwargs: Any) -> Client:
    """A connected client: at ``--server``, else ``$LANLIC_SERVER`` or ``client.toml``, else the
    server found over mDNS (on ``--interface``, of ``--vendor``, serving ``product``)."""
    from lanlic.net.client import Client

    vendor = _vendor_key(args.vendor)
    if args.server:
        client = Client(args.server, vendor_key=vendor, **kwargs)
        await client.connect()
        return client
    return await Client.discover(
        vendor, product, timeout=args.discover_timeout, interfaces=args.interface, **kwargs
    )


def cmd_checkout(args: argparse.Namespace) -> int:
    from lanlic.net.client import Seat

    async def run() -> int:
        lost = asyncio.Event()

        def on_lost(seat: Seat, reason: LanlicError) -> None:
            # Said at once: closing afterwards may take a while when the server is unreachable.
            if args.json:
                _print_json({"event": "lost", "product": seat.product, "error": reason.code,
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
        client = await _connect(args, args.product, app=args.app, on_seat_lost=on_lost)
        async with client:
            from lanlic.net.waiting import position_printer

            shown = position_printer(args.product, args.json) if args.wait else None
            seat = await client.acquire(
                args.product, args.version or "", args.wait, args.timeout, shown
            )
            # Before the "checked out" line: a signal sent as soon as it is read must release.
            loop = asyncio.get_running_loop()
            osdeps.on_stop(loop, stop.set)
            if args.json:
                _print_json(
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
                _print_json({"event": "released", "product": seat.product})
            else:
                print(f"released {seat.product}", flush=True)
        return 0

    result: int = _run_async(run())
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
    from lanlic.net.client import Client, _explicit_server

    server = args.server or _explicit_server()
    if not server:
        return True
    key = getattr(args, "portable_key", None)
    borrower = Borrower(portable_key=Path(key) if key else None)
    client = Client(
        server, vendor_key=_vendor_key(args.vendor), connect_timeout=1.0, request_timeout=1.0
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
    until = dt.datetime.fromtimestamp(lic.end, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.json:
        _print_json(
            {"event": "checked_out", "product": lic.product, "source": source,
             "borrow_id": lic.borrow_id, "end": lic.end}
        )  # fmt: skip
    else:
        print(f"using the {source} licence of {lic.product}, valid until {until}", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.hold)
    if args.json:
        _print_json({"event": "released", "product": lic.product, "source": source})
    else:
        print(f"done with {lic.product} (the borrowed licence stays on this machine)", flush=True)
    return 0


# ------------------------------------------------------------------------ servers and trust


def cmd_servers(args: argparse.Namespace) -> int:
    from lanlic.discovery import Announcement, Browser
    from lanlic.errors import ServerUntrusted
    from lanlic.laptop.trust import TrustStore, fingerprint_of
    from lanlic.net.finder import PROBE_TIMEOUT, probe

    vendor = _vendor_key(args.vendor)
    vendor_fp = fingerprint_of(vendor) if vendor is not None else None
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
        async with Browser(args.interface) as browser:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(loop.time() + args.timeout):
                    while True:
                        ann = await browser.next()
                        if vendor_fp is None or ann.vendor_fp == vendor_fp:
                            found[ann.name] = ann  # a later announcement updates an earlier one
        return list(await asyncio.gather(*(look(a) for a in found.values())))

    rows: list[dict[str, Any]] = _run_async(run())
    rows.sort(key=lambda r: (r["site"], r["name"]))
    if args.json:
        _print_json({"servers": rows})
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
            _print_json({"pins": [p.to_json() for p in pins]})
        elif not pins:
            print(f"no pinned servers ({trust.path})")
        for p in [] if args.json else pins:
            print(f"{p.site!r}  server {p.server_fp}  vendor {p.vendor_fp}")
            print(f"  pinned {p.pinned_at} ({p.source}){' at ' + p.address if p.address else ''}")
        return 0
    if args.forget is not None:
        vendor = _vendor_key(args.vendor)
        gone = trust.forget(args.forget, None if vendor is None else _fp(vendor))
        if not gone:
            raise CliError(f"no pin for site {args.forget!r}; see lanlic trust --list")
        if args.json:
            _print_json({"forgotten": [p.to_json() for p in gone]})
        else:
            for p in gone:
                print(f"forgot {p.site!r} (server {p.server_fp}, vendor {p.vendor_fp})")
        return 0
    return _trust_server(args, trust)


def _fp(vendor: Any) -> str:
    from lanlic.laptop.trust import fingerprint_of

    return fingerprint_of(vendor)


def _trust_server(args: argparse.Namespace, trust: Any) -> int:
    from lanlic.net.client import format_address, parse_address
    from lanlic.net.finder import PROBE_TIMEOUT, probe

    try:
        address = parse_address(args.server)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    where = format_address(address)

    async def run() -> Any:
        loop = asyncio.get_running_loop()
        return await probe(address, deadline=loop.time() + PROBE_TIMEOUT)

    ident = _run_async(run()).identity
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
    if old is not None and old.server_key == ident.server_key:
        if args.json:
            _print_json({**facts, "pinned": True, "changed": False})
        return 0
    if args.expect is not None:
        if args.expect.strip().lower() != ident.server_fp:
            raise CliError(
                f"{where} presents {ident.server_fp}, not the expected {args.expect}: not pinned"
            )
    elif not args.yes:
        if not sys.stdin.isatty():
            raise CliError("not pinned: confirm with --yes, or --expect FINGERPRINT")
        answer = input(f"pin {ident.server_fp} for {ident.site!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise CliError("not pinned")
    trust.pin(ident, where)
    if args.json:
        _print_json({**facts, "pinned": True, "changed": True})
    else:
        print(f"pinned {ident.server_fp} for {ident.site!r}")
    return 0


def _fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_status(args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        async with await _connect(args, None) as client:
            return await client.status()

    status: dict[str, Any] = _run_async(run())
    if args.json:
        status.pop("t", None)
        status.pop("id", None)
        _print_json(status)
        return 0
    print(f"{status['customer']} (key expires {status['expires']}), server {status['server_id']}")
    print(f"{'PRODUCT':<22} {'SEATS':>5} {'IN USE':>6} {'BORROWED':>8} {'HELD':>4} {'FREE':>5}")
    for p in status["products"]:
        name = p["name"] + (" (add-on)" if p["addon"] else "")
        held = p.get("held", 0)
        print(f"{name:<22} {p['seats']:>5} {p['in_use']:>6} {p['borrowed']:>8} {held:>4}"
              f" {p['free']:>5}")  # fmt: skip
    for p in status["products"]:
        if p.get("held") and p.get("held_until"):
            print(f"  {p['name']}: {p['held']} held for clients reconnecting after a restart,"
                  f" until {_fmt_time(p['held_until'])} or each is reclaimed")  # fmt: skip
    for p in status["products"]:
        for h in p["holders"]:
            app = f" {h['app']}" if h["app"] else ""
            ver = f" v{h['version']}" if h["version"] else ""
            print(
                f"  {p['name']}: {h['user']}@{h['host']}{app}{ver} since {_fmt_time(h['since'])},"
                f" last heartbeat {_fmt_time(h['last_heartbeat'])}"
            )
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
            f"  {b['product']}: {b['user']}@{b['host']} from {_fmt_time(b['start'])}"
            f" until {_fmt_time(b['end'])} ({b['borrow_id']})"
        )
    return 0


# ------------------------------------------------------------------------------------- main


def cmd_bench(args: argparse.Namespace) -> int:
    from lanlic.bench.run import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lanlic", description="LAN floating-license server")
    parser.add_argument("--version", action="version", version=f"lanlic {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str, p: Any = sub) -> Any:
        sp = p.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=fn)
        return sp

    vendor = sub.add_parser("vendor", help="vendor tools: make keys, issue network keys")
    vsub = vendor.add_subparsers(dest="vendor_command", required=True)
    sp = add("keygen", cmd_vendor_keygen, "make a vendor key pair", vsub)
    sp.add_argument("--out", required=True, help="folder for vendor.key and vendor.pub")
    sp = add("issue", cmd_vendor_issue, "issue a signed network key", vsub)
    sp.add_argument("--vendor-key", required=True, help="the vendor's private key file")
    sp.add_argument("--customer", required=True)
    sp.add_argument("--expires", required=True, help="last valid day, YYYY-MM-DD")
    sp.add_argument("--borrow-kind", required=True, choices=["act", "key"])
    sp.add_argument(
        "--product",
        action="append",
        required=True,
        help="NAME:SEATS[:borrowable=N][:max-days=N][:versions=LO-HI][:addon] (repeatable)",
    )
    sp.add_argument("--out", required=True, help="the network key file to write")

    sp = add("serve", cmd_serve, "run the licence server")
    sp.add_argument("--license", help="the network key file")
    sp.add_argument("--vendor-pub", help="the vendor's public key file")
    sp.add_argument("--demo", action="store_true", help="serve a demo key, no setup needed")
    sp.add_argument("--data", help="data folder (default: ~/.local/share/lanlic)")
    sp.add_argument("--host", help="address to listen on (default 0.0.0.0; demo: 127.0.0.1)")
    sp.add_argument("--port", type=int, help=f"port (default {DEMO_PORT}; 0 picks a free one)")
    sp.add_argument("--lease", type=float, default=60.0, help="lease period, s (default 60)")
    sp.add_argument("--heartbeat", type=float, default=20.0, help="heartbeat, s (default 20)")
    sp.add_argument(
        "--admin-port",
        type=int,
        help="admin page port (default 7767; with --port 0, a free one; 0 picks a free one)",
    )
    sp.add_argument(
        "--admin-host",
        default="127.0.0.1",
        help="admin page address (default 127.0.0.1; any other needs 'lanlic admin password')",
    )
    sp.add_argument("--no-admin", action="store_true", help="serve no admin page")

    sp.add_argument("--no-mdns", action="store_true", help="do not announce over mDNS")
    sp.add_argument(
        "--interface",
        action="append",
        metavar="IP",
        help="announce on this interface's address (repeatable; default: the listen address's "
        "interface, every interface only when listening on 0.0.0.0)",
    )

    def add_find(sp: Any) -> None:
        sp.add_argument(
            "--server", help="HOST:PORT (default: $LANLIC_SERVER, else find it over mDNS)"
        )
        sp.add_argument(
            "--interface", action="append", metavar="IP", help="browse on this interface only"
        )
        sp.add_argument("--vendor", help="only servers of this vendor: fingerprint or .pub file")
        sp.add_argument(
            "--discover-timeout", type=float, default=3.0, help="seconds to look (default 3)"
        )

    sp = add("checkout", cmd_checkout, "take a seat and hold it")
    sp.add_argument("product")
    add_find(sp)
    sp.add_argument("--version", dest="version", help="the application's version")
    sp.add_argument("--hold", type=float, help="seconds to hold (default: until Ctrl-C)")
    sp.add_argument(
        "--wait", action="store_true",
        help="with no seat free, wait in the server's queue (first come, first served), "
        "printing the place in line as it changes",
    )  # fmt: skip
    sp.add_argument(
        "--timeout", type=float, metavar="S", help="with --wait: give up after S seconds (no_seat)"
    )
    sp.add_argument("--app", default="lanlic-cli", help="application name shown to the admin")
    sp.add_argument(
        "--portable-key", metavar="PATH", help="use a licence borrowed into this portable key"
    )

    sp = add("status", cmd_status, "show products, seats and holders")
    add_find(sp)

    sp = add("servers", cmd_servers, "list the licence servers announced on the LAN")
    sp.add_argument("--timeout", type=float, default=2.0, help="seconds to listen (default 2)")
    sp.add_argument(
        "--interface", action="append", metavar="IP", help="browse on this interface only"
    )
    sp.add_argument("--vendor", help="only servers of this vendor: fingerprint or .pub file")

    sp = add("trust", cmd_trust, "pin, list or forget trusted server keys")
    what = sp.add_mutually_exclusive_group(required=True)
    what.add_argument("--server", metavar="HOST:PORT", help="pin the key this server presents")
    what.add_argument("--list", action="store_true", help="list the pinned servers")
    what.add_argument("--forget", metavar="SITE", help="drop the pin of a site (customer name)")
    sp.add_argument("--vendor", help="with --forget: only this vendor's site")
    sp.add_argument("--expect", metavar="FINGERPRINT", help="pin only if the key is this one")
    sp.add_argument("--yes", action="store_true", help="pin without asking")

    from lanlic.bench import add_arguments as add_bench_arguments

    sp = sub.add_parser(
        "bench",
        help="load a server on loopback beside the bare-asyncio ceiling and Redis",
        description="Load a lanlic server on loopback beside the bare-asyncio ceiling and Redis "
        "(python tools/bench.py is the same tool).",
    )
    add_bench_arguments(sp)
    sp.set_defaults(func=cmd_bench)

    admin = sub.add_parser("admin", help="administration of the server on this machine")
    asub = admin.add_subparsers(dest="admin_command", required=True)
    from lanlic import cli_admin, cli_borrow

    cli_borrow.register(add, add_find, asub)
    from lanlic.admin import command as admin_command

    admin_command.register(add, asub)
    cli_admin.register(add, asub, sub.choices["serve"])
    from lanlic.ui.command import add_parser as add_gui_parser

    add_gui_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except LanlicError as exc:
        if getattr(args, "json", False):
            _print_json({"error": exc.code, "message": exc.message})
        print(f"lanlic: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
