-- barista-registry storage: schemas by global id, subject versions, compatibility config.
-- Idempotent: run on every start.

-- One row per distinct schema. Ids are global, as in Confluent: the same schema registered
-- under two subjects gets one id. AUTOINCREMENT so an id is never reused.
CREATE TABLE IF NOT EXISTS schemas (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    schema_type TEXT    NOT NULL DEFAULT 'AVRO',
    -- The schema re-serialised by apache-avro after parsing: equal for equal schemas whatever
    -- their whitespace or key order, but unlike Parsing Canonical Form it keeps defaults,
    -- logical types, aliases and docs, which matter for compatibility.
    normalized  TEXT    NOT NULL UNIQUE,
    -- The text as first registered, returned to clients.
    schema      TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS subject_versions (
    subject   TEXT    NOT NULL,
    version   INTEGER NOT NULL CHECK (version > 0),
    schema_id INTEGER NOT NULL REFERENCES schemas (id),
    PRIMARY KEY (subject, version)
);

CREATE INDEX IF NOT EXISTS subject_versions_by_schema ON subject_versions (schema_id);

-- The global level, once set through PUT /config; until then the configured default applies.
CREATE TABLE IF NOT EXISTS global_config (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    compatibility TEXT    NOT NULL
);

-- Per-subject levels; a subject may have one before it has any version.
CREATE TABLE IF NOT EXISTS subject_config (
    subject       TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);
