//! Triggers, the first stage: the SQL that makes every write to a captured table append a row
//! to `_barista_changelog`, plus the rows barista appends itself (snapshot reads and
//! schema-change markers). Capture (install, `--repair-triggers`) and migrate both build their
//! SQL here, so a table's triggers look the same whoever made them.
//!
//! Reads: the captured tables (snapshot), `sqlite_schema` (which triggers exist). Writes:
//! triggers, `_barista_changelog` rows and columns, `_barista_tables.columns`.

use barista_schemas::TableShape;
use rusqlite::{params, Connection};

mod keys;
use keys::Keys;

/// `_barista_changelog.op` of an insert (a0.. = the new row).
pub const OP_INSERT: i64 = 1;
/// `_barista_changelog.op` of an update (b0.. = the row before, a0.. = after).
pub const OP_UPDATE: i64 = 2;
/// `_barista_changelog.op` of a delete (b0.. = the row before).
pub const OP_DELETE: i64 = 3;
/// `_barista_changelog.op` of a snapshot read (a0.. = the row as it was when capture started).
pub const OP_SNAPSHOT: i64 = 4;
/// `_barista_changelog.op` of a schema-change marker: the table's shape changed at this
/// position (a0 = shape before, a1 = shape after, as [`TableShape::to_json`]). Rows before it
/// were captured with the old columns, rows after it with the new ones.
pub const OP_SCHEMA_CHANGE: i64 = 5;
/// Changelog op: the table was dropped, or renamed away, on the leader (`a0` holds the name
/// it had). Followers drop their copy at this position.
pub const OP_DROP: i64 = 6;
/// Changelog op: an incremental snapshot of the table starts here (`a0` = the snapshot id, the
/// marker's own position). Its chunks follow as [`OP_SNAPSHOT_CHUNK`] high watermarks (see
/// `crate::snapshot`).
pub const OP_SNAPSHOT_START: i64 = 7;
/// Changelog op: the incremental snapshot `a0` of the table ended here: every row the table
/// had was copied after the start marker.
pub const OP_SNAPSHOT_END: i64 = 8;
/// Changelog op: the high watermark of one chunk of incremental snapshot `a0`, holding `a1`
/// rows. The rows are not in the changelog: the producer that read them holds them in memory
/// and publishes them at the `a1` positions just below the marker's own, which this marker
/// reserved (nothing else is ever given them). A producer that restarted no longer has them
/// and skips the marker; its snapshot progress, recorded only once Kafka has a chunk, makes
/// it read the chunk again.
pub const OP_SNAPSHOT_CHUNK: i64 = 9;
/// Not a change: the position a follower's replica was at when `producer --promote` made it
/// the leader; numbering continues after it (see `crate::takeover`).
pub const OP_TAKEOVER: i64 = 10;

/// An SQL identifier in double quotes.
pub(crate) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The names of table `id`'s three logging triggers (insert, update, delete).
fn names(id: i64) -> [String; 3] {
    ["ins", "upd", "del"].map(|what| format!("_barista_{id}_{what}"))
}

/// The names of table `id`'s two BEFORE triggers (insert, update), which copy the rows a
/// `REPLACE` could delete (see [`keys`]).
fn before_names(id: i64) -> [String; 2] {
    ["bins", "bupd"].map(|what| format!("_barista_{id}_{what}"))
}

