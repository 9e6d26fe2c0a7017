-- lanlic store, schema version 3: reclaims only by the client a lease was granted to, and an
-- exact count of held seats after a clean stop (SPEC section 13).

-- One row per start of the server. batch: the number of the last lease batch written in it
-- (a lease id carries the batch number it was granted under: one granted after the last batch
-- is not in the leases table and proves its owner by its tag). clean: its last batch was a
-- clean stop's (leases and reservations exact). closed: the reclaim window after it is over,
-- so its unrecorded leases can no longer be taken back.
CREATE TABLE epochs (
    epoch  INTEGER PRIMARY KEY,
    batch  INTEGER NOT NULL DEFAULT 0,
    clean  INTEGER NOT NULL DEFAULT 0,
    closed INTEGER NOT NULL DEFAULT 0
);

-- live = 0: a lease of an older epoch that was taken back and then ended, kept while that epoch
-- is open so that it cannot be taken back a second time.
ALTER TABLE leases ADD COLUMN live INTEGER NOT NULL DEFAULT 1;
