"""Durable state in SQLite, behind a small interface so the pool and the server know no SQL.

What must survive a crash is written with ``synchronous=FULL`` in WAL mode: a commit returns only
after the WAL is fsynced, so a borrow, a return or an enrollment that the client was told about
is on disk. The history is appended in batches off the hot path; a crash may lose the last batch.

Every method is blocking. The asyncio server calls them on one dedicated thread (never on the
event loop), which also serialises writers.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from lanlic.core.records import BorrowRecord, EnrollmentRecord, HistoryRow, LeaseRecord
from lanlic.errors import LanlicError
from lanlic.store import history as hist

__all__ = [
    "SCHEMA_VERSION",
    "BorrowRecord",
    "EnrollmentRecord",
    "HistoryRow",
    "Store",
    "StoreError",
]


class StoreError(LanlicError):
    """The database cannot be used: corrupt, from a newer lanlic, or the disk refused a write."""

    code = "store"


def _migrations() -> list[tuple[int, str]]:
    out = []
    for entry in resources.files("lanlic.store").joinpath("migrations").iterdir():
        name = entry.name
        if name.endswith(".sql"):
            out.append((int(name.split("_", 1)[0]), entry.read_text("utf-8")))
    return sorted(out)


SCHEMA_VERSION = max(v for v, _ in _migrations())


def _open_checked(path: Path) -> sqlite3.Connection:
    """Open an existing database read-only and check it before anything writes to it: a corrupt
    file or one from a newer lanlic is refused with its bytes untouched."""
    # A read-only open of a WAL-mode file still makes its -wal and -shm; a refusal removes the
    # ones it made (an empty WAL holds nothing), so the folder is left as it was found.
    sides = [Path(f"{path}{s}") for s in ("-wal", "-shm")]
    had = [s.exists() for s in sides]

    def refuse(db: sqlite3.Connection | None, message: str) -> StoreError:
        if db is not None:
            db.close()
        if not had[0] and sides[0].exists() and sides[0].stat().st_size == 0:
            for side, existed in zip(sides, had, strict=True):
                if not existed:
                    side.unlink(missing_ok=True)
        return StoreError(message)

    try:
        db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
            check_same_thread=False,
        )  # fmt: skip
    except sqlite3.Error as exc:
        raise refuse(None, f"cannot open the database {path}: {exc}") from exc
    restore = "nothing was changed: restore a backup (lanlic serve --restore FILE)"
    try:
        db.execute("PRAGMA busy_timeout=5000")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise refuse(db, f"the database {path} is corrupt ({exc}); {restore}") from exc
        raise refuse(db, f"cannot read the database {path}: {exc}") from exc
    if problems != ["ok"]:
        raise refuse(db, f"the database {path} is corrupt ({'; '.join(problems)}); {restore}")
    if version > SCHEMA_VERSION:
        raise refuse(
            db,
            f"the database {path} has schema version {version}, newer than this lanlic reads "
            f"({SCHEMA_VERSION}); upgrade lanlic (nothing was changed)",
        )
    return db


#: The files SQLite keeps beside a database.
_SIDE_FILES = ("-wal", "-shm", "-journal")


def make_private(path: Path) -> None:
    """Make the database file (before SQLite opens it) and its side files mode 0600, whatever
    the folder's mode and the umask: they hold the admin password's hash, lease ids and client
    ids. SQLite creates ``-wal``, ``-shm`` and ``-journal`` with the database file's own
    permissions, so a database made 0600 keeps them 0600 too; a file left wider by an older
    lanlic is narrowed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # empty: a new database
    except FileExistsError:
        pass
    else:
        os.close(fd)
    for p in (path, *(Path(f"{path}{s}") for s in _SIDE_FILES)):
        try:
            if os.stat(p).st_mode & 0o077:
                os.chmod(p, 0o600)
        except FileNotFoundError:
            continue


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """The server's database: ``Store(path)`` opens (creating and migrating) it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if self.path.exists():
            _open_checked(self.path).close()  # refuse a corrupt or newer file before writing
        try:
            make_private(self.path)
        except OSError as exc:
            raise StoreError(f"cannot create the database {self.path}: {exc}") from exc
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # Another process (an admin command) may write while the server runs: wait for it.
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"the database {self.path} is unusable: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """An existing database, for reading only (admin commands beside a running server: WAL
        lets them read while it writes). No migration, nothing written."""
        store = cls.__new__(cls)
        store.path = Path(path)
        if not store.path.is_file():
            raise StoreError(f"there is no lanlic database at {store.path}")
        store._db = _open_checked(store.path)
        return store

    def backup(self, dest: Path) -> None:
        """Write a consistent copy to ``dest`` with SQLite's online backup API (one snapshot,
        even while a server writes), self-contained (no WAL), fsynced, put in place atomically."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            make_private(tmp)  # a copy holds the same secrets as the database
            target = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._db.backup(target)
                target.execute("PRAGMA journal_mode=DELETE")
                problems = [str(r[0]) for r in target.execute("PRAGMA quick_check(3)")]
            finally:
                target.close()
            if problems != ["ok"]:
                raise StoreError(f"the copy of {self.path} does not check: {'; '.join(problems)}")
            _fsync_path(tmp)
            os.replace(tmp, dest)
            _fsync_path(dest.parent)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"could not back up {self.path} to {dest}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def summary(self) -> dict[str, int]:
        """Counts for the admin: schema version, enrollments, borrows, active borrows, history."""
        one = self._db.execute
        return {
            "schema_version": self._version(),
            "enrollments": int(one("SELECT count(*) FROM enrollments").fetchone()[0]),
            "borrows": int(one("SELECT count(*) FROM borrows").fetchone()[0]),
            "active_borrows": int(
                one("SELECT count(*) FROM borrows WHERE state = 'active'").fetchone()[0]
            ),
            "history": int(one("SELECT count(*) FROM history").fetchone()[0]),
        }

    # ------------------------------------------------------------------------------ schema

    def _version(self) -> int:
        v = self._db.execute("PRAGMA user_version").fetchone()[0]
        return int(v)

    def _migrate(self) -> None:
        current = self._version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"the database {self.path} has schema version {current}, newer than this lanlic "
                f"reads ({SCHEMA_VERSION}); upgrade lanlic (nothing was changed)"
            )
        for version, sql in _migrations():
            if version <= current:
                continue
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for statement in sql.split(";\n"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={version:d}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _write(self, sql: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, params)
        except sqlite3.OperationalError as exc:
            # Disk full, read-only folder, I/O error: the write did not happen.
            raise StoreError(f"could not write to {self.path}: {exc}") from exc

    # ------------------------------------------------------------------------------- meta

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def begin_epoch(self) -> int:
        """Count one more start of the server; return the new epoch."""
        epoch = int(self.meta("epoch") or 0) + 1
        self.set_meta("epoch", str(epoch))
        return epoch

    # ------------------------------------------------------------------------ enrollments

    def add_enrollment(self, e: EnrollmentRecord) -> None:
        self._write(
            "INSERT OR REPLACE INTO enrollments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (e.container_fp, e.container_key, e.kind, e.machine_fp, e.user, e.host,
             e.enrolled_at, e.via),
        )  # fmt: skip

    def enrollment(self, container_fp: str) -> EnrollmentRecord | None:
        row = self._db.execute(
            "SELECT * FROM enrollments WHERE container_fp = ?", (container_fp,)
        ).fetchone()
        return None if row is None else EnrollmentRecord(*row)

    def enrollments(self) -> list[EnrollmentRecord]:
        rows = self._db.execute("SELECT * FROM enrollments ORDER BY enrolled_at").fetchall()
        return [EnrollmentRecord(*r) for r in rows]

    # ---------------------------------------------------------------------------- borrows

    def add_borrow(self, b: BorrowRecord) -> None:
        self._write(
            "INSERT INTO borrows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (b.borrow_id, b.request_id, b.product, b.container_fp, b.user, b.host, b.start,
             b.end, b.state, b.ended_at, b.file),
        )  # fmt: skip

    def end_borrow(self, borrow_id: str, state: str, at: float) -> bool:
        """Mark an active borrow returned or expired; False if it was not active."""
        cur = self._write(
            "UPDATE borrows SET state = ?, ended_at = ? WHERE borrow_id = ? AND state = 'active'",
            (state, at, borrow_id),
        )
        return cur.rowcount == 1

    def borrow(self, borrow_id: str) -> BorrowRecord | None:
        row = self._db.execute("SELECT * FROM borrows WHERE borrow_id = ?", (borrow_id,)).fetchone()
        return None if row is None else BorrowRecord(*row)

    def borrow_by_request(self, request_id: str) -> BorrowRecord | None:
        row = self._db.execute(
            "SELECT * FROM borrows WHERE request_id = ?", (request_id,)
        ).fetchone()
        return None if row is None else BorrowRecord(*row)

    def active_borrows(self) -> list[BorrowRecord]:
        rows = self._db.execute(
            "SELECT * FROM borrows WHERE state = 'active' ORDER BY end"
        ).fetchall()
        return [BorrowRecord(*r) for r in rows]

    # ------------------------------------------------------------------ restart and reclaim

    def reservations(self) -> dict[str, int]:
        return {str(p): int(n) for p, n in self._db.execute("SELECT * FROM reservations")}

    def set_reservations(self, seats: dict[str, int]) -> None:
        """Record upper bounds of floating seats in use (one transaction, fsynced)."""
        self._write("BEGIN")
        try:
            for product, n in seats.items():
                self._write("INSERT OR REPLACE INTO reservations VALUES (?, ?)", (product, n))
            self._write("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite already rolled back on a full disk
                self._db.execute("ROLLBACK")
            raise

    def raise_reservations(self, seats: dict[str, int]) -> None:
        """Raise reservations, never lowering one (raises may finish in any order)."""
        self._write("BEGIN")
        try:
            for product, n in seats.items():
                self._write(
                    "INSERT INTO reservations VALUES (?, ?) ON CONFLICT(product) DO UPDATE"
                    " SET seats = max(seats, excluded.seats)",
                    (product, n),
                )
            self._write("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def leases(self) -> list[LeaseRecord]:
        rows = self._db.execute("SELECT * FROM leases").fetchall()
        return [LeaseRecord(*r) for r in rows]

    def sync_leases(self, added: Sequence[LeaseRecord], removed: Sequence[bytes]) -> None:
        """Apply one batch of lease changes (one transaction)."""
        self._write("BEGIN")
        try:
            self._db.executemany("DELETE FROM leases WHERE lease_id = ?", [(x,) for x in removed])
            self._db.executemany(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?)",
                [(r.lease_id, r.product, r.owner, r.user, r.host, r.epoch) for r in added],
            )
            self._write("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:  # SQLite already rolled back on a full disk
                self._db.execute("ROLLBACK")
            raise StoreError(f"could not write to {self.path}: {exc}") from exc
        except BaseException:
            if self._db.in_transaction:  # SQLite already rolled back on a full disk
                self._db.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------------------- policy

    def policy(self) -> dict[str, tuple[int | None, int | None]]:
        rows = self._db.execute("SELECT product, borrowable, max_borrow_days FROM policy")
        return {str(p): (b, d) for p, b, d in rows}

    def set_policy(self, product: str, borrowable: int | None, max_days: int | None) -> None:
        self._write(
            "INSERT OR REPLACE INTO policy VALUES (?, ?, ?)", (product, borrowable, max_days)
        )

    # ---------------------------------------------------------------------------- history
    # The table's rules live in lanlic.store.history; these are the writer's doors to them.

    def append_history(self, rows: Iterable[HistoryRow]) -> None:
        """Append a batch in one transaction."""
        self.append_history_rows(
            [(r.at, r.event, r.product, r.user, r.host, r.detail, r.count) for r in rows]
        )

    def append_history_rows(self, rows: Sequence[Sequence[object]]) -> None:
        """Append a batch of ``(at, event, product, user, host, detail[, count])`` in one
        transaction."""
        try:
            hist.append(self._db, rows)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"could not write to {self.path}: {exc}") from exc

    def history(
        self, since: float | None = None, product: str | None = None, limit: int = 10_000
    ) -> list[HistoryRow]:
        """The first ``limit`` matching rows, oldest first (tests and small reads; an export
        goes through ``history.iter_rows``)."""
        rows = hist.iter_rows(self._db, hist.Filters(since=since, product=product))
        return list(itertools.islice(rows, limit if limit >= 0 else None))

    def history_page(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        product: str | None = None,
        event: str | None = None,
        offset: int = 0,
        limit: int = 100,
        newest_first: bool = True,
    ) -> tuple[int, list[HistoryRow]]:
        """One page of the rows that match, and how many match in all."""
        filters = hist.Filters(since, until, product, event)
        return hist.page(self._db, filters, offset=offset, limit=limit, newest_first=newest_first)

    def history_events(self, since: float, events: Sequence[str]) -> list[tuple[float, str, str]]:
        """``(at, product, event)`` of the given kinds from ``since`` on, oldest first."""
        return hist.events_since(self._db, since, events)

    def prune_history(self, now: float, batch: int = hist.PRUNE_BATCH) -> int:
        """Delete one batch of rows beyond the retention settings; how many went."""
        try:
            return hist.prune(self._db, now, batch)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"could not write to {self.path}: {exc}") from exc

    def retention(self) -> hist.Retention:
        """How much history is kept (the admin's setting, or the defaults)."""
        return hist.retention(self._db)

    def set_retention(self, r: hist.Retention) -> None:
        try:
            hist.set_retention(self._db, r)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"could not write to {self.path}: {exc}") from exc
