//! Read-only connections to a database file, reused across requests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::ReadError;

/// Read-only connections to a database file, reused across requests. Each is
/// used by one blocking task at a time (rusqlite is synchronous).
pub struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    /// A pool for `path`; connections are opened on demand.
    pub fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a pooled read-only connection in a blocking task.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Connection) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, ReadError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            // A list of idle connections holds no state that a panicking holder
            // could leave half-updated: a poisoned lock is safe to take over.
            let conn = pool
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let mut conn = match conn {
                Some(c) => c,
                None => {
                    if !pool.path.exists() {
                        return Err(ReadError::Unavailable(format!(
                            "{} does not exist yet",
                            pool.path.display()
                        )));
                    }
                    let c = Connection::open_with_flags(
                        &pool.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY
                            | OpenFlags::SQLITE_OPEN_NO_MUTEX
                            | OpenFlags::SQLITE_OPEN_URI,
                    )?;
                    c.busy_timeout(Duration::from_secs(5))?;
                    c
                }
            };
            let r = f(&mut conn);
            // A connection that failed is dropped rather than reused.
            if !matches!(r, Err(ReadError::Sqlite(_))) {
                pool.idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
            r
        })
        .await
        .map_err(|e| ReadError::Unavailable(format!("read task: {e}")))?
    }
}
