//! `GET /snapshot` on the producer: the leader's file as a replica, for the
//! first follower when there is no peer to seed from (or none healthy).
//!
//! The copy is made in one read transaction on the leader (online backup,
//! see [`barista_schemas::snapshot`]; the leader is in WAL mode, so writers
//! go on). Then, in the copy only: every trigger goes (barista's capture,
//! and the application's, whose effects arrive as changes of their own and
//! would be applied twice), views go, and every table that is not captured
//! (barista's bookkeeping, tables without a primary key) goes; each captured
//! table is rebuilt as the follower would have created it (its captured
//! columns with their declared types and the primary key, nothing else: no
//! generated columns, CHECK, UNIQUE or foreign keys that the follower's
//! upserts could trip over, no indexes a replayed replica would not have). The position
//! is the newest changelog position of the copy, which the triggers wrote
//! in the same transactions as the rows; the copy gets the replica's
//! bookkeeping with that position and NO offsets.
//!
//! A follower seeded from it reads every partition from the earliest offset
//! Kafka still has, drops changes at or below the position as duplicates,
//! and halts on a gap: a change above the position whose predecessor on its
//! partition is gone.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use barista_schemas::snapshot::{copy_reshaped, SnapshotError};
use barista_schemas::TableShape;
use rusqlite::Connection;

use super::Ops;
use crate::tail::now_ms;

/// Serves a snapshot of the leader (one at a time: each copy takes as much
/// disk as the leader until it is sent).
pub(super) async fn serve(State(ops): State<Arc<Ops>>) -> Response {
    let Ok(permit) = ops.snapshot_busy.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "a snapshot is being served already; retry later",
        )
            .into_response();
    };
    let leader = ops.leader.clone();
    let make = move || {
        let dir = match leader.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => ".".into(),
        };
        copy_reshaped(&leader, &dir, as_replica)
    };
    barista_runtime::snapshot::serve("the leader", make, permit).await
}

