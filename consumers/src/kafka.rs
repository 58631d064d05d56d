//! The follower's Kafka side: the consumer and its settings, which topics it
//! reads, where each partition resumes (the offsets stored in the replica,
//! never the consumer group's), the high watermarks for offset lag, and the
//! offsets committed back to Kafka for standard tools.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use barista_schemas::contract::{is_internal_topic, table_topic, HEADER_POSITION};
use barista_schemas::Position;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::chain::{PartitionChain, TopicPartition};
use crate::config::FollowerConfig;
use crate::groups::{Chains, Scope};
use crate::replica::Progress;

/// Librdkafka settings every follower client shares: brokers and `-X` options.
pub fn client_config(config: &FollowerConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.kafka_options {
        c.set(k, v);
    }
    c
}

/// The consumer: its own group, offsets stored only in the replica, and
/// never a silent jump when a stored offset is gone.
pub fn consumer(config: &FollowerConfig) -> anyhow::Result<Arc<StreamConsumer>> {
    let mut cc = client_config(config);
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
    Ok(Arc::new(
        cc.create().context("creating the Kafka consumer")?,
    ))
}

/// Topics and their partition counts.
pub type Topics = Vec<(String, i32)>;

/// Waits until the producer has created `commits`, then returns every
/// topic the broker knows. `None` when `shutdown` resolves first.
pub async fn wait_for_topics(
    consumer: &Arc<StreamConsumer>,
    commits: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<Topics>> {
    loop {
        let c = consumer.clone();
        let md = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(None, Duration::from_secs(5)).map(|m| {
                m.topics()
                    .iter()
                    .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
                    .collect::<Topics>()
            })
        })
        .await?;
        match md {
            Ok(all) if all.iter().any(|(t, _)| t == commits) => return Ok(Some(all)),
            Ok(_) => {
                tracing::info!(topic = %commits, "waiting for the producer to create its topics")
            }
            Err(e) => tracing::warn!(error = %e, "Kafka metadata unavailable; retrying"),
        }
        tokio::select! {
            _ = &mut *shutdown => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Which table topics this follower follows (`--tables`, or all).
pub fn scope(config: &FollowerConfig) -> Scope {
    if config.tables.is_empty() {
        Scope::all()
    } else {
        Scope::only(
            config
                .tables
                .iter()
                .map(|t| table_topic(&config.topic_prefix, t)),
        )
    }
}

/// The table topics of the prefix that `scope` follows.
pub fn data_topics(all: &Topics, prefix: &str, scope: &Scope) -> Topics {
    let prefix = format!("{prefix}.");
    all.iter()
        .filter(|(t, _)| t.starts_with(&prefix) && !is_internal_topic(t) && scope.follows(t))
        .cloned()
        .collect()
}

/// Creates the dead-letter topic unless it exists (best effort: a broker
/// that auto-creates topics, or an operator, may have made it already).
pub async fn ensure_dead_letter_topic(config: &FollowerConfig, all: &Topics, topic: &str) {
    if all.iter().any(|(t, _)| t == topic) {
        return;
    }
    let admin: AdminClient<DefaultClientContext> = match client_config(config).create() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%topic, error = %e, "could not create the dead-letter topic");
            return;
        }
    };
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(5)))
        .request_timeout(Some(Duration::from_secs(5)));
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    if let Err(e) = admin.create_topics(&[new], &opts).await {
        tracing::warn!(%topic, error = %e, "could not create the dead-letter topic");
    }
}

fn resume_at(next: i64) -> Offset {
    if next > 0 {
        Offset::Offset(next)
    } else {
        Offset::Beginning
    }
}

/// Assigns every data partition and the commits topic at the offsets the
/// replica stored; returns the chains, resumed, and the commits offset.
pub fn assign(
    consumer: &StreamConsumer,
    data: &Topics,
    commits: &str,
    progress: &Progress,
) -> anyhow::Result<(Chains, i64)> {
    let mut tpl = TopicPartitionList::new();
    let mut chains = Chains::new();
    for (t, n) in data {
        for p in 0..*n {
            let tp = (t.clone(), p);
            // No stored offset: read from the earliest offset Kafka still
            // has. Everything up to the replica's position is in it already
            // (a replica seeded from the leader's file has a position and no
            // offsets), so the chain starts there: older changes are
            // duplicates, and a change whose predecessor is above the
            // position but gone from Kafka is a gap, which halts.
            let (next, applied) = progress
                .offsets
                .get(&tp)
                .copied()
                .unwrap_or((0, progress.position));
            tpl.add_partition_offset(t, p, resume_at(next))?;
            chains.insert(tp, PartitionChain::new(next, applied));
        }
    }
    let commits_next = progress
        .offsets
        .get(&(commits.to_owned(), 0))
        .map_or(0, |v| v.0);
    tpl.add_partition_offset(commits, 0, resume_at(commits_next))?;
    consumer.assign(&tpl).context("assigning partitions")?;
    Ok((chains, commits_next))
}

