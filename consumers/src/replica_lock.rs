//! One follower per replica file. A second `consumer` on the same replica
//! (a service restarted over a running one, or `--reseed` run beside it)
//! would write the file under the first, or rename a seeded file over it
//! while the first still writes its WAL: the second is refused instead,
//! naming the process that holds the replica.
//!
//! The lock is an advisory `flock` on `<replica>.lock`, which the kernel
//! releases when the holder exits however it exits (SIGKILL included): a
//! stale file never keeps a follower out. The holder writes its pid into
//! the file, and removes the file when it stops (while still holding it;
//! whoever locked the removed file sees that the path no longer names it
//! and locks the new one instead).
//!
//! Reads and writes: `<replica>.lock`; never the replica itself.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// How long a follower waits for another to let go of the replica (one
/// being stopped as this one starts) before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Holds the replica while alive; removes the lock file when dropped.
#[derive(Debug)]
pub struct ReplicaLock {
    file: File,
    path: PathBuf,
}

/// The lock file of `replica`.
pub fn lock_path(replica: &Path) -> PathBuf {
    let mut s = replica.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Takes `replica`'s lock, waiting up to `wait` for a holder to let go.
/// Fails naming the holder's pid when it does not.
pub async fn acquire(replica: &Path, wait: Duration) -> anyhow::Result<ReplicaLock> {
    let path = lock_path(replica);
    let started = Instant::now();
    let mut said = false;
    loop {
        match try_acquire(replica, &path)? {
            Ok(lock) => return Ok(lock),
            Err(holder) if started.elapsed() >= wait => bail!(
                "replica {} is in use by another consumer ({holder}, lock file {}): stop it \
                 before starting another on the same file, or before --reseed replaces it",
                replica.display(),
                path.display()
            ),
            Err(holder) => {
                if !said {
                    tracing::warn!(replica = %replica.display(), %holder,
                        "another consumer holds the replica; waiting for it to stop");
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The lock, or who holds it (`pid N`, or `pid unknown`).
fn try_acquire(replica: &Path, path: &Path) -> anyhow::Result<Result<ReplicaLock, String>> {
    loop {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| {
                format!(
                    "opening replica {}: creating its lock file {}",
                    replica.display(),
                    path.display()
                )
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Ok(Err(if pid.is_empty() {
                    "pid unknown".to_owned()
                } else {
                    format!("pid {pid}")
                }));
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        // The holder before us may have removed the file after we opened it: then this
        // lock is on a file nobody else will find, and the path's new file is the one.
        let ours = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => {}
            _ => continue,
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        return Ok(Ok(ReplicaLock {
            file,
            path: path.to_owned(),
        }));
    }
}

impl Drop for ReplicaLock {
    fn drop(&mut self) {
        // Removed while still locked, then unlocked by the close that follows.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_is_refused_naming_the_first_and_gets_it_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let replica = dir.path().join("replica.db");
        let first = acquire(&replica, Duration::ZERO).await.unwrap();
        let err = acquire(&replica, Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("in use by another consumer")
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(!lock_path(&replica).exists(), "the lock file is removed");
        let second = acquire(&replica, Duration::ZERO).await.unwrap();
        // A waiter gets the lock as soon as the holder lets go.
        let r = replica.clone();
        let waiter = tokio::spawn(async move { acquire(&r, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished());
        drop(second);
        let third = waiter.await.unwrap().unwrap();
        assert!(lock_path(&replica).exists());
        drop(third);
    }
}