/// Turns a copy of the leader into a replica at the leader's position.
pub fn as_replica(c: &Connection) -> Result<(), SnapshotError> {
    let exists = |name: &str| -> rusqlite::Result<bool> {
        c.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    // Captured tables and the columns their triggers capture.
    let captured: HashMap<String, Vec<String>> = if exists("_barista_tables")? {
        let rows: Vec<(String, String)> = c
            .prepare("SELECT name, columns FROM _barista_tables")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut m = HashMap::new();
        for (name, json) in rows {
            let cols: Vec<String> = serde_json::from_str(&json)
                .map_err(|e| SnapshotError::Reshape(format!("columns of {name}: {e}")))?;
            m.insert(name, cols);
        }
        m
    } else {
        HashMap::new()
    };
    let position: i64 = if exists("_barista_changelog")? {
        c.query_row(
            "SELECT coalesce(max(position), 0) FROM _barista_changelog",
            [],
            |r| r.get(0),
        )?
    } else {
        0
    };
    let objects: Vec<(String, String)> = c
        .prepare(
            "SELECT type, name FROM sqlite_schema WHERE type IN ('trigger', 'view', 'table') \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type = 'table'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    c.execute_batch("BEGIN")?;
    let mut tables = Vec::new();
    for (kind, name) in objects {
        let q = quote(&name);
        match kind.as_str() {
            "trigger" => c.execute_batch(&format!("DROP TRIGGER IF EXISTS {q}"))?,
            "view" => c.execute_batch(&format!("DROP VIEW IF EXISTS {q}"))?,
            _ if captured.contains_key(&name) => tables.push(name),
            _ => c.execute_batch(&format!("DROP TABLE IF EXISTS {q}"))?,
        }
    }
    for name in tables {
        let shape = TableShape::read(c, &name)
            .map_err(|e| SnapshotError::Reshape(format!("table {name}: {e}")))?
            .restricted_to(&captured[&name]);
        rebuild(c, &shape)?;
    }
    c.execute_batch(barista_schemas::snapshot::REPLICA_SQL)?;
    let now = now_ms();
    c.execute(
        "INSERT INTO _barista_position(id, position, leader_ts_ms, applied_at_ms) VALUES (1, ?1, ?2, ?2)",
        rusqlite::params![position, now],
    )?;
    c.execute_batch("COMMIT")?;
    Ok(())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Rebuilds a captured table as a follower creates it (see the consumer's
/// `Replica::reconcile`): its columns with their declared types, and the
/// primary key; the rows copied over.
fn rebuild(c: &Connection, shape: &TableShape) -> rusqlite::Result<()> {
    let (t, tmp) = (quote(&shape.name), quote("_barista_seed_rebuild"));
    let cols: Vec<String> = shape.columns.iter().map(|col| quote(&col.name)).collect();
    let defs: Vec<String> = shape
        .columns
        .iter()
        .map(|col| format!("{} {}", quote(&col.name), col.decl_type))
        .collect();
    let pk: Vec<String> = shape
        .pk_indexes()
        .iter()
        .map(|&i| cols[i].clone())
        .collect();
    let cols = cols.join(", ");
    c.execute_batch(&format!(
        "CREATE TABLE {tmp} ({}, PRIMARY KEY ({})); \
         INSERT INTO {tmp} ({cols}) SELECT {cols} FROM {t}; \
         DROP TABLE {t}; \
         ALTER TABLE {tmp} RENAME TO {t};",
        defs.join(", "),
        pk.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use barista_schemas::snapshot::{copy_reshaped, TRAILER_LEN};
    use rusqlite::Connection;

    use super::as_replica;

    #[test]
    fn the_leader_copy_is_a_replica_at_the_changelog_position() {
        let dir = tempfile::tempdir().unwrap();
        let leader = dir.path().join("leader.db");
        let c = Connection::open(&leader).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(
            r#"CREATE TABLE _barista_changelog(position INTEGER PRIMARY KEY, tbl INTEGER, op INTEGER);
               CREATE TABLE _barista_tables(id INTEGER PRIMARY KEY, name TEXT UNIQUE, columns TEXT);
               CREATE TABLE _barista_state(key TEXT PRIMARY KEY, value);
               CREATE TABLE "odd ""name"""(id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (v <> ''),
                   twice INTEGER GENERATED ALWAYS AS (id * 2), later TEXT);
               CREATE INDEX odd_v ON "odd ""name"""(v);
               CREATE TABLE no_key(v);
               CREATE VIEW odd_view AS SELECT v FROM "odd ""name""";
               CREATE TRIGGER app_trigger AFTER INSERT ON no_key BEGIN SELECT 1; END;
               INSERT INTO "odd ""name"""(id, v, later) VALUES (1, 'a', 'x'), (2, 'b', 'y');
               INSERT INTO no_key VALUES (1);
               INSERT INTO _barista_tables VALUES (1, 'odd "name"', '["id","v","twice"]');
               INSERT INTO _barista_changelog VALUES (41, 1, 1), (42, 1, 1);"#,
        )
        .unwrap();
        let copy = copy_reshaped(&leader, dir.path(), as_replica).unwrap();
        assert_eq!(copy.meta().position.0, 42);
        let out = dir.path().join("replica.db");
        let mut bytes = Vec::new();
        copy.send(|chunk| {
            bytes.extend_from_slice(&chunk);
            true
        })
        .unwrap();
        bytes.truncate(bytes.len() - TRAILER_LEN);
        std::fs::write(&out, bytes).unwrap();
        let r = Connection::open(&out).unwrap();
        let objects: Vec<String> = r
            .prepare("SELECT type || ' ' || name FROM sqlite_schema ORDER BY 1")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            objects,
            [
                "index sqlite_autoindex__barista_checksums_1",
                "index sqlite_autoindex__barista_offsets_1",
                "index sqlite_autoindex__barista_skipped_1",
                "table _barista_checksums",
                "table _barista_diverged",
                "table _barista_offsets",
                "table _barista_position",
                "table _barista_skipped",
                "table odd \"name\"",
            ]
        );
        // The generated column is a plain one now, holding its values, and a
        // follower's upsert into every captured column works.
        r.execute(
            r#"INSERT INTO "odd ""name"""(id, v, twice) VALUES (3, '', 6)
               ON CONFLICT (id) DO UPDATE SET v = excluded.v, twice = excluded.twice"#,
            [],
        )
        .unwrap();
        let rows: Vec<(i64, String, i64)> = r
            .prepare(r#"SELECT * FROM "odd ""name""" ORDER BY id"#)
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [(1, "a".into(), 2), (2, "b".into(), 4), (3, "".into(), 6)]
        );
        let position: i64 = r
            .query_row("SELECT position FROM _barista_position", [], |r| r.get(0))
            .unwrap();
        assert_eq!(position, 42);
    }
}
