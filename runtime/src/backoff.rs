//! Retry pacing for a peer that is down (a broker, the schema registry):
//! exponential, so a long outage costs few attempts, and capped, so the
//! first attempt after it ends comes soon.

use std::time::Duration;

/// Exponential backoff, 100 ms doubling to 10 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at 100 ms, doubles to at most 10 s.
    pub fn new() -> Self {
        Self::between(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// Starts at `first`, doubles to at most `max`.
    pub fn between(first: Duration, max: Duration) -> Self {
        Backoff {
            next: first,
            first,
            max: max.max(first),
        }
    }

    /// The next wait, without taking it.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Takes the next wait and doubles the one after (pure: the caller sleeps).
    pub fn step(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// Sleeps for the next wait, then doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }

    /// Back to the first wait after a success.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_and_stops_at_10s() {
        let mut b = Backoff::new();
        let waits: Vec<u64> = (0..10).map(|_| b.step().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn reset_starts_again_from_the_first_wait() {
        let mut b = Backoff::between(Duration::from_millis(5), Duration::from_millis(40));
        for _ in 0..6 {
            b.step();
        }
        assert_eq!(b.peek(), Duration::from_millis(40));
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(5));
        assert_eq!(b.step(), Duration::from_millis(5));
        assert_eq!(b.peek(), Duration::from_millis(10));
    }

    #[test]
    fn a_cap_below_the_first_wait_keeps_the_first() {
        let mut b = Backoff::between(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.step(), Duration::from_secs(2));
        assert_eq!(b.step(), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn wait_sleeps_the_wait_it_reports() {
        let mut b = Backoff::between(Duration::from_millis(2), Duration::from_millis(4));
        let start = std::time::Instant::now();
        b.wait().await;
        b.wait().await;
        assert!(start.elapsed() >= Duration::from_millis(6));
        assert_eq!(b.peek(), Duration::from_millis(4));
    }
}
