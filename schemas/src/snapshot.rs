//! The seed snapshot: a consistent copy of a replica (a follower's, or the
//! leader's reshaped into one) that a new follower starts from instead of
//! replaying all of history. Served at `GET /snapshot` by every follower and
//! by the producer; downloaded by `consumer --seed-from`.
//!
//! The copy is made with SQLite's online backup in one step, which reads the
//! source inside ONE read transaction: in WAL mode a reader never blocks the writer, so the
//! follower (or the leader's application) keeps writing while it runs, and
//! the copy holds the rows, the position and the stored offsets of one
//! committed state. The copy goes to a temporary file next to the source
//! (same file system, no assumption about the size of `/tmp`), is hashed,
//! and is unlinked while still open: nothing is left behind however the
//! serving ends, and the hash and `Content-Length` are known before the
//! first byte is sent.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::Position;

/// The route of the snapshot, on followers and on the producer.
pub const SNAPSHOT_PATH: &str = "/snapshot";
/// Response header: SHA-256 of the body, lowercase hex.
pub const HEADER_SNAPSHOT_SHA256: &str = "x-barista-snapshot-sha256";
/// Response header: the position the copy is at (decimal).
pub const HEADER_SNAPSHOT_POSITION: &str = "x-barista-snapshot-position";
/// Response header: the leader's clock at that position (ms since the epoch).
pub const HEADER_SNAPSHOT_LEADER_TS_MS: &str = "x-barista-snapshot-leader-ts-ms";
/// Content type of the body: a SQLite database file.
pub const SNAPSHOT_CONTENT_TYPE: &str = "application/vnd.sqlite3";

/// barista's bookkeeping tables in a replica (`_barista_offsets`,
/// `_barista_position`). Shared with the producer, whose leader snapshot
/// must look like a replica to the follower that opens it.
pub const REPLICA_SQL: &str = include_str!("sql/replica.sql");

/// Why a copy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The source could not be read or the copy reshaped.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The temporary file could not be made, written or hashed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The source stayed locked through every attempt to read it.
    #[error("the source database stayed locked for 10 s; try again")]
    Busy,
    /// The copy could not be turned into a replica.
    #[error("reshaping the copy: {0}")]
    Reshape(String),
}

/// A finished copy, ready to stream.
#[derive(Debug)]
pub struct SnapshotCopy {
    /// The copy, open at its start. Its name is already unlinked: dropping
    /// the handle frees the space.
    pub file: File,
    /// Its size in bytes.
    pub len: u64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
    /// The position its rows are at.
    pub position: Position,
    /// The leader's clock at that position.
    pub leader_ts_ms: i64,
}

/// Copies `source` consistently into a temporary file in `temp_dir`, lets
/// `reshape` turn the copy into a replica (a no-op for a follower's replica;
/// for the leader: drop capture, add the bookkeeping), then hashes it.
pub fn copy_consistent(
    source: &Path,
    temp_dir: &Path,
    reshape: impl FnOnce(&Connection) -> Result<(), SnapshotError>,
) -> Result<SnapshotCopy, SnapshotError> {
    let temp = tempfile::Builder::new()
        .prefix(".barista-snapshot-")
        .suffix(".db")
        .tempfile_in(temp_dir)?;
    {
        // Read-only: serving a snapshot can never write to the source.
        let src = Connection::open_with_flags(
            source,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        src.busy_timeout(Duration::from_secs(10))?;
        let mut dst = Connection::open(temp.path())?;
        // A scratch file until it is hashed: no journal, no fsync (the
        // seeding side fsyncs what it installs).
        dst.pragma_update(None, "journal_mode", "OFF")?;
        dst.pragma_update(None, "synchronous", "OFF")?;
        copy_pages(&src, &mut dst)?;
    }
    let (position, leader_ts_ms) = {
        let copy = Connection::open(temp.path())?;
        // A rollback-journal file: it travels as ONE file, with no -wal beside it.
        copy.pragma_update(None, "journal_mode", "DELETE")?;
        reshape(&copy)?;
        copy.execute_batch(REPLICA_SQL)?;
        copy.query_row(
            "SELECT coalesce(max(position), 0), coalesce(max(leader_ts_ms), 0) FROM _barista_position",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
        )?
    };
    let mut file = temp.reopen()?;
    let mut hash = FileHash::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        len += n as u64;
    }
    file.seek(SeekFrom::Start(0))?;
    // Unlinks the name; `file` keeps the bytes until it is dropped.
    drop(temp);
    Ok(SnapshotCopy {
        file,
        len,
        sha256: hash.finish(),
        position: Position(position),
        leader_ts_ms,
    })
}

/// Copies every page of `src` into `dst` with SQLite's online backup, in ONE
/// step: one read transaction on the source, so the copy is one committed
/// state (in WAL mode the writer is never blocked by it). A page copy, not a
/// rebuild: about the speed of copying the file, where `VACUUM INTO` rebuilt
/// every table and index (4 of the 7.6 s a 1 GB seed took).
fn copy_pages(src: &Connection, dst: &mut Connection) -> Result<(), SnapshotError> {
    use rusqlite::backup::{Backup, StepResult};
    let backup = Backup::new(src, dst)?;
    for _ in 0..100 {
        match backup.step(-1)? {
            StepResult::Done => return Ok(()),
            // Busy or locked: the source is being recovered or checkpointed
            // this instant; the next step starts a new read transaction.
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    Err(SnapshotError::Busy)
}

/// SHA-256 over a stream of bytes, as the snapshot header spells it.
#[derive(Debug, Clone, Default)]
pub struct FileHash(Sha256);

impl FileHash {
    /// An empty hash.
    pub fn new() -> Self {
        FileHash(Sha256::new())
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Lowercase hex of the digest.
    pub fn finish(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_holds_the_source_rows_position_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("r.db");
        let c = Connection::open(&src).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(REPLICA_SQL).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');
             INSERT INTO _barista_position VALUES (1, 42, 1000, 1001);
             INSERT INTO _barista_offsets VALUES ('p.t', 0, 7, 42);",
        )
        .unwrap();
        // A writer holding an open write transaction does not block the copy,
        // and its uncommitted row is not in it.
        c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2, 'b');")
            .unwrap();
        let mut copy = copy_consistent(&src, dir.path(), |_| Ok(())).unwrap();
        c.execute_batch("COMMIT").unwrap();
        assert_eq!((copy.position, copy.leader_ts_ms), (Position(42), 1000));
        let mut bytes = Vec::new();
        copy.file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, copy.len);
        let mut h = FileHash::new();
        h.update(&bytes);
        assert_eq!(h.finish(), copy.sha256);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".barista-snapshot-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let out = dir.path().join("out.db");
        std::fs::write(&out, &bytes).unwrap();
        let o = Connection::open(&out).unwrap();
        let n: i64 = o
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let next: i64 = o
            .query_row("SELECT next_offset FROM _barista_offsets", [], |r| r.get(0))
            .unwrap();
        assert_eq!((n, next), (1, 7));
    }
}
