-- lanlic store, schema version 1.
-- Times are UTC seconds since the epoch (REAL) unless a column says otherwise.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Machines (act) or portable keys (key) allowed to borrow: their container public key.
CREATE TABLE enrollments (
    container_fp  TEXT PRIMARY KEY,      -- fingerprint of the container public key
    container_key BLOB NOT NULL,         -- raw 32-byte Ed25519 public key
    kind          TEXT NOT NULL CHECK (kind IN ('act', 'key')),
    machine_fp    TEXT NOT NULL,         -- machine fingerprint ('' for a portable key)
    user          TEXT NOT NULL,
    host          TEXT NOT NULL,
    enrolled_at   REAL NOT NULL,
    via           TEXT NOT NULL          -- 'online' or 'offline'
);

-- Every borrow ever made. A seat is out of the pool while state = 'active'.
CREATE TABLE borrows (
    borrow_id    TEXT PRIMARY KEY,
    request_id   TEXT NOT NULL UNIQUE,   -- the client's idempotency key: a retry gets the same borrow
    product      TEXT NOT NULL,
    container_fp TEXT NOT NULL REFERENCES enrollments(container_fp),
    user         TEXT NOT NULL,
    host         TEXT NOT NULL,
    start        REAL NOT NULL,
    end          REAL NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('active', 'returned', 'expired')),
    ended_at     REAL,
    file         BLOB NOT NULL           -- the signed borrowed licence file as sent
);
CREATE INDEX borrows_active ON borrows(state, end);

-- Append-only history for usage reports.
CREATE TABLE history (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      REAL NOT NULL,
    event   TEXT NOT NULL,               -- checkout, release, expiry, borrow, return, ...
    product TEXT NOT NULL DEFAULT '',
    user    TEXT NOT NULL DEFAULT '',
    host    TEXT NOT NULL DEFAULT '',
    detail  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX history_at ON history(at);

-- The admin's lowering of the key's borrowing terms (never above the key; NULL = the key's).
CREATE TABLE policy (
    product         TEXT PRIMARY KEY,
    borrowable      INTEGER,
    max_borrow_days INTEGER
);
