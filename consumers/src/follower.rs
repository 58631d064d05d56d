//! The follower loop: consume → decode → chain → apply whole commit groups.
//!
//! The decisions live in pure cores: [`crate::chain`] (duplicate, gap,
//! blocked, per partition) and [`crate::groups`] (when a commit group is
//! complete, and the plan of the replica transaction that applies it). This
//! loop feeds them messages and carries out their plans: changes of all
//! partitions up to the group's last position go into ONE replica
//! transaction with the offsets and the new position, so the replica only
//! ever shows states the leader had.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use barista_runtime::Poisoned;
use barista_schemas::contract::{
    commits_topic, dead_letter_topic, GROUP_BEGIN, HEADER_GROUP, HEADER_POSITION, HEADER_TOMBSTONE,
};
use barista_schemas::Position;
use futures::FutureExt;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedMessage};

use crate::chain::{Offer, PartitionChain, TopicPartition};
use crate::config::FollowerConfig;
use crate::dead_letter::DeadLetters;
use crate::decode::{with_registry_retry, Decoder};
use crate::groups::{ApplyPlan, Chains, CommitGroups, Plan};
use crate::kafka;
use crate::replica::{Batch, Replica};
use crate::state::{FollowerState, Shared};

/// Most messages taken from librdkafka's queue before applying.
const RECV_BATCH: usize = 5_000;

/// Dead letters remembered, replay and skip: the operator's side of the loop.
#[path = "follower_admin.rs"]
mod admin;

/// Status, and what the checksums say: the comparison's scope, the stop.
#[path = "follower_checks.rs"]
mod checks;
/// Takeovers: a newer leader epoch's record, the replaced leader's messages.
#[path = "follower_fence.rs"]
mod fencing;
use checks::publish_status;

struct Follower {
    config: FollowerConfig,
    shared: Arc<Shared>,
    consumer: Arc<StreamConsumer>,
    decoder: Decoder,
    chains: Chains,
    groups: CommitGroups,
    /// The replica moves into a blocking task for each apply (SQLite calls
    /// block) and back; `None` only while it is there.
    replica: Option<Replica>,
    dead_letters: DeadLetters,
    /// The partitions held, for the high-watermark task.
    held: tokio::sync::watch::Sender<Vec<TopicPartition>>,
    /// Dead-lettered messages holding their chain, kept for a replay.
    poison: admin::HeldMessages,
    /// Topics with changes an operator skipped: their tables are not
    /// compared with the leader's checksums.
    skipped_topics: std::collections::HashSet<String>,
}

/// Opens (creating if needed) the replica and publishes its stored
/// position, so `/status` says where it is before anything else happens.
pub async fn open(config: &FollowerConfig, shared: &Shared) -> anyhow::Result<Replica> {
    let path = config.replica.clone();
    let sums = config.checksums;
    let replica = tokio::task::spawn_blocking(move || Replica::open_with(&path, sums))
        .await?
        .with_context(|| format!("opening replica {}", config.replica.display()))?;
    let progress = replica.progress()?;
    let mut state = FollowerState::resumed(progress.position, progress.leader_ts_ms);
    state.fence = crate::fence::Fence::load(replica.connection())?;
    shared.state.send_replace(state);
    // Tables an operator skipped a change of are `unverified` from the first
    // status on, not only once Kafka is reached.
    checks::unverified_at_start(shared, config, &replica)?;
    // From the first second, before Kafka is reached: the replica's own
    // position, and a seconds lag nobody has measured yet.
    publish_status(shared, config, &Chains::new(), None)?;
    Ok(replica)
}

