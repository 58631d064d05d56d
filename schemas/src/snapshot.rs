//! The seed snapshot: a consistent copy of a replica (a follower's, or the
//! leader's reshaped into one) that a new follower starts from instead of
//! replaying all of history. Served at `GET /snapshot` by every follower and
//! by the producer; downloaded by `consumer --seed-from`.
//!
//! **A follower's replica** is streamed straight out of ONE read transaction:
//! the `sqlite_dbpage` virtual table reads its pages, in order, as of the
//! moment the transaction began. In WAL mode a reader never blocks the
//! writer, so the follower keeps applying meanwhile, and the body holds the
//! rows, the position and the stored offsets of one committed state. Nothing
//! is copied to disk first: the first byte leaves at once, and the length
//! (page count × page size) is known from the same transaction.
//!
//! **The leader** must be reshaped into a replica (capture dropped, tables
//! rebuilt), which needs a file of its own: it is copied with SQLite's online
//! backup in one step (one read transaction), reshaped, unlinked while still
//! open, and streamed.
//!
//! **Wire format.** The body is the database file (`X-Barista-Snapshot-Bytes`
//! bytes, in rollback-journal mode: it travels as ONE file, with no -wal
//! beside it), then a [`TRAILER_LEN`]-byte trailer `xxh3-128:<32 hex>\n`,
//! the XXH3-128 of the file's bytes, computed as they are sent (the header
//! `X-Barista-Snapshot-Hash: xxh3-128` names it). The hash detects a
//! truncated or corrupted download; it is not a signature (whoever could alter
//! the body could alter the trailer too), so a fast non-cryptographic hash
//! does the job (`xxh128sum` prints the same digest).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use twox_hash::XxHash3_128;

use crate::Position;

/// The route of the snapshot, on followers and on the producer.
pub const SNAPSHOT_PATH: &str = "/snapshot";
/// Response header: the size of the database file in the body (decimal),
/// without the trailer.
pub const HEADER_SNAPSHOT_BYTES: &str = "x-barista-snapshot-bytes";
/// Response header: the hash in the trailer; [`SNAPSHOT_HASH`] is the only one.
pub const HEADER_SNAPSHOT_HASH: &str = "x-barista-snapshot-hash";
/// Response header: the position the copy is at (decimal).
pub const HEADER_SNAPSHOT_POSITION: &str = "x-barista-snapshot-position";
/// Response header: the leader's clock at that position (ms since the epoch).
pub const HEADER_SNAPSHOT_LEADER_TS_MS: &str = "x-barista-snapshot-leader-ts-ms";
/// Content type of the body: a SQLite database file and its trailer.
pub const SNAPSHOT_CONTENT_TYPE: &str = "application/vnd.barista.snapshot";
/// The hash of the trailer, as [`HEADER_SNAPSHOT_HASH`] names it.
pub const SNAPSHOT_HASH: &str = "xxh3-128";
/// Length of the trailer that follows the database file: `xxh3-128:`, 32
/// lowercase hex digits, `\n`.
pub const TRAILER_LEN: usize = SNAPSHOT_HASH.len() + 1 + 32 + 1;

/// Bytes per chunk handed to the sender: small enough that a chunk is still
/// in the CPU's cache when it is hashed and copied into the socket.
const CHUNK: usize = 256 << 10;

/// barista's bookkeeping tables in a replica (`_barista_offsets`,
/// `_barista_position`). Shared with the producer, whose leader snapshot
/// must look like a replica to the follower that opens it.
pub const REPLICA_SQL: &str = include_str!("sql/replica.sql");

/// Why a snapshot could not be made or sent.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The source could not be read or the copy reshaped.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The temporary file could not be made, written or read.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The source stayed locked through every attempt to read it.
    #[error("the source database stayed locked for 10 s; try again")]
    Busy,
    /// The copy could not be turned into a replica.
    #[error("reshaping the copy: {0}")]
    Reshape(String),
    /// The pages read did not add up to the size announced.
    #[error("the database had {got} bytes where {want} were announced")]
    Length {
        /// Bytes read.
        got: u64,
        /// Bytes announced.
        want: u64,
    },
    /// The receiver went away (the client closed the connection or stalled).
    #[error("the client went away")]
    Gone,
}

/// What the response headers announce, known before the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Size of the database file in bytes (the body is this plus [`TRAILER_LEN`]).
    pub len: u64,
    /// The position its rows are at.
    pub position: Position,
    /// The leader's clock at that position.
    pub leader_ts_ms: i64,
}

/// A snapshot ready to send: its header values and where its bytes come from.
#[derive(Debug)]
pub struct Snapshot {
    meta: SnapshotMeta,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// A read-only connection inside the read transaction the snapshot is of.
    Pages(Connection),
    /// A reshaped copy, unlinked, open at its start.
    File(File),
}

impl Snapshot {
    /// Header values.
    pub fn meta(&self) -> SnapshotMeta {
        self.meta
    }

    /// Sends the database file in chunks of [`CHUNK`] bytes, then the
    /// trailer, to `send`, which returns `false` when the receiver is gone.
    /// Blocking: run it on a thread of its own. Holds the read transaction
    /// (for a follower's replica) until it returns. Each chunk is hashed on
    /// this thread right after it is read, while its bytes are still in the
    /// CPU's cache.
    pub fn send(self, mut send: impl FnMut(Vec<u8>) -> bool) -> Result<(), SnapshotError> {
        let want = self.meta.len;
        let mut hash = FileHash::new();
        let got = self.read(|chunk| {
            hash.update(&chunk);
            send(chunk)
        })?;
        if got != want {
            return Err(SnapshotError::Length { got, want });
        }
        if send(hash.trailer().into_bytes()) {
            Ok(())
        } else {
            Err(SnapshotError::Gone)
        }
    }

