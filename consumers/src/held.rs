//! Dead letters for operators: what the follower dead-lettered since it
//! started (the newest [`BOOK_MAX`]), which of them hold a partition's chain
//! back (and with it every later commit group), and the admin API to see
//! them (`GET /dead-letters…`) and to `replay` or `skip` a held one.
//!
//! The follower loop alone owns the chains and the replica, so replay and
//! skip are commands it carries out between messages; the HTTP side waits
//! for its answer. The book is a copy the loop writes and HTTP reads.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use barista_runtime::Poisoned;
use barista_schemas::Position;
use rdkafka::message::{Headers, Message, OwnedMessage};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::decode::schema_id;
use crate::groups::Chains;
use crate::state::Shared;

/// Most dead letters remembered; the oldest that hold nothing go first.
pub const BOOK_MAX: usize = 1_000;
/// Payload bytes shown (as hex) by `show`.
pub const PAYLOAD_PREFIX: usize = 64;
/// How long an admin request waits for the follower loop (it may be busy
/// applying a large batch, or still waiting for the producer's topics).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a message is: topic, partition, offset.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MessageId {
    /// The topic it was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

/// One dead letter, as `GET /dead-letters` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Where it is.
    #[serde(flatten)]
    pub id: MessageId,
    /// The leader position it claims (`barista.position` header), if any.
    pub position: Option<Position>,
    /// The writer schema id of its frame, if framed.
    pub schema_id: Option<u32>,
    /// Why it could not be applied (the latest attempt's reason).
    pub error: String,
    /// When it was dead-lettered (by this process), Unix ms.
    pub since: i64,
    /// True while it holds its partition's chain, and so every later
    /// commit group of this follower, back.
    pub holds_back: bool,
    /// What became of it: replayed, skipped, passed by the chain.
    pub outcome: Option<String>,
}

/// One dead letter in full, as `GET /dead-letters/{topic}/{partition}/{offset}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterDetail {
    /// What the list shows.
    #[serde(flatten)]
    pub summary: DeadLetter,
    /// The key, hex.
    pub key_hex: Option<String>,
    /// The message headers, values as (lossy) text.
    pub headers: Vec<(String, String)>,
    /// Payload size in bytes (0 for none).
    pub payload_bytes: usize,
    /// The first [`PAYLOAD_PREFIX`] payload bytes, hex.
    pub payload_hex_prefix: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Now, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl DeadLetterDetail {
    /// What to remember of `m`, dead-lettered for `error`.
    pub fn of(m: &OwnedMessage, position: Option<Position>, error: &str, holds: bool) -> Self {
        let payload = m.payload().unwrap_or_default();
        DeadLetterDetail {
            summary: DeadLetter {
                id: MessageId {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                },
                position,
                schema_id: schema_id(payload),
                error: error.to_owned(),
                since: now_ms(),
                holds_back: holds,
                outcome: None,
            },
            key_hex: m.key().map(hex),
            headers: m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            let v = String::from_utf8_lossy(x.value.unwrap_or_default());
                            (x.key.to_owned(), v.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default(),
            payload_bytes: payload.len(),
            payload_hex_prefix: hex(&payload[..payload.len().min(PAYLOAD_PREFIX)]),
        }
    }
}

/// The `held_by` entries of `/status`: a message that holds things back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldBy {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset (the partition's restart point meanwhile).
    pub offset: i64,
    /// The leader position it claims.
    pub position: Position,
    /// Why it could not be applied.
    pub error: String,
    /// Since when it holds (dead-lettered by this process), Unix ms; the
    /// name the lag page reads.
    pub since: i64,
}

/// What holds later groups back, in the leader's order, for `/status`;
/// sets the `held_messages` gauge.
pub fn held_by(shared: &Shared, chains: &Chains) -> Result<Vec<HeldBy>, Poisoned> {
    let book = shared.board.book()?;
    let mut v = Vec::new();
    for ((topic, partition), chain) in chains {
        for b in chain.held() {
            let id = MessageId {
                topic: topic.clone(),
                partition: *partition,
                offset: b.offset,
            };
            let (error, since) = book.get(&id).map_or((b.reason.clone(), 0), |d| {
                (d.summary.error.clone(), d.summary.since)
            });
            v.push(HeldBy {
                topic: id.topic,
                partition: id.partition,
                offset: id.offset,
                position: b.position,
                error,
                since,
            });
        }
    }
    v.sort_by_key(|h| h.position);
    shared.metrics.held_messages.set(v.len() as i64);
    Ok(v)
}

