"""The borrowing commands of ``lanlic``: enroll, borrow, return, info, enable, admin enroll.

Kept apart from cli.py because they share a shape of their own: each finds the laptop's
container (``--portable-key`` for the portable kind), and most reach the server the same way as
``checkout`` does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanlic.errors import ServerUnavailable

__all__ = ["register"]


def _borrower(args: argparse.Namespace) -> Any:
    from lanlic.laptop.borrower import Borrower

    key = Path(args.portable_key) if getattr(args, "portable_key", None) else None
    return Borrower(portable_key=key)


def _out(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(obj, default=str), flush=True)
    else:
        print(text, flush=True)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _run(coro: Any) -> Any:
    from lanlic.cli import _run_async

    return _run_async(coro)


async def _with_client(args: argparse.Namespace, product: str | None, fn: Any) -> Any:
    from lanlic.cli import _connect

    client = await _connect(args, product)
    try:
        return await fn(client)
    finally:
        await client.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------------- commands


def cmd_enroll(args: argparse.Namespace) -> int:
    b = _borrower(args)
    if args.request:
        Path(args.request).write_bytes(b.enrollment_request(_user(), socket.gethostname()))
        _out(
            args,
            {"request": args.request},
            f"wrote the enrollment request {args.request}: give it to your licence "
            "administrator, then run: lanlic enroll --response RESPONSE-FILE",
        )
        return 0
    if args.response:
        resp = b.complete_enrollment(Path(args.response).read_bytes())
    else:

        async def go(client: Any) -> Any:
            return await b.enroll(client, _user(), socket.gethostname())

        resp = _run(_with_client(args, None, go))
    _out(
        args,
        {"enrolled": True, "server_id": resp.server_id, "customer": resp.customer,
         "kind": resp.request.kind, "container": str(b.home_path)},
        f"enrolled with {resp.customer!r} (server {resp.server_id}); "
        f"this {'machine' if resp.request.kind == 'act' else 'portable key'} can borrow now",
    )  # fmt: skip
    return 0


def cmd_borrow(args: argparse.Namespace) -> int:
    b = _borrower(args)
    until = None
    if args.until:
        try:
            until = dt.datetime.fromisoformat(args.until)
        except ValueError:
            from lanlic.cli import CliError

            raise CliError(f"--until must be a date (YYYY-MM-DD), not {args.until!r}") from None
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.UTC)
    if args.days is None and until is None:
        from lanlic.cli import CliError

        raise CliError("say how long: --days N or --until DATE")

    async def go(client: Any) -> Any:
        return await b.borrow(client, args.product, days=args.days, until=until,
                              version=args.version or "")  # fmt: skip

    lic = _run(_with_client(args, args.product, go))
    _out(
        args,
        {"product": lic.product, "borrow_id": lic.borrow_id, "start": lic.start, "end": lic.end,
         "kind": lic.kind},
        f"borrowed {lic.product} until {_when(lic.end)}; it works with no network until then, "
        f"and returns to the pool by itself at the end (or: lanlic return {lic.product})",
    )  # fmt: skip
    return 0


def cmd_return(args: argparse.Namespace) -> int:
    b = _borrower(args)

    async def go(client: Any) -> Any:
        return await b.return_(client, args.product)

    changed = _run(_with_client(args, args.product, go))
    _out(
        args,
        {"product": args.product, "returned": True, "already": not changed},
        f"returned {args.product}" + ("" if changed else " (the server had already ended it)"),
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    b = _borrower(args)

    async def go(client: Any) -> Any:
        await b.check_online(client)  # a borrow the server has ended stops working here
        return await client.status()

    try:
        status = _run(_with_client(args, None, go))
    except ServerUnavailable:
        status = None
    rows = b.info(status)
    if args.json:
        print(json.dumps({"server": status is not None, "products": rows}), flush=True)
        return 0
    if status is None:
        print("(no licence server reachable: showing borrowed licences only)")
    print(f"{'PRODUCT':<16} {'STATE':<26} {'EXPIRES':<22} ACTIONS")
    for r in rows:
        print(
            f"{r['product']:<16} {r['state']:<26} {r.get('expires', ''):<22} "
            + ", ".join(r.get("actions", []))
        )
        if "problem" in r:
            print(f"  {r['problem']}")
    return 0


def cmd_enable(args: argparse.Namespace) -> int:
    """An add-on is enabled by holding one of its seats, like ``checkout``."""
    from lanlic.cli import cmd_checkout

    async def addon_check(client: Any) -> Any:
        return await client.status()

    status = _run(_with_client(args, args.product, addon_check))
    product = next((p for p in status["products"] if p["name"] == args.product), None)
    if product is not None and not product["addon"]:
        from lanlic.cli import CliError

        raise CliError(f"{args.product} is not an add-on; use: lanlic checkout {args.product}")
    return cmd_checkout(args)


def cmd_admin_enroll(args: argparse.Namespace) -> int:
    """Offline enrollment, step 2, on the server's side: accept a request file."""
    from lanlic.core import borrowing
    from lanlic.proto import messages as m

    request = Path(args.accept).read_bytes()
    req = borrowing.read_enrollment_request(request)  # a clear error before any network

    async def go(client: Any) -> Any:
        return await client.call(lambda rid: m.Enroll(rid, request, via="offline"))

    if not args.server:
        args.server = _local_server(args.data)
    reply = _run(_with_client(args, None, go))
    Path(args.out).write_bytes(reply.response)
    _out(
        args,
        {"accepted": True, "user": req.user, "host": req.host, "kind": req.kind,
         "out": args.out},
        f"accepted the enrollment of {req.user}@{req.host} ({req.kind}); give {args.out} back "
        "to the user, who runs: lanlic enroll --response " + Path(args.out).name,
    )  # fmt: skip
    return 0


