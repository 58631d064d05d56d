//! How every barista process runs, shared by all of its binaries and by the
//! long-running loops inside them.
//!
//! In the order a process meets them:

/// `key=value` flags (librdkafka's `-X`).
pub mod args;
/// Logs to stderr through `tracing`, filtered by `RUST_LOG`.
pub mod logs;
/// SIGINT/SIGTERM → a shutdown future; the runtime that runs until then.
pub mod signals;
/// Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration.
pub mod exit;
/// Retry pacing for a broker or registry that is down.
pub mod backoff;
/// Locks whose poisoning stops the process instead of resetting state.
pub mod locks;
/// `GET /metrics`: a Prometheus registry as OpenMetrics text.
pub mod metrics;
/// `GET /snapshot`: a finished snapshot copy streamed with its headers.
pub mod snapshot;

pub use backoff::Backoff;
pub use locks::{lock, Poisoned};
pub use signals::{run_until_signal, Shutdown};
