"""The administration commands of ``lanlic``, run on the server's machine: ``admin backup``,
``admin history``, ``admin policy``, ``admin password`` and ``admin enroll``.

They open the server's database from another process while the server runs: SQLite in WAL mode
lets a reader take a consistent snapshot while the server writes, and opened read-only they never
migrate or change it. The backup copies that snapshot with SQLite's online backup API, fsynced.
A backup alone does not move a server: the data folder's ``server.key`` must go with it, because
clients pin the server's key and every borrowed licence file is signed by it.

``policy`` and ``password`` write the store's own tables, which a running server reads again
within seconds; each change goes into the history, as one made on the admin page does. Every one
of them uses the same data folder as ``lanlic serve`` when ``--data`` is not given.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import getpass
import itertools
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lanlic.cli.common import (
    DB_NAME,
    KEY_TERMS,
    CliError,
    Commands,
    FileProblem,
    add_data,
    add_find,
    data_folder,
    existing_database,
    iso_utc,
    local_time,
    print_json,
    run_async,
    say,
    user_name,
    whole,
    with_client,
)

if TYPE_CHECKING:  # the store (sqlite3) is imported by the commands that use it
    from lanlic.store import HistoryRow, Store

__all__ = ["register"]


def _open(folder: Path) -> Store:
    from lanlic.store import Store

    return Store.open_readonly(existing_database(folder))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------------- backup


def cmd_admin_backup(args: argparse.Namespace) -> int:
    from lanlic import osdeps

    folder = data_folder(args)
    existing_database(folder)
    dest = Path(args.file)
    if args.file.endswith(("/", os.sep)) and not dest.exists():
        # Said to be a folder: make it (private, as the data folder), never a file of its name.
        try:
            osdeps.make_private_dir(dest)
        except OSError as exc:
            raise FileProblem.of(exc, f"cannot create the folder {dest}") from None
    if dest.is_dir():
        dest = dest / f"lanlic-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.db"
    elif not dest.parent.is_dir():
        raise CliError(
            f"there is no folder {dest.parent} to write {dest.name} in (end FILE with a / to "
            "have the folder made)"
        )
    source = folder / DB_NAME
    if dest.exists() and not args.force:
        raise CliError(f"{dest} exists already; choose another name, or --force to replace it")
    if source.exists() and dest.resolve().parent == source.resolve().parent:
        if dest.name == DB_NAME or dest.name.startswith(DB_NAME + "-"):
            raise CliError(f"{dest} is the server's own database; back up to another file")
    store = _open(folder)
    try:
        store.backup(dest)
    finally:
        store.close()
    from lanlic.store import Store

    copy = Store.open_readonly(dest)  # the copy opens and checks on its own
    try:
        counts = copy.summary()
    finally:
        copy.close()
    size = dest.stat().st_size
    if args.json:
        print(
            json.dumps({"backup": str(dest), "source": str(source), "bytes": size, **counts}),
            flush=True,
        )
        return 0
    print(
        f"backed up {source} to {dest} ({size} bytes): "
        f"{_plural(counts['enrollments'], 'enrollment')}, "
        f"{_plural(counts['active_borrows'], 'active borrow')} "
        f"({counts['borrows']} in all), {_plural(counts['history'], 'history row')}\n"
        f"to move the server, copy {folder / 'server.key'} along with it "
        "(see: lanlic serve --restore)",
        flush=True,
    )
    return 0


# ---------------------------------------------------------------------------------- history


def _parse_since(text: str) -> float:
    """A date or a date and time (ISO 8601); without a zone, UTC."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"--since must be a date (YYYY-MM-DD) or a date and time, not {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


_COLUMNS = ("event", "product", "user", "host", "detail", "count")


def _as_dict(r: HistoryRow) -> dict[str, Any]:
    return {"time": iso_utc(r.at), "at": r.at, **{c: getattr(r, c) for c in _COLUMNS}}


#: A time in a history row's detail: epoch seconds (rows written before 0.x) or ISO 8601 UTC.
_DETAIL_TIME = re.compile(r"\b(until|at) (\d{9,11}|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)\b")


def _detail_for_people(detail: str) -> str:
    """A row's detail with its times in local time, as the TIME column."""

    def local(match: re.Match[str]) -> str:
        text = match[2]
        if text.isdigit():
            ts = float(text)
        else:
            ts = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
        return f"{match[1]} {local_time(ts)}"

    return _DETAIL_TIME.sub(local, detail)


def _history_events() -> list[str]:
    from lanlic.core.records import HISTORY_EVENTS

    return list(HISTORY_EVENTS)


def cmd_admin_history(args: argparse.Namespace) -> int:
    """Stream the history: a page of rows at a time from its own read-only connection, written
    out before the next is read, so memory stays flat however long the history is, and a
    running server's writes go on meanwhile."""
    import sqlite3

    from lanlic.admin.views import csv_cell
    from lanlic.store import Store, StoreError, history

    if args.csv and args.json:
        raise CliError("choose one of --csv and --json")
    since = None if args.since is None else _parse_since(args.since)
    db_path = existing_database(data_folder(args))
    # A corrupt or newer database is refused before the first row is written: once streaming
    # has begun, a refusal could no longer be the command's only output.
    Store.open_readonly(db_path).close()
    filters = history.Filters(since=since, product=args.product, event=args.event)
    out = sys.stdout
    try:
        db = history.open_reader(db_path)
        try:
            rows = history.iter_rows(db, filters)
            if args.json:
                # The same document as ever, written a page at a time.
                out.write('{"events": [')
                sep = ""
                while page := list(itertools.islice(rows, history.PAGE_ROWS)):
                    out.write(sep + json.dumps([_as_dict(r) for r in page])[1:-1])
                    sep = ", "
                out.write("]}\n")
            elif args.csv:
                # CRLF, as RFC 4180 and the web export: a CR inside a cell is then quoted.
                writer = csv.writer(out, lineterminator="\r\n")
                writer.writerow(("time_utc", "at", *_COLUMNS))
                for r in rows:
                    cells = (iso_utc(r.at), repr(r.at), *(str(getattr(r, c)) for c in _COLUMNS))
                    writer.writerow([csv_cell(c) for c in cells])  # no formula for a spreadsheet
            else:
                _print_table(rows)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"cannot read the history in {db_path}: {exc}") from None
    out.flush()
    return 0


