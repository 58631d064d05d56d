//! barista's read API, the pipeline's last stage: rows over HTTP, each
//! answer with the position it was served at, read in the SAME SQLite read
//! transaction as the rows, and with the consistency the client asks for.
//! Followers serve it from their replicas (`barista_consumer::serve`), the
//! leader's shop service from the leader file; both build on this crate.
//!
//! ```text
//! GET /tables/{table}/row?{pk column}={value}[&…]      one row by primary key
//! GET /tables/{table}/row?key=[<typed JSON values>]     same, exact storage class
//! GET /tables/{table}/rows?limit=100&after=[…]          a page in primary-key order
//!   consistency, on both: min_position=P  timeout_ms=T  max_staleness_ms=S
//! ```
//!
//! `min_position` waits (on a `watch` of the applied position, woken by the
//! apply transaction's commit — no polling) up to `timeout_ms`, then answers
//! 503 `{"error":"behind",…}`. `max_staleness_ms` refuses with 503
//! `{"error":"stale",…}` when the snapshot served is older than that on the
//! leader's clock. Values use [`barista_schemas::json`].
//!
//! The lookups ([`read_row`], [`read_page`]) take the SQL that reads the
//! position, so the leader can serve the very same API from its own file.
//!
//! In the order a request meets them:

/// Query string → [`ReadRequest`]: key or page, consistency options.
pub mod request;
/// Read-only connections, one blocking task at a time each.
pub mod pool;
/// Row and page lookups read with their position in one transaction.
pub mod lookup;
/// The leader clock that staleness is judged on.
pub mod clock;
/// Why a read failed, as an HTTP answer.
pub mod error;

pub use clock::{leader_now_ms, LeaderClock};
pub use error::ReadError;
pub use lookup::{read_page, read_row, Page, Snapshot, REPLICA_POSITION_SQL};
pub use pool::ReadPool;
pub use request::{
    Consistency, ReadRequest, RowKey, DEFAULT_LIMIT, DEFAULT_TIMEOUT_MS, MAX_LIMIT, MAX_TIMEOUT_MS,
    RETRY_HINT,
};
