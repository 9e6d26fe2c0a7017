"""``lanlic serve``: run the licence server, and ``serve --restore``, which first puts a backup
(``lanlic admin backup``) in place as the data folder's database.

The server's timing is checked before anything starts: a lease must outlast a heartbeat plus the
stall threshold (SPEC section 6), or a client that renews on time loses its seat to a hiccup of
the server's loop, and a zero heartbeat would have each client renew in a busy loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from lanlic import __version__, osdeps
from lanlic.cli.common import (
    DB_NAME,
    DEMO_PORT,
    KEY_TERMS,
    CannotListen,
    CliError,
    Commands,
    FileProblem,
    checked_interfaces,
    default_data_folder,
    number,
    port_number,
    print_json,
    run_async,
    today,
)
from lanlic.errors import NetworkKeyError

__all__ = ["register", "restore"]

#: Allocations between two young collections of a serving process (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000
#: Young collections between two of the middle generation, and those between two full ones
#: (the full ones also wait for a quarter more long-lived objects, CPython's own rule).
GC_OLDER_THRESHOLDS = (20, 100)

#: The files SQLite keeps beside a database; they belong to it and move with it.
_SIDE_FILES = ("-wal", "-shm", "-journal", "-ledger")  # the ledger belongs to its database


def key_terms(key: Any) -> dict[str, dict[str, int]]:
    return {
        p.name: {"seats": p.seats, "borrowable": p.borrowable, "max_days": p.max_borrow_days}
        for p in key.products
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def check_timing(lease: float, heartbeat: float, *, short_ok: bool = False) -> None:
    """Refuse a lease that a client renewing every ``heartbeat`` could lose (SPEC section 6):
    above the heartbeat always, and above the heartbeat plus the stall threshold unless
    ``short_ok`` (tests and benchmarks, which want leases to run out within seconds)."""
    from lanlic.core.clock import STALL_THRESHOLD

    if lease <= heartbeat:
        raise CliError(
            f"--lease {lease:g} must be longer than --heartbeat {heartbeat:g}: a client renews "
            f"every heartbeat, so a lease no longer than that runs out between two renewals"
        )
    if lease <= heartbeat + STALL_THRESHOLD and not short_ok:
        raise CliError(
            f"--lease {lease:g} must be above --heartbeat {heartbeat:g} plus the stall "
            f"threshold of {STALL_THRESHOLD:g} s (SPEC section 6), so above "
            f"{heartbeat + STALL_THRESHOLD:g} s; the defaults are 60 and 20"
        )


def settle_gc() -> None:
    """Once the server is up: move everything made so far (the imported modules, the key, the
    store's state) out of the cyclic collector's sight, and collect the young less often.

    A burst of 10,000 connections keeps every object it makes (connection, session, lease), so
    the collector's passes find nothing, yet with CPython's defaults they cost the burst bench's
    server about 0.1 s of its 1.7 s (gc.callbacks: 230 young passes, 20 middle ones and 2-3
    full ones of 18-66 ms, each a pause of the loop), the full ones walking the 100k+ objects
    of the startup again. Frozen (``gc.freeze``), those are never walked again, and with a
    young threshold of 10,000 the same burst spent 0.016 s in 14 young passes and no full one.
    Garbage is still freed: by reference counts at once, cycles at the next pass."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)


def cmd_serve(args: argparse.Namespace) -> int:
    from lanlic.core.service import LicenseService, ServiceConfig
    from lanlic.net.server import LicenseServer
    from lanlic.server.datadir import DataDir
    from lanlic.store import Store
    from lanlic.vendorkeys import load_vendor_public

    if args.heartbeat is None:
        args.heartbeat = args.lease / 3  # room for two missed renewals (SPEC section 9)
    check_timing(args.lease, args.heartbeat, short_ok=args.allow_short_lease)
    if args.demo:
        from lanlic.server.demo import ensure_demo

        data = Path(args.data) if args.data else default_data_folder() / "demo"
        try:
            osdeps.make_private_dir(data)
            license_path, pub_path = ensure_demo(data, today())
        except OSError as exc:
            raise FileProblem.of(exc, str(data)) from None
        host = args.host or "127.0.0.1"
        port = DEMO_PORT if args.port is None else args.port
    else:
        if not args.license or not args.vendor_pub:
            raise CliError("serve needs --license FILE and --vendor-pub FILE (or --demo)")
        license_path, pub_path = Path(args.license), Path(args.vendor_pub)
        data = Path(args.data) if args.data else default_data_folder()
        host = args.host or "0.0.0.0"  # noqa: S104 - a LAN server listens on the LAN
        port = DEMO_PORT if args.port is None else args.port
    from lanlic.admin.keys import INSTALLED_KEY, choose_network_key, read_installed_key

    try:
        vendor_pub = load_vendor_public(pub_path)
    except OSError as exc:
        raise FileProblem.of(exc, f"--vendor-pub {pub_path}") from None
    try:
        # A renewed key installed from the admin page is served in place of --license.
        choice = choose_network_key(
            license_path.read_bytes(), read_installed_key(data), vendor_pub, today()
        )
        key = choice.key
        key_file = data / INSTALLED_KEY if choice.installed else license_path
        if choice.note:
            print(f"lanlic: note: {choice.note}; serving {key_file}", file=sys.stderr)
    except OSError as exc:
        raise FileProblem.of(exc, f"--license {license_path}") from None
    except NetworkKeyError as exc:
        exc.message = f"{license_path}: {exc.message}"
        raise
    cluster = cluster_store(args, data)  # refused before the data folder is touched
    datadir = DataDir(data)
    datadir.lock()
    exposure = datadir.exposure()
    if exposure is not None:
        print(f"lanlic: warning: {exposure}", file=sys.stderr, flush=True)
    if cluster is not None:
        try:
            return _serve_cluster(args, cluster, key, datadir, host, port, vendor_pub, key_file)
        finally:
            datadir.clear_address()
            datadir.unlock()
    try:
        if getattr(args, "restore", None):
            restore_for_serve(args, data)
        store = Store(data / DB_NAME)
        try:  # acknowledged borrows missing (a lost WAL): refuse, unless told to go on
            for note in store.check_ledger(args.accept_lost_borrows, time.time()):
                print(f"lanlic: warning: {note}", file=sys.stderr, flush=True)
        except BaseException:
            store.close()
            raise
        # What the key allows, for ``lanlic admin policy`` to check a change against.
        store.set_meta(KEY_TERMS, json.dumps(key_terms(key)))
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
            raise CannotListen.of(exc, host, port) from None
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
        settle_gc()  # the server is up: what exists now lives as long as it
        datadir.write_address(h, p)
        if args.json:
            _print_listening(
                service, key, h, p, data,
                admin_host=admin.host if admin else None,
                admin_port=admin.port if admin else None,
            )  # fmt: skip
        else:
            print(
                f"lanlic {__version__}: serving {key.customer!r} on {h}:{p}\n"
                f"  server id {service.server_id}, data folder {data}\n"
                f"  products: "
                + ", ".join(f"{x.name} ({x.seats} seats)" for x in key.products)
                + f"\n  try: lanlic checkout {key.products[0].name} --server {h}:{p}"
                + (f"\n  admin page: {admin.url}" if admin else "")
                + _build_line()
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
        run_async(run())
    finally:
        store.close()
        problem = datadir.clear_address()  # the folder may have gone read-only: one line
        datadir.unlock()
        if problem is not None:
            print(f"lanlic: warning: {problem}", file=sys.stderr, flush=True)
    return 0


# ---------------------------------------------------------------------------------- cluster


class ClusterPlan:
    """``--store etcd://...``: where etcd is and how to reach it."""

    def __init__(self, endpoints: list[str], tls: Any) -> None:
        self.endpoints = endpoints
        self.tls = tls


def _build_line() -> str:
    """Names the optional compiled build (setup.py) when it is the one running."""
    from lanlic import compiled_modules

    compiled = compiled_modules()
    return f"\n  compiled build: {', '.join(compiled)}" if compiled else ""


def _print_listening(
    service: Any, key: Any, host: str, port: int, data: Path, **extra: Any
) -> None:
    """The one "listening" event of `serve --json`; a cluster member adds its store's fields."""
    print_json(
        {
            "event": "listening",
            "host": host,
            "port": port,
            "server_id": service.server_id,
            "customer": key.customer,
            "data": str(data),
            **extra,
        }
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def etcd_endpoints(text: str) -> list[str]:
    """``etcd://HOST:PORT[,HOST:PORT...]`` to its endpoints (CliError when malformed)."""
    rest = text[len("etcd://") :]
    out = []
    for item in rest.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdecimal() or not 0 < int(port) < 65536:
            raise CliError(
                f"--store {text}: {item.strip()!r} is not HOST:PORT "
                "(etcd://HOST:PORT[,HOST:PORT...], the etcd members' client URLs)"
            )
        out.append(f"{host}:{int(port)}")
    return out


def cluster_store(args: argparse.Namespace, data: Path) -> ClusterPlan | None:
    """``--store``: None for the data folder's SQLite (the default), else the etcd plan, after
    refusing what a cluster cannot do yet (docs/cluster.md), each with why."""
    store = args.store
    etcd_files = (args.etcd_cacert, args.etcd_cert, args.etcd_key)
    if store == "sqlite":
        if any(etcd_files):
            raise CliError("--etcd-cacert, --etcd-cert and --etcd-key go with --store etcd://...")
        return None
    if not store.startswith("etcd://"):
        raise CliError(f"--store {store}: give sqlite (the default) or etcd://HOST:PORT[,...]")
    endpoints = etcd_endpoints(store)
    tls = None
    if any(etcd_files):
        if not all(etcd_files):
            raise CliError("etcd over TLS needs all three: --etcd-cacert, --etcd-cert, --etcd-key")
        from lanlic.cluster.etcd import EtcdTls

        try:
            ca, cert, key = (Path(f).read_bytes() for f in etcd_files)
        except OSError as exc:
            raise FileProblem.of(exc, str(exc.filename)) from None
        tls = EtcdTls(ca=ca, cert=cert, key=key)
    elif not all(_is_loopback(e.rpartition(":")[0]) for e in endpoints):
        raise CliError(
            f"--store {store}: etcd beyond this machine needs TLS with a client certificate "
            "(--etcd-cacert, --etcd-cert, --etcd-key): whoever can write to etcd can mint seats, "
            "so a plaintext etcd is allowed on loopback only"
        )
    refused = [
        (args.restore, "--restore", "a member's database holds its history only"),
        (args.accept_lost_borrows, "--accept-lost-borrows", "a cluster keeps no borrows yet"),
    ]  # fmt: skip
    from lanlic.server.policyfile import POLICY_FILE

    if (data / POLICY_FILE).exists():
        refused.append(
            (True, f"{data / POLICY_FILE}",
             "a seat policy needs shared state in etcd, not built yet")
        )  # fmt: skip
    for used, what, why in refused:
        if used:
            raise CliError(f"--store etcd:// cannot serve with {what}: {why} (docs/cluster.md)")
    return ClusterPlan(endpoints, tls)


def cluster_prefix(key: Any) -> str:
    """The etcd prefix of a network key's pool: members serving the same key share it, and
    another key's members (another site, or a test) never see its seats."""
    import hashlib

    digest = hashlib.sha256(f"{key.vendor_fp}\0{key.serial}".encode()).hexdigest()[:16]
    return f"/lanlic/{digest}"


def _serve_cluster(
    args: argparse.Namespace,
    plan: ClusterPlan,
    key: Any,
    datadir: Any,
    host: str,
    port: int,
    vendor_pub: Any,
    key_file: Path,
) -> int:
    """Serve as one member of a cluster on etcd (docs/cluster.md)."""
    import socket

    from lanlic.cluster.etcd import EtcdSeats, Unreachable
    from lanlic.cluster.history import MemberHistoryStore
    from lanlic.cluster.service import ClusterService, etcd_ttl_for
    from lanlic.core.service import ServiceConfig
    from lanlic.net.server import LicenseServer

    config = ServiceConfig(lease_seconds=args.lease, heartbeat_seconds=args.heartbeat)
    server_key = datadir.server_key()

    async def run() -> None:
        seats = EtcdSeats(
            plan.endpoints,
            prefix=cluster_prefix(key),
            products={p.name: p.seats for p in key.products},
            member=f"{socket.gethostname()}:{os.getpid()}",
            etcd_ttl=etcd_ttl_for(args.lease),
            client_lease=args.lease,
            tls=plan.tls,
        )
        service = ClusterService(key, server_key, seats, config)
        try:
            await service.start()
        except Unreachable as exc:
            await seats.close()
            raise CliError(
                f"--store: etcd at {', '.join(plan.endpoints)} did not answer: {exc}"
            ) from None
        # The member's own history (what it served), in its data folder as a single server's
        # (`lanlic admin history --data` reads it); each batch written there is also put in
        # etcd, where every member's admin page reads the cluster's (docs/cluster.md).
        try:
            history = MemberHistoryStore(datadir.path / DB_NAME, service.history)
        except BaseException:
            await service.close()
            raise
        server = LicenseServer(service, host, port, history_store=history)
        try:
            await server.start()
        except OSError as exc:
            await service.close()
            history.close()
            raise CannotListen.of(exc, host, port) from None
        try:
            announcer = (
                None if args.no_mdns else _announcer(service, server, args.interface, member=True)
            )
        except CliError:
            await server.stop()
            await service.close()
            history.close()
            raise
        stop = asyncio.Event()
        osdeps.on_stop(asyncio.get_running_loop(), stop.set)
        announced: list[asyncio.Future[bool]] = []
        admin = None
        if not args.no_admin:
            from lanlic.admin.app import serve_admin

            try:
                admin = await serve_admin(
                    server, args.admin_host, args.admin_port, port, vendor_pub, datadir.path,
                    key_file,
                    lambda: _discovery_state(announcer, announced[0] if announced else None),
                    cluster=tuple(plan.endpoints),
                )  # fmt: skip
            except BaseException:
                await server.stop()
                await service.close()
                history.close()
                raise
        h, p = server.address
        settle_gc()  # the server is up: what exists now lives as long as it
        datadir.write_address(h, p)
        if args.json:
            _print_listening(
                service, key, h, p, datadir.path,
                store="etcd", etcd=plan.endpoints, etcd_lease=seats.lease_id,
                admin_host=admin.host if admin else None,
                admin_port=admin.port if admin else None,
            )  # fmt: skip
        else:
            print(
                f"lanlic {__version__}: serving {key.customer!r} on {h}:{p}, a member of a "
                f"cluster on etcd {', '.join(plan.endpoints)}\n"
                f"  server id {service.server_id} (server.key in {datadir.path}: the same on "
                "every member)\n"
                + (f"  admin page: {admin.url} (the whole cluster's seats)\n" if admin else "")
                + "  not in a cluster yet: seat policy (docs/cluster.md)\n"
                "  stop with Ctrl-C",
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
            await announcer.close()
        if admin is not None:
            await admin.stop()
        await server.stop()
        await service.close()
        history.close()
        if not args.json:
            print("lanlic: stopped", flush=True)

    run_async(run())
    return 0


def _announcer(
    service: Any, server: Any, interfaces: list[str] | None, member: bool = False
) -> Any:
    """``member``: a cluster member, announced under a host name of its own (host and port)."""
    import socket

    from lanlic.net.announce import announcer_for

    who = f"{socket.gethostname()}:{server.port}" if member else ""
    try:
        return announcer_for(
            service, server.host, server.port, checked_interfaces(interfaces), member=who
        )
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
        print_json({"event": "announced", "name": announcer.name, "interfaces": where})
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


# ---------------------------------------------------------------------------------- restore


def _aside_name(db: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    base = db.with_name(f"{db.name}.before-restore-{stamp}")
    aside, n = base, 1
    while any(Path(f"{aside}{s}").exists() for s in ("", *_SIDE_FILES)):
        aside, n = base.with_name(f"{base.name}.{n}"), n + 1
    return aside


def restore(
    backup: Path, folder: Path, *, force: bool, now: float
) -> tuple[dict[str, int], Path | None, set[str]]:
    """Put ``backup`` in place as ``folder``'s database; the caller holds the folder's lock.

    The old database, if any, is renamed aside (``lanlic.db.before-restore-<UTC time>``, with its
    WAL), never deleted, and only with ``force``. The backup is checked and copied into the folder
    first, so a refused or failed copy changes nothing. Returns the backup's counts, where the
    old database went, and the server ids that issued the backup's active borrows.
    """
    from lanlic.core.borrowing import parse_borrowed_file
    from lanlic.store import Store

    db = folder / DB_NAME
    if not backup.is_file():
        raise CliError(f"--restore: there is no file {backup}")
    if db.exists() and db.resolve() == backup.resolve():
        raise CliError(f"--restore: {backup} is the data folder's own database")
    if db.exists() and not force:
        raise CliError(
            f"{db} exists already; to put the backup in its place pass --force (the old "
            f"database is kept, renamed {DB_NAME}.before-restore-<time>)"
        )
    source = Store.open_readonly(backup)  # refuses a corrupt or newer backup
    staged = folder / f"{DB_NAME}.restoring"
    try:
        counts = source.summary()
        issuers = set()
        for b in source.active_borrows():
            try:
                issuers.add(parse_borrowed_file(b.file)[0].server_id)
            except Exception:  # noqa: S112 - an unreadable file names no issuer
                continue
        source.backup(staged)
    finally:
        source.close()
    aside = None
    old = [s for s in ("", *_SIDE_FILES) if Path(f"{db}{s}").exists()]
    if old:
        aside = _aside_name(db, now)
        # The WAL first: a WAL left beside the restored file would be replayed into it.
        for suffix in sorted(old, key=lambda s: s == ""):
            os.replace(f"{db}{suffix}", f"{aside}{suffix}")
    os.replace(staged, db)
    osdeps.fsync_dir(folder)
    return counts, aside, issuers


def restore_for_serve(args: argparse.Namespace, folder: Path) -> None:
    """``serve --restore FILE``: restore, say so, and warn when the server key does not match."""
    from lanlic.core import signing
    from lanlic.store import StoreError

    backup = Path(args.restore)
    try:
        counts, aside, issuers = restore(backup, folder, force=args.force, now=time.time())
    except StoreError as exc:
        exc.message = f"--restore: {exc.message} (nothing was changed)"
        raise
    except OSError as exc:
        raise FileProblem.of(exc, f"--restore {backup}") from None
    key_path = folder / "server.key"
    key_id = None
    if key_path.exists():
        try:
            key_id = signing.fingerprint(
                signing.private_from_pem(key_path.read_bytes()).public_key()
            )
        except Exception:
            key_id = None  # the server's start says what is wrong with it
    warning = None
    if not key_path.exists():
        warning = (
            f"{folder} has no server.key: this server gets a new identity, which the laptops "
            "that enrolled with or borrowed from the old one refuse (server_key_changed); stop "
            "it, copy server.key from the old server's data folder, and start it again"
        )
    elif key_id is not None and issuers and key_id not in issuers:
        warning = (
            f"the backup's active borrows were issued by {', '.join(sorted(issuers))}, but "
            f"{key_path} is {key_id}: copy server.key from the server that made the backup"
        )
    if warning is not None:
        print(f"lanlic: warning: {warning}", file=sys.stderr, flush=True)
    if args.json:
        print(
            json.dumps(
                {"event": "restored", "from": str(backup), "database": str(folder / DB_NAME),
                 "set_aside": None if aside is None else str(aside), **counts}
            ),
            flush=True,
        )  # fmt: skip
    else:
        kept = "" if aside is None else f"; the previous database is kept as {aside}"
        print(
            f"restored {backup} into {folder / DB_NAME}: "
            f"{_plural(counts['active_borrows'], 'active borrow')}, "
            f"{_plural(counts['enrollments'], 'enrollment')}{kept}",
            flush=True,
        )


# ------------------------------------------------------------------------------- arguments


def register(commands: Commands) -> None:
    data = default_data_folder()
    sp = commands.add("serve", cmd_serve, "run the licence server")
    sp.add_argument("--license", metavar="FILE", help="the network key file")
    sp.add_argument("--vendor-pub", metavar="FILE", help="the vendor's public key file")
    sp.add_argument("--demo", action="store_true", help="serve a demo key, no setup needed")
    sp.add_argument(
        "--data",
        metavar="DIR",
        help=f"data folder (default: $LANLIC_DATA, else {data}; --demo: {data / 'demo'}); "
        "the admin commands use the same default. Its policy.toml, the seat policy (README: "
        "Seat policy), is applied at start and again within a second of each change",
    )
    sp.add_argument(
        "--host",
        help="address to listen on (default 0.0.0.0, every interface of the LAN; --demo: "
        "127.0.0.1, this machine only)",
    )
    sp.add_argument(
        "--port", type=port_number, help=f"port (default {DEMO_PORT}; 0 picks a free one)"
    )
    sp.add_argument(
        "--lease",
        type=number(0, low_open=True, unit=" s"),
        default=60.0,
        metavar="S",
        help="lease period, s (default 60; above the heartbeat plus 3 s)",
    )
    sp.add_argument(
        "--heartbeat",
        type=number(0, low_open=True, unit=" s"),
        metavar="S",
        help="how often clients renew, s (default: a third of the lease, so 20)",
    )
    sp.add_argument(
        "--allow-short-lease",
        action="store_true",
        help="for tests and benchmarks: a lease within the heartbeat plus 3 s (a stall of the "
        "server just under 3 s may then cost a client its seat)",
    )
    sp.add_argument(
        "--admin-port",
        type=port_number,
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
    sp.add_argument(
        "--restore",
        metavar="FILE",
        help="first put this backup (lanlic admin backup) in place as the data folder's "
        "database; copy the old server's server.key into the folder too",
    )
    sp.add_argument(
        "--force",
        action="store_true",
        help="with --restore: set an existing database aside (renamed, never deleted)",
    )
    sp.add_argument(
        "--store",
        default="sqlite",
        metavar="STORE",
        help="where the seats are kept: sqlite (default: the data folder's database, one "
        "server) or etcd://HOST:PORT[,HOST:PORT...] (several servers share one pool: "
        "docs/cluster.md)",
    )
    sp.add_argument("--etcd-cacert", metavar="FILE", help="CA certificate of etcd's TLS (PEM)")
    sp.add_argument(
        "--etcd-cert", metavar="FILE", help="this member's client certificate for etcd (PEM)"
    )
    sp.add_argument("--etcd-key", metavar="FILE", help="the client certificate's key (PEM)")
    sp.add_argument(
        "--accept-lost-borrows",
        action="store_true",
        help="start although the database lacks borrows, returns or enrollments that clients "
        "were told about (its WAL was lost); what was lost is written to the history",
    )