def _print_table(rows: Iterator[HistoryRow]) -> None:
    head = ("TIME", "EVENT", "PRODUCT", "USER", "HOST", "DETAIL")
    # Widths from the first rows only: the table is printed as it is read.
    first = [_table_line(r) for r in itertools.islice(rows, 200)]
    if not first:
        print("no history rows match")
        return
    widths = [max(len(head[i]), *(len(t[i]) for t in first)) for i in range(len(head) - 1)]
    for line in itertools.chain((head,), first, map(_table_line, rows)):
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=False)), line[-1])


def _table_line(r: HistoryRow) -> tuple[str, ...]:
    detail = _detail_for_people(r.detail)
    if r.count != 1:
        detail = f"{detail} (x{r.count})"
    return (local_time(r.at), r.event, r.product, r.user, r.host, detail)


def cmd_admin_retention(args: argparse.Namespace) -> int:
    """Show or set how much history the server keeps; a running server prunes to it within
    minutes, in the background."""
    from lanlic.server.datadir import DataDir
    from lanlic.store import Store, history

    folder = data_folder(args)
    if args.days is not None or args.rows is not None:
        DataDir(folder).prepare()
        store = Store(folder / DB_NAME)
        try:
            current = store.retention()
            wanted = history.Retention(
                current.keep_days if args.days is None else args.days,
                current.max_rows if args.rows is None else args.rows,
            )
            store.set_retention(wanted)
        finally:
            store.close()
    else:
        store = _open(folder)
        try:
            wanted = store.retention()
        finally:
            store.close()
    if args.json:
        print_json({"keep_days": wanted.keep_days, "max_rows": wanted.max_rows})
    else:
        days = "any age" if wanted.keep_days == 0 else f"{wanted.keep_days} days"
        rows = "no row limit" if wanted.max_rows == 0 else f"at most {wanted.max_rows} rows"
        print(f"history kept: {days}, {rows} (the oldest go first)", flush=True)
    return 0


# ----------------------------------------------------------------------------------- policy


def _key_terms(store: Store, folder: Path) -> dict[str, dict[str, int]]:
    raw = store.meta(KEY_TERMS)
    if raw is None:
        raise CliError(
            f"the server in {folder} has not been started by this version of lanlic yet, so its "
            "network key's terms are not known here: start it once (lanlic serve), or use the "
            "admin page"
        )
    terms: dict[str, dict[str, int]] = json.loads(raw)
    return terms