/// The dead letters remembered, oldest first.
#[derive(Debug, Default)]
pub struct Book {
    entries: VecDeque<DeadLetterDetail>,
}

impl Book {
    /// Remembers a dead letter (again, if the same message was retried).
    pub fn record(&mut self, d: DeadLetterDetail) {
        self.entries.retain(|e| e.summary.id != d.summary.id);
        self.entries.push_back(d);
        if self.entries.len() > BOOK_MAX {
            // Held ones stay: they are what an operator must act on.
            if let Some(i) = self.entries.iter().position(|e| !e.summary.holds_back) {
                self.entries.remove(i);
            }
        }
    }

    /// It no longer holds anything back, because of `outcome`.
    pub fn settle(&mut self, id: &MessageId, outcome: String) {
        if let Some(e) = self.find(id) {
            e.summary.holds_back = false;
            e.summary.outcome = Some(outcome);
        }
    }

    /// Another attempt failed with `error`.
    pub fn failed_again(&mut self, id: &MessageId, error: &str) {
        if let Some(e) = self.find(id) {
            e.summary.error = error.to_owned();
        }
    }

    fn find(&mut self, id: &MessageId) -> Option<&mut DeadLetterDetail> {
        self.entries.iter_mut().find(|e| &e.summary.id == id)
    }

    /// Every entry, held ones first, then newest first.
    pub fn list(&self) -> Vec<DeadLetter> {
        let mut v: Vec<DeadLetter> = self.entries.iter().map(|e| e.summary.clone()).collect();
        v.sort_by_key(|d| (!d.holds_back, std::cmp::Reverse(d.since)));
        v
    }

    /// One entry.
    pub fn get(&self, id: &MessageId) -> Option<&DeadLetterDetail> {
        self.entries.iter().find(|e| &e.summary.id == id)
    }
}

/// What an operator asks of a held message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Decode it again (fresh registry lookup) and, on success, put it in
    /// its chain.
    Replay,
    /// Record it as skipped in the replica and count its position as passed.
    Skip {
        /// The operator's reason, stored with the skip.
        reason: String,
    },
}

/// What the follower did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// In words.
    pub outcome: String,
    /// The replica's position afterwards.
    pub position: Position,
    /// Messages still holding things back afterwards.
    pub still_held: Vec<HeldBy>,
}

/// Why the follower did not do it. Each variant maps to an HTTP status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The request is malformed (400): a skip without a reason.
    #[error("{0}")]
    BadRequest(String),
    /// No such dead letter is known to this follower (404).
    #[error("{0}")]
    NotFound(String),
    /// It holds nothing back, so there is nothing to release (409).
    #[error("{0}")]
    NotHeld(String),
    /// Replay: it still cannot be decoded; it stays held (422).
    #[error("{0}")]
    StillPoison(String),
    /// Replay: the registry cannot be reached; it stays held (503).
    #[error("{0}")]
    Unavailable(String),
    /// The follower could not do it (500): the replica refused the skip
    /// record, the loop is gone.
    #[error("{0}")]
    Failed(String),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::NotHeld(_) => StatusCode::CONFLICT,
            Refusal::StillPoison(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A command for the follower loop, with where to answer.
#[derive(Debug)]
pub struct Command {
    /// Which message.
    pub id: MessageId,
    /// What to do.
    pub action: Action,
    /// The answer.
    pub reply: oneshot::Sender<Result<Done, Refusal>>,
}

/// The dead letters' shared side: the book and the command queue.
pub struct Board {
    book: Mutex<Book>,
    commands: mpsc::Sender<Command>,
    /// Taken by the follower loop while it runs (a tokio lock: held across
    /// its awaits on purpose, and never by anyone else).
    pub inbox: tokio::sync::Mutex<mpsc::Receiver<Command>>,
}

impl Default for Board {
    fn default() -> Self {
        // Operators send one command at a time; a few queued is plenty.
        let (commands, inbox) = mpsc::channel(8);
        Board {
            book: Mutex::new(Book::default()),
            commands,
            inbox: tokio::sync::Mutex::new(inbox),
        }
    }
}

impl Board {
    /// The book; an error when a panic poisoned it.
    pub fn book(&self) -> Result<MutexGuard<'_, Book>, Poisoned> {
        barista_runtime::lock(&self.book, "dead letters")
    }

    /// Hands `action` on `id` to the follower loop and waits for its answer.
    pub async fn ask(&self, id: MessageId, action: Action) -> Result<Done, Refusal> {
        let (reply, answer) = oneshot::channel();
        let gone =
            || Refusal::Failed("the follower loop is not running (see /status: halted)".into());
        self.commands
            .send(Command { id, action, reply })
            .await
            .map_err(|_| gone())?;
        match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
            Ok(r) => r.map_err(|_| gone())?,
            Err(_) => Err(Refusal::Failed(format!(
                "the follower loop did not answer within {ANSWER_TIMEOUT:?} (busy, or still waiting for the producer's topics)"
            ))),
        }
    }
}