def cmd_admin_policy(args: argparse.Namespace) -> int:
    """Lower a product's borrowing terms on this server (never above the network key's), or
    load and show the seat policy file (--load, --show)."""
    from lanlic.server.datadir import default_data_dir
    from lanlic.store import Store

    folder = Path(args.data) if args.data else default_data_dir()
    if not (folder / "lanlic.db").exists():
        from lanlic.cli import CliError

        raise CliError(f"no lanlic database in {folder}; pass --data with the server's folder")
    if args.load or args.show:
        return _seat_policy(args, folder)
    if not args.product:
        from lanlic.cli import CliError

        raise CliError("name a PRODUCT, or use --load FILE or --show")
    store = Store(folder / "lanlic.db")
    try:
        if args.clear:
            store.set_policy(args.product, None, None)
        elif args.borrowable is not None or args.max_days is not None:
            old_b, old_d = store.policy().get(args.product, (None, None))
            store.set_policy(
                args.product,
                args.borrowable if args.borrowable is not None else old_b,
                args.max_days if args.max_days is not None else old_d,
            )
        b, d = store.policy().get(args.product, (None, None))
    finally:
        store.close()
    _out(
        args,
        {"product": args.product, "borrowable": b, "max_days": d},
        f"{args.product}: borrowable seats "
        + ("as in the key" if b is None else f"at most {b}")
        + ", longest borrow "
        + ("as in the key" if d is None else f"{d} days")
        + " (never more than the network key allows; a running server applies it within a "
        "second)",
    )
    return 0


def _seat_policy(args: argparse.Namespace, folder: Path) -> int:
    import getpass
    import socket

    from lanlic.cli import CliError
    from lanlic.core.policy import PolicyError
    from lanlic.server import policyfile

    if args.load:
        try:
            text = Path(args.load).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {args.load}: {exc}") from None
        try:
            plan = policyfile.load_command(folder, text, getpass.getuser(), socket.gethostname())
        except PolicyError as exc:
            raise CliError(f"{args.load}: {exc} (nothing applied)") from None
        note = "" if plan.checked_against_key else " (not checked against the network key: "
        note += "" if plan.checked_against_key else "the server has not run on this folder yet)"
        _out(
            args,
            {"loaded": args.load, "changes": plan.changes, "checked_against_key":
             plan.checked_against_key},
            "\n".join(plan.changes or ["no change"])
            + f"\nloaded {args.load}; the running server applies it within a second{note}",
        )  # fmt: skip
        return 0
    try:
        shown = policyfile.show_command(folder)
    except PolicyError as exc:
        raise CliError(f"{folder / policyfile.POLICY_FILE}: {exc}") from None
    status = {True: "in force", False: "NOT in force yet", None: "server state unknown"}
    text = "\n".join(shown["lines"] or ["no seat policy"])
    text += f"\n({shown['file']}: {status[shown['in_force']]})"
    if shown["error"]:
        text += f"\nthe server refused the last file: {shown['error']}"
    _out(args, shown, text)
    return 0


