"""The store's admin commands of ``lanlic``: ``admin backup``, ``admin history``, and the
``serve --restore`` step that puts a backup in place before serving.

They open the server's database from another process while the server runs: SQLite in WAL mode
lets a reader take a consistent snapshot while the server writes, and opened read-only they never
migrate or change it. The backup copies that snapshot with SQLite's online backup API, fsynced.
A backup alone does not move a server: the data folder's ``server.key`` must go with it, because
clients pin the server's key and every borrowed licence file is signed by it.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lanlic import osdeps
from lanlic.store import HistoryRow, Store, StoreError

__all__ = ["register", "restore"]

DB_NAME = "lanlic.db"
#: The files SQLite keeps beside a database; they belong to it and move with it.
_SIDE_FILES = ("-wal", "-shm", "-journal", "-ledger")  # the ledger belongs to its database


def _cli_error(message: str) -> Exception:
    from lanlic.cli import CliError

    return CliError(message)


def _folder(args: argparse.Namespace) -> Path:
    from lanlic.server.datadir import default_data_dir

    return Path(args.data) if args.data else default_data_dir()


def _open(folder: Path) -> Store:
    db = folder / DB_NAME
    if not db.is_file():
        raise _cli_error(f"no lanlic database in {folder}; pass --data with the server's folder")
    return Store.open_readonly(db)


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------------- backup


def cmd_admin_backup(args: argparse.Namespace) -> int:
    folder = _folder(args)
    dest = Path(args.file)
    if dest.is_dir():
        dest = dest / f"lanlic-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.db"
    source = folder / DB_NAME
    if dest.exists() and not args.force:
        raise _cli_error(f"{dest} exists already; choose another name, or --force to replace it")
    if source.exists() and dest.resolve().parent == source.resolve().parent:
        if dest.name == DB_NAME or dest.name.startswith(DB_NAME + "-"):
            raise _cli_error(f"{dest} is the server's own database; back up to another file")
    store = _open(folder)
    try:
        store.backup(dest)
    finally:
        store.close()
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

    db = folder / DB_NAME
    if not backup.is_file():
        raise _cli_error(f"--restore: there is no file {backup}")
    if db.exists() and db.resolve() == backup.resolve():
        raise _cli_error(f"--restore: {backup} is the data folder's own database")
    if db.exists() and not force:
        raise _cli_error(
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

    backup = Path(args.restore)
    try:
        counts, aside, issuers = restore(backup, folder, force=args.force, now=time.time())
    except StoreError as exc:
        exc.message = f"--restore: {exc.message} (nothing was changed)"
        raise
    except OSError as exc:
        raise _cli_error(f"--restore: {exc}") from None
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


# ---------------------------------------------------------------------------------- history


def _parse_since(text: str) -> float:
    """A date or a date and time (ISO 8601); without a zone, UTC."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _cli_error(
            f"--since must be a date (YYYY-MM-DD) or a date and time, not {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


_COLUMNS = ("event", "product", "user", "host", "detail")


def _as_dict(r: HistoryRow) -> dict[str, Any]:
    return {"time": _utc(r.at), "at": r.at, **{c: getattr(r, c) for c in _COLUMNS}}


def cmd_admin_history(args: argparse.Namespace) -> int:
    if args.csv and args.json:
        raise _cli_error("choose one of --csv and --json")
    since = None if args.since is None else _parse_since(args.since)
    store = _open(_folder(args))
    try:
        rows = store.history(since=since, product=args.product, limit=-1)  # -1: no limit
    finally:
        store.close()
    if args.json:
        print(json.dumps({"events": [_as_dict(r) for r in rows]}), flush=True)
    elif args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(("time_utc", "at", *_COLUMNS))
        for r in rows:
            out.writerow((_utc(r.at), repr(r.at), *(getattr(r, c) for c in _COLUMNS)))
    else:
        _print_table(rows)
    return 0


def _print_table(rows: list[HistoryRow]) -> None:
    if not rows:
        print("no history rows match")
        return
    head = ("TIME (UTC)", "EVENT", "PRODUCT", "USER", "HOST", "DETAIL")
    table = [(_utc(r.at), r.event, r.product, r.user, r.host, r.detail) for r in rows]
    widths = [max(len(head[i]), *(len(t[i]) for t in table)) for i in range(len(head) - 1)]
    for line in (head, *table):
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=False)), line[-1])


# ------------------------------------------------------------------------------- arguments


def register(add: Callable[..., Any], admin_sub: Any, serve: Any | None = None) -> None:
    """Add ``admin backup`` and ``admin history`` (and ``serve --restore``) to the parser."""
    sp = add("backup", cmd_admin_backup, "copy the database, even while the server runs", admin_sub)
    sp.add_argument("file", metavar="FILE", help="the backup to write (a folder: a dated name)")
    sp.add_argument("--data", help="the server's data folder")
    sp.add_argument("--force", action="store_true", help="replace FILE if it exists")

    sp = add("history", cmd_admin_history, "usage history: checkouts, borrows...", admin_sub)
    sp.add_argument("--since", metavar="DATE", help="from this date or time on (UTC)")
    sp.add_argument("--product", metavar="P", help="this product only")
    sp.add_argument("--csv", action="store_true", help="CSV with a header row")
    sp.add_argument("--data", help="the server's data folder")

    if serve is not None:
        serve.add_argument(
            "--restore",
            metavar="FILE",
            help="first put this backup (lanlic admin backup) in place as the data folder's "
            "database; copy the old server's server.key into the folder too",
        )
        serve.add_argument(
            "--force",
            action="store_true",
            help="with --restore: set an existing database aside (renamed, never deleted)",
        )
        serve.add_argument(
            "--accept-lost-borrows",
            action="store_true",
            help="start although the database lacks borrows, returns or enrollments that clients "
            "were told about (its WAL was lost); what was lost is written to the history",
        )
