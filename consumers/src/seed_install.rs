//! Installing a checked seed download as the replica, and putting it on
//! disk beside the running follower (see [`crate::seed`]).
//!
//! The follower does not wait for the disk. Until the installed file is
//! fsynced, the marker `<replica>.seed-unsynced` (fsynced before the rename)
//! holds the kernel's boot id. [`settle_unsynced`] reads it on the next
//! start: from the same boot the page cache survived and the file is fsynced
//! then; from an earlier boot, or after a seed stopped inside its install,
//! the replica is not trusted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::seed::{partial_path, with_suffix};

/// Marks a checked download as a WAL-mode database (file header bytes 18
/// and 19, the write and read format versions: 2 is WAL), as the follower
/// opens it: otherwise its first `PRAGMA journal_mode = WAL` would rewrite
/// page 1 and fsync the whole file before it applies anything. A WAL-mode
/// file with no `-wal` beside it is what SQLite leaves after a clean close.
pub(crate) fn as_wal_file(file: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let mut versions = [0u8; 2];
    f.read_exact_at(&mut versions, 18)?;
    if versions == [1, 1] {
        f.write_all_at(&[2, 2], 18)?;
    }
    Ok(())
}

/// Beside a seeded replica until its bytes are known to be on disk: the boot
/// id of the kernel whose page cache holds them. The next start reads it (`settle_unsynced`).
pub fn unsynced_path(replica: &Path) -> PathBuf {
    with_suffix(replica, ".seed-unsynced")
}