def _seat_policy(args: argparse.Namespace, folder: Path) -> int:
    from lanlic.core.policy import PolicyError
    from lanlic.server import policyfile

    if args.load:
        try:
            text = Path(args.load).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read {args.load}: {exc}") from None
        try:
            plan = policyfile.load_command(folder, text, user_name(), socket.gethostname())
        except PolicyError as exc:
            raise CliError(f"{args.load}: {exc} (nothing applied)") from None
        note = (
            ""
            if plan.checked_against_key
            else " (not checked against the network key: the server has not run on this folder)"
        )
        say(
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
    say(args, shown, text)
    return 0


def cmd_admin_policy(args: argparse.Namespace) -> int:
    """Lower a product's borrowing terms on this server (never above the network key's), or
    load and show the seat policy file (--load, --show)."""
    from lanlic.store import HistoryRow, Store

    folder = data_folder(args)
    existing_database(folder)
    if args.load or args.show:
        return _seat_policy(args, folder)
    if not args.product:
        raise CliError("name a PRODUCT, or use --load FILE or --show")
    store = Store(existing_database(folder))
    try:
        terms = _key_terms(store, folder)
        key = terms.get(args.product)
        if key is None:
            raise CliError(
                f"no product {args.product!r} in the network key; it has: {', '.join(terms)}"
            )
        changed = args.clear or args.borrowable is not None or args.max_days is not None
        for value, cap, option in (
            (args.borrowable, key["borrowable"], "--borrowable"),
            (args.max_days, key["max_days"], "--max-days"),
        ):
            if value is not None and not 0 <= value <= cap:
                raise CliError(
                    f"{option} {value}: {args.product} allows 0 to {cap} under the network key "
                    "(a policy can lower the key's terms, never raise them)"
                )
        if args.clear:
            store.set_policy(args.product, None, None)
        elif changed:
            old_b, old_d = store.policy().get(args.product, (None, None))
            store.set_policy(
                args.product,
                args.borrowable if args.borrowable is not None else old_b,
                args.max_days if args.max_days is not None else old_d,
            )
        b, d = store.policy().get(args.product, (None, None))
        if changed:
            # As the admin page does: who changed what, in the history.
            shown_b = "as key" if b is None else b
            shown_d = "as key" if d is None else d
            detail = f"borrowable {shown_b}, max days {shown_d} (from the command line)"
            row = HistoryRow(time.time(), "admin_policy", args.product, user_name(),
                             socket.gethostname(), detail)  # fmt: skip
            store.append_history([row])
    finally:
        store.close()
    say(
        args,
        {"product": args.product, "borrowable": b, "max_days": d, "changed": changed,
         "key": {"borrowable": key["borrowable"], "max_days": key["max_days"]}},
        f"{args.product}: borrowable seats "
        + (f"as in the key ({key['borrowable']})" if b is None else f"at most {b}")
        + ", longest borrow "
        + (f"as in the key ({key['max_days']} days)" if d is None else f"{d} days")
        + (" (a running server applies it within a second)" if changed else ""),
    )  # fmt: skip
    return 0


# --------------------------------------------------------------------------------- password


def _read_password(args: argparse.Namespace) -> str:
    from lanlic.admin.passwords import check_new_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise CliError("no terminal to ask for the password on: use --password-stdin")
        password = getpass.getpass("new admin password: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the two passwords differ; nothing was changed")
    try:
        check_new_password(password)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return password


def cmd_admin_password(args: argparse.Namespace) -> int:
    """Set (or clear) the admin page's password: its hash goes into the store's meta table,
    which a running server reads again within seconds (and ends every admin session)."""
    from lanlic.admin.passwords import META_KEY, hash_password
    from lanlic.server.datadir import DataDir
    from lanlic.store import Store

    folder = data_folder(args)
    value = None if args.clear else hash_password(_read_password(args))
    DataDir(folder).prepare()
    store = Store(folder / DB_NAME)
    try:
        store.set_meta(META_KEY, value or "")  # empty: no password
    finally:
        store.close()
    if args.json:
        print_json({"password_set": value is not None, "data": str(folder)})
    elif value is None:
        print(
            f"cleared the admin password in {folder}: the admin page is open on a loopback "
            "address only, and refused on any other"
        )
    else:
        print(
            f"set the admin password in {folder}; a running server uses it within seconds "
            "(everyone logged in to the admin page logs in again)"
        )
    return 0


# ----------------------------------------------------------------------------------- enroll


def cmd_admin_enroll(args: argparse.Namespace) -> int:
    """Offline enrollment, step 2, on the server's side: accept a request file."""
    from lanlic.core import borrowing
    from lanlic.proto import messages as m

    try:
        request = Path(args.accept).read_bytes()
    except OSError as exc:
        raise FileProblem.of(exc, f"--accept {args.accept}") from None
    req = borrowing.read_enrollment_request(request)  # a clear error before any network

    async def go(client: Any) -> Any:
        return await client.call(lambda rid: m.Enroll(rid, request, via="offline"))

    if not args.server:
        args.server = _local_server(data_folder(args))
    reply = run_async(with_client(args, None, go))
    try:
        Path(args.out).write_bytes(reply.response)
    except OSError as exc:
        raise FileProblem.of(exc, f"--out {args.out}") from None
    say(
        args,
        {"accepted": True, "user": req.user, "host": req.host, "kind": req.kind,
         "out": args.out},
        f"accepted the enrollment of {req.user}@{req.host} ({req.kind}); give {args.out} back "
        "to the user, who runs: lanlic enroll --response " + Path(args.out).name,
    )  # fmt: skip
    return 0


def _local_server(folder: Path) -> str:
    """The address the server on this machine wrote into its data folder."""
    from lanlic.errors import ServerUnavailable

    try:
        info = json.loads((folder / "server.json").read_text())
        host = "127.0.0.1" if info["host"] in ("0.0.0.0", "::") else info["host"]  # noqa: S104
        return f"{host}:{info['port']}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServerUnavailable(
            f"no running lanlic server found in {folder} ({exc}); start it, or pass --server"
        ) from None


