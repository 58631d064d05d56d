//! The follower loop: consume → decode → buffer → apply whole commit groups.
//!
//! Every data partition keeps a buffer of decoded changes keyed by position
//! and checks the `prev_position` chain: a change whose predecessor it never
//! saw is a gap, held until a resend fills it or `gap_timeout` says it is lost.
//! A commit group from `<prefix>.__commits` is applied when every partition it
//! names holds its changes up to the group's tail there. Changes of all
//! partitions up to the group's last position are applied in position order in
//! ONE replica transaction, together with offsets and the new position, so
//! the replica only ever shows states the leader had.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use barista_schemas::contract::{
    commits_topic, dead_letter_topic, HEADER_DLQ_ERROR, HEADER_DLQ_FOLLOWER, HEADER_DLQ_OFFSET,
    HEADER_DLQ_PARTITION, HEADER_DLQ_SCHEMA_ID, HEADER_DLQ_TOPIC, HEADER_GROUP, HEADER_POSITION,
    HEADER_TOMBSTONE,
};
use barista_schemas::envelope::DecodedChange;
use barista_schemas::Commit;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::decode::{schema_id, DecodeError, Decoder};
use crate::lag::{seconds_behind, LeaderClock, Metrics, PartitionStatus, Status};
use crate::replica::{Batch, Replica};

/// Validated follower configuration.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// Replica SQLite file.
    pub replica: PathBuf,
    /// Follower id: its Kafka consumer group.
    pub follower_id: String,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Schema registry URL.
    pub registry_url: String,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Tables to follow; empty = every table topic under the prefix.
    pub tables: Vec<String>,
    /// HTTP address for metrics, status, readiness and reads; None = off.
    pub http_listen: Option<SocketAddr>,
    /// Readiness fails above this lag (seconds, leader clock).
    pub max_lag_seconds: f64,
    /// How long a gap may wait for a resend before the follower halts.
    pub gap_timeout: Duration,
    /// Most changes per replica transaction when several commit groups are
    /// applied together; also how many changes of one large group are held
    /// in memory before they are streamed into an open replica transaction
    /// (committed, and visible, only with the rest of the group).
    pub batch_max: usize,
    /// Extra librdkafka properties.
    pub kafka_options: Vec<(String, String)>,
    /// How often to log a lag line.
    pub log_interval: Duration,
    /// How long the follower may hear nothing from the producer (commit
    /// records, heartbeats) before its seconds lag counts the silence.
    pub heartbeat_grace: Duration,
}

impl FollowerConfig {
    /// Local defaults.
    pub fn new(
        replica: impl Into<PathBuf>,
        follower_id: &str,
        brokers: &str,
        registry_url: &str,
    ) -> Self {
        FollowerConfig {
            replica: replica.into(),
            follower_id: follower_id.to_owned(),
            brokers: brokers.to_owned(),
            registry_url: registry_url.to_owned(),
            topic_prefix: barista_schemas::contract::DEFAULT_TOPIC_PREFIX.to_owned(),
            tables: Vec::new(),
            http_listen: None,
            max_lag_seconds: 10.0,
            gap_timeout: Duration::from_secs(30),
            batch_max: 5_000,
            kafka_options: Vec::new(),
            log_interval: Duration::from_secs(10),
            heartbeat_grace: Duration::from_secs(3),
        }
    }
}

/// State shared with the HTTP side.
pub struct Shared {
    /// Current status.
    pub status: Mutex<Status>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Operator pause switch.
    pub paused: watch::Sender<bool>,
    /// The replica's position, for reads that wait for one.
    pub applied: watch::Sender<i64>,
    /// Readiness threshold.
    pub max_lag_seconds: f64,
    /// Replica file, for reads.
    pub replica: PathBuf,
    /// How fresh the applied position is, for bounded-staleness reads.
    pub freshness: Mutex<Freshness>,
}

