//! The follower's state as the rest of the process sees it. [`FollowerState`]
//! owns the applied position and what makes it fresh; the loop changes it
//! only after a replica commit or a commit record, and publishes it through
//! one `watch` in [`Shared`], which the status, metrics and reads all read.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use barista_reads::LeaderClock;
use barista_runtime::Poisoned;
use barista_schemas::{Commit, Position};
use tokio::sync::watch;

use crate::config::FollowerConfig;
use crate::lag::{seconds_behind, Metrics, Status};

/// Where the replica is, and how fresh that is on the leader's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct FollowerState {
    /// The replica's position: every leader change up to here is applied.
    pub position: Position,
    /// The newest leader time at which the leader was at or below
    /// `position`: the replica holds every write committed before it.
    pub leader_ts_ms: i64,
    /// The leader's newest known position.
    pub leader_position: Position,
    /// The leader clock as last heard (commit records, heartbeats).
    pub clock: Option<LeaderClock>,
    /// The position for which a record of the group that takes the leader
    /// past it was heard (its leader time is already in `leader_ts_ms`).
    passed: Option<Position>,
    /// The newest leader epoch known, and where it took over.
    pub fence: crate::fence::Fence,
}

impl FollowerState {
    /// Resuming a replica at `position`, fresh as of `leader_ts_ms`.
    pub fn resumed(position: Position, leader_ts_ms: i64) -> Self {
        FollowerState {
            position,
            leader_ts_ms,
            leader_position: position,
            clock: None,
            passed: None,
            fence: Default::default(),
        }
    }

    /// A commit record or heartbeat arrived at `now`.
    pub fn heard(&mut self, c: &Commit, now: Instant) {
        self.leader_position = self.leader_position.max(c.last_position);
        self.clock = Some(LeaderClock {
            ts_ms: self.clock.map_or(c.ts_ms, |k| k.ts_ms.max(c.ts_ms)),
            received: now,
        });
        // The leader was at or below our position at `ts_ms`: the replica
        // holds every write committed before then. The same holds for the
        // group that takes the leader past our position: until it committed,
        // the leader was where the replica is. That is how a follower that
        // is catching up learns the age of its position (a new replica, at
        // 0, has no stored time to go by). Only the FIRST such record read
        // counts: a producer that restarted mid-group sends the group again
        // (begin record, commit record) with the time of its restart, and
        // the leader left our position before the first copy, not the last.
        if c.last_position <= self.position {
            self.fresh_as_of(c.ts_ms);
        } else if c.first_position <= self.position.next() && self.passed != Some(self.position) {
            self.passed = Some(self.position);
            self.fresh_as_of(c.ts_ms);
        }
    }

    /// The replica's position is known current as of leader time `ts_ms`.
    pub fn fresh_as_of(&mut self, ts_ms: i64) {
        self.leader_ts_ms = self.leader_ts_ms.max(ts_ms);
    }

    /// A replica transaction committed `position`, fresh as of `ts_ms`.
    pub fn applied(&mut self, position: Position, ts_ms: i64) {
        self.position = position;
        self.leader_ts_ms = ts_ms;
        self.leader_position = self.leader_position.max(position);
    }

    /// Leader positions not applied yet.
    pub fn position_lag(&self) -> i64 {
        self.leader_position.ahead_of(self.position)
    }

    /// Seconds behind on the leader's clock (see [`seconds_behind`]); `None`
    /// while unknown.
    pub fn seconds_lag(&self, grace: Duration) -> Option<f64> {
        seconds_behind(
            self.position,
            self.leader_ts_ms,
            self.leader_position,
            self.clock,
            grace,
        )
    }

    /// The leader time a snapshot read at `position` (stored with
    /// `stored_ts_ms`) is known fresh as of: this state's freshness holds
    /// for the snapshot only if the snapshot is at least as new.
    pub fn fresh_ts_for(&self, position: Position, stored_ts_ms: i64) -> i64 {
        if self.position <= position {
            stored_ts_ms.max(self.leader_ts_ms)
        } else {
            stored_ts_ms
        }
    }
}

/// State shared with the HTTP side.
pub struct Shared {
    /// The one published copy of the follower's state; reads wait on it for
    /// `min_position` (woken by the apply transaction's commit).
    pub state: watch::Sender<FollowerState>,
    /// Current status, rebuilt by the loop on every tick and apply.
    pub status: Mutex<Status>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Operator pause switch.
    pub paused: watch::Sender<bool>,
    /// Readiness threshold.
    pub max_lag_seconds: f64,
    /// Replica file, for reads.
    pub replica: PathBuf,
    /// Dead letters for operators, and their replay and skip commands.
    pub board: crate::held::Board,
    /// What the table checksums say: diverged, and tables not compared.
    pub verdict: Mutex<crate::checksums::Verdict>,
    /// Tables whose snapshot runs, as of the last apply.
    pub snapshots: Mutex<Vec<crate::table_snapshots::ReplicaSnapshot>>,
}

