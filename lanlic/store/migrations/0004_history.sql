-- lanlic store, schema version 4: a history a hostile client cannot flood, read by index.

-- Refusals are kept one row per client, product and code per interval, with how many there were.
ALTER TABLE history ADD COLUMN count INTEGER NOT NULL DEFAULT 1;

-- The admin page and `lanlic admin history` filter by product or event within a time range.
CREATE INDEX history_product_at ON history(product, at);
CREATE INDEX history_event_at ON history(event, at)