/// How fresh the replica is, on the leader's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Freshness {
    /// The applied position this is about.
    pub position: i64,
    /// The newest leader time at which the leader was at or below `position`:
    /// the replica holds every write committed on the leader before it.
    pub leader_ts_ms: i64,
    /// The leader's newest known position.
    pub leader_position: i64,
    /// The leader clock as last heard.
    pub clock: Option<LeaderClock>,
}

type Tp = (String, i32);

#[derive(Default)]
struct Part {
    consumed: i64,
    applied: i64,
    contiguous: i64,
    buffered: BTreeMap<i64, (i64, DecodedChange)>,
    gap_since: Option<Instant>,
    /// Position-bearing messages that went to the dead-letter topic, oldest
    /// first: their offsets stay stored until the chain passes them.
    blocked: Vec<Blocked>,
    hwm: i64,
}

/// A message that claimed a leader position and could not be applied.
struct Blocked {
    offset: i64,
    position: i64,
    reason: String,
}

impl Part {
    /// Follows the `prev_position` chain through the buffer. Returns the
    /// blocked messages the chain has now passed: their positions are not
    /// (or no longer) missing from this partition, so they hold nothing.
    fn advance(&mut self) -> Vec<Blocked> {
        let mut c = self.contiguous.max(self.applied);
        for (pos, (_, ch)) in self.buffered.range(c + 1..) {
            if ch.source.prev_position.is_none_or(|p| p <= c) {
                c = *pos;
            } else {
                break;
            }
        }
        self.contiguous = c;
        let waiting = self.buffered.range(c + 1..).next().is_some();
        self.gap_since = if waiting {
            Some(self.gap_since.unwrap_or_else(Instant::now))
        } else {
            None
        };
        let (passed, held) = std::mem::take(&mut self.blocked)
            .into_iter()
            .partition(|b| b.position <= c);
        self.blocked = held;
        passed
    }

    /// The next offset that must be read again after a restart.
    fn next_offset(&self) -> i64 {
        let buffered = self.buffered.values().map(|(o, _)| *o).min();
        let blocked = self.blocked.iter().map(|b| b.offset).min();
        [Some(self.consumed), buffered, blocked]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.consumed)
    }
}

struct Follower {
    config: FollowerConfig,
    shared: Arc<Shared>,
    decoder: Decoder,
    parts: HashMap<Tp, Part>,
    commits_topic: String,
    commits_consumed: i64,
    queue: VecDeque<(i64, Commit)>,
    /// Begin records of large groups: first position → (offset, last position).
    begun: BTreeMap<i64, (i64, i64)>,
    position: i64,
    position_ts: i64,
    leader_head: i64,
    clock: Option<LeaderClock>,
    /// The replica moves into a blocking task for each apply; the mutex makes
    /// the follower `Sync` (it is never contended).
    replica: Mutex<Option<Replica>>,
    dlq: FutureProducer,
    dlq_topic: String,
}

fn client_config(config: &FollowerConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.kafka_options {
        c.set(k, v);
    }
    c
}