/// Adds partitions that appeared after the start (a new table's topic, more
/// partitions of a topic) to the assignment, each from the start of its
/// history: none of their changes can have been applied yet, since no commit
/// group naming them was.
pub fn assign_more(consumer: &StreamConsumer, partitions: &[TopicPartition]) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition_offset(t, *p, Offset::Beginning)?;
    }
    // With a manual assignment (no subscription) librdkafka accepts an
    // incremental one too; the partitions already held keep their position
    // and what was prefetched for them.
    consumer
        .incremental_assign(&tpl)
        .context("adding partitions to the assignment")
}

/// True when `m`, straight off librdkafka's queue, is a change its partition
/// or the replica (at `floor`) already applied: a resend. It is counted as
/// consumed here and needs no copy, decoding or chain work. A producer that
/// crashed mid-group leaves a copy of the group in the topic per restart, so
/// a follower catching up reads mostly these; copying each one out of
/// librdkafka cost it about as much as applying a change.
pub fn consumed_duplicate(chains: &mut Chains, floor: Position, m: &BorrowedMessage<'_>) -> bool {
    if m.payload().is_none() {
        return false;
    }
    let Some(position) = m.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == HEADER_POSITION)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .map(Position)
    }) else {
        return false;
    };
    // The commits topic is not a chain: its records are always handled.
    let Some(chain) = chains.get_mut(&(m.topic().to_owned(), m.partition())) else {
        return false;
    };
    if !chain.is_applied(position, floor) {
        return false;
    }
    chain.consumed(m.offset());
    true
}

/// Pauses or resumes fetching the data partitions (operator switch).
pub fn set_paused(consumer: &StreamConsumer, partitions: &[TopicPartition], paused: bool) {
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition(t, *p);
    }
    let r = if paused {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "pause/resume failed");
    }
}

/// Commits the offsets a replica transaction stored, so standard tools show
/// the follower's lag; the replica's copy is the one the follower trusts.
pub fn commit_offsets(consumer: &StreamConsumer, offsets: &[(TopicPartition, (i64, Position))]) {
    let mut tpl = TopicPartitionList::new();
    for ((t, p), (next, _)) in offsets {
        let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*next));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(error = %e, "committing offsets to Kafka failed (the replica has them)");
    }
}

/// High watermarks of the partitions `partitions` lists (it grows as the
/// follower holds more), refreshed every 500 ms off the loop (a blocking
/// network call) into a `watch` the loop reads. The task ends when the
/// receiver is dropped.
pub fn watch_high_watermarks(
    config: &FollowerConfig,
    partitions: watch::Receiver<Vec<TopicPartition>>,
) -> anyhow::Result<watch::Receiver<HashMap<TopicPartition, i64>>> {
    // A client of its own: on the fetching connection a ListOffsets request
    // waits behind the fetch in flight, and times out when the broker is
    // slow to answer fetches.
    let mut wc = client_config(config);
    wc.set("group.id", format!("{}-watermarks", config.follower_id));
    let client: Arc<BaseConsumer> = Arc::new(
        wc.create()
            .context("creating the Kafka client for high watermarks")?,
    );
    let (tx, rx) = watch::channel(HashMap::new());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = tick.tick() => {}
            }
            let (c, keys) = (client.clone(), partitions.borrow().clone());
            let got = tokio::task::spawn_blocking(move || {
                keys.into_iter()
                    .filter_map(|(t, p)| {
                        c.fetch_watermarks(&t, p, Duration::from_secs(2))
                            .ok()
                            .map(|(_, h)| ((t, p), h))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            tx.send_modify(|m| m.extend(got));
        }
    });
    Ok(rx)
}