def _local_server(data: str | None) -> str:
    """The address the server on this machine wrote into its data folder."""
    from lanlic.server.datadir import default_data_dir

    folder = Path(data) if data else default_data_dir()
    try:
        info = json.loads((folder / "server.json").read_text())
        host = "127.0.0.1" if info["host"] in ("0.0.0.0", "::") else info["host"]  # noqa: S104
        return f"{host}:{info['port']}"
    except (OSError, ValueError, KeyError) as exc:
        raise ServerUnavailable(
            f"no running lanlic server found in {folder} ({exc}); start it, or pass --server"
        ) from None


# ------------------------------------------------------------------------------- arguments


def _adding_with_file_errors(add: Callable[..., Any]) -> Callable[..., Any]:
    """``add``, with each command's unreadable or unwritable file (a request, a response, the
    machine id) said in one line, not as a traceback."""

    def guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            try:
                return fn(args)
            except OSError as exc:
                from lanlic.cli import CliError

                if exc.filename is not None and exc.strerror:
                    raise CliError(f"{exc.filename}: {exc.strerror}") from None
                raise CliError(str(exc)) from None

        return run

    def wrapped(name: str, fn: Callable[[argparse.Namespace], int], *rest: Any) -> Any:
        return add(name, guarded(fn), *rest)

    return wrapped


def register(
    add: Callable[..., Any], add_find: Callable[[Any], None], admin_sub: Any | None = None
) -> None:
    """Add the borrowing commands to the ``lanlic`` parser (see cli.build_parser)."""
    add = _adding_with_file_errors(add)

    def key_option(sp: Any) -> None:
        sp.add_argument(
            "--portable-key",
            metavar="PATH",
            help="the portable key's folder, for network keys that borrow into portable keys "
            "(default: $LANLIC_PORTABLE_KEY)",
        )

    sp = add("enroll", cmd_enroll, "enroll this machine (or a portable key) for borrowing")
    add_find(sp)
    key_option(sp)
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--request", metavar="FILE", help="offline: write a request file")
    how.add_argument("--response", metavar="FILE", help="offline: complete with the response")

    sp = add("borrow", cmd_borrow, "borrow a seat to use off the network")
    sp.add_argument("product")
    add_find(sp)
    key_option(sp)
    sp.add_argument("--days", type=float, help="how many days")
    sp.add_argument("--until", metavar="DATE", help="until this date (YYYY-MM-DD, UTC)")
    sp.add_argument("--version", help="the application's version")

    sp = add("return", cmd_return, "return a borrowed seat early")
    sp.add_argument("product")
    add_find(sp)
    key_option(sp)

    sp = add("info", cmd_info, "licence information: every product and its state")
    add_find(sp)
    key_option(sp)

    sp = add("enable", cmd_enable, "enable an add-on: take one of its seats and hold it")
    sp.add_argument("product", metavar="ADDON")
    add_find(sp)
    sp.add_argument("--version", dest="version", help="the application's version")
    sp.add_argument("--hold", type=float, help="seconds to hold (default: until Ctrl-C)")
    sp.add_argument("--app", default="lanlic-cli", help="application name shown to the admin")

    if admin_sub is not None:
        sp = add("enroll", cmd_admin_enroll, "accept an offline enrollment request", admin_sub)
        sp.add_argument("--accept", required=True, metavar="REQUEST", help="the request file")
        sp.add_argument("--out", required=True, metavar="RESPONSE", help="the response to write")
        sp.add_argument("--data", help="the server's data folder (to find it on this machine)")
        add_find(sp)

        sp = add(
            "policy", cmd_admin_policy, "the seat policy file; lower a product's borrowing terms",
            admin_sub,
        )  # fmt: skip
        sp.add_argument("product", nargs="?", help="the product whose borrowing terms to lower")
        sp.add_argument(
            "--load", metavar="FILE",
            help="validate a seat policy file (README: Seat policy), show what it changes and "
            "apply it live; an invalid file is refused with its line and nothing is applied",
        )  # fmt: skip
        sp.add_argument("--show", action="store_true", help="print the seat policy in force")
        sp.add_argument("--borrowable", type=int, help="borrowable seats at most (<= the key)")
        sp.add_argument("--max-days", type=int, help="longest borrow in days (<= the key)")
        sp.add_argument("--clear", action="store_true", help="back to the network key's terms")
        sp.add_argument("--data", help="the server's data folder")
