//! The operator's side of the follower loop: dead letters remembered for
//! `/dead-letters` and `/status`, and `replay` and `skip` of a held one (see
//! [`crate::held`]). A child module of the loop, so that it works on the
//! loop's own chains, decoder and replica, between two messages.
//!
//! Replay keeps the held message's bytes in memory rather than re-reading
//! them from Kafka: it is the message the loop already has, a restart reads
//! it again from the stored offset anyway (the offset stays at it while it
//! holds), and no second consumer has to seek and race the first.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{mpsc, MutexGuard};

use super::Follower;
use crate::chain::{Blocked, Offer, TopicPartition};
use crate::decode::{schema_id, DecodeError};
use crate::groups::Chains;
use crate::held::{self, Action, Command, DeadLetterDetail, Done, MessageId, Refusal};
use crate::replica::{Replica, SkippedChange};

/// How long a command applies what it released before it answers (well
/// under the API's wait for an answer).
const APPLY_WHILE_ANSWERING: std::time::Duration = std::time::Duration::from_secs(5);

/// Held messages by where they are, kept whole for a replay.
pub(super) type HeldMessages = HashMap<MessageId, OwnedMessage>;

/// Counts every position an operator skipped as passed in its chain, so
/// that a restart reading the message again (the stored offset may still be
/// at it) neither decodes nor holds on it.
pub(super) fn restore_skips(replica: &Replica, chains: &mut Chains) -> anyhow::Result<()> {
    let now = Instant::now();
    for (tp, position) in replica.skipped().context("reading _barista_skipped")? {
        if let Some(chain) = chains.get_mut(&tp) {
            chain.skip(position, now);
            tracing::debug!(topic = %tp.0, partition = tp.1, %position, "skipped by an operator earlier");
        }
    }
    Ok(())
}

