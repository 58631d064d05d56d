//! The leader's clock, as a follower estimates it: staleness is always
//! measured on it, never on the follower's own wall clock alone.

use std::time::Instant;

/// The leader clock as last heard from, so "now on the leader" can be
/// estimated with this machine's monotonic clock (never its wall clock).
#[derive(Debug, Clone, Copy)]
pub struct LeaderClock {
    /// Leader time of the newest commit record or heartbeat.
    pub ts_ms: i64,
    /// When it was received here.
    pub received: Instant,
}

impl LeaderClock {
    /// Estimated leader time now.
    pub fn now_ms(&self) -> i64 {
        self.ts_ms + self.received.elapsed().as_millis() as i64
    }
}

/// The leader's clock now, as a bounded-staleness check must assume it: the
/// leader time last heard plus the time since, but never earlier than this
/// machine's wall clock. The first alone runs late by the heartbeat's transit
/// time (up to a broker round trip), which would let a read through that is
/// staler than asked; taking the later of the two never does on one machine or
/// with synchronised clocks, and a follower whose clock runs ahead only
/// refuses more, never less.
pub fn leader_now_ms(clock: Option<LeaderClock>) -> i64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    clock.map_or(wall, |c| c.now_ms().max(wall))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_leader_clock_never_runs_behind_the_wall_clock() {
        let wall = leader_now_ms(None);
        let late = LeaderClock {
            ts_ms: wall - 60_000,
            received: Instant::now(),
        };
        assert!(leader_now_ms(Some(late)) >= wall);
        let ahead = LeaderClock {
            ts_ms: wall + 60_000,
            received: Instant::now() - Duration::from_millis(500),
        };
        assert!(leader_now_ms(Some(ahead)) >= wall + 60_500);
    }
}