/// Runs a follower on the replica [`open`] returned until `shutdown`
/// resolves or a fatal error (a gap, lost history, a replica that cannot be
/// written, a poisoned lock).
pub async fn run(
    config: FollowerConfig,
    shared: Arc<Shared>,
    replica: Replica,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    if let Some(d) = replica.divergence().cloned() {
        // Stopped before: stays stopped, serving reads, until re-seeded.
        return checks::stand_diverged(&shared, &config, &Chains::new(), d, shutdown).await;
    }
    let progress = replica.progress()?;
    let consumer = kafka::consumer(&config)?;
    let commits = commits_topic(&config.topic_prefix);
    let dlq_topic = dead_letter_topic(&config.topic_prefix);
    let Some(all) = kafka::wait_for_topics(&consumer, &commits, &mut shutdown).await? else {
        return Ok(());
    };
    let scope = kafka::scope(&config);
    let data = kafka::data_topics(&all, &config.topic_prefix, &scope);
    kafka::ensure_dead_letter_topic(&config, &all, &dlq_topic).await;
    let (mut chains, commits_next) = kafka::assign(&consumer, &data, &commits, &progress)?;
    admin::restore_skips(&replica, &mut chains)?;
    let skipped_topics = checks::unverified_at_start(&shared, &config, &replica)?;
    tracing::info!(follower = %config.follower_id, position = %progress.position, partitions = chains.len(), "follower started");

    let held = tokio::sync::watch::channel(chains.keys().cloned().collect()).0;
    let hwms = kafka::watch_high_watermarks(&config, held.subscribe())?;
    let mut f = Follower {
        decoder: Decoder::new(&config.registry_url)?,
        dead_letters: DeadLetters::new(&config, dlq_topic)?,
        shared: shared.clone(),
        consumer,
        chains,
        groups: CommitGroups::new(commits, commits_next, scope),
        replica: Some(replica),
        held,
        poison: Default::default(),
        skipped_topics,
        config,
    };
    f.publish_status()?;
    let result = f.follow(hwms, &mut shutdown).await;
    if let Some(checks::Diverged(d)) = result.as_ref().err().and_then(|e| e.downcast_ref()) {
        let d = d.clone();
        return checks::stand_diverged(&shared, &f.config, &f.chains, d, shutdown).await;
    }
    if let Err(e) = &result {
        // A poisoned status says nothing anyone should trust; else say why.
        if let Ok(mut s) = shared.status() {
            s.halted = Some(format!("{e:#}"));
        }
    }
    tracing::info!(position = %shared.state().position, "follower stopped");
    result
}

fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a [u8]> {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == key).and_then(|h| h.value))
}

impl Follower {
    /// The select loop: shutdown, the pause switch, a 250 ms tick (gaps,
    /// status, lag log), and messages.
    async fn follow(
        &mut self,
        mut hwms: tokio::sync::watch::Receiver<std::collections::HashMap<TopicPartition, i64>>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<()> {
        let mut paused_rx = self.shared.paused.subscribe();
        if *paused_rx.borrow_and_update() {
            // Paused before the partitions were assigned: pause them now.
            let parts: Vec<_> = self.chains.keys().cloned().collect();
            kafka::set_paused(&self.consumer, &parts, true);
            tracing::info!("applying paused from the start");
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_log = Instant::now();
        let shared = self.shared.clone();
        let mut inbox = shared.board.inbox.try_lock().ok();
        let consumer = self.consumer.clone();
        loop {
            tokio::select! {
                _ = &mut *shutdown => return Ok(()),
                Some(cmd) = admin::next(&mut inbox) => self.operate(cmd).await?,
                changed = paused_rx.changed() => {
                    if changed.is_err() { continue; }
                    let paused = *paused_rx.borrow_and_update();
                    let parts: Vec<_> = self.chains.keys().cloned().collect();
                    kafka::set_paused(&self.consumer, &parts, paused);
                    tracing::info!(paused, "applying {}", if paused { "paused" } else { "resumed" });
                }
                _ = tick.tick() => {
                    for (tp, h) in hwms.borrow_and_update().iter() {
                        if let Some(c) = self.chains.get_mut(tp) { c.saw_high_watermark(*h); }
                    }
                    self.check_gaps()?;
                    self.publish_status()?;
                    if last_log.elapsed() >= self.config.log_interval {
                        self.log_lag()?;
                        last_log = Instant::now();
                    }
                }
                msg = consumer.recv() => {
                    let mut msgs = Vec::new();
                    let floor = self.shared.state().position;
                    let mut take = |m: Result<BorrowedMessage<'_>, KafkaError>| match m {
                        // A resend already applied: counted, never copied.
                        Ok(m) if kafka::consumed_duplicate(&mut self.chains, floor, &m) => {
                            self.shared.metrics.duplicates.inc();
                        }
                        m => msgs.push(m.map(|m| m.detach())),
                    };
                    take(msg);
                    // Take what is already fetched without waiting, then apply once.
                    for _ in 1..RECV_BATCH {
                        match consumer.recv().now_or_never() {
                            Some(m) => take(m),
                            None => break,
                        }
                    }
                    for m in msgs {
                        match m {
                            Ok(m) => self.handle(m, shutdown).await?,
                            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                                anyhow::bail!("{}", crate::seed::history_deleted(&self.config));
                            }
                            Err(e) => tracing::warn!(error = %e, "Kafka consumer error (retrying)"),
                        }
                    }
                    self.apply_ready().await?;
                }
            }
        }
    }

