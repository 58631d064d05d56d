-- barista's bookkeeping in a replica. Written in the same transaction as the
-- rows, so a reader (any SQLite client) sees the position its rows are at.

-- Per Kafka partition: the next offset to read and the last leader position
-- applied from it.
CREATE TABLE IF NOT EXISTS _barista_offsets (
    topic            TEXT NOT NULL,
    partition        INTEGER NOT NULL,
    next_offset      INTEGER NOT NULL,
    applied_position INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- The replica's position: every leader change up to `position` is applied,
-- and nothing after it. `leader_ts_ms` is the leader's clock at that position.
CREATE TABLE IF NOT EXISTS _barista_position (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    position      INTEGER NOT NULL,
    leader_ts_ms  INTEGER NOT NULL,
    applied_at_ms INTEGER NOT NULL
);

-- Changes an operator skipped (`consumer dead-letters skip`): poison messages
-- that held their partition's chain, released on purpose without applying
-- them. The replica's position passes them, so for the key of a skipped
-- change the replica may differ from the leader until a later change to
-- that key overwrites it; each row here says which change, why it could not
-- be applied, and who decided what (reason) and when. Written durably
-- before the held changes are released; read at start, so a restart that
-- reads the message again does not hold the chain again.
CREATE TABLE IF NOT EXISTS _barista_skipped (
    topic            TEXT NOT NULL,
    partition        INTEGER NOT NULL,
    offset           INTEGER NOT NULL,
    position         INTEGER NOT NULL,
    schema_id        INTEGER,
    message_key      BLOB,
    error            TEXT NOT NULL,
    reason           TEXT NOT NULL,
    -- The replica's position when the operator skipped it.
    replica_position INTEGER NOT NULL,
    skipped_at       TEXT NOT NULL,
    PRIMARY KEY (topic, partition, position)
);

-- Per replica table: its checksum (barista_schemas::checksum, the wrapping
-- sum of its rows' hashes, as i64 bits), kept by the apply transaction from
-- the replica's own rows, and the writer shape (JSON) it is taken under. A
-- table without a row here (a replica from before checksums) has its sum
-- recomputed from its rows at its next change.
CREATE TABLE IF NOT EXISTS _barista_checksums (
    tbl   TEXT PRIMARY KEY,
    sum   INTEGER NOT NULL,
    shape TEXT NOT NULL
);

-- Set when a commit record's checksum of a table differed from the
-- replica's: the follower stops applying (and stays stopped after a
-- restart) until the replica is re-seeded or the table re-snapshotted.
CREATE TABLE IF NOT EXISTS _barista_diverged (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    tbl      TEXT NOT NULL,
    position INTEGER NOT NULL,
    leader   INTEGER NOT NULL,
    replica  INTEGER NOT NULL,
    found_at TEXT NOT NULL
);
