//! The publisher's window: how many change events may be sent ahead of their delivery
//! reports. A producer killed in a backlog has sent at most this much past what it recorded;
//! its next run sends that again, so a crash loop does not fill the topics with copies.

use std::sync::Arc;

/// Change events sent and not acknowledged yet, at most: one permit each, taken before the
/// send and given back by the acker with its report. One per generation: an acker that stops
/// closes it, so a publisher waiting for room stops sending until the rewind.
#[derive(Clone)]
pub(crate) struct Window {
    permits: Arc<tokio::sync::Semaphore>,
    size: usize,
}

impl Window {
    /// Room for `size` unacknowledged change events (at least 1).
    pub fn new(size: usize) -> Window {
        let size = size.max(1);
        Window {
            permits: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
        }
    }

    /// A fresh window of the same size, for a new generation.
    pub(super) fn renewed(&self) -> Window {
        Window::new(self.size)
    }

    /// One sent event was acknowledged.
    pub(super) fn release(&self) {
        self.permits.add_permits(1);
    }

    /// Waits for room for one more event; false once the window is closed.
    pub(super) async fn enter(&self) -> bool {
        match self.permits.acquire().await {
            Ok(p) => {
                p.forget();
                true
            }
            Err(_) => false,
        }
    }
}

/// Closes a [`Window`] when the acker that gives its permits back ends.
pub(super) struct CloseOnDrop(pub(super) Window);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.permits.close();
    }
}
