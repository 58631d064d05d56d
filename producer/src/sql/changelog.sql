-- barista's bookkeeping in the leader database. Created by `producer` on start.

-- One row per captured change. `position` is an INTEGER PRIMARY KEY (the rowid
-- alias, which VACUUM keeps) without AUTOINCREMENT: the producer never prunes
-- the newest row, so max(position)+1 can never hand out a number already used.
-- a<i>/b<i> hold the i-th column after/before the change, exactly as SQLite
-- stored it (no functions in the trigger: nothing can fail on a BLOB).
CREATE TABLE IF NOT EXISTS _barista_changelog (
    position INTEGER PRIMARY KEY,
    tbl      INTEGER NOT NULL,   -- _barista_tables.id
    op       INTEGER NOT NULL    -- 1 insert, 2 update, 3 delete, 4 snapshot read
);

-- Rows an insert or update is about to replace (REPLACE conflict resolution deletes them
-- without firing delete triggers): copied by the table's BEFORE triggers, logged as deletes
-- and emptied by its AFTER triggers (producer/src/triggers/keys.rs). b<i> as in the changelog.
CREATE TABLE IF NOT EXISTS _barista_replaced (
    tbl  INTEGER NOT NULL,       -- _barista_tables.id
    kind INTEGER NOT NULL        -- the write that copied it: 1 insert, 2 update
);

-- Captured tables and the column list their triggers were made for.
CREATE TABLE IF NOT EXISTS _barista_tables (
    id      INTEGER PRIMARY KEY,
    name    TEXT NOT NULL UNIQUE,
    columns TEXT NOT NULL        -- JSON array of column names, in trigger order
);

-- Producer state: 'acked' = every change up to this position is in Kafka.
CREATE TABLE IF NOT EXISTS _barista_state (
    key   TEXT PRIMARY KEY,
    value
);

-- Last acknowledged position per partition: the `prev_position` chain resumes
-- from here after a restart.
CREATE TABLE IF NOT EXISTS _barista_partitions (
    topic         TEXT NOT NULL,
    partition     INTEGER NOT NULL,
    last_position INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- The table checksums (barista_schemas::checksum) as of `position`, the acknowledged
-- position they were stored with (in the transaction that pruned up to it). A restarted
-- producer continues from them; `producer verify` recomputes them from the rows.
CREATE TABLE IF NOT EXISTS _barista_checksums (
    tbl      TEXT PRIMARY KEY,   -- the captured table's name
    sum      INTEGER NOT NULL,   -- the wrapping u64 sum of its rows' hashes, as i64 bits
    position INTEGER NOT NULL
);
