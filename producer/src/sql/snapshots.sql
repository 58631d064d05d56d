-- Incremental snapshots (see producer/src/snapshot.rs). Created by `producer` on start.

-- The snapshot in progress of each table. Updated in the same leader transaction as the chunk
-- it records, so a producer killed at any moment resumes after the last chunk committed.
CREATE TABLE IF NOT EXISTS _barista_snapshots (
    tbl        INTEGER PRIMARY KEY,   -- _barista_tables.id
    id         INTEGER NOT NULL,      -- the snapshot: the position of its start marker
    rows       INTEGER NOT NULL DEFAULT 0,  -- rows copied so far
    total      INTEGER,               -- rows the table had when counted (an estimate)
    chunks     INTEGER NOT NULL DEFAULT 0,
    started_ms INTEGER NOT NULL
);

-- The last primary key each snapshot copied, one row per key column. `value` has no type, so
-- SQLite keeps every value exactly as the table stored it.
CREATE TABLE IF NOT EXISTS _barista_snapshot_keys (
    tbl   INTEGER NOT NULL,
    i     INTEGER NOT NULL,
    value,
    PRIMARY KEY (tbl, i)
);

-- Requests from any SQL client, as Debezium's signal table:
--   INSERT INTO _barista_signals(type, data) VALUES ('snapshot', 'customers');
-- `data`: a table name, names separated by commas, or JSON {"data-collections": ["a", "b"]}.
-- The producer sets processed_ms and result when it has acted on the row.
CREATE TABLE IF NOT EXISTS _barista_signals (
    id           INTEGER PRIMARY KEY,
    type         TEXT NOT NULL DEFAULT 'snapshot',
    data         TEXT NOT NULL,
    processed_ms INTEGER,
    result       TEXT
);
CREATE INDEX IF NOT EXISTS _barista_signals_pending ON _barista_signals(id) WHERE processed_ms IS NULL;