/// The dead-letter routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/dead-letters", get(list))
        .route("/dead-letters/{topic}/{partition}/{offset}", get(show))
        .route("/admin/dead-letters/replay", post(replay))
        .route("/admin/dead-letters/skip", post(skip))
        .with_state(shared)
}

fn refuse(r: &Refusal) -> Response {
    (
        r.status(),
        Json(serde_json::json!({ "error": r.to_string() })),
    )
        .into_response()
}

fn poisoned(e: Poisoned) -> Response {
    refuse(&Refusal::Failed(e.to_string()))
}

/// The `GET /dead-letters` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    /// Held ones first, then newest first.
    pub dead_letters: Vec<DeadLetter>,
}

async fn list(State(s): State<Arc<Shared>>) -> Response {
    match s.board.book() {
        Ok(b) => Json(Listing {
            dead_letters: b.list(),
        })
        .into_response(),
        Err(e) => poisoned(e),
    }
}

async fn show(
    State(s): State<Arc<Shared>>,
    Path((topic, partition, offset)): Path<(String, i32, i64)>,
) -> Response {
    let id = MessageId {
        topic,
        partition,
        offset,
    };
    match s.board.book() {
        Ok(b) => match b.get(&id) {
            Some(d) => Json(d.clone()).into_response(),
            None => refuse(&not_known(&id)),
        },
        Err(e) => poisoned(e),
    }
}

/// The refusal for a message the book does not have.
pub fn not_known(id: &MessageId) -> Refusal {
    Refusal::NotFound(format!(
        "this follower has not dead-lettered {id} since it started (GET /dead-letters lists what it has)"
    ))
}

/// The body of `POST /admin/dead-letters/skip`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SkipRequest {
    /// Which message.
    #[serde(flatten)]
    pub id: MessageId,
    /// Why it is skipped (required, stored in the replica).
    pub reason: String,
}

async fn replay(State(s): State<Arc<Shared>>, Json(id): Json<MessageId>) -> Response {
    answer(s.board.ask(id, Action::Replay).await)
}

async fn skip(State(s): State<Arc<Shared>>, Json(r): Json<SkipRequest>) -> Response {
    if r.reason.trim().is_empty() {
        return refuse(&Refusal::BadRequest(
            "a skip needs a reason: it is stored in the replica with the skip".into(),
        ));
    }
    answer(s.board.ask(r.id, Action::Skip { reason: r.reason }).await)
}

fn answer(r: Result<Done, Refusal>) -> Response {
    match r {
        Ok(done) => Json(done).into_response(),
        Err(e) => refuse(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset: i64, holds: bool, since: i64) -> DeadLetterDetail {
        DeadLetterDetail {
            summary: DeadLetter {
                id: MessageId {
                    topic: "t".into(),
                    partition: 0,
                    offset,
                },
                position: None,
                schema_id: None,
                error: "e".into(),
                since,
                holds_back: holds,
                outcome: None,
            },
            key_hex: None,
            headers: vec![],
            payload_bytes: 0,
            payload_hex_prefix: String::new(),
        }
    }

    #[test]
    fn the_book_lists_held_first_and_forgets_the_oldest_unheld() {
        let mut b = Book::default();
        b.record(entry(0, true, 1));
        for o in 1..=BOOK_MAX as i64 {
            b.record(entry(o, false, o + 1));
        }
        let l = b.list();
        assert_eq!(l.len(), BOOK_MAX);
        assert_eq!(l[0].id.offset, 0, "held first, never forgotten");
        assert_eq!(l[1].id.offset, BOOK_MAX as i64, "then newest first");
        assert!(
            !l.iter().any(|d| d.id.offset == 1),
            "oldest unheld forgotten"
        );
        let id = l[0].id.clone();
        b.settle(&id, "skipped: test".into());
        let d = b.get(&id).unwrap();
        assert!(!d.summary.holds_back);
        assert_eq!(d.summary.outcome.as_deref(), Some("skipped: test"));
    }
}
