-- lanlic store, schema version 2: what a restart needs to never over-grant floating seats.

-- A durable upper bound on the floating seats in use per product. The server raises it (and
-- waits for the fsync) before it grants past it, and lowers it lazily; after a crash it holds
-- this many seats out of the pool for the reclaim window.
CREATE TABLE reservations (
    product TEXT PRIMARY KEY,
    seats   INTEGER NOT NULL
);

-- The floating leases, written in batches about once a second: after a crash, a client that
-- re-presents one of these is known to be its owner.
CREATE TABLE leases (
    lease_id BLOB PRIMARY KEY,
    product  TEXT NOT NULL,
    owner    BLOB NOT NULL,
    user     TEXT NOT NULL,
    host     TEXT NOT NULL,
    epoch    INTEGER NOT NULL
);
