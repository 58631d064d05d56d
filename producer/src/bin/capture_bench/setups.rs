//! The setups compared: no capture, a key-only trigger floor, barista's own
//! triggers, JSON-building triggers, and the experimental trigger variants
//! (x-*), each as the SQL (or install step) that prepares a template database.

/// The key-only floor: the least a row trigger can do and still say which row
/// changed.
const KEY_ONLY_SQL: &str = "CREATE TABLE log(k);
    CREATE TRIGGER log_ins AFTER INSERT ON customers BEGIN INSERT INTO log(k) VALUES (NEW.id); END;
    CREATE TRIGGER log_upd AFTER UPDATE ON customers BEGIN INSERT INTO log(k) VALUES (NEW.id); END;
    CREATE TRIGGER log_del AFTER DELETE ON customers BEGIN INSERT INTO log(k) VALUES (OLD.id); END;";

/// JSON images, as Debezium's SQLite connector builds them in its triggers.
const JSON_SQL: &str =
    "CREATE TABLE json_log(id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, \
                        before TEXT, after TEXT);
    CREATE TRIGGER json_ins AFTER INSERT ON customers BEGIN
      INSERT INTO json_log(tbl, op, after) VALUES ('customers', 'c',
        json_object('id', NEW.id, 'name', NEW.name, 'coffee', NEW.coffee, 'visits', NEW.visits,
                    'updated_at', NEW.updated_at)); END;
    CREATE TRIGGER json_upd AFTER UPDATE ON customers BEGIN
      INSERT INTO json_log(tbl, op, before, after) VALUES ('customers', 'u',
        json_object('id', OLD.id, 'name', OLD.name, 'coffee', OLD.coffee, 'visits', OLD.visits,
                    'updated_at', OLD.updated_at),
        json_object('id', NEW.id, 'name', NEW.name, 'coffee', NEW.coffee, 'visits', NEW.visits,
                    'updated_at', NEW.updated_at)); END;
    CREATE TRIGGER json_del AFTER DELETE ON customers BEGIN
      INSERT INTO json_log(tbl, op, before) VALUES ('customers', 'd',
        json_object('id', OLD.id, 'name', OLD.name, 'coffee', OLD.coffee, 'visits', OLD.visits,
                    'updated_at', OLD.updated_at)); END;";

/// Experiment: barista's changelog and its three AFTER triggers written out by hand (same
/// interleaved a0, b0, a1, b1… columns as `widen_changelog` makes), as they were before
/// `REPLACE` capture (the BEFORE triggers and `_barista_replaced`): barista against this is
/// what capturing `REPLACE` costs. This bench's upserts of existing keys are its worst case:
/// the BEFORE INSERT trigger copies the row the upsert then updates.
const X_REPLICA_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL,
      a0, b0, a1, b1, a2, b2, a3, b3, a4, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4, a0, a1, a2, a3, a4)
      VALUES (1, 2, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at,
              NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4)
      VALUES (1, 3, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// Experiment: after images only (no before image on update): what the
/// before image costs.
const X_AFTER_ONLY_SQL: &str =
    "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL,
      a0, a1, a2, a3, a4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 2, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, a0)
      VALUES (1, 3, OLD.id); END;";

/// Experiment: key plus table and op, no images: what the two small integers
/// and the changelog's shape cost without the column values.
const X_KEY_TBL_OP_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL, k);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, k) VALUES (1, 1, NEW.id); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, k) VALUES (1, 2, NEW.id); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, k) VALUES (1, 3, OLD.id); END;";

/// Experiment: barista's images, but only the columns the row has, in
/// declaration order a0..a4 then b0..b4 (inserts end in NULLs instead of
/// alternating with them).
const X_A_THEN_B_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL,
      a0, a1, a2, a3, a4, b0, b1, b2, b3, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4, a0, a1, a2, a3, a4)
      VALUES (1, 2, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at,
              NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4)
      VALUES (1, 3, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// Experiment: the update trigger logs only the key of the row before (the
/// after image is in the table until the next change), i.e. the same
/// payload as an insert: what the doubled update row costs.
const X_UPD_AFTER_PLUS_KEY_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL,
      a0, b0, a1, b1, a2, b2, a3, b3, a4, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, b0, a0, a1, a2, a3, a4)
      VALUES (1, 2, OLD.id, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4)
      VALUES (1, 3, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// Experiment: a lean changelog: no NOT NULL checks, only the slots one
/// table needs, and on update the after image plus the old key (what a
/// replica needs to apply it; the old row is the previous event's after
/// image). Deletes carry the old key.
const X_LEAN_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl, op, a0, a1, a2, a3, a4, b0);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4, b0)
      VALUES (1, 2, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at, OLD.id); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0)
      VALUES (1, 3, OLD.id); END;";

