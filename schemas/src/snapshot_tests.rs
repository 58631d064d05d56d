use super::*;

fn body(snapshot: Snapshot) -> Vec<u8> {
    let mut body = Vec::new();
    snapshot
        .send(|chunk| {
            body.extend_from_slice(&chunk);
            true
        })
        .unwrap();
    body
}

/// Splits a body into the file and its trailer, checking the trailer.
fn file_of(body: &[u8], meta: SnapshotMeta) -> &[u8] {
    assert_eq!(body.len() as u64, meta.len + TRAILER_LEN as u64);
    let (file, tail) = body.split_at(meta.len as usize);
    let mut h = FileHash::new();
    h.update(file);
    assert_eq!(std::str::from_utf8(tail).unwrap(), h.trailer());
    file
}

fn count(c: &Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_replica_snapshot_is_the_state_its_read_transaction_began_at() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("r.db");
    let c = Connection::open(&src).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(REPLICA_SQL).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         INSERT INTO t VALUES (1, zeroblob(100000));
         INSERT INTO _barista_position VALUES (1, 42, 1000, 1001);
         INSERT INTO _barista_offsets VALUES ('p.t', 0, 7, 42);",
    )
    .unwrap();
    // A writer holding an open write transaction does not block the
    // snapshot, and its uncommitted row is not in it.
    c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2, 'b');")
        .unwrap();
    let snapshot = open_replica(&src).unwrap();
    c.execute_batch("COMMIT").unwrap();
    // Nor is anything committed after it began, even many pages' worth and
    // a checkpoint, before a single page was read.
    c.execute_batch(
        "INSERT INTO t SELECT id + 100, zeroblob(50000) FROM t;
         UPDATE _barista_position SET position = 43; UPDATE _barista_offsets SET next_offset = 8;",
    )
    .unwrap();
    c.pragma_update(None, "wal_checkpoint", "PASSIVE").unwrap();
    let meta = snapshot.meta();
    assert_eq!((meta.position, meta.leader_ts_ms), (Position(42), 1000));
    let body = body(snapshot);
    let file = file_of(&body, meta);
    assert_eq!(&file[..16], b"SQLite format 3\0");
    assert_eq!((file[18], file[19]), (1, 1), "a rollback-journal file");
    let out = dir.path().join("out.db");
    std::fs::write(&out, file).unwrap();
    let o = Connection::open(&out).unwrap();
    let ok: String = o
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(count(&o, "SELECT count(*) FROM t"), 1);
    assert_eq!(count(&o, "SELECT next_offset FROM _barista_offsets"), 7);
    let mode: String = o
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn a_reshaped_copy_leaves_no_file_and_carries_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("r.db");
    let c = Connection::open(&src).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');",
    )
    .unwrap();
    let snapshot = copy_reshaped(&src, dir.path(), |c| {
        c.execute_batch(REPLICA_SQL)?;
        c.execute_batch("INSERT INTO _barista_position VALUES (1, 5, 6, 7)")?;
        Ok(())
    })
    .unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".barista-snapshot-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let meta = snapshot.meta();
    assert_eq!((meta.position, meta.leader_ts_ms), (Position(5), 6));
    let body = body(snapshot);
    let out = dir.path().join("out.db");
    std::fs::write(&out, file_of(&body, meta)).unwrap();
    let o = Connection::open(&out).unwrap();
    assert_eq!(count(&o, "SELECT count(*) FROM t"), 1);
    assert_eq!(count(&o, "SELECT position FROM _barista_position"), 5);
}

#[test]
fn a_receiver_that_goes_away_ends_the_sending() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("r.db");
    let c = Connection::open(&src).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.execute_batch(REPLICA_SQL).unwrap();
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); INSERT INTO t VALUES (1, zeroblob(3000000));",
    )
    .unwrap();
    let mut chunks = 0;
    let r = open_replica(&src).unwrap().send(|_| {
        chunks += 1;
        false
    });
    assert!(matches!(r, Err(SnapshotError::Gone)), "{r:?}");
    assert_eq!(chunks, 1);
}

#[test]
fn the_trailer_spells_the_hash_as_xxh128sum_does() {
    // `printf hello | xxh128sum` (xxhash 0.8) prints this digest.
    let mut h = FileHash::new();
    h.update(b"hello");
    assert_eq!(h.trailer(), "xxh3-128:b5e9c1ad071b3e7fc779cfaa5e523818\n");
    assert_eq!(h.trailer().len(), TRAILER_LEN);
}
