"""Durable state in SQLite, behind a small interface so the pool and the server know no SQL.

What must survive a crash is written with ``synchronous=FULL`` in WAL mode: a commit returns only
after the WAL is fsynced, so a borrow, a return or an enrollment that the client was told about
is on disk. The history is appended in batches off the hot path; a crash may lose the last batch.

Every method is blocking. The asyncio server calls them on one dedicated thread (never on the
event loop), which also serialises writers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from lanlic.core.records import BorrowRecord, EnrollmentRecord, HistoryRow
from lanlic.errors import LanlicError

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


class Store:
    """The server's database: ``Store(path)`` opens (creating and migrating) it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
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

    # ----------------------------------------------------------------------------- policy

    def policy(self) -> dict[str, tuple[int | None, int | None]]:
        rows = self._db.execute("SELECT product, borrowable, max_borrow_days FROM policy")
        return {str(p): (b, d) for p, b, d in rows}

    def set_policy(self, product: str, borrowable: int | None, max_days: int | None) -> None:
        self._write(
            "INSERT OR REPLACE INTO policy VALUES (?, ?, ?)", (product, borrowable, max_days)
        )

    # ---------------------------------------------------------------------------- history

    def append_history(self, rows: Iterable[HistoryRow]) -> None:
        """Append a batch in one transaction."""
        self._write("BEGIN")
        try:
            self._db.executemany(
                "INSERT INTO history(at, event, product, user, host, detail)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(r.at, r.event, r.product, r.user, r.host, r.detail) for r in rows],
            )
            self._write("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def history(
        self, since: float | None = None, product: str | None = None, limit: int = 10_000
    ) -> list[HistoryRow]:
        sql = "SELECT at, event, product, user, host, detail FROM history WHERE 1"
        params: list[object] = []
        if since is not None:
            sql += " AND at >= ?"
            params.append(since)
        if product is not None:
            sql += " AND product = ?"
            params.append(product)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [HistoryRow(*r) for r in self._db.execute(sql, params)]