    async fn handle(
        &mut self,
        m: OwnedMessage,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<()> {
        let tp = (m.topic().to_owned(), m.partition());
        let offset = m.offset();
        if tp.0 == self.groups.topic() {
            self.groups.consumed(offset);
            let Some(payload) = m.payload() else {
                return Ok(());
            };
            match with_registry_retry(&self.decoder, |d| d.commit(payload), shutdown).await {
                Ok(Some(c)) => {
                    if !self.admit_commit(&c).await? {
                        return Ok(());
                    }
                    let unheld = self.groups.unheld(&c, &self.chains);
                    if !unheld.is_empty() {
                        self.hold(unheld)?;
                    }
                    self.shared
                        .state
                        .send_modify(|s| s.heard(&c, Instant::now()));
                    let begin = header(&m, HEADER_GROUP) == Some(GROUP_BEGIN.as_bytes());
                    self.groups.record(offset, c, begin);
                }
                Ok(None) => {}
                Err(e) => {
                    self.shared.metrics.dead_letters.inc();
                    self.remember(&m, None, &e.to_string(), false)?;
                    self.dead_letters.send(&m, &e.to_string()).await;
                }
            }
            return Ok(());
        }
        let floor = self.shared.state().position;
        let Some(chain) = self.chains.get_mut(&tp) else {
            return Ok(());
        };
        chain.consumed(offset);
        let Some(payload) = m.payload() else {
            return Ok(());
        }; // tombstone
        if header(&m, HEADER_TOMBSTONE).is_some() {
            return Ok(());
        }
        let position: Option<Position> = header(&m, HEADER_POSITION)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .map(Position);
        if position.is_some_and(|p| chain.is_applied(p, floor)) {
            self.shared.metrics.duplicates.inc();
            return Ok(());
        }
        if position.is_some_and(|p| chain.is_skipped(p)) {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset, "skipped by an operator; not applied");
            return Ok(());
        }
        let decoded = with_registry_retry(&self.decoder, |d| d.change(payload), shutdown).await;
        if let Ok(Some(change)) = &decoded {
            if !self.admit_change(change) {
                return Ok(());
            }
        }
        let chain = self.chains.get_mut(&tp).context("partition vanished")?;
        match decoded {
            Ok(Some(change)) => match chain.offer(offset, change, floor, Instant::now()) {
                Offer::Duplicate => {
                    self.shared.metrics.duplicates.inc();
                }
                Offer::Buffered { released } => {
                    for b in &released {
                        tracing::warn!(topic = %tp.0, partition = tp.1, position = %b.position, offset = b.offset,
                            "the chain passed a dead-lettered message's position: it was not a missing change of this partition; no longer held");
                    }
                    self.passed(&tp, &released)?;
                }
            },
            Ok(None) => {}
            Err(e) => {
                let why = e.to_string();
                // A change we cannot apply: the next change of this partition
                // names it as `prev_position`, so the chain stops there and
                // later changes (same keys among them) wait in the buffer
                // rather than overtake it. A message that only claims a
                // position outside the chain holds nothing back; either way
                // the stored offset stays at it (a restart reads it again)
                // until the chain passes its position. The replica keeps
                // serving reads at its position; readiness fails as lag grows.
                let mut holds = false;
                if let Some(p) = position {
                    let reason = format!(
                        "position {p} (offset {offset}) went to the dead-letter topic: {why}; changes of {}/{} that follow it in the leader's chain are held back, and the stored offset stays at it",
                        tp.0, tp.1
                    );
                    holds = chain.block(offset, p, reason);
                    if holds {
                        tracing::error!(topic = %tp.0, partition = tp.1, position = %p, offset, error = %why, "partition blocked by a poison change");
                    }
                }
                self.shared.metrics.dead_letters.inc();
                self.remember(&m, position, &why, holds)?;
                self.dead_letters.send(&m, &why).await;
            }
        }
        Ok(())
    }

    /// Starts consuming partitions a commit group names that this follower
    /// follows but does not hold yet: a table created, or partitions added,
    /// after it started. Until they hold the group's changes the group is
    /// not complete, so the replica never moves past rows it lacks.
    fn hold(&mut self, partitions: Vec<TopicPartition>) -> anyhow::Result<()> {
        kafka::assign_more(&self.consumer, &partitions)?;
        if *self.shared.paused.borrow() {
            kafka::set_paused(&self.consumer, &partitions, true);
        }
        for tp in &partitions {
            self.chains
                .insert(tp.clone(), PartitionChain::new(0, Position::ZERO));
        }
        self.held
            .send_replace(self.chains.keys().cloned().collect());
        tracing::info!(
            ?partitions,
            "following partitions that appeared after the start, from the start of their history"
        );
        Ok(())
    }