# ------------------------------------------------------------------------------- arguments


def register(commands: Commands) -> None:
    admin = commands.group("admin", "administration of the server on this machine", "admin_command")
    sp = admin.add("backup", cmd_admin_backup, "copy the database, even while the server runs")
    sp.add_argument(
        "file",
        metavar="FILE",
        help="the backup to write (a folder: a dated name in it; ending in /, made if missing)",
    )
    add_data(sp)
    sp.add_argument("--force", action="store_true", help="replace FILE if it exists")

    sp = admin.add("history", cmd_admin_history, "usage history: checkouts, borrows...")
    sp.add_argument("--since", metavar="DATE", help="from this date or time on (UTC)")
    sp.add_argument("--product", metavar="P", help="this product only")
    sp.add_argument(
        "--event",
        metavar="E",
        choices=list(_history_events()),
        help="this event only: " + ", ".join(_history_events()),
    )
    sp.add_argument("--csv", action="store_true", help="CSV with a header row")
    add_data(sp)

    sp = admin.add("retention", cmd_admin_retention, "how much history the server keeps")
    sp.add_argument(
        "--days", type=whole(0), metavar="N", help="delete rows older than N days (0: keep)"
    )
    sp.add_argument("--rows", type=whole(0), metavar="N", help="keep at most N rows (0: no limit)")
    add_data(sp)

    sp = admin.add(
        "policy", cmd_admin_policy, "the seat policy file; lower a product's borrowing terms"
    )
    sp.add_argument("product", nargs="?", help="the product whose borrowing terms to lower")
    sp.add_argument(
        "--load", metavar="FILE",
        help="validate a seat policy file (README: Seat policy), show what it changes and "
        "apply it live; an invalid file is refused with its line and nothing is applied",
    )  # fmt: skip
    sp.add_argument("--show", action="store_true", help="print the seat policy in force")
    sp.add_argument("--borrowable", type=whole(0), help="borrowable seats at most (0 to the key's)")
    sp.add_argument("--max-days", type=whole(0), help="longest borrow in days (0 to the key's)")
    sp.add_argument("--clear", action="store_true", help="back to the network key's terms")
    add_data(sp)

    sp = admin.add("password", cmd_admin_password, "set the admin page's password")
    add_data(sp)
    how = sp.add_mutually_exclusive_group()
    how.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    how.add_argument("--clear", action="store_true", help="remove the password")

    sp = admin.add("enroll", cmd_admin_enroll, "accept an offline enrollment request")
    sp.add_argument("--accept", required=True, metavar="REQUEST", help="the request file")
    sp.add_argument("--out", required=True, metavar="RESPONSE", help="the response to write")
    add_data(sp)
    add_find(sp)