/// Experiment: barista's changelog and triggers as they are, minus the two
/// NOT NULL checks.
const X_NO_NOT_NULL_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl, op,
      a0, b0, a1, b1, a2, b2, a3, b3, a4, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN INSERT INTO cl(tbl, op, a0, a1, a2, a3, a4)
      VALUES (1, 1, NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4, a0, a1, a2, a3, a4)
      VALUES (1, 2, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at,
              NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN INSERT INTO cl(tbl, op, b0, b1, b2, b3, b4)
      VALUES (1, 3, OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// Experiment: a second, 30-column table captured next to customers: the
/// shared changelog grows to a0..a29/b0..b29 and every customers change
/// pays for the empty slots.
const X_WIDE_TABLE_SQL: &str = "CREATE TABLE wide(id INTEGER PRIMARY KEY, c1, c2, c3, c4, c5, c6, c7, c8, c9,
      c10, c11, c12, c13, c14, c15, c16, c17, c18, c19, c20, c21, c22, c23, c24, c25, c26, c27, c28, c29)";

/// Experiment: a 60-slot changelog (as wide as x-barista-wide30's) with the
/// images packed at the front: after image in c0..c4, before image in
/// c5..c9, so the 50 unused slots trail (SQLite still writes them as NULLs
/// unless built with SQLITE_ENABLE_NULL_TRIM).
fn x_packed_wide60_sql() -> String {
    let slots: Vec<String> = (0..60).map(|i| format!("c{i}")).collect();
    let new = "NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at";
    let old = "OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at";
    format!(
        "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL, {slots});
         CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN
           INSERT INTO cl(tbl, op, c0, c1, c2, c3, c4) VALUES (1, 1, {new}); END;
         CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN
           INSERT INTO cl(tbl, op, c0, c1, c2, c3, c4, c5, c6, c7, c8, c9) VALUES (1, 2, {new}, {old}); END;
         CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN
           INSERT INTO cl(tbl, op, c5, c6, c7, c8, c9) VALUES (1, 3, {old}); END;",
        slots = slots.join(", ")
    )
}

/// Experiment: a narrow shared changelog (position, tbl, op) for the order,
/// plus a per-table image table exactly as wide as the table, keyed by the
/// same position: two inserts per change, but no empty slots whatever the
/// widest captured table.
const X_SPLIT_SQL: &str = "CREATE TABLE cl(position INTEGER PRIMARY KEY, tbl INTEGER NOT NULL, op INTEGER NOT NULL);
    CREATE TABLE cl_1(position INTEGER PRIMARY KEY, a0, a1, a2, a3, a4, b0, b1, b2, b3, b4);
    CREATE TRIGGER x_ins AFTER INSERT ON customers BEGIN
      INSERT INTO cl(tbl, op) VALUES (1, 1);
      INSERT INTO cl_1(position, a0, a1, a2, a3, a4)
        VALUES (last_insert_rowid(), NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at); END;
    CREATE TRIGGER x_upd AFTER UPDATE ON customers BEGIN
      INSERT INTO cl(tbl, op) VALUES (1, 2);
      INSERT INTO cl_1(position, a0, a1, a2, a3, a4, b0, b1, b2, b3, b4)
        VALUES (last_insert_rowid(), NEW.id, NEW.name, NEW.coffee, NEW.visits, NEW.updated_at,
                OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;
    CREATE TRIGGER x_del AFTER DELETE ON customers BEGIN
      INSERT INTO cl(tbl, op) VALUES (1, 3);
      INSERT INTO cl_1(position, b0, b1, b2, b3, b4)
        VALUES (last_insert_rowid(), OLD.id, OLD.name, OLD.coffee, OLD.visits, OLD.updated_at); END;";

/// How a fresh database is prepared for one setup.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Install {
    None,
    Sql(&'static str),
    /// SQL made by a function (long generated variants).
    SqlFn(fn() -> String),
    Barista,
    /// Barista, after creating another table (SQL) that is captured too.
    BaristaWith(&'static str, &'static str),
}

/// One way of capturing (or not) the writes to `customers`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    pub(crate) name: &'static str,
    pub(crate) install: Install,
    /// The table the triggers write to, emptied after the preload.
    pub(crate) log: Option<&'static str>,
}

pub(crate) const SETUPS: [Setup; 4] = [
    Setup {
        name: "none",
        install: Install::None,
        log: None,
    },
    Setup {
        name: "key-only",
        install: Install::Sql(KEY_ONLY_SQL),
        log: Some("log"),
    },
    Setup {
        name: "barista",
        install: Install::Barista,
        log: Some("_barista_changelog"),
    },
    Setup {
        name: "json",
        install: Install::Sql(JSON_SQL),
        log: Some("json_log"),
    },
];

pub(crate) const EXPERIMENTS: [Setup; 10] = [
    Setup {
        name: "x-split",
        install: Install::Sql(X_SPLIT_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-packed-wide60",
        install: Install::SqlFn(x_packed_wide60_sql),
        log: Some("cl"),
    },
    Setup {
        name: "x-barista-wide30",
        install: Install::BaristaWith(X_WIDE_TABLE_SQL, "wide"),
        log: Some("_barista_changelog"),
    },
    Setup {
        name: "x-no-not-null",
        install: Install::Sql(X_NO_NOT_NULL_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-lean",
        install: Install::Sql(X_LEAN_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-replica",
        install: Install::Sql(X_REPLICA_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-a-then-b",
        install: Install::Sql(X_A_THEN_B_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-upd-after+key",
        install: Install::Sql(X_UPD_AFTER_PLUS_KEY_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-after-only",
        install: Install::Sql(X_AFTER_ONLY_SQL),
        log: Some("cl"),
    },
    Setup {
        name: "x-key-tbl-op",
        install: Install::Sql(X_KEY_TBL_OP_SQL),
        log: Some("cl"),
    },
];