/// Runs a follower until `shutdown` resolves or a fatal error (a gap, lost
/// history, a replica that cannot be written).
pub async fn run(
    config: FollowerConfig,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let path = config.replica.clone();
    let replica = tokio::task::spawn_blocking(move || Replica::open(&path))
        .await?
        .with_context(|| format!("opening replica {}", config.replica.display()))?;
    let progress = replica.progress()?;

    let mut cc = client_config(&config);
    cc.set("group.id", &config.follower_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Never jump silently: a stored offset the log no longer has is an error.
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "10")
        // Bound what librdkafka prefetches (default: 64 MiB and 100,000
        // messages per partition), so memory does not follow the backlog.
        .set("queued.max.messages.kbytes", "16384")
        .set("fetch.max.bytes", "8388608")
        .set("queued.min.messages", "20000")
        // With queues this small, librdkafka's default (postpone a full
        // partition's next fetch by 1 s) stalls a follower that drains a
        // backlog for a second at a time; re-check every 10 ms instead.
        .set("fetch.queue.backoff.ms", "10")
        .set("enable.partition.eof", "false");
    for (k, v) in &config.kafka_options {
        cc.set(k, v);
    }
    let consumer: Arc<StreamConsumer> =
        Arc::new(cc.create().context("creating the Kafka consumer")?);
    let commits = commits_topic(&config.topic_prefix);
    let dlq_topic = dead_letter_topic(&config.topic_prefix);

    // Wait for the producer to have created the topics.
    let prefix = format!("{}.", config.topic_prefix);
    let topics: Vec<(String, i32)> = loop {
        let c = consumer.clone();
        let md = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(None, Duration::from_secs(5)).map(|m| {
                m.topics()
                    .iter()
                    .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
                    .collect::<Vec<_>>()
            })
        })
        .await?;
        match md {
            Ok(all) if all.iter().any(|(t, _)| *t == commits) => break all,
            Ok(_) => {
                tracing::info!(topic = %commits, "waiting for the producer to create its topics")
            }
            Err(e) => tracing::warn!(error = %e, "Kafka metadata unavailable; retrying"),
        }
        tokio::select! { _ = &mut shutdown => return Ok(()), _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
    };
    let all_topics = topics.clone();
    let data: Vec<(String, i32)> = topics
        .into_iter()
        .filter(|(t, _)| {
            t.starts_with(&prefix)
                && *t != commits
                && *t != dlq_topic
                && !t.ends_with(".__dead_letters")
        })
        .filter(|(t, _)| {
            config.tables.is_empty()
                || config.tables.iter().any(|tb| {
                    *t == barista_schemas::contract::table_topic(&config.topic_prefix, tb)
                })
        })
        .collect();

    // Ensure the dead-letter topic exists (best effort: a broker that
    // auto-creates topics, or an operator, may have made it already).
    if !all_topics.iter().any(|(t, _)| *t == dlq_topic) {
        let admin: AdminClient<DefaultClientContext> = client_config(&config).create()?;
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(5)))
            .request_timeout(Some(Duration::from_secs(5)));
        if let Err(e) = admin
            .create_topics(
                &[NewTopic::new(&dlq_topic, 1, TopicReplication::Fixed(1))],
                &opts,
            )
            .await
        {
            tracing::warn!(topic = %dlq_topic, error = %e, "could not create the dead-letter topic");
        }
    }

    let mut tpl = TopicPartitionList::new();
    let mut parts = HashMap::new();
    for (t, n) in &data {
        for p in 0..*n {
            let (next, applied) = progress
                .offsets
                .get(&(t.clone(), p))
                .copied()
                .unwrap_or((0, 0));
            tpl.add_partition_offset(
                t,
                p,
                if next > 0 {
                    Offset::Offset(next)
                } else {
                    Offset::Beginning
                },
            )?;
            parts.insert(
                (t.clone(), p),
                Part {
                    consumed: next,
                    applied,
                    contiguous: applied,
                    ..Part::default()
                },
            );
        }
    }
    let commits_next = progress
        .offsets
        .get(&(commits.clone(), 0))
        .map(|v| v.0)
        .unwrap_or(0);
    tpl.add_partition_offset(
        &commits,
        0,
        if commits_next > 0 {
            Offset::Offset(commits_next)
        } else {
            Offset::Beginning
        },
    )?;
    consumer.assign(&tpl).context("assigning partitions")?;
    tracing::info!(follower = %config.follower_id, position = progress.position, partitions = parts.len(), "follower started");

    let dlq: FutureProducer = client_config(&config)
        .set("message.timeout.ms", "30000")
        .create()?;
    let mut f = Follower {
        decoder: Decoder::new(&config.registry_url)?,
        shared: shared.clone(),
        parts,
        commits_topic: commits,
        commits_consumed: commits_next,
        queue: VecDeque::new(),
        begun: BTreeMap::new(),
        position: progress.position,
        position_ts: progress.leader_ts_ms,
        leader_head: progress.position,
        clock: None,
        replica: Mutex::new(Some(replica)),
        dlq,
        dlq_topic,
        config,
    };
    shared.applied.send_replace(f.position);
    f.publish_freshness();

    // High watermarks, refreshed off the loop (a blocking network call).
    let hwms: Arc<Mutex<HashMap<Tp, i64>>> = Arc::default();
    let watcher = {
        // A client of its own: on the fetching connection a ListOffsets
        // request waits behind the fetch in flight, and times out when the
        // broker is slow to answer fetches.
        let mut wc = client_config(&f.config);
        wc.set("group.id", format!("{}-watermarks", f.config.follower_id));
        let consumer: Arc<rdkafka::consumer::BaseConsumer> = Arc::new(
            wc.create()
                .context("creating the Kafka client for high watermarks")?,
        );
        let (hwms, keys) = (hwms.clone(), f.parts.keys().cloned().collect::<Vec<_>>());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let (c, keys2) = (consumer.clone(), keys.clone());
                let got = tokio::task::spawn_blocking(move || {
                    keys2
                        .into_iter()
                        .filter_map(|(t, p)| {
                            c.fetch_watermarks(&t, p, Duration::from_secs(2))
                                .ok()
                                .map(|(_, h)| ((t, p), h))
                        })
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                if let Ok(mut m) = hwms.lock() {
                    m.extend(got);
                }
            }
        })
    };

    let mut paused_rx = shared.paused.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_log = Instant::now();
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            changed = paused_rx.changed() => {
                if changed.is_err() { continue; }
                let paused = *paused_rx.borrow_and_update();
                let mut data_tpl = TopicPartitionList::new();
                for (t, p) in f.parts.keys() { data_tpl.add_partition(t, *p); }
                let r = if paused { consumer.pause(&data_tpl) } else { consumer.resume(&data_tpl) };
                if let Err(e) = r { tracing::warn!(error = %e, "pause/resume failed"); }
                tracing::info!(paused, "applying {}", if paused { "paused" } else { "resumed" });
            }
            _ = tick.tick() => {
                if let Ok(m) = hwms.lock() {
                    for (tp, h) in m.iter() { if let Some(p) = f.parts.get_mut(tp) { p.hwm = *h; } }
                }
                if let Err(e) = f.check_gaps() { break Err(e); }
                f.publish_status();
                if last_log.elapsed() >= f.config.log_interval {
                    f.log_lag();
                    last_log = Instant::now();
                }
            }
            msg = consumer.recv() => {
                let mut msgs = vec![msg.map(|m| m.detach())];
                // Take what is already fetched without waiting, then apply once.
                while msgs.len() < 5000 {
                    match consumer.recv().now_or_never() {
                        Some(m) => msgs.push(m.map(|m| m.detach())),
                        None => break,
                    }
                }
                let mut fatal = None;
                for m in msgs {
                    match m {
                        Ok(m) => if let Err(e) = f.handle(m, &mut shutdown).await { fatal = Some(e); break; },
                        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                            fatal = Some(anyhow::anyhow!(
                                "a stored offset of this replica is no longer in Kafka: retention deleted changes it never applied. \
                                 The replica cannot be brought up to date from Kafka; re-seed it (stop the follower, delete {} \
                                 and start again, so it replays from the earliest offset and the snapshot)",
                                f.config.replica.display()));
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "Kafka consumer error (retrying)"),
                    }
                }
                if let Some(e) = fatal { break Err(e); }
                match f.apply_ready(&consumer).await {
                    Ok(()) => {}
                    Err(e) => break Err(e),
                }
            }
        }
    };
    watcher.abort();
    if let Err(e) = &result {
        if let Ok(mut s) = shared.status.lock() {
            s.halted = Some(format!("{e:#}"));
        }
    }
    tracing::info!(position = f.position, "follower stopped");
    result
}

fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a [u8]> {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == key).and_then(|h| h.value))
}

impl Follower {
    async fn handle(
        &mut self,
        m: OwnedMessage,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> anyhow::Result<()> {
        let tp = (m.topic().to_owned(), m.partition());
        let offset = m.offset();
        if tp.0 == self.commits_topic {
            self.commits_consumed = offset + 1;
            let Some(payload) = m.payload() else {
                return Ok(());
            };
            match self.retry_decode(|d| d.commit(payload), shutdown).await {
                Ok(Some(c)) => {
                    self.leader_head = self.leader_head.max(c.last_position);
                    self.clock = Some(LeaderClock {
                        ts_ms: self.clock.map_or(c.ts_ms, |k| k.ts_ms.max(c.ts_ms)),
                        received: Instant::now(),
                    });
                    // The leader was at or below our position at `ts_ms`: the
                    // replica holds every write committed before then.
                    if c.last_position <= self.position {
                        self.position_ts = self.position_ts.max(c.ts_ms);
                    }
                    if header(&m, HEADER_GROUP) == Some(b"begin".as_slice()) {
                        self.begun
                            .insert(c.first_position, (offset, c.last_position));
                    } else {
                        self.queue.push_back((offset, c));
                    }
                    self.publish_freshness();
                }
                Ok(None) => {}
                Err(e) => self.dead_letter(&m, &e.to_string()).await,
            }
            return Ok(());
        }
        let Some(part) = self.parts.get_mut(&tp) else {
            return Ok(());
        };
        part.consumed = offset + 1;
        let Some(payload) = m.payload() else {
            return Ok(());
        }; // tombstone
        if header(&m, HEADER_TOMBSTONE).is_some() {
            return Ok(());
        }
        let position: Option<i64> = header(&m, HEADER_POSITION)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok());
        if let Some(p) = position {
            if p <= part.applied.max(self.position) {
                self.shared.metrics.duplicates.inc();
                return Ok(());
            }
        }
        match self.retry_decode(|d| d.change(payload), shutdown).await {
            Ok(Some(change)) => {
                let part = self.parts.get_mut(&tp).context("partition vanished")?;
                let p = change.source.position;
                if p <= part.applied.max(self.position) || part.buffered.contains_key(&p) {
                    self.shared.metrics.duplicates.inc();
                } else {
                    part.buffered.insert(p, (offset, change));
                    for b in part.advance() {
                        tracing::warn!(topic = %tp.0, partition = tp.1, position = b.position, offset = b.offset,
                            "the chain passed a dead-lettered message's position: it was not a missing change of this partition; no longer held");
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                let why = e.to_string();
                self.dead_letter(&m, &why).await;
                if let Some(p) = position {
                    // A change we cannot apply: the next change of this
                    // partition names it as `prev_position`, so the chain stops
                    // there and later changes (same keys among them) wait in
                    // the buffer rather than overtake it. A message that only
                    // claims a position outside the chain holds nothing back;
                    // either way the stored offset stays at it (a restart reads
                    // it again) until the chain passes its position. The
                    // replica keeps serving reads at its position; readiness
                    // fails as lag grows.
                    let part = self.parts.get_mut(&tp).context("partition vanished")?;
                    // A position the chain already passed is not missing.
                    if p > part.contiguous {
                        let reason = format!(
                            "position {p} (offset {offset}) went to the dead-letter topic: {why}; changes of {}/{} that follow it in the leader's chain are held back, and the stored offset stays at it",
                            tp.0, tp.1
                        );
                        tracing::error!(topic = %tp.0, partition = tp.1, position = p, offset, error = %why, "partition blocked by a poison change");
                        part.blocked.push(Blocked {
                            offset,
                            position: p,
                            reason,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes, waiting out an unreachable registry. `Ok(None)` on shutdown.
    async fn retry_decode<'a, T, F, Fut>(
        &'a self,
        f: F,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<T>, DecodeError>
    where
        F: Fn(&'a Decoder) -> Fut,
        Fut: Future<Output = Result<T, DecodeError>> + 'a,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match f(&self.decoder).await {
                Ok(v) => return Ok(Some(v)),
                Err(DecodeError::Unavailable(e)) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "schema registry unavailable; waiting");
                    tokio::select! { _ = &mut *shutdown => return Ok(None), _ = tokio::time::sleep(wait) => {} }
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn dead_letter(&self, m: &OwnedMessage, error: &str) {
        self.shared.metrics.dead_letters.inc();
        let (partition, offset) = (m.partition().to_string(), m.offset().to_string());
        let id = m
            .payload()
            .and_then(schema_id)
            .map(|i| i.to_string())
            .unwrap_or_default();
        let mut h = OwnedHeaders::new();
        if let Some(orig) = m.headers() {
            for x in orig.iter() {
                h = h.insert(Header {
                    key: x.key,
                    value: x.value,
                });
            }
        }
        for (k, v) in [
            (HEADER_DLQ_ERROR, error),
            (HEADER_DLQ_TOPIC, m.topic()),
            (HEADER_DLQ_PARTITION, &partition),
            (HEADER_DLQ_OFFSET, &offset),
            (HEADER_DLQ_SCHEMA_ID, &id),
            (HEADER_DLQ_FOLLOWER, &self.config.follower_id),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.dlq_topic).headers(h);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(p) = m.payload() {
            rec = rec.payload(p);
        }
        tracing::error!(topic = m.topic(), partition = m.partition(), offset = m.offset(), %error, "message sent to the dead-letter topic");
        if let Err((e, _)) = self.dlq.send(rec, Duration::from_secs(30)).await {
            tracing::error!(error = %e, "could not write the dead-letter topic; the message stays unapplied");
        }
    }

    /// A group is complete when it follows `current` and every partition it
    /// names holds its changes up to the group's tail there.
    fn complete(&self, c: &Commit, current: i64) -> bool {
        c.first_position <= current + 1
            && c.partitions.iter().all(|t| {
                self.parts
                    .get(&(t.topic.clone(), t.partition))
                    .is_none_or(|p| p.contiguous >= t.last_position)
            })
    }

    /// Applies every commit group that is complete, in one transaction.
    async fn apply_ready(&mut self, consumer: &StreamConsumer) -> anyhow::Result<()> {
        let mut target: Option<(i64, i64)> = None;
        let mut count = 0usize;
        loop {
            let current = target.map_or(self.position, |t| t.0);
            let next = self.queue.iter().find(|(_, c)| {
                !c.is_heartbeat() && c.first_position <= current + 1 && c.last_position > current
            });
            let Some((_, c)) = next else { break };
            if !self.complete(c, current) {
                break;
            }
            let pending: usize = self
                .parts
                .values()
                .map(|p| p.buffered.range(..=c.last_position).count())
                .sum();
            if count > 0 && count + pending > self.config.batch_max {
                break;
            }
            count = pending;
            target = Some((c.last_position, c.ts_ms));
        }
        // Heartbeats only move the clock; drop the ones already covered, but
        // first let them tell how fresh the new position is: the newest leader
        // time at which the leader was at or below it.
        let covered = target.map_or(self.position, |t| t.0);
        let fresh = self
            .queue
            .iter()
            .filter(|(_, c)| c.last_position <= covered)
            .map(|(_, c)| c.ts_ms)
            .max();
        if target.is_none() {
            if let Some(f) = fresh {
                self.position_ts = self.position_ts.max(f);
            }
        }
        let target = target.map(|(p, ts)| {
            // What was fresh for the old position is fresh for a newer one.
            (p, fresh.map_or(ts, |f| f.max(ts)).max(self.position_ts))
        });
        self.queue
            .retain(|(_, c)| !(c.is_heartbeat() || c.last_position <= covered));
        let Some((position, ts)) = target else {
            return self.stream_large_group().await;
        };

        let mut changes: Vec<DecodedChange> = Vec::with_capacity(count);
        let mut offsets = Vec::new();
        for (tp, part) in self.parts.iter_mut() {
            let rest = part.buffered.split_off(&(position + 1));
            let taken = std::mem::replace(&mut part.buffered, rest);
            if let Some((&last, _)) = taken.iter().next_back() {
                part.applied = last;
            }
            changes.extend(taken.into_values().map(|(_, c)| c));
            offsets.push((tp.clone(), (part.next_offset(), part.applied)));
        }
        changes.sort_by_key(|c| c.source.position);
        self.begun.retain(|_, (_, last)| *last > position);
        let commits_next = self
            .queue
            .iter()
            .map(|(o, _)| *o)
            .chain(self.begun.values().map(|(o, _)| *o))
            .min()
            .unwrap_or(self.commits_consumed);
        offsets.push(((self.commits_topic.clone(), 0), (commits_next, position)));
        let n = changes.len() as u64;
        let batch = Batch {
            changes,
            offsets,
            position: Some((position, ts)),
        };
        let offsets = self
            .on_replica(move |replica| replica.apply(&batch).map(|()| batch.offsets))
            .await?
            .context("applying to the replica")?;
        self.position = position;
        self.position_ts = ts;
        self.shared.metrics.changes_applied.inc_by(n);
        self.shared.metrics.batches.inc();
        self.shared.applied.send_replace(position);

        // Offsets are committed to Kafka only after the replica commit, so
        // standard tools show this group's lag; the replica's copy is the one
        // the follower trusts on restart.
        let mut tpl = TopicPartitionList::new();
        for ((t, p), (next, _)) in &offsets {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*next));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing offsets to Kafka failed (the replica has them)");
        }
        self.publish_status();
        Ok(())
    }

    /// Runs `f` on the replica in a blocking task (SQLite calls block).
    async fn on_replica<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Replica) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let mut replica = self
            .replica
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .context("replica in use")?;
        let (replica, r) = tokio::task::spawn_blocking(move || {
            let r = f(&mut replica);
            (replica, r)
        })
        .await?;
        if let Ok(mut slot) = self.replica.lock() {
            *slot = Some(replica);
        }
        Ok(r)
    }

    /// The current commit group is incomplete but its begin record said
    /// where it ends: once `batch_max` of its changes arrived (in chain order
    /// on their partitions), they go into an open replica transaction, which
    /// the group's last batch commits. Memory stays bounded; readers still
    /// see the group all at once.
    async fn stream_large_group(&mut self) -> anyhow::Result<()> {
        let current = self.position;
        let Some(last) = self
            .begun
            .iter()
            .find(|(first, (_, last))| **first <= current + 1 && *last > current)
            .map(|(_, (_, last))| *last)
        else {
            return Ok(());
        };
        let ready: usize = self
            .parts
            .values()
            .map(|p| p.buffered.range(..=last.min(p.contiguous)).count())
            .sum();
        if ready < self.config.batch_max.max(1) {
            return Ok(());
        }
        let mut changes: Vec<DecodedChange> = Vec::with_capacity(ready);
        for part in self.parts.values_mut() {
            let upto = last.min(part.contiguous);
            let rest = part.buffered.split_off(&(upto + 1));
            let taken = std::mem::replace(&mut part.buffered, rest);
            if let Some((&l, _)) = taken.iter().next_back() {
                part.applied = l;
            }
            changes.extend(taken.into_values().map(|(_, c)| c));
        }
        changes.sort_by_key(|c| c.source.position);
        let n = changes.len() as u64;
        self.on_replica(move |replica| replica.apply_partial(&changes))
            .await?
            .context("applying part of a large commit group to the replica")?;
        self.shared.metrics.changes_applied.inc_by(n);
        self.shared.metrics.streamed.inc_by(n);
        tracing::debug!(
            changes = n,
            group_last = last,
            "streamed part of a large commit group"
        );
        Ok(())
    }

    fn check_gaps(&self) -> anyhow::Result<()> {
        for ((t, p), part) in &self.parts {
            if !part.blocked.is_empty() {
                continue;
            }
            if let Some(since) = part.gap_since {
                if since.elapsed() > self.config.gap_timeout {
                    let (pos, (_, ch)) = part
                        .buffered
                        .range(part.contiguous + 1..)
                        .next()
                        .map(|(k, v)| (*k, v))
                        .context("gap")?;
                    anyhow::bail!(
                        "gap in {t}/{p}: change {pos} follows position {prev:?}, which this follower never received \
                         (it has up to {have}); waited {:?} for a resend. Changes were lost between the producer and \
                         Kafka or removed by retention; re-seed this replica",
                        self.config.gap_timeout,
                        prev = ch.source.prev_position,
                        have = part.contiguous
                    );
                }
            }
        }
        Ok(())
    }

    /// What reads need to judge staleness, updated as one consistent tuple.
    fn publish_freshness(&self) {
        if let Ok(mut f) = self.shared.freshness.lock() {
            *f = Freshness {
                position: self.position,
                leader_ts_ms: self.position_ts,
                leader_position: self.leader_head,
                clock: self.clock,
            };
        }
    }

    fn publish_status(&self) {
        self.publish_freshness();
        let seconds = seconds_behind(
            self.position,
            self.position_ts,
            self.leader_head,
            self.clock,
            self.config.heartbeat_grace,
        );
        let m = &self.shared.metrics;
        let mut partitions = std::collections::BTreeMap::new();
        let mut total = 0;
        for ((t, p), part) in &self.parts {
            let next = part.next_offset();
            let lag = (part.hwm - next).max(0);
            total += lag;
            m.offset_lag
                .get_or_create(&crate::lag::PartitionLabels {
                    topic: t.clone(),
                    partition: p.to_string(),
                })
                .set(lag);
            partitions.insert(
                format!("{t}/{p}"),
                PartitionStatus {
                    next_offset: next,
                    high_watermark: part.hwm,
                    offset_lag: lag,
                    applied_position: part.applied,
                    blocked: part.blocked.first().map(|b| b.reason.clone()),
                },
            );
        }
        m.position_lag
            .set((self.leader_head - self.position).max(0));
        m.seconds_lag.set(seconds);
        m.applied_position.set(self.position);
        m.leader_position.set(self.leader_head);
        if let Ok(mut s) = self.shared.status.lock() {
            *s = Status {
                follower: self.config.follower_id.clone(),
                applied_position: self.position,
                leader_position: self.leader_head,
                position_lag: (self.leader_head - self.position).max(0),
                seconds_lag: seconds,
                offset_lag: total,
                partitions,
                changes_applied: m.changes_applied.get(),
                duplicates: m.duplicates.get(),
                dead_letters: m.dead_letters.get(),
                paused: *self.shared.paused.borrow(),
                halted: None,
            };
        }
    }

    fn log_lag(&self) {
        if let Ok(s) = self.shared.status.lock() {
            tracing::info!(
                follower = %s.follower,
                position = s.applied_position,
                leader = s.leader_position,
                position_lag = s.position_lag,
                seconds_lag = s.seconds_lag,
                offset_lag = s.offset_lag,
                applied = s.changes_applied,
                dead_letters = s.dead_letters,
                "lag"
            );
        }
    }
}

impl Shared {
    /// Fresh shared state for a follower.
    pub fn new(config: &FollowerConfig) -> Arc<Shared> {
        Arc::new(Shared {
            status: Mutex::new(Status {
                follower: config.follower_id.clone(),
                ..Status::default()
            }),
            metrics: Metrics::new(),
            paused: watch::channel(false).0,
            applied: watch::channel(0).0,
            max_lag_seconds: config.max_lag_seconds,
            replica: config.replica.clone(),
            freshness: Mutex::new(Freshness::default()),
        })
    }
}
