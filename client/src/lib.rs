//! A client session for barista's read replicas: the "sticky session".
//!
//! A [`Session`] remembers the highest position it has written (a token from
//! the leader service) or seen (the position a read was served at). Every read
//! passes it as `min_position`, so a session always reads its own writes and
//! never goes back in time (monotonic reads), whichever follower answers:
//!
//! 1. the followers in round-robin order, without waiting: the first one that
//!    is already there answers;
//! 2. if all are behind, the one that was closest, waiting up to
//!    [`SessionConfig::wait`] for it to apply the position;
//! 3. the leader, which always has it.
//!
//! Every answer says who served it and at which position.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::{Map, Value};

/// Where and how a session reads.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Base URLs of the followers' HTTP servers (`http://127.0.0.1:8091`).
    pub followers: Vec<String>,
    /// Base URL of the leader service (writes, and reads as a last resort).
    pub leader: String,
    /// How long the closest follower may wait for the session's position
    /// before the read goes to the leader.
    pub wait: Duration,
    /// Pass `min_position` (true: read-your-writes and monotonic reads). With
    /// false the session reads whatever a follower has: for comparison only.
    pub use_tokens: bool,
    /// Refuse answers staler than this on the leader's clock.
    pub max_staleness_ms: Option<u64>,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
}

impl SessionConfig {
    /// Tokens on, 500 ms wait, 10 s request timeout.
    pub fn new(followers: Vec<String>, leader: impl Into<String>) -> Self {
        SessionConfig {
            followers,
            leader: leader.into(),
            wait: Duration::from_millis(500),
            use_tokens: true,
            max_staleness_ms: None,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Who answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    /// The follower at this index of [`SessionConfig::followers`].
    Follower(usize),
    /// The leader service.
    Leader,
}

/// A read's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Who served it.
    pub served_by: Server,
    /// The position of the snapshot the rows were read from.
    pub position: i64,
    /// The leader time that snapshot is known complete as of.
    pub leader_ts_ms: i64,
    /// The whole JSON body (`row`/`found` or `rows`/`next_after`, `lag`…).
    pub body: Value,
}

impl Answer {
    /// The row of a `/row` read, if found.
    pub fn row(&self) -> Option<&Map<String, Value>> {
        self.body.get("row").and_then(Value::as_object)
    }
}

/// Why a read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The HTTP request failed (connection refused, timeout…).
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    /// A bad URL in the configuration.
    #[error("bad URL {0:?}")]
    Url(String),
    /// The server answered with an error that retrying elsewhere does not fix
    /// (bad request, unknown table) or the leader itself was behind.
    #[error("{status}: {body}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// Its JSON body.
        body: Value,
    },
}

/// Reads served so far, by kind of server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Reads a follower answered.
    pub followers: u64,
    /// Reads that fell back to the leader.
    pub leader: u64,
    /// "behind"/"stale" answers (and unreachable followers) skipped on the way.
    pub retries: u64,
}

/// A sticky session (see the crate docs). Cheap to share behind an `Arc`.
pub struct Session {
    config: SessionConfig,
    http: reqwest::Client,
    token: AtomicI64,
    next: AtomicUsize,
    /// Last position each follower reported: where to wait when all are behind.
    known: Mutex<Vec<i64>>,
    followers_served: AtomicU64,
    leader_served: AtomicU64,
    retries: AtomicU64,
    /// The leader service now: [`SessionConfig::leader`] until [`Session::follow_leader`].
    leader: Mutex<String>,
}

enum Attempt {
    Served(Answer),
    /// Behind, stale or unreachable: try elsewhere. The applied position, if said.
    Elsewhere(Option<i64>),
}