/// The next operator command, or never when another loop has the inbox.
pub(super) async fn next(
    inbox: &mut Option<MutexGuard<'_, mpsc::Receiver<Command>>>,
) -> Option<Command> {
    match inbox {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn id_of(tp: &TopicPartition, offset: i64) -> MessageId {
    MessageId {
        topic: tp.0.clone(),
        partition: tp.1,
        offset,
    }
}

impl Follower {
    /// `m` went to the dead-letter topic for `error`; `holds` when it now
    /// holds its chain.
    pub(super) fn remember(
        &mut self,
        m: &OwnedMessage,
        position: Option<barista_schemas::Position>,
        error: &str,
        holds: bool,
    ) -> anyhow::Result<()> {
        let d = DeadLetterDetail::of(m, position, error, holds);
        if holds {
            self.poison.insert(d.summary.id.clone(), m.clone());
        }
        self.shared.board.book()?.record(d);
        Ok(())
    }

    /// The chain of `tp` went past these held messages' positions.
    pub(super) fn passed(
        &mut self,
        tp: &TopicPartition,
        released: &[Blocked],
    ) -> anyhow::Result<()> {
        if released.is_empty() {
            return Ok(());
        }
        let mut book = self.shared.board.book()?;
        for b in released {
            let id = id_of(tp, b.offset);
            self.poison.remove(&id);
            book.settle(
                &id,
                format!(
                    "passed: the chain went past position {} without it, so it was not a change of this partition",
                    b.position
                ),
            );
        }
        Ok(())
    }

    /// Carries out an operator's command and answers it; applies at once
    /// what it released. Errors are the loop's own (a replica that cannot
    /// be written, a poisoned lock), not refusals.
    pub(super) async fn operate(&mut self, cmd: Command) -> anyhow::Result<()> {
        let Command { id, action, reply } = cmd;
        let r = match &action {
            Action::Replay => self.replay(&id).await?,
            Action::Skip { reason } => self.skip(&id, reason).await?,
        };
        let answer = match r {
            Ok(outcome) => {
                tracing::warn!(%id, ?action, %outcome, "held message released by an operator");
                // Apply what it released now rather than at the next
                // message, for a while: a long backlog goes on in the loop,
                // and the operator gets an answer before the API gives up.
                let start = Instant::now();
                while start.elapsed() < APPLY_WHILE_ANSWERING {
                    let before = self.shared.state().position;
                    self.apply_ready().await?;
                    if self.shared.state().position == before {
                        break;
                    }
                }
                self.publish_status()?;
                Ok(Done {
                    outcome,
                    position: self.shared.state().position,
                    still_held: held::held_by(&self.shared, &self.chains)?,
                })
            }
            Err(refusal) => {
                tracing::warn!(%id, ?action, %refusal, "operator command refused");
                Err(refusal)
            }
        };
        let _ = reply.send(answer);
        Ok(())
    }

    /// The held message at `id`, or why there is none.
    fn held_message(&self, id: &MessageId) -> anyhow::Result<Result<OwnedMessage, Refusal>> {
        if let Some(m) = self.poison.get(id) {
            return Ok(Ok(m.clone()));
        }
        let book = self.shared.board.book()?;
        Ok(Err(match book.get(id) {
            Some(d) => {
                let why = match (&d.summary.outcome, d.summary.position) {
                    (Some(o), _) => o.clone(),
                    (None, None) => {
                        "it claims no position in the leader's chain, so no change waits for it"
                            .into()
                    }
                    (None, Some(_)) => {
                        "its partition's chain had already passed its position".into()
                    }
                };
                Refusal::NotHeld(format!(
                    "{id} holds nothing back ({why}); there is nothing to replay or skip"
                ))
            }
            None => held::not_known(id),
        }))
    }

    /// Decodes the held message again (a fresh registry lookup: failed
    /// lookups are never cached) and, on success, puts it in its chain.
    async fn replay(&mut self, id: &MessageId) -> anyhow::Result<Result<String, Refusal>> {
        let m = match self.held_message(id)? {
            Ok(m) => m,
            Err(r) => return Ok(Err(r)),
        };
        let change = match self.decoder.change(m.payload().unwrap_or_default()).await {
            Ok(c) => c,
            Err(DecodeError::Unavailable(e)) => {
                return Ok(Err(Refusal::Unavailable(format!(
                    "the schema registry is unavailable ({e}); {id} is still held"
                ))))
            }
            Err(DecodeError::Poison(e)) => {
                self.shared.board.book()?.failed_again(id, &e);
                return Ok(Err(Refusal::StillPoison(format!(
                    "{id} still cannot be decoded: {e}; it is still held. Fix the cause (for example \
                     restore the schema in the registry) and replay again, or skip it"
                ))));
            }
        };
        let tp = (id.topic.clone(), id.partition);
        let floor = self.shared.state().position;
        let chain = self
            .chains
            .get_mut(&tp)
            .context("held message's partition vanished")?;
        let position = change.source.position;
        let released = match chain.offer(id.offset, change, floor, Instant::now()) {
            Offer::Duplicate => Vec::new(),
            Offer::Buffered { released } => released,
        };
        // Now a buffered change, which keeps the offset until applied.
        chain.unblock(id.offset);
        let others: Vec<Blocked> = released
            .into_iter()
            .filter(|b| b.offset != id.offset)
            .collect();
        self.poison.remove(id);
        let outcome = format!("replayed: decoded as position {position} and put in its chain");
        self.shared.board.book()?.settle(id, outcome.clone());
        self.passed(&tp, &others)?;
        Ok(Ok(format!("{id} {outcome}")))
    }

    /// Records the skip in the replica, then counts its position as passed.
    async fn skip(
        &mut self,
        id: &MessageId,
        reason: &str,
    ) -> anyhow::Result<Result<String, Refusal>> {
        if reason.trim().is_empty() {
            return Ok(Err(Refusal::BadRequest("a skip needs a reason".into())));
        }
        let m = match self.held_message(id)? {
            Ok(m) => m,
            Err(r) => return Ok(Err(r)),
        };
        let tp = (id.topic.clone(), id.partition);
        let held = self
            .chains
            .get(&tp)
            .and_then(|c| c.held().iter().find(|b| b.offset == id.offset))
            .cloned()
            .context("a held message its chain does not hold")?;
        let error = self
            .shared
            .board
            .book()?
            .get(id)
            .map_or(held.reason.clone(), |d| d.summary.error.clone());
        let record = SkippedChange {
            topic: tp.0.clone(),
            partition: tp.1,
            offset: id.offset,
            position: held.position,
            schema_id: m.payload().and_then(schema_id),
            key: m.key().map(<[u8]>::to_vec),
            error,
            reason: reason.to_owned(),
        };
        // Durable before anything is released: a crash after this point
        // restarts with the skip, one before it with the message held.
        if let Err(e) = self.on_replica(move |r| r.record_skip(&record)).await? {
            return Ok(Err(Refusal::Failed(format!(
                "recording the skip in the replica failed ({e}); nothing was released, {id} is still held"
            ))));
        }
        self.skipped_topic(&tp.0)?;
        let chain = self
            .chains
            .get_mut(&tp)
            .context("held message's partition vanished")?;
        let released = chain.skip(held.position, Instant::now());
        let others: Vec<Blocked> = released
            .into_iter()
            .filter(|b| b.offset != id.offset)
            .collect();
        self.poison.remove(id);
        let outcome = format!(
            "skipped: position {} recorded in _barista_skipped and counted as passed; reason: {reason}",
            held.position
        );
        self.shared.board.book()?.settle(id, outcome.clone());
        self.passed(&tp, &others)?;
        Ok(Ok(format!("{id} {outcome}")))
    }
}
