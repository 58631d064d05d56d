//! The backlog, measured on the leader: changelog rows beyond the acknowledged position, their
//! approximate size, and how long the oldest of them has waited. Measured on a timer (once a
//! second by default), never per change, on a read-only connection of its own: the capture
//! thread may be blocked behind a publisher that cannot reach Kafka, and this is exactly when
//! the backlog must still be seen growing.
//!
//! Reads: `_barista_changelog` (read-only), the acknowledged position. Writes: the backlog
//! metrics in [`Ops`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::Ops;

/// Rows whose size is summed to estimate the bytes of the whole backlog: the cost of a sample
/// stays bounded however large the backlog grows.
const SIZE_SAMPLE: i64 = 1000;

/// One measurement of the changelog beyond `acked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// The newest position (the acknowledged one when the changelog holds nothing newer).
    pub head: i64,
    /// Rows with a position above the acknowledged one.
    pub rows: i64,
    /// Their approximate size: the mean size of the newest [`SIZE_SAMPLE`] of them, times
    /// their number (exact up to that many rows).
    pub bytes: i64,
}

/// Measures the changelog beyond `acked`: three indexed queries on the position key.
pub fn measure(conn: &Connection, acked: i64) -> rusqlite::Result<Measured> {
    let max: Option<i64> =
        conn.query_row("SELECT max(position) FROM _barista_changelog", [], |r| {
            r.get(0)
        })?;
    let rows: i64 = conn.query_row(
        "SELECT count(*) FROM _barista_changelog WHERE position > ?1",
        [acked],
        |r| r.get(0),
    )?;
    let (mut sampled, mut size) = (0i64, 0i64);
    if rows > 0 {
        let mut stmt = conn.prepare_cached(
            "SELECT * FROM _barista_changelog WHERE position > ?1 ORDER BY position DESC LIMIT ?2",
        )?;
        let mut q = stmt.query([acked, SIZE_SAMPLE])?;
        while let Some(r) = q.next()? {
            sampled += 1;
            // After the step: SQLite re-prepares the cached `SELECT *` there when a migration
            // widened the changelog since, and the count before it would be the old one.
            let width = AsRef::<rusqlite::Statement<'_>>::as_ref(r).column_count();
            for i in 0..width {
                size += match r.get_ref(i)? {
                    ValueRef::Null => 0,
                    ValueRef::Integer(_) | ValueRef::Real(_) => 8,
                    ValueRef::Text(b) | ValueRef::Blob(b) => b.len() as i64,
                };
            }
        }
    }
    Ok(Measured {
        head: max.unwrap_or(0).max(acked),
        rows,
        bytes: if sampled > 0 {
            size / sampled * rows
        } else {
            0
        },
    })
}

/// When each position was first seen: (when, the head then), oldest first. The oldest
/// unacknowledged change (`acked + 1`) was first seen at the first sample whose head reached
/// it, so its age is known to within the sampling interval. Pure.
#[derive(Debug, Default)]
pub struct FirstSeen {
    seen: VecDeque<(Instant, i64)>,
}

impl FirstSeen {
    /// Records the head seen `now` and returns how long the oldest change beyond `acked` has
    /// been known (zero when there is none).
    pub fn observe(&mut self, now: Instant, head: i64, acked: i64) -> Duration {
        if self.seen.back().is_none_or(|&(_, h)| head > h) {
            self.seen.push_back((now, head));
        }
        // Samples whose positions are all acknowledged tell nothing any more.
        while self.seen.front().is_some_and(|&(_, h)| h <= acked) {
            self.seen.pop_front();
        }
        match self.seen.front() {
            Some(&(at, _)) if head > acked => now.saturating_duration_since(at),
            _ => Duration::ZERO,
        }
    }
}

/// Measures every `every` until the task is aborted. A failed measurement (the leader busy
/// beyond the timeout, a file gone) keeps the last values and is retried at the next tick.
pub fn spawn(leader: PathBuf, ops: Arc<Ops>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let open = tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(
                &leader,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok::<_, rusqlite::Error>(conn)
        })
        .await;
        let mut conn = match open {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot open the leader to measure the backlog; /metrics will not show it");
                return;
            }
            Err(_) => return,
        };
        let mut first_seen = FirstSeen::default();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let acked = ops.metrics.acked_position.get();
            // One owner for the connection: it moves into the blocking task and back.
            let done = tokio::task::spawn_blocking(move || {
                let m = measure(&conn, acked);
                (conn, m)
            })
            .await;
            let m = match done {
                Ok((c, m)) => {
                    conn = c;
                    m
                }
                Err(_) => return,
            };
            match m {
                Ok(m) => {
                    let age = first_seen.observe(Instant::now(), m.head, acked);
                    let metrics = &ops.metrics;
                    metrics.leader_position.set(m.head);
                    metrics.backlog_rows.set(m.rows);
                    metrics.backlog_bytes.set(m.bytes);
                    metrics.oldest_unacked_seconds.set(age.as_secs_f64());
                }
                Err(e) => tracing::debug!(error = %e, "measuring the backlog failed; retrying"),
            }
        }
    })
}
