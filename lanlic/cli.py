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
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lanlic import __version__
from lanlic.errors import LanlicError, NetworkKeyError

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
    from lanlic.core.vendorfiles import write_vendor_keypair

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
    from lanlic.core.vendorfiles import load_vendor_private

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
    from lanlic.core import netkey
    from lanlic.core.service import LicenseService, ServiceConfig
    from lanlic.core.vendorfiles import load_vendor_public
    from lanlic.datadir import DataDir, default_data_dir
    from lanlic.net.server import LicenseServer

    if args.demo:
        from lanlic.demo import ensure_demo

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
    try:
        key = netkey.verify_network_key(
            license_path.read_bytes(), load_vendor_public(pub_path), _today()
        )
    except OSError as exc:
        raise CliError(f"cannot read {license_path}: {exc.strerror}") from None
    except NetworkKeyError as exc:
        exc.message = f"{license_path}: {exc.message}"
        raise
    datadir = DataDir(data)
    datadir.lock()
    config = ServiceConfig(lease_seconds=args.lease, heartbeat_seconds=args.heartbeat)
    service = LicenseService(key, datadir.server_key(), config)

    async def run() -> None:
        server = LicenseServer(service, host, port)
        try:
            await server.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        h, p = server.address
        if args.json:
            _print_json(
                {
                    "event": "listening",
                    "host": h,
                    "port": p,
                    "server_id": service.server_id,
                    "customer": key.customer,
                    "data": str(data),
                }
            )
        else:
            print(
                f"lanlic {__version__}: serving {key.customer!r} on {h}:{p}\n"
                f"  server id {service.server_id}, data folder {data}\n"
                f"  products: "
                + ", ".join(f"{x.name} ({x.seats} seats)" for x in key.products)
                + f"\n  try: lanlic checkout {key.products[0].name} --server {h}:{p}"
                + "\n  stop with Ctrl-C",
                flush=True,
            )
        await stop.wait()
        await server.stop()
        if not args.json:
            print("lanlic: stopped", flush=True)

    try:
        _run_async(run())
    finally:
        datadir.unlock()
    return 0


# ---------------------------------------------------------------------------- client side


def cmd_checkout(args: argparse.Namespace) -> int:
    from lanlic.net.client import Client, Seat

    async def run() -> int:
        lost = asyncio.Event()

        def on_lost(seat: Seat, reason: LanlicError) -> None:
            lost.set()

        async with Client(args.server, app=args.app, on_seat_lost=on_lost) as client:
            seat = await client.acquire(args.product, args.version or "")
            # Before the "checked out" line: a signal sent as soon as it is read must release.
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            if args.json:
                _print_json(
                    {
                        "event": "checked_out",
                        "product": seat.product,
                        "lease": seat.lease_id.hex(),
                        "server_id": client.server_id,
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


def _fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_status(args: argparse.Namespace) -> int:
    from lanlic.net.client import Client

    async def run() -> dict[str, Any]:
        async with Client(args.server) as client:
            return await client.status()

    status: dict[str, Any] = _run_async(run())
    if args.json:
        status.pop("t", None)
        status.pop("id", None)
        _print_json(status)
        return 0
    print(f"{status['customer']} (key expires {status['expires']}), server {status['server_id']}")
    print(f"{'PRODUCT':<22} {'SEATS':>5} {'IN USE':>6} {'BORROWED':>8} {'FREE':>5}")
    for p in status["products"]:
        name = p["name"] + (" (add-on)" if p["addon"] else "")
        print(f"{name:<22} {p['seats']:>5} {p['in_use']:>6} {p['borrowed']:>8} {p['free']:>5}")
    for p in status["products"]:
        for h in p["holders"]:
            app = f" {h['app']}" if h["app"] else ""
            ver = f" v{h['version']}" if h["version"] else ""
            print(
                f"  {p['name']}: {h['user']}@{h['host']}{app}{ver} since {_fmt_time(h['since'])},"
                f" last heartbeat {_fmt_time(h['last_heartbeat'])}"
            )
    return 0


# ------------------------------------------------------------------------------------- main


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

    sp = add("checkout", cmd_checkout, "take a seat and hold it")
    sp.add_argument("product")
    sp.add_argument("--server", help="HOST:PORT (default: $LANLIC_SERVER)")
    sp.add_argument("--version", dest="version", help="the application's version")
    sp.add_argument("--hold", type=float, help="seconds to hold (default: until Ctrl-C)")
    sp.add_argument("--app", default="lanlic-cli", help="application name shown to the admin")

    sp = add("status", cmd_status, "show products, seats and holders")
    sp.add_argument("--server", help="HOST:PORT (default: $LANLIC_SERVER)")
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
