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