/// The running kernel's boot id (Linux), or `None` where there is none to
/// read: then a marker is never taken to be from this boot.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Renames the checked download over the replica, without waiting for the
/// disk: first the [`unsynced_path`] marker is written and fsynced (with the
/// directory), so that a machine that goes down before [`make_durable`]
/// finishes leaves a replica known to be suspect. The old replica's WAL and
/// shared-memory files go before the rename: SQLite would replay an old WAL
/// into the new file.
pub(crate) fn install(partial: &Path, replica: &Path) -> std::io::Result<()> {
    write_marker(replica, &boot_id().unwrap_or_default())?;
    for suffix in ["-wal", "-shm", "-journal"] {
        match std::fs::remove_file(with_suffix(replica, suffix)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(partial, replica)
}

/// What the marker holds once a seed was found stopped inside its install:
/// no boot id, so that no later start trusts that replica.
const TORN_IN_INSTALL: &str = "stopped-inside-install";

/// Writes the [`unsynced_path`] marker holding `content`, and puts it on disk.
fn write_marker(replica: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut m = std::fs::File::create(unsynced_path(replica))?;
    m.write_all(content.as_bytes())?;
    m.sync_all()?;
    sync_dir(replica)
}

/// Puts a seeded replica's bytes and its name on disk, then removes the
/// [`unsynced_path`] marker. A failure leaves the marker for the next start.
fn make_durable(replica: &Path) -> std::io::Result<()> {
    std::fs::File::open(replica)?.sync_all()?;
    sync_dir(replica)?;
    std::fs::remove_file(unsynced_path(replica))?;
    sync_dir(replica)
}

/// [`make_durable`] on a thread of its own beside the follower, logging how
/// it went.
pub(crate) fn make_durable_beside(replica: PathBuf) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("seed-fsync".into())
        .spawn(move || {
            let t = Instant::now();
            match make_durable(&replica) {
                Ok(()) => tracing::info!(replica = %replica.display(),
                    fsync_s = t.elapsed().as_secs_f64(), "seeded replica is on disk"),
                Err(e) => tracing::warn!(replica = %replica.display(), error = %e,
                    "could not fsync the seeded replica; the next start tries again"),
            }
        })?;
    Ok(())
}

/// Finishes what an earlier seed left: `Ok(None)` when the replica can be
/// trusted (there was no marker, or it was from this boot and the file is
/// now fsynced), `Some(why)` when it cannot (the machine went down before
/// the seed's bytes were on disk, or the seed stopped between removing the
/// old replica's WAL and the rename).
pub(crate) fn settle_unsynced(replica: &Path) -> std::io::Result<Option<String>> {
    let marker = unsynced_path(replica);
    let recorded = match std::fs::read_to_string(&marker) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let partial = partial_path(replica);
    if !replica.exists() {
        // Nothing to distrust; a partial file is truncated by the next seed.
        std::fs::remove_file(&marker)?;
        return Ok(None);
    }
    if partial.exists() || recorded.trim() == TORN_IN_INSTALL {
        // Stopped inside `install`: the old replica may have lost its WAL.
        // Said in the marker, since the partial file goes now.
        write_marker(replica, TORN_IN_INSTALL)?;
        if partial.exists() {
            std::fs::remove_file(&partial)?;
        }
        return Ok(Some(
            "a seed stopped while it installed the snapshot over it".into(),
        ));
    }
    match boot_id() {
        Some(now) if now == recorded.trim() => {
            let t = Instant::now();
            make_durable(replica)?;
            tracing::info!(replica = %replica.display(), fsync_s = t.elapsed().as_secs_f64(),
                "an earlier seed's replica was not yet on disk; it is now");
            Ok(None)
        }
        _ => Ok(Some(
            "it was seeded, and the machine went down before its bytes were on disk, so it may be torn"
                .into(),
        )),
    }
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica with a seed marker recording `boot`, and `partial` if given.
    fn left_by_a_seed(boot: &str, partial: bool) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let replica = dir.path().join("r.db");
        std::fs::write(&replica, b"the seeded rows").unwrap();
        std::fs::write(unsynced_path(&replica), boot).unwrap();
        if partial {
            std::fs::write(partial_path(&replica), b"half").unwrap();
        }
        (dir, replica)
    }

    #[test]
    fn a_seed_whose_process_died_before_its_fsync_is_fsynced_on_the_next_start() {
        let (_dir, replica) = left_by_a_seed(&boot_id().expect("a Linux boot id"), false);
        assert_eq!(settle_unsynced(&replica).unwrap(), None);
        assert!(!unsynced_path(&replica).exists());
        assert_eq!(std::fs::read(&replica).unwrap(), b"the seeded rows");
        // Nothing left to settle.
        assert_eq!(settle_unsynced(&replica).unwrap(), None);
    }

    #[test]
    fn a_seed_the_machine_lost_before_its_fsync_is_not_trusted() {
        let (_dir, replica) = left_by_a_seed("an-earlier-boot", false);
        let why = settle_unsynced(&replica).unwrap().expect("not trusted");
        assert!(why.contains("went down"), "{why}");
        // Still not trusted until it is re-seeded.
        assert!(unsynced_path(&replica).exists());
        assert!(settle_unsynced(&replica).unwrap().is_some());
    }

    #[test]
    fn a_seed_stopped_inside_its_install_is_not_trusted_and_its_partial_file_goes() {
        let (_dir, replica) = left_by_a_seed(&boot_id().unwrap(), true);
        let why = settle_unsynced(&replica).unwrap().expect("not trusted");
        assert!(why.contains("installed"), "{why}");
        assert!(!partial_path(&replica).exists());
        // Nor on any later start of the same boot, until it is re-seeded.
        let why = settle_unsynced(&replica)
            .unwrap()
            .expect("still not trusted");
        assert!(why.contains("installed"), "{why}");
    }

    #[test]
    fn a_marker_without_a_replica_is_dropped() {
        let (_dir, replica) = left_by_a_seed("an-earlier-boot", false);
        std::fs::remove_file(&replica).unwrap();
        assert_eq!(settle_unsynced(&replica).unwrap(), None);
        assert!(!unsynced_path(&replica).exists());
    }

    #[test]
    fn a_downloaded_file_is_marked_wal_mode_and_opens_without_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.db");
        let c = rusqlite::Connection::open(&file).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        as_wal_file(&file).unwrap();
        let bytes = std::fs::read(&file).unwrap();
        // What the follower does on open: no change of mode, so no rewrite.
        let c = rusqlite::Connection::open(&file).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let n: i64 = c.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        drop(c);
        assert!(
            std::fs::read(&file).unwrap() == bytes,
            "the file was rewritten"
        );
    }
}
