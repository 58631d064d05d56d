//! A poisoned lock stops the process. A `Mutex` is poisoned when a thread
//! panicked while holding it, so what it guards may be half-updated: an
//! acknowledged position, a status, a partition's chain. Carrying on with a
//! default in its place would be a silent reset (a producer rewinding to
//! position 0, a follower reporting lag 0). Stopping is safe instead: the
//! producer resumes from the changelog and the follower from the offsets and
//! position its replica committed, both exactly once.

use std::sync::{Mutex, MutexGuard};

/// A lock whose holder panicked.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {what} lock is poisoned (a thread panicked while holding it), so its state cannot be \
     trusted; stopping: a restart resumes from what was committed"
)]
pub struct Poisoned {
    /// What the lock guards.
    pub what: &'static str,
}

/// Locks `m`, or says it is poisoned; `what` names what it guards.
pub fn lock<'a, T>(m: &'a Mutex<T>, what: &'static str) -> Result<MutexGuard<'a, T>, Poisoned> {
    m.lock().map_err(|_| {
        tracing::error!(
            lock = what,
            "poisoned lock: a thread panicked while holding it"
        );
        Poisoned { what }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_is_an_error_naming_it_not_a_default() {
        let m = Arc::new(Mutex::new(41));
        *lock(&m, "counter").unwrap() += 1;
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("holder panics");
        })
        .join();
        let e = lock(&m, "counter").unwrap_err();
        assert_eq!(e.what, "counter");
        assert!(e.to_string().contains("counter lock is poisoned"), "{e}");
    }
}