    /// Reads the file in chunks into `out` (`false`: stop); the bytes read.
    fn read(self, mut out: impl FnMut(Vec<u8>) -> bool) -> Result<u64, SnapshotError> {
        let mut got = 0u64;
        let mut out = |chunk: Vec<u8>| {
            got += chunk.len() as u64;
            if out(chunk) {
                Ok(())
            } else {
                Err(SnapshotError::Gone)
            }
        };
        match self.source {
            Source::Pages(conn) => {
                let mut pages = conn.prepare("SELECT data FROM sqlite_dbpage('main')")?;
                let mut rows = pages.query([])?;
                let mut buf = Vec::with_capacity(CHUNK);
                let mut first = true;
                while let Some(row) = rows.next()? {
                    let page = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
                    buf.extend_from_slice(page);
                    if first {
                        as_rollback_journal_file(&mut buf);
                        first = false;
                    }
                    if buf.len() >= CHUNK {
                        out(std::mem::replace(&mut buf, Vec::with_capacity(CHUNK)))?;
                    }
                }
                if !buf.is_empty() {
                    out(buf)?;
                }
            }
            Source::File(mut file) => loop {
                let mut buf = vec![0u8; CHUNK];
                let n = read_full(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                out(buf)?;
            },
        }
        Ok(got)
    }
}

/// The trailer for a file whose XXH3-128 is `digest`.
pub fn trailer(digest: u128) -> String {
    format!("{SNAPSHOT_HASH}:{digest:032x}\n")
}

/// XXH3-128 over a stream of bytes, as the trailer spells it. `twox-hash`
/// picks its AVX2 code at run time where the CPU has it (about twice the
/// speed of SSE2 on data in cache), so the binary stays portable.
#[derive(Clone, Default)]
pub struct FileHash(XxHash3_128);

impl FileHash {
    /// An empty hash.
    pub fn new() -> Self {
        FileHash(XxHash3_128::new())
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    /// The trailer the server sends for these bytes.
    pub fn trailer(&self) -> String {
        trailer(self.0.finish_128())
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Marks page 1 of a WAL-mode file as a rollback-journal one (header bytes
/// 18 and 19, the file format write and read versions: 2 is WAL, 1 legacy),
/// as `PRAGMA journal_mode = DELETE` does once the WAL is checkpointed: the
/// pages are of one committed state, so there is nothing to checkpoint.
fn as_rollback_journal_file(page1: &mut [u8]) {
    if page1.len() >= 20 && page1[18] == 2 && page1[19] == 2 {
        page1[18] = 1;
        page1[19] = 1;
    }
}

/// Opens a snapshot of a follower's `replica`: a read-only connection that
/// begins ONE read transaction and reads the size and position in it. The
/// pages are read from that transaction when the snapshot is sent.
pub fn open_replica(replica: &Path) -> Result<Snapshot, SnapshotError> {
    let conn = read_only(replica)?;
    // The source file's pages that no WAL frame overrides come straight from
    // the page cache instead of one read() per page.
    conn.pragma_update(None, "mmap_size", 1i64 << 40)?;
    conn.execute_batch("BEGIN")?;
    // The first read starts the transaction; every later one sees its state.
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page_count: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let (position, leader_ts_ms) = stored_position(&conn)?;
    Ok(Snapshot {
        meta: SnapshotMeta {
            len: (page_size * page_count) as u64,
            position,
            leader_ts_ms,
        },
        source: Source::Pages(conn),
    })
}

fn read_only(path: &Path) -> Result<Connection, SnapshotError> {
    // Read-only: serving a snapshot can never write to the source.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

fn stored_position(conn: &Connection) -> Result<(Position, i64), SnapshotError> {
    Ok(conn.query_row(
        "SELECT coalesce(max(position), 0), coalesce(max(leader_ts_ms), 0) FROM _barista_position",
        [],
        |r| Ok((Position(r.get(0)?), r.get(1)?)),
    )?)
}

/// Copies `source` consistently into a temporary file in `temp_dir` (same
/// file system as the source, no assumption about the size of `/tmp`), lets
/// `reshape` turn the copy into a replica (for the leader: drop capture, add
/// the bookkeeping), and unlinks it while still open: nothing is left behind
/// however the sending ends.
pub fn copy_reshaped(
    source: &Path,
    temp_dir: &Path,
    reshape: impl FnOnce(&Connection) -> Result<(), SnapshotError>,
) -> Result<Snapshot, SnapshotError> {
    let temp = tempfile::Builder::new()
        .prefix(".barista-snapshot-")
        .suffix(".db")
        .tempfile_in(temp_dir)?;
    {
        let src = read_only(source)?;
        let mut dst = Connection::open(temp.path())?;
        // A scratch file: no journal, no fsync (the seeding side fsyncs
        // what it installs).
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
        stored_position(&copy)?
    };
    let file = temp.reopen()?;
    let len = file.metadata()?.len();
    // Unlinks the name; `file` keeps the bytes until it is dropped.
    drop(temp);
    Ok(Snapshot {
        meta: SnapshotMeta {
            len,
            position,
            leader_ts_ms,
        },
        source: Source::File(file),
    })
}

/// Copies every page of `src` into `dst` with SQLite's online backup, in ONE
/// step: one read transaction on the source, so the copy is one committed
/// state (in WAL mode the writer is never blocked by it).
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

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