impl Shared {
    /// Fresh shared state for a follower.
    pub fn new(config: &FollowerConfig) -> Arc<Shared> {
        Arc::new(Shared {
            state: watch::channel(FollowerState::default()).0,
            status: Mutex::new(Status {
                follower: config.follower_id.clone(),
                ..Status::default()
            }),
            metrics: Metrics::new(),
            paused: watch::channel(false).0,
            max_lag_seconds: config.max_lag_seconds,
            replica: config.replica.clone(),
            board: crate::held::Board::default(),
            verdict: Mutex::default(),
            snapshots: Mutex::default(),
        })
    }

    /// The follower's state now.
    pub fn state(&self) -> FollowerState {
        *self.state.borrow()
    }

    /// The checksums' verdict; an error when a panic poisoned it.
    pub fn verdict(&self) -> Result<MutexGuard<'_, crate::checksums::Verdict>, Poisoned> {
        barista_runtime::lock(&self.verdict, "follower verdict")
    }

    /// The status; an error when a panic poisoned it (the follower loop then
    /// stops, and HTTP answers 500 rather than a made-up status).
    pub fn status(&self) -> Result<MutexGuard<'_, Status>, Poisoned> {
        barista_runtime::lock(&self.status, "follower status")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(first: i64, last: i64, ts_ms: i64) -> Commit {
        Commit {
            db: "test".into(),
            first_position: Position(first),
            last_position: Position(last),
            ts_ms,
            partitions: vec![],
            dropped: vec![],
            checksums: vec![],
            snapshots: vec![],
            epoch: 0,
        }
    }

    #[test]
    fn commit_records_move_the_leader_head_and_freshness_only_when_covered() {
        let mut s = FollowerState::resumed(Position(10), 1_000);
        s.heard(&commit(12, 15, 2_000), Instant::now());
        assert_eq!((s.leader_position, s.leader_ts_ms), (Position(15), 1_000));
        assert_eq!(s.position_lag(), 5);
        // A heartbeat at our position: current as of its time.
        s.heard(&commit(16, 10, 3_000), Instant::now());
        assert_eq!(s.leader_ts_ms, 3_000);
        assert_eq!(s.leader_position, Position(15), "the head never goes back");
        s.applied(Position(15), 3_500);
        assert_eq!((s.position_lag(), s.leader_ts_ms), (0, 3_500));
    }

    #[test]
    fn the_group_after_the_position_tells_its_age() {
        // A new replica: no stored time. The leader left position 0 when it
        // committed group 1..5 at 2_000; later groups say nothing about it.
        let mut s = FollowerState::resumed(Position::ZERO, 0);
        assert_eq!(s.seconds_lag(Duration::from_secs(3)), None, "never heard");
        s.heard(&commit(1, 5, 2_000), Instant::now());
        s.heard(&commit(6, 9, 9_000), Instant::now());
        assert_eq!((s.leader_ts_ms, s.leader_position), (2_000, Position(9)));
        let lag = s.seconds_lag(Duration::from_secs(3)).unwrap();
        assert!(lag > 1.0e9, "now − 2 s after the epoch: {lag}");
    }

    #[test]
    fn a_resent_group_does_not_make_an_old_position_look_fresh() {
        // The producer published group 11..50 at 2_000, crashed, and sent
        // it again (grown to 60) at 9_000 and 20_000: the leader left
        // position 10 before the first copy.
        let mut s = FollowerState::resumed(Position(10), 1_000);
        s.heard(&commit(11, 50, 2_000), Instant::now());
        s.heard(&commit(11, 60, 9_000), Instant::now());
        s.heard(&commit(11, 60, 20_000), Instant::now());
        assert_eq!(s.leader_ts_ms, 2_000);
        // Once applied, the next group's first record tells the new age.
        s.applied(Position(60), 20_000);
        s.heard(&commit(61, 70, 21_000), Instant::now());
        s.heard(&commit(61, 70, 30_000), Instant::now());
        assert_eq!(s.leader_ts_ms, 21_000);
    }

    #[test]
    fn an_unlearned_age_is_unknown_not_the_epoch() {
        // Heard the leader, but only of groups far past our position (their
        // predecessors expired): how old position 0 is, nobody knows.
        let mut s = FollowerState::resumed(Position::ZERO, 0);
        s.heard(&commit(40, 45, 2_000), Instant::now());
        assert_eq!(s.seconds_lag(Duration::from_secs(3)), None);
        assert_eq!(s.position_lag(), 45);
    }

    #[test]
    fn the_clock_keeps_the_newest_leader_time() {
        let mut s = FollowerState::default();
        s.heard(&commit(1, 0, 5_000), Instant::now());
        s.heard(&commit(1, 0, 4_000), Instant::now());
        assert_eq!(s.clock.map(|c| c.ts_ms), Some(5_000));
    }

    #[test]
    fn freshness_holds_for_a_snapshot_only_if_it_is_as_new() {
        let mut s = FollowerState::resumed(Position(7), 100);
        s.fresh_as_of(900);
        assert_eq!(s.fresh_ts_for(Position(7), 100), 900);
        assert_eq!(s.fresh_ts_for(Position(6), 100), 100, "an older snapshot");
    }
}