impl Session {
    /// A new session with position 0.
    pub fn new(config: SessionConfig) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()?;
        let n = config.followers.len();
        Ok(Session {
            http,
            token: AtomicI64::new(0),
            next: AtomicUsize::new(0),
            known: Mutex::new(vec![0; n]),
            followers_served: AtomicU64::new(0),
            leader_served: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            leader: Mutex::new(config.leader.clone()),
            config,
        })
    }

    /// The highest position this session wrote or saw.
    pub fn token(&self) -> i64 {
        self.token.load(Ordering::SeqCst)
    }

    /// Remembers a position (a token from a write made elsewhere, for example).
    pub fn observe(&self, position: i64) {
        self.token.fetch_max(position, Ordering::SeqCst);
    }

    /// Reads served so far.
    pub fn stats(&self) -> Stats {
        Stats {
            followers: self.followers_served.load(Ordering::Relaxed),
            leader: self.leader_served.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// After a takeover (`producer --promote`): writes, and reads of last resort, go to the
    /// leader service at `url` from now on. The session keeps its token: positions continue
    /// across a takeover, so every read still waits for what this session wrote or saw.
    pub fn follow_leader(&self, url: impl Into<String>) {
        *self
            .leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = url.into();
    }

    /// The leader service's base URL now.
    pub fn leader(&self) -> String {
        self.leader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// POSTs `body` to the leader service at `path` and remembers the
    /// `token` of its answer.
    pub async fn write(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let url = join(&self.leader(), path, &[])?;
        let resp = self.http.post(url).json(body).send().await?;
        let status = resp.status();
        let v: Value = resp.json().await?;
        if !status.is_success() {
            return Err(ClientError::Status { status, body: v });
        }
        if let Some(t) = v.get("token").and_then(Value::as_i64) {
            self.observe(t);
        }
        Ok(v)
    }

    /// One row by primary key columns (`[("id", "7")]`).
    pub async fn get_row(&self, table: &str, key: &[(&str, &str)]) -> Result<Answer, ClientError> {
        let q: Vec<(String, String)> = key
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.read(&format!("tables/{table}/row"), q).await
    }

    /// A page of rows in primary key order; `after` is the previous page's
    /// `next_after`.
    pub async fn get_rows(
        &self,
        table: &str,
        limit: usize,
        after: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let mut q = vec![("limit".to_string(), limit.to_string())];
        if let Some(a) = after {
            q.push(("after".into(), a.to_string()));
        }
        self.read(&format!("tables/{table}/rows"), q).await
    }

    async fn read(&self, path: &str, query: Vec<(String, String)>) -> Result<Answer, ClientError> {
        let min = self.config.use_tokens.then(|| self.token());
        let n = self.config.followers.len();
        if n > 0 {
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for i in 0..n {
                let idx = (start + i) % n;
                match self
                    .attempt(Server::Follower(idx), path, &query, min, 0)
                    .await?
                {
                    Attempt::Served(a) => return Ok(self.served(a)),
                    Attempt::Elsewhere(applied) => self.skipped(idx, applied),
                }
            }
            if min.is_some() && !self.config.wait.is_zero() {
                // Closest first; on a tie the first in round-robin order
                // (max_by_key keeps the last maximum, hence rev).
                let idx = {
                    let k = self.known();
                    (0..n)
                        .rev()
                        .map(|i| (start + i) % n)
                        .max_by_key(|&i| k[i])
                        .unwrap_or(start % n)
                };
                let wait = self.config.wait.as_millis() as u64;
                match self
                    .attempt(Server::Follower(idx), path, &query, min, wait)
                    .await?
                {
                    Attempt::Served(a) => return Ok(self.served(a)),
                    Attempt::Elsewhere(applied) => self.skipped(idx, applied),
                }
            }
        }
        match self.attempt(Server::Leader, path, &query, min, 0).await? {
            Attempt::Served(a) => Ok(self.served(a)),
            Attempt::Elsewhere(_) => Err(ClientError::Status {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: serde_json::json!({"error": "the leader is behind the session's position", "min_position": min}),
            }),
        }
    }

    fn served(&self, a: Answer) -> Answer {
        // Monotonic reads: never ask for less than what was seen.
        self.observe(a.position);
        match a.served_by {
            Server::Follower(i) => {
                self.followers_served.fetch_add(1, Ordering::Relaxed);
                let mut k = self.known();
                k[i] = k[i].max(a.position);
            }
            Server::Leader => {
                self.leader_served.fetch_add(1, Ordering::Relaxed);
            }
        }
        a
    }

    fn skipped(&self, idx: usize, applied: Option<i64>) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = applied {
            self.known()[idx] = p;
        }
    }

    /// Where each follower was last seen: only a routing hint (a stale one
    /// costs a retry, never a wrong answer), and each entry is a whole
    /// integer, so a panicking holder cannot leave it half-written and a
    /// poisoned lock is safe to take over.
    fn known(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn attempt(
        &self,
        server: Server,
        path: &str,
        query: &[(String, String)],
        min: Option<i64>,
        timeout_ms: u64,
    ) -> Result<Attempt, ClientError> {
        let base = match server {
            Server::Follower(i) => self.config.followers[i].clone(),
            Server::Leader => self.leader(),
        };
        let mut q: Vec<(String, String)> = query.to_vec();
        if let Some(m) = min {
            q.push(("min_position".into(), m.to_string()));
            q.push(("timeout_ms".into(), timeout_ms.to_string()));
        }
        if let Some(s) = self.config.max_staleness_ms {
            q.push(("max_staleness_ms".into(), s.to_string()));
        }
        let url = join(&base, path, &q)?;
        let resp = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) if server != Server::Leader => {
                tracing::debug!(?server, error = %e, "follower unreachable; trying elsewhere");
                return Ok(Attempt::Elsewhere(None));
            }
            Err(e) => return Err(e.into()),
        };
        let status = resp.status();
        let body: Value = resp.json().await?;
        if status.is_success() {
            return Ok(Attempt::Served(Answer {
                served_by: server,
                position: body["position"].as_i64().unwrap_or(0),
                leader_ts_ms: body["leader_ts_ms"].as_i64().unwrap_or(0),
                body,
            }));
        }
        // 503: behind or stale. 404 from a follower: it may simply not have
        // applied the table's first change yet (replica tables are created
        // by their first change); the leader's 404 is final.
        let retry_elsewhere = server != Server::Leader
            && (status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::NOT_FOUND);
        if retry_elsewhere {
            return Ok(Attempt::Elsewhere(body["applied_position"].as_i64()));
        }
        Err(ClientError::Status { status, body })
    }
}

fn join(base: &str, path: &str, query: &[(String, String)]) -> Result<Url, ClientError> {
    let mut url = Url::parse(&format!("{}/{path}", base.trim_end_matches('/')))
        .map_err(|_| ClientError::Url(base.to_owned()))?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}