    /// Carries out the next plan of the commit groups.
    async fn apply_ready(&mut self) -> anyhow::Result<()> {
        let now = self.shared.state();
        let planned = self.groups.plan(
            &mut self.chains,
            now.position,
            now.leader_ts_ms,
            self.config.batch_max,
        );
        if let Some(ts) = planned.fresh_ts_ms {
            self.shared.state.send_if_modified(|s| {
                let before = s.leader_ts_ms;
                s.fresh_as_of(ts);
                s.leader_ts_ms != before
            });
        }
        match planned.plan {
            Plan::Apply(plan) => self.apply(plan).await,
            Plan::Stream(changes) => self.stream(changes).await,
            Plan::Wait => Ok(()),
        }
    }

    async fn apply(&mut self, plan: ApplyPlan) -> anyhow::Result<()> {
        let n = plan.changes.len() as u64;
        let (position, ts) = (plan.position, plan.leader_ts_ms);
        let batch = Batch {
            changes: plan.changes,
            offsets: plan.offsets,
            position: Some((position, ts)),
            drops: plan.drops,
            checksums: self.leader_sums(plan.checksums)?,
            snapshots: plan.snapshots,
        };
        let marks = !batch.snapshots.is_empty();
        let (offsets, diverged, snapshots) = self
            .on_replica(move |replica| {
                replica.apply(&batch)?;
                let snapshots = match marks {
                    true => Some(crate::table_snapshots::running(replica.connection())?),
                    false => None,
                };
                Ok::<_, rusqlite::Error>((batch.offsets, replica.divergence().cloned(), snapshots))
            })
            .await?
            .context("applying to the replica")?;
        if let Some(s) = snapshots {
            if let Ok(mut shown) = self.shared.snapshots.lock() {
                *shown = s;
            }
        }
        // Published only after the replica commit: a read woken by it opens a
        // snapshot that holds the new position.
        self.shared.state.send_modify(|s| s.applied(position, ts));
        self.shared.metrics.changes_applied.inc_by(n);
        self.shared.metrics.batches.inc();
        // Committed to Kafka only after the replica commit, so standard
        // tools show this group's lag; the replica's copy is the one the
        // follower trusts on restart.
        kafka::commit_offsets(&self.consumer, &offsets);
        if let Some(d) = diverged {
            return Err(self.diverged(d));
        }
        self.publish_status()?;
        Ok(())
    }

    /// Part of a large group into the open replica transaction.
    async fn stream(
        &mut self,
        changes: Vec<barista_schemas::envelope::DecodedChange>,
    ) -> anyhow::Result<()> {
        let n = changes.len() as u64;
        self.on_replica(move |replica| replica.apply_partial(&changes))
            .await?
            .context("applying part of a large commit group to the replica")?;
        self.shared.metrics.changes_applied.inc_by(n);
        self.shared.metrics.streamed.inc_by(n);
        tracing::debug!(changes = n, "streamed part of a large commit group");
        Ok(())
    }

    /// Runs `f` on the replica in a blocking task (SQLite calls block).
    async fn on_replica<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Replica) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut replica = self.replica.take().context("replica in use")?;
        let (replica, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut replica);
            (replica, r)
        })
        .await
        .context("the replica task panicked")?;
        self.replica = Some(replica);
        Ok(r)
    }

    fn check_gaps(&self) -> anyhow::Result<()> {
        let now = Instant::now();
        for ((t, p), chain) in &self.chains {
            if let Some(g) = chain.gap(now, self.config.gap_timeout) {
                anyhow::bail!(
                    "gap in {t}/{p}: change {pos} follows position {prev:?}, which this follower never received \
                     (it has up to {have}); waited {:?} for a resend. Changes were lost between the producer and \
                     Kafka or removed by retention; re-seed this replica: `{cmd}`",
                    self.config.gap_timeout,
                    pos = g.position,
                    prev = g.prev.map(i64::from),
                    have = g.have,
                    cmd = crate::seed::reseed_command(&self.config),
                );
            }
        }
        Ok(())
    }

    fn publish_status(&self) -> Result<(), Poisoned> {
        let group = self.groups.progress(self.shared.state().position);
        publish_status(&self.shared, &self.config, &self.chains, group)
    }

    fn log_lag(&self) -> Result<(), Poisoned> {
        let s = self.shared.status()?;
        tracing::info!(
            follower = %s.follower,
            position = %s.applied_position,
            leader = %s.leader_position,
            position_lag = s.position_lag,
            seconds_lag = s.seconds_lag,
            offset_lag = s.offset_lag,
            applied = s.changes_applied,
            dead_letters = s.dead_letters,
            "lag"
        );
        Ok(())
    }
}
