"""The laptop's borrowing commands of ``lanlic``: ``enroll``, ``borrow``, ``return``, ``info``.

They share a shape of their own: each finds the laptop's container (``--portable-key`` for the
portable kind), and most reach the server the same way as ``checkout`` does (``--server``, else
``$LANLIC_SERVER`` or ``client.toml``, else mDNS).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import socket
import time
from pathlib import Path
from typing import Any

from lanlic.cli.common import (
    CliError,
    Commands,
    add_find,
    iso_utc,
    local_time,
    print_json,
    run_async,
    say,
    table,
    user_name,
    with_client,
)
from lanlic.errors import BorrowRefused, ServerUnavailable

__all__ = ["register"]

DAY = 86400.0


def _borrower(args: argparse.Namespace) -> Any:
    from lanlic.laptop.borrower import Borrower

    key = Path(args.portable_key) if getattr(args, "portable_key", None) else None
    return Borrower(portable_key=key)


def _days(text: str) -> float:
    """``--days``: a finite number (its range is the product's, checked with the server)."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not math.isfinite(days):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days")
    return days


def _until(text: str) -> dt.datetime:
    try:
        until = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date (YYYY-MM-DD) or a date and time"
        ) from None
    return until if until.tzinfo is not None else until.replace(tzinfo=dt.UTC)


def _check_length(product: str, status: dict[str, Any], days: float, until: Any) -> None:
    """Refuse a borrow outside the product's terms here, saying the range allowed (the server
    refuses it too, but cannot say more than that the length is wrong)."""
    entry = next((p for p in status["products"] if p["name"] == product), None)
    if entry is None or entry["max_borrow_days"] <= 0 or entry["borrowable"] <= 0:
        return  # not borrowable at all: the server's refusal says so
    longest = entry["max_borrow_days"]
    allowed = (
        f"{product} may be borrowed for more than 0 and at most {longest} days here (until "
        f"{local_time(time.time() + longest * DAY)} at the latest)"
    )
    if until is not None:
        when = f"--until {until:%Y-%m-%d %H:%M} UTC"
        if days <= 0:
            raise CliError(f"{when} is past; {allowed}")
        if days > longest:
            raise BorrowRefused(f"{when} is {days:.1f} days away; {allowed}", "borrow_too_long")
    elif days <= 0:
        raise CliError(f"--days {days:g}: {allowed}")
    elif days > longest:
        raise BorrowRefused(f"--days {days:g}: {allowed}", "borrow_too_long")


# --------------------------------------------------------------------------------- commands


def cmd_enroll(args: argparse.Namespace) -> int:
    b = _borrower(args)
    if args.request:
        Path(args.request).write_bytes(b.enrollment_request(user_name(), socket.gethostname()))
        say(
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
            return await b.enroll(client, user_name(), socket.gethostname())

        resp = run_async(with_client(args, None, go))
    say(
        args,
        {"enrolled": True, "server_id": resp.server_id, "customer": resp.customer,
         "kind": resp.request.kind, "container": str(b.home_path)},
        f"enrolled with {resp.customer!r} (server {resp.server_id}); "
        f"this {'machine' if resp.request.kind == 'act' else 'portable key'} can borrow now",
    )  # fmt: skip
    return 0


def cmd_borrow(args: argparse.Namespace) -> int:
    b = _borrower(args)
    if args.days is None and args.until is None:
        raise CliError("say how long: --days N or --until DATE")

    async def go(client: Any) -> Any:
        await client.connect()
        days = args.days
        if args.until is not None:
            days = (args.until.timestamp() - time.time()) / DAY
        _check_length(args.product, await client.status(), days, args.until)
        return await b.borrow(client, args.product, days=args.days, until=args.until,
                              version=args.version or "")  # fmt: skip

    lic = run_async(with_client(args, args.product, go))
    say(
        args,
        {"product": lic.product, "borrow_id": lic.borrow_id, "start": lic.start, "end": lic.end,
         "start_utc": iso_utc(lic.start), "end_utc": iso_utc(lic.end), "kind": lic.kind},
        f"borrowed {lic.product} until {local_time(lic.end)}; it works with no network until "
        f"then, and returns to the pool by itself at the end (or: lanlic return {lic.product})",
    )  # fmt: skip
    return 0


def cmd_return(args: argparse.Namespace) -> int:
    b = _borrower(args)

    async def go(client: Any) -> Any:
        return await b.return_(client, args.product)

    changed = run_async(with_client(args, args.product, go))
    say(
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
        status = run_async(with_client(args, None, go))
    except ServerUnavailable:
        status = None
    rows = b.info(status)
    if args.json:
        print_json({"server": status is not None, "products": rows})
        return 0
    if status is None:
        print("(no licence server reachable: showing borrowed licences only)")
    lines = [
        (r["product"], r["state"], _expires(r.get("expires", "")), ", ".join(r.get("actions", [])))
        for r in rows
    ]
    table(("PRODUCT", "STATE", "EXPIRES", "ACTIONS"), lines)
    for r in rows:
        if "problem" in r:
            print(f"  {r['product']}: {r['problem']}")
    return 0


def _expires(text: str) -> str:
    if not text:
        return ""
    try:
        return local_time(dt.datetime.fromisoformat(text).timestamp())
    except ValueError:
        return text


# ------------------------------------------------------------------------------- arguments


def register(commands: Commands) -> None:
    def key_option(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--portable-key",
            metavar="PATH",
            help="the portable key's folder, for network keys that borrow into portable keys "
            "(default: $LANLIC_PORTABLE_KEY)",
        )

    sp = commands.add("enroll", cmd_enroll, "enroll this machine (or a portable key) for borrowing")
    add_find(sp)
    key_option(sp)
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--request", metavar="FILE", help="offline: write a request file")
    how.add_argument("--response", metavar="FILE", help="offline: complete with the response")

    sp = commands.add("borrow", cmd_borrow, "borrow a seat to use off the network")
    sp.add_argument("product")
    add_find(sp)
    key_option(sp)
    length = sp.add_mutually_exclusive_group()
    length.add_argument(
        "--days", type=_days, help="how many days (above 0, up to the product's longest borrow)"
    )
    length.add_argument(
        "--until", type=_until, metavar="DATE", help="until this date (YYYY-MM-DD, UTC)"
    )
    sp.add_argument("--version", help="the application's version")

    sp = commands.add("return", cmd_return, "return a borrowed seat early")
    sp.add_argument("product")
    add_find(sp)
    key_option(sp)

    sp = commands.add("info", cmd_info, "licence information: every product and its state")
    add_find(sp)
    key_option(sp)
