//! A read request as the query string gives it: which row or page, and the
//! consistency asked for (`min_position`, `max_staleness_ms`, `timeout_ms`).

use std::time::Duration;

use barista_schemas::json::from_json;
use barista_schemas::{Position, SqlValue};
use serde_json::Value;

use crate::ReadError;

/// Longest `timeout_ms` honoured; larger values are capped.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// `timeout_ms` when `min_position` is given without one.
pub const DEFAULT_TIMEOUT_MS: u64 = 1_000;
/// `limit` when not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest `limit` honoured; larger values are capped.
pub const MAX_LIMIT: usize = 1_000;
/// What a client should do with a "behind" or "stale" answer.
pub const RETRY_HINT: &str = "retry another follower or read the leader";

/// The consistency a request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consistency {
    /// Answer only at or after this position (read-your-writes with the
    /// client's write token; monotonic reads with the highest position seen).
    pub min_position: Option<Position>,
    /// Refuse when the snapshot is older than this on the leader's clock.
    pub max_staleness_ms: Option<u64>,
    /// How long to wait for `min_position` (capped at [`MAX_TIMEOUT_MS`]).
    pub timeout: Duration,
}

/// Which row: primary key columns by name (values as text, compared with the
/// column's affinity, so `id=42` finds INTEGER 42), or the whole key as a JSON
/// array of typed values (exact storage class; needed for BLOB keys).
#[derive(Debug, Clone, PartialEq)]
pub enum RowKey {
    /// `?{column}={value}` for every primary key column.
    Named(Vec<(String, String)>),
    /// `?key=[…]` in primary key order.
    Typed(Vec<SqlValue>),
}

/// A parsed read request.
#[derive(Debug, Clone)]
pub struct ReadRequest {
    /// Consistency options.
    pub consistency: Consistency,
    /// For `/row`.
    pub key: RowKey,
    /// For `/rows`: page size.
    pub limit: usize,
    /// For `/rows`: the previous page's `next_after`.
    pub after: Option<Vec<SqlValue>>,
}

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, ReadError> {
    v.parse()
        .map_err(|_| ReadError::BadRequest(format!("{name}={v:?} is not a valid number")))
}

fn parse_key_array(name: &str, v: &str) -> Result<Vec<SqlValue>, ReadError> {
    let arr: Vec<Value> = serde_json::from_str(v).map_err(|e| {
        ReadError::BadRequest(format!("{name} must be a JSON array of key values: {e}"))
    })?;
    arr.iter()
        .map(from_json)
        .collect::<Result<_, _>>()
        .map_err(|e| ReadError::BadRequest(format!("{name}: {e}")))
}

impl ReadRequest {
    /// Parses query parameters. `paged` is true for `/rows`, where every
    /// parameter must be known; for `/row` the others name key columns.
    pub fn parse(params: &[(String, String)], paged: bool) -> Result<Self, ReadError> {
        let mut r = ReadRequest {
            consistency: Consistency::default(),
            key: RowKey::Named(Vec::new()),
            limit: DEFAULT_LIMIT,
            after: None,
        };
        let mut timeout = None;
        let mut named = Vec::new();
        for (k, v) in params {
            match k.as_str() {
                "min_position" => r.consistency.min_position = Some(Position(parse_num(k, v)?)),
                "max_staleness_ms" => r.consistency.max_staleness_ms = Some(parse_num(k, v)?),
                "timeout_ms" => timeout = Some(parse_num::<u64>(k, v)?),
                "limit" if paged => r.limit = parse_num::<usize>(k, v)?.clamp(1, MAX_LIMIT),
                "after" if paged => r.after = Some(parse_key_array(k, v)?),
                "key" if !paged => r.key = RowKey::Typed(parse_key_array(k, v)?),
                _ if !paged => named.push((k.clone(), v.clone())),
                _ => {
                    return Err(ReadError::BadRequest(format!(
                        "unknown parameter {k:?} (known: limit, after, min_position, max_staleness_ms, timeout_ms)"
                    )))
                }
            }
        }
        if !named.is_empty() {
            if matches!(r.key, RowKey::Typed(_)) {
                return Err(ReadError::BadRequest(
                    "give the key either as ?key=[…] or by column, not both".into(),
                ));
            }
            r.key = RowKey::Named(named);
        }
        let default = if r.consistency.min_position.is_some() {
            DEFAULT_TIMEOUT_MS
        } else {
            0
        };
        r.consistency.timeout =
            Duration::from_millis(timeout.unwrap_or(default).min(MAX_TIMEOUT_MS));
        Ok(r)
    }
}
