"""Durable state in SQLite, behind a small interface so the pool and the server know no SQL.

What must survive a crash is written with ``synchronous=FULL`` in WAL mode: a commit returns only
after the WAL is fsynced, so a borrow, a return or an enrollment that the client was told about
is on disk. The history is appended in batches off the hot path; a crash may lose the last batch.

Every method is blocking. The asyncio server calls them on one dedicated thread (never on the
event loop), which also serialises writers.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path

from lanlic import osdeps
from lanlic.core.records import BorrowRecord, EnrollmentRecord, HistoryRow, LeaseRecord
from lanlic.core.restart import LeaseBatch, RestartState
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

#: The ledger of acknowledged changes beside the database: ``lanlic.db-ledger``.
LEDGER_SUFFIX = "-ledger"


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
            if osdeps.FULL_FSYNC:  # macOS: a plain fsync stops at the drive's cache
                self._db.execute("PRAGMA fullfsync=ON")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException as exc:
            if hasattr(self, "_db"):
                self._db.close()  # a refused file leaves no connection open behind it
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"the database {self.path} is unusable: {exc}") from exc
            raise

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            osdeps.fsync_path(tmp)
            os.replace(tmp, dest)
            osdeps.fsync_dir(dest.parent)
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
        def write() -> bool:
            self._write(
                "INSERT OR REPLACE INTO enrollments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (e.container_fp, e.container_key, e.kind, e.machine_fp, e.user, e.host,
                 e.enrolled_at, e.via),
            )  # fmt: skip
            return True

        self._acknowledged("enroll", e.container_fp, "", write)

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
        def write() -> bool:
            self._write(
                "INSERT INTO borrows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (b.borrow_id, b.request_id, b.product, b.container_fp, b.user, b.host, b.start,
                 b.end, b.state, b.ended_at, b.file),
            )  # fmt: skip
            return True

        self._acknowledged("borrow", b.borrow_id, b.product, write)

    def end_borrow(self, borrow_id: str, state: str, at: float) -> bool:
        """Mark an active borrow returned or expired; False if it was not active."""

        def write() -> bool:
            cur = self._write(
                "UPDATE borrows SET state = ?, ended_at = ? WHERE borrow_id = ?"
                " AND state = 'active'",
                (state, at, borrow_id),
            )
            return cur.rowcount == 1

        return self._acknowledged(state, borrow_id, "", write)

    # ------------------------------------------------------------- the acknowledged ledger
    # A lost or damaged WAL silently takes the last commits with it, and SQLite cannot tell.
    # So every change a client is told about (enrollment, borrow, return, expiry) also bumps a
    # sequence number in the database, in the same transaction, and is then appended, fsynced,
    # to a small file beside it (lanlic.db-ledger). On start, a ledger ahead of the database
    # means acknowledged changes are missing (SPEC section 13, README Durability).

    @property
    def ledger_path(self) -> Path:
        return Path(f"{self.path}{LEDGER_SUFFIX}")

    def _acknowledged(self, kind: str, ident: str, product: str, write: Callable[[], bool]) -> bool:
        with self._transaction("BEGIN IMMEDIATE"):
            changed = write()
            seq = 0
            if changed:
                seq = int(self.meta("ledger_seq") or 0) + 1
                self.set_meta("ledger_seq", str(seq))
        if changed:
            self._append_ledger(f"{seq}\t{kind}\t{ident}\t{product}\n")
        return changed

    def _append_ledger(self, line: str) -> None:
        path = self.ledger_path
        try:
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                osdeps.fsync_file(fd)
            finally:
                os.close(fd)
            if new:
                osdeps.fsync_dir(path.parent)
        except OSError as exc:
            raise StoreError(f"could not write to {path}: {exc}") from exc

    def _ledger(self) -> list[tuple[int, str, str, str]]:
        """The ledger's entries; a torn last line (a crash mid-append, never acknowledged) and
        lines that do not parse are skipped."""
        try:
            text = self.ledger_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot read {self.ledger_path}: {exc}") from exc
        out = []
        for line in text.split("\n")[:-1]:
            parts = line.split("\t")
            if len(parts) == 4 and parts[0].isdigit():
                out.append((int(parts[0]), parts[1], parts[2], parts[3]))
        return out

    def check_ledger(self, accept_loss: bool, wall: float) -> list[str]:
        """Refuse (StoreError) a database that lacks changes the ledger says clients were told
        about; with ``accept_loss``, write what was lost to the history, carry on, and return a
        warning."""
        entries = self._ledger()
        ahead = max((seq for seq, *_ in entries), default=0)
        have = int(self.meta("ledger_seq") or 0)
        if ahead <= have:
            return []
        lost = [e for e in entries if e[0] > have]
        kinds = ", ".join(f"{sum(1 for e in lost if e[1] == k)} {k}" for k in
                          sorted({e[1] for e in lost}))  # fmt: skip
        if not accept_loss:
            raise StoreError(
                f"the database {self.path} lacks {len(lost)} change(s) that clients were told "
                f"about ({kinds}; {self.ledger_path} records them): its write-ahead log was lost "
                "or damaged. Restore a backup (lanlic serve --restore FILE --force), or start "
                "with --accept-lost-borrows to go on without them (they are written to the "
                "history)"
            )
        self.append_history_rows(
            [(wall, "lost", product, "", "", f"{kind} {ident} (ledger #{seq}) was acknowledged "
              "to its client but is missing from the database; accepted at start")
             for seq, kind, ident, product in lost]
        )  # fmt: skip
        self.set_meta("ledger_seq", str(ahead))
        return [
            f"accepted the loss of {len(lost)} acknowledged change(s) ({kinds}); see the history"
        ]

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

    def _rollback(self) -> None:
        # SQLite has already rolled back after some errors (a full disk): rolling back again
        # would raise "no transaction is active" and hide the error that matters.
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the error being raised is the one to report

    @contextlib.contextmanager
    def _transaction(self, begin: str = "BEGIN") -> Iterator[None]:
        """The block as one transaction: committed at its end, rolled back if anything in it
        raises; an SQLite error (a full disk, an I/O error) raises as ``StoreError``."""
        try:
            self._write(begin)
            yield
            self._write("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"could not write to {self.path}: {exc}") from exc
        except BaseException:
            self._rollback()
            raise

    def raise_reservations(self, seats: dict[str, int]) -> None:
        """Raise reservations, never lowering one (raises may finish in any order). One that
        the database already holds (an earlier raise wrote it: committed, so fsynced) costs a
        read, not a write: the grants that queued behind one raise share its fsync."""
        have = self.reservations()
        seats = {p: n for p, n in seats.items() if n > have.get(p, -1)}
        if not seats:
            return
        with self._transaction():
            for product, n in seats.items():
                self._write(
                    "INSERT INTO reservations VALUES (?, ?) ON CONFLICT(product) DO UPDATE"
                    " SET seats = max(seats, excluded.seats)",
                    (product, n),
                )

    def lease_key(self) -> bytes:
        """The secret that lease ids are tagged with (made on first use, kept here)."""
        value = self.meta("lease_key")
        if value is None:
            value = os.urandom(32).hex()
            self.set_meta("lease_key", value)
        return bytes.fromhex(value)

    def leases(self) -> list[LeaseRecord]:
        """The leases the batches recorded as live."""
        rows = self._db.execute(
            "SELECT lease_id, product, owner, user, host, epoch FROM leases WHERE live = 1"
        ).fetchall()
        return [LeaseRecord(*r) for r in rows]

    def restart_state(self) -> RestartState:
        """Count one more start and read what a restart needs (SPEC section 13): one
        transaction, one fsync (a restart is waited for by every client)."""
        with self._transaction("BEGIN IMMEDIATE"):
            key = self.lease_key()
            epoch = self.begin_epoch()
            self._write("INSERT OR IGNORE INTO epochs(epoch) VALUES (?)", (epoch,))
        dead = frozenset(
            bytes(r[0]) for r in self._db.execute("SELECT lease_id FROM leases WHERE live = 0")
        )
        open_epochs = {
            int(e): int(b)
            for e, b in self._db.execute(
                "SELECT epoch, batch FROM epochs WHERE closed = 0 AND epoch < ?", (epoch,)
            )
        }
        # An epoch from before this table (schema 2) has no row: none of its leases carry a
        # batch number, so none can be taken back by its tag.
        return RestartState(epoch, key, self.reservations(), self.leases(), dead, open_epochs)

    def write_batch(self, batch: LeaseBatch) -> None:
        """One lease batch, in one transaction: leases granted and ended, reservations written
        as given (the server orders this before any later raise), older epochs closed."""
        with self._transaction():
            self._db.executemany(
                "DELETE FROM leases WHERE lease_id = ?",
                [(x,) for x, keep in batch.removed if not keep],
            )
            self._db.executemany(
                "UPDATE leases SET live = 0 WHERE lease_id = ?",
                [(x,) for x, keep in batch.removed if keep],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?, ?, ?, 1)",
                [(r.lease_id, r.product, r.owner, r.user, r.host, r.epoch) for r in batch.added],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO reservations VALUES (?, ?)",
                list(batch.reservations.items()),
            )
            if batch.close_below:
                self._write("UPDATE epochs SET closed = 1 WHERE epoch < ?", (batch.close_below,))
                self._write("DELETE FROM leases WHERE live = 0 AND epoch < ?", (batch.close_below,))
            self._write(
                "INSERT INTO epochs(epoch, batch, clean) VALUES (?, ?, ?) ON CONFLICT(epoch)"
                " DO UPDATE SET batch = excluded.batch, clean = excluded.clean",
                (batch.epoch, batch.number, int(batch.clean)),
            )

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

    def history_events(
        self, since: float, events: Sequence[str]
    ) -> list[tuple[float, str, str, int]]:
        """``(at, product, event, count)`` of the given kinds from ``since`` on, oldest first."""
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