/// `a0, a1, …` or `b0, b1, …` for `width` columns.
fn slots(side: &str, width: usize) -> String {
    (0..width)
        .map(|i| format!("{side}{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `NEW."c1", NEW."c2", …`
fn refs(row: &str, columns: &[String]) -> String {
    columns
        .iter()
        .map(|c| format!("{row}.{}", quote(c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The triggers of table `id`: only column references and comparisons, no functions, so
/// nothing in them can fail on an unusual value. Their cost is one changelog row per change,
/// plus, per insert and update, a lookup of the rows it could replace (see [`keys`]).
pub(crate) fn create_sql(id: i64, table: &str, columns: &[String], keys: &Keys) -> String {
    let t = quote(table);
    let [ins, upd, del] = names(id);
    let [bins, bupd] = before_names(id);
    let (a, b) = (slots("a", columns.len()), slots("b", columns.len()));
    let (new, old) = (refs("NEW", columns), refs("OLD", columns));
    let all = refs(&t, columns);
    let conflict = keys.conflict(&t, columns);
    let not_self = format!("NOT ({})", keys.same(&t, "OLD", columns));
    // The rows a write is about to replace, copied with the kind of write (1 insert, 2 update).
    let copy = |kind: u8, when: &str, extra: &str| {
        format!(
            "WHEN {when}EXISTS (SELECT 1 FROM {t} WHERE ({conflict}){extra}) BEGIN \
               DELETE FROM _barista_replaced WHERE tbl = {id}; \
               INSERT INTO _barista_replaced(tbl, kind, {b}) \
                 SELECT {id}, {kind}, {all} FROM {t} WHERE ({conflict}){extra}; END"
        )
    };
    // A copy was replaced if its row is gone, or the new row took its key.
    let log_replaced = |kind: u8, extra: &str| {
        format!(
            "INSERT INTO _barista_changelog(tbl, op, {b}) SELECT {id}, {OP_DELETE}, {b} \
               FROM _barista_replaced r WHERE r.tbl = {id} AND r.kind = {kind}{extra} \
                 AND (({}) OR NOT EXISTS (SELECT 1 FROM {t} WHERE {})) ORDER BY r.rowid; \
             DELETE FROM _barista_replaced WHERE tbl = {id};",
            keys.same("r", "NEW", columns),
            keys.same(&t, "r", columns)
        )
    };
    format!(
        "CREATE TRIGGER \"{bins}\" BEFORE INSERT ON {t} {};\n\
         CREATE TRIGGER \"{bupd}\" BEFORE UPDATE ON {t} {};\n\
         CREATE TRIGGER \"{ins}\" AFTER INSERT ON {t} BEGIN {} \
           INSERT INTO _barista_changelog(tbl, op, {a}) VALUES ({id}, {OP_INSERT}, {new}); END;\n\
         CREATE TRIGGER \"{upd}\" AFTER UPDATE ON {t} BEGIN {} \
           INSERT INTO _barista_changelog(tbl, op, {b}, {a}) VALUES ({id}, {OP_UPDATE}, {old}, {new}); END;\n\
         CREATE TRIGGER \"{del}\" AFTER DELETE ON {t} BEGIN \
           DELETE FROM _barista_replaced WHERE tbl = {id} AND {}; \
           INSERT INTO _barista_changelog(tbl, op, {b}) VALUES ({id}, {OP_DELETE}, {old}); END;",
        copy(1, "", ""),
        copy(
            2,
            &format!("({}) AND ", keys.changed(columns)),
            &format!(" AND {not_self}")
        ),
        log_replaced(1, ""),
        log_replaced(2, &format!(" AND NOT ({})", keys.same("r", "OLD", columns))),
        keys.same("_barista_replaced", "OLD", columns),
    )
}

/// Drops table `id`'s triggers, if they exist.
pub(crate) fn drop_sql(id: i64) -> String {
    names(id)
        .into_iter()
        .chain(before_names(id))
        .map(|n| format!("DROP TRIGGER IF EXISTS \"{n}\";"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replaces table `id`'s triggers with ones made for `columns` and the table's keys as they
/// are now. The changelog must already be wide enough (see [`widen_changelog`]).
pub(crate) fn replace(
    conn: &Connection,
    id: i64,
    table: &str,
    columns: &[String],
) -> rusqlite::Result<()> {
    let keys = Keys::read(conn, table, columns)?;
    conn.execute_batch(&drop_sql(id))?;
    conn.execute_batch(&create_sql(id, table, columns, &keys))
}

/// Whether all three of table `id`'s triggers exist.
pub(crate) fn installed(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    let [ins, upd, del] = names(id);
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name IN (?1, ?2, ?3)",
        params![ins, upd, del],
        |r| r.get(0),
    )?;
    Ok(n == 3)
}

/// Records the columns table `id`'s triggers are made for, which capture compares with the
/// table to notice DDL made behind barista's back.
pub(crate) fn record_columns(
    conn: &Connection,
    id: i64,
    columns: &[String],
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE _barista_tables SET columns = ?1 WHERE id = ?2",
        params![columns_json(columns), id],
    )?;
    Ok(())
}

/// `_barista_tables.columns`: a JSON array of names. Serialising strings cannot fail.
pub(crate) fn columns_json(columns: &[String]) -> String {
    serde_json::to_string(columns).unwrap_or_default()
}

/// Makes the changelog, and `_barista_replaced`, wide enough for `width` columns.
pub(crate) fn widen_changelog(conn: &Connection, width: usize) -> rusqlite::Result<()> {
    // Schema-change markers keep two shapes in a0 and a1.
    let width = width.max(2);
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('_barista_changelog')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let copies: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('_barista_replaced')")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for i in 0..width {
        for side in ["a", "b"] {
            let col = format!("{side}{i}");
            if !have.contains(&col) {
                conn.execute_batch(&format!("ALTER TABLE _barista_changelog ADD COLUMN {col}"))?;
            }
        }
        let col = format!("b{i}");
        if !copies.contains(&col) {
            conn.execute_batch(&format!("ALTER TABLE _barista_replaced ADD COLUMN {col}"))?;
        }
    }
    Ok(())
}

/// Appends every row of `table` to the changelog as a snapshot read ([`OP_SNAPSHOT`]), in
/// one statement: how a small table's first snapshot is taken (see `crate::snapshot::first`),
/// and the capture bench's baseline for the old blocking snapshot of any table.
pub fn snapshot(
    conn: &Connection,
    id: i64,
    table: &str,
    columns: &[String],
) -> rusqlite::Result<usize> {
    let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
    conn.execute(
        &format!(
            "INSERT INTO _barista_changelog(tbl, op, {}) SELECT {id}, {OP_SNAPSHOT}, {} FROM {}",
            slots("a", columns.len()),
            cols.join(", "),
            quote(table)
        ),
        [],
    )
}

/// Appends a drop marker for table `id`, once called `name` (see [`OP_DROP`]); returns its
/// position.
pub(crate) fn record_drop(conn: &Connection, id: i64, name: &str) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO _barista_changelog(tbl, op, a0) VALUES (?1, ?2, ?3)",
        params![id, OP_DROP, name],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Appends a schema-change marker for table `id` (see [`OP_SCHEMA_CHANGE`]); returns its
/// position.
pub(crate) fn record_schema_change(
    conn: &Connection,
    id: i64,
    before: &TableShape,
    after: &TableShape,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO _barista_changelog(tbl, op, a0, a1) VALUES (?1, ?2, ?3, ?4)",
        params![id, OP_SCHEMA_CHANGE, before.to_json(), after.to_json()],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Whether capture was ever installed in this database (the producer ran on it once).
pub(crate) fn capture_installed(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = '_barista_tables'",
        [],
        |r| r.get(0),
    )
}

/// What `producer migrate` does in its transaction: triggers down, DDL (which may change
/// rows without capture seeing it), a schema-change marker, triggers up. For tests.
#[cfg(test)]
pub(crate) fn migrate_for_test(conn: &Connection, table: &str, ddl: &str) {
    let id: i64 = conn
        .query_row(
            "SELECT id FROM _barista_tables WHERE name = ?1",
            [table],
            |r| r.get(0),
        )
        .unwrap();
    let before = barista_schemas::TableShape::read(conn, table).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn.execute_batch(&drop_sql(id)).unwrap();
    conn.execute_batch(ddl).unwrap();
    let after = barista_schemas::TableShape::read(conn, table).unwrap();
    widen_changelog(conn, after.columns.len()).unwrap();
    record_columns(conn, id, &after.column_names()).unwrap();
    record_schema_change(conn, id, &before, &after).unwrap();
    replace(conn, id, table, &after.column_names()).unwrap();
    conn.execute_batch("COMMIT").unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(include_str!("sql/changelog.sql"))
            .unwrap();
        conn.execute_batch("CREATE TABLE \"odd \"\"name\"(id INTEGER PRIMARY KEY, \"v w\")")
            .unwrap();
        conn
    }

    fn changelog(conn: &Connection) -> Vec<(i64, i64, String)> {
        conn.prepare("SELECT op, tbl, quote(a0) || ',' || quote(a1) || ',' || quote(b0) || ',' || quote(b1) FROM _barista_changelog ORDER BY position")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn triggers_log_every_write_with_quoted_names_and_can_be_replaced() {
        let conn = db();
        let cols = vec!["id".to_owned(), "v w".to_owned()];
        widen_changelog(&conn, cols.len()).unwrap();
        conn.execute("INSERT INTO \"odd \"\"name\" VALUES (1, 'before')", [])
            .unwrap();
        assert_eq!(snapshot(&conn, 7, "odd \"name", &cols).unwrap(), 1);
        assert!(!installed(&conn, 7).unwrap());
        replace(&conn, 7, "odd \"name", &cols).unwrap();
        replace(&conn, 7, "odd \"name", &cols).unwrap();
        assert!(installed(&conn, 7).unwrap());
        conn.execute_batch(
            "INSERT INTO \"odd \"\"name\" VALUES (2, x'00'); UPDATE \"odd \"\"name\" SET \"v w\" = 3 WHERE id = 1; \
             DELETE FROM \"odd \"\"name\" WHERE id = 2;",
        )
        .unwrap();
        assert_eq!(
            changelog(&conn),
            [
                (OP_SNAPSHOT, 7, "1,'before',NULL,NULL".to_owned()),
                (OP_INSERT, 7, "2,X'00',NULL,NULL".to_owned()),
                (OP_UPDATE, 7, "1,3,1,'before'".to_owned()),
                (OP_DELETE, 7, "NULL,NULL,2,X'00'".to_owned()),
            ]
        );
        conn.execute_batch(&drop_sql(7)).unwrap();
        assert!(!installed(&conn, 7).unwrap());
    }

    #[test]
    fn a_schema_change_marker_keeps_both_shapes() {
        let conn = db();
        widen_changelog(&conn, 1).unwrap();
        let before = TableShape::read(&conn, "odd \"name").unwrap();
        conn.execute_batch("ALTER TABLE \"odd \"\"name\" ADD COLUMN z")
            .unwrap();
        let after = TableShape::read(&conn, "odd \"name").unwrap();
        let at = record_schema_change(&conn, 7, &before, &after).unwrap();
        let (a0, a1): (String, String) = conn
            .query_row(
                "SELECT a0, a1 FROM _barista_changelog WHERE position = ?1 AND op = ?2",
                params![at, OP_SCHEMA_CHANGE],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(TableShape::from_json(&a0).unwrap(), before);
        assert_eq!(TableShape::from_json(&a1).unwrap(), after);
    }
}
