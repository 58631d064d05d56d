//! Publish, the stage between encode and ack: turns the tail's chunks into Kafka records (a
//! change event per change on its key's partition, a tombstone where a key disappears, and a
//! commit record closing each group on the commits topic) and hands each sent record's
//! delivery report to the acker, with a chunk mark after each chunk of a large group so the
//! group is acknowledged chunk by chunk (see [`crate::ack`]). At most [`Window`] change events
//! are sent and not yet acknowledged: a producer killed in a backlog has sent at most that
//! much past what it recorded, which its next run sends again, so a crash loop does not fill
//! the topics with copies. After a failed delivery it rewinds: a fresh Kafka producer,
//! and capture restarted from the oldest unacknowledged position, so Kafka never holds a gap
//! (only, at worst, duplicates, which followers drop by position).
//!
//! Reads: [`CaptureMsg`]s. Writes: Kafka records; [`Pending`] reports to the acker;
//! [`Control::Rewind`] to the tail.

use std::collections::{BTreeMap, HashMap};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};

use anyhow::Context as _;
use barista_runtime::{lock, Backoff, Poisoned};
use barista_schemas::contract::{
    partition_for_key, GROUP_BEGIN, HEADER_GROUP, HEADER_POSITION, HEADER_TOMBSTONE,
};
use barista_schemas::{ChangeEvent, Commit, DroppedTable, Op, PartitionTail, Position, Source};
use rdkafka::producer::{DeliveryFuture, Producer as _};
use tokio::sync::mpsc;

use crate::ack::{Acks, Closes, OpenGroup, Sent, TopicPartition};
use crate::capture::ChangeRow;
use crate::encode::{Encoder, Payload};
use crate::kafka::{send, KafkaProducer, KafkaSettings};
use crate::ops::Ops;
use crate::tail::{now_ms, CaptureMsg, Control};
use crate::topics::{grow_partitions, NewTopics, TableOut};

mod acker;
mod window;
pub(crate) use window::Window;

/// What the [`Acks`] lock guards, for the poisoned-lock error.
pub(crate) const ACKS: &str = "acknowledged position";

/// A sent record whose delivery report is awaited, or a chunk mark (no record: acknowledged
/// once everything before it is).
pub(crate) struct Pending {
    sent: Sent,
    fut: Option<DeliveryFuture>,
}

/// Why an acker stopped before its channel closed.
#[derive(Debug)]
pub(crate) enum AckerStop {
    /// A record of generation `gen` was not delivered: rewind, if that is still the current one.
    Failed {
        /// The acker's generation.
        gen: u64,
        /// Which position, and Kafka's error.
        error: String,
    },
    /// The acknowledgement state is poisoned: the run must end.
    Poisoned(Poisoned),
}

/// The publish stage's state.
pub(crate) struct Publisher<'a> {
    /// `source.db` and `Commit::db`.
    pub db_name: String,
    /// The leader's epoch, stamped on every event and commit record.
    pub epoch: i64,
    /// For a fresh producer after a rewind.
    pub kafka: &'a KafkaSettings,
    /// Key, envelope and commit encoding.
    pub encoder: Encoder,
    /// By `_barista_tables.id`.
    pub outs: HashMap<i64, TableOut>,
    /// The commits topic.
    pub commits: String,
    /// Its value subject.
    pub commits_subject: String,
    /// Chunks of other generations were read before a rewind and are dropped.
    pub gen: u64,
    /// The current Kafka producer.
    pub producer: KafkaProducer,
    /// Last position sent per partition: the next event's `prev_position`.
    pub last_sent: HashMap<TopicPartition, Position>,
    /// Tails of the commit group being sent: last position and count per partition.
    pub tails: BTreeMap<TopicPartition, (Position, i64)>,
    /// Shared with the acker.
    pub acks: Arc<Mutex<Acks>>,
    /// To the tail.
    pub ctl_tx: std_mpsc::Sender<Control>,
    /// One pace for every retry: the registry, and rewinds after failed deliveries. Reset by
    /// each change that is sent.
    pub backoff: Backoff,
    /// Change events sent, for progress logs.
    pub published: u64,
    /// First position of the group whose begin record was sent.
    pub begun: Option<Position>,
    /// First position of a group taken up mid-way (after a restart or a rewind inside it):
    /// its topics keep their partition counts until it ends.
    pub resumed: Option<Position>,
    /// Tables dropped in the group being sent, for its commit record.
    pub drops: Vec<DroppedTable>,
    /// Partition counts as the broker last reported them.
    pub partition_counts: tokio::sync::watch::Receiver<HashMap<String, i32>>,
    /// Topic prefix, partitions and replication of the topics of tables
    /// captured while running.
    pub topics: NewTopics,
    /// Positions, acknowledgements and tables, for the operators.
    pub ops: Arc<Ops>,
    /// Change events sent ahead of their acknowledgement, at most.
    pub window: Window,
}

impl Publisher<'_> {
    /// After a failed delivery: a fresh producer (the old one's idempotence
    /// state may be fenced or its queue poisoned) and capture restarted from
    /// the oldest unacknowledged position.
    pub fn rewind(&mut self) -> anyhow::Result<()> {
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        self.producer = self.kafka.producer()?;
        let rewind = lock(&self.acks, ACKS)?.rewind();
        self.window = self.window.renewed();
        self.gen = rewind.gen;
        self.last_sent = rewind.last_sent;
        self.drops.clear();
        self.begun = None;
        self.resume(rewind.open.as_ref());
        self.ctl_tx
            .send(Control::Rewind {
                gen: rewind.gen,
                from: rewind.from,
                open: rewind.open,
            })
            .context("capture thread gone")?;
        tracing::info!(from = rewind.from.0 + 1, generation = self.gen, "resending");
        Ok(())
    }

    /// Takes up `open`, a group acknowledged in part, or starts at a group boundary (`None`):
    /// its commit record names every partition the group reached, before the restart too.
    pub fn resume(&mut self, open: Option<&OpenGroup>) {
        self.tails = open.map(OpenGroup::tail_map).unwrap_or_default();
        self.resumed = open.map(|g| g.first);
    }

    /// Publishes one message of the tail's.
    pub async fn publish(
        &mut self,
        msg: CaptureMsg,
        pending: &mpsc::UnboundedSender<Pending>,
    ) -> anyhow::Result<()> {
        match msg {
            CaptureMsg::Chunk { gen, .. } | CaptureMsg::Heartbeat { gen, .. }
                if gen != self.gen =>
            {
                Ok(())
            }
            CaptureMsg::Tables(tables) => self.add_tables(tables).await,
            CaptureMsg::Heartbeat {
                position, ts_ms, ..
            } => {
                let heartbeat = self.commit(Position(position.0 + 1), position, ts_ms, vec![]);
                // A heartbeat is not part of the acknowledged chain: losing one
                // only delays the next lag reading.
                drop(self.send_commit(&heartbeat, &[]).await?);
                Ok(())
            }
            CaptureMsg::Chunk {
                first,
                last,
                upto,
                ts_ms,
                rows,
                drops,
                done,
                checksums,
                snapshots,
                ..
            } => {
                if self.begun.is_none() && self.resumed != Some(first) {
                    // At a group boundary: partitions added to a topic meanwhile.
                    let counts = self.partition_counts.borrow_and_update();
                    for (topic, was, now) in grow_partitions(&mut self.outs, &counts) {
                        tracing::info!(%topic, was, now, "the topic has more partitions: using them from this group on");
                        self.ops.topic_grew(&topic, now);
                    }
                }
                self.drops.extend(
                    drops
                        .into_iter()
                        .map(|(position, table)| DroppedTable { table, position }),
                );
                if !done && self.begun != Some(first) {
                    // A group of several chunks: say where it ends before
                    // sending it, so followers need not hold it in memory,
                    // and which tables it drops, so they stream no change
                    // past a drop before the drop itself is applied.
                    self.begun = Some(first);
                    let mut begin = self.commit(first, last, ts_ms, vec![]);
                    begin.dropped = self.drops.clone();
                    drop(
                        self.send_commit(&begin, &[(HEADER_GROUP, GROUP_BEGIN)])
                            .await?,
                    );
                }
                if done {
                    self.begun = None;
                    self.resumed = None;
                }
                for row in rows {
                    if !self.publish_row(row, last, ts_ms, pending).await? {
                        // The acker stopped: a rewind resends this chunk.
                        return Ok(());
                    }
                }
                if !done {
                    // Acknowledged once every record before it is: the group so far.
                    let open = OpenGroup::with_tails(first, last, ts_ms, &self.tails);
                    let sent = Sent {
                        position: upto,
                        chain: None,
                        closes: Closes::Chunk(open),
                    };
                    let _ = pending.send(Pending { sent, fut: None });
                }
                if done {
                    let partitions = std::mem::take(&mut self.tails)
                        .into_iter()
                        .map(|((topic, partition), (last, count))| PartitionTail {
                            topic,
                            partition,
                            last_position: last,
                            count,
                        })
                        .collect();
                    let mut commit = self.commit(first, last, ts_ms, partitions);
                    commit.dropped = std::mem::take(&mut self.drops);
                    commit.checksums = checksums;
                    commit.snapshots = snapshots;
                    let pos = last.to_string();
                    let fut = self
                        .send_commit(&commit, &[(HEADER_POSITION, &pos)])
                        .await?;
                    let sent = Sent {
                        position: last,
                        chain: None,
                        closes: Closes::Group,
                    };
                    let _ = pending.send(Pending {
                        sent,
                        fut: Some(fut),
                    });
                    self.ops.metrics.published_position.set(last.0);
                }
                Ok(())
            }
        }
    }

    /// A record for the commits topic.
    pub(crate) fn commit(
        &self,
        first: Position,
        last: Position,
        ts_ms: i64,
        partitions: Vec<PartitionTail>,
    ) -> Commit {
        Commit {
            db: self.db_name.clone(),
            first_position: first,
            last_position: last,
            ts_ms,
            partitions,
            dropped: Vec::new(),
            checksums: Vec::new(),
            snapshots: Vec::new(),
            epoch: self.epoch,
        }
    }

    /// Encodes and sends a record on the commits topic (one partition: one order).
    pub(crate) async fn send_commit(
        &mut self,
        commit: &Commit,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<DeliveryFuture> {
        let bytes = self
            .encoder
            .encode(
                &Payload::Commit(commit),
                &self.commits_subject,
                barista_schemas::avro_schema::COMMIT_AVSC,
                &mut self.backoff,
            )
            .await?;
        Ok(send(
            &self.producer,
            &self.commits,
            0,
            None,
            Some(&bytes),
            headers,
        )
        .await?)
    }

    /// Sends one change: its event on its key's partition, and a tombstone where a key
    /// disappears. Waits for room in the [`Window`]; false when it closed (nothing sent).
    async fn publish_row(
        &mut self,
        row: ChangeRow,
        txn: Position,
        ts_ms: i64,
        pending: &mpsc::UnboundedSender<Pending>,
    ) -> anyhow::Result<bool> {
        let Some(out) = self.outs.get_mut(&row.table_id) else {
            return Ok(true);
        };
        if !Arc::ptr_eq(&out.schemas, &row.schemas) {
            // The change was captured with other columns than the one before it (a
            // migration's schema-change marker lies between them): encode with its schemas.
            // The encoder sees a new schema for the subject and registers it.
            tracing::info!(topic = %out.topic, columns = ?row.schemas.shape.column_names(), position = %row.position, "table schema changed; encoding with the new schema");
            out.schemas = row.schemas.clone();
        }
        // Borrowed from `self.outs` while other fields of `self` change: no copies per change.
        let out = &*out;
        let schemas = &*out.schemas;
        let key_row = row
            .after
            .as_deref()
            .or(row.before.as_deref())
            .context("change without a row image")?;
        let key = self
            .encoder
            .encode(
                &Payload::Key(schemas, key_row),
                &out.key_subject,
                &schemas.key_json,
                &mut self.backoff,
            )
            .await?;
        let partition = partition_for_key(&key, out.partitions);
        let tp = (out.topic.clone(), partition);
        let event = ChangeEvent {
            op: row.op,
            source: Source {
                connector: barista_schemas::contract::CONNECTOR.into(),
                db: self.db_name.clone(),
                table: schemas.shape.name.clone(),
                position: row.position,
                txn,
                prev_position: self.last_sent.get(&tp).copied(),
                snapshot: row.op == Op::Read,
                ts_ms,
                epoch: self.epoch,
            },
            before: row.before,
            after: row.after,
            ts_ms: now_ms(),
        };
        let value = self
            .encoder
            .encode(
                &Payload::Envelope(schemas, &event),
                &out.value_subject,
                &schemas.value_json,
                &mut self.backoff,
            )
            .await?;
        let pos = row.position.to_string();
        if !self.window.enter().await {
            return Ok(false);
        }
        let fut = send(
            &self.producer,
            &out.topic,
            partition,
            Some(&key),
            Some(&value),
            &[(HEADER_POSITION, &pos)],
        )
        .await?;
        let sent = Sent {
            position: row.position,
            chain: Some(tp.clone()),
            closes: Closes::Nothing,
        };
        let _ = pending.send(Pending {
            sent,
            fut: Some(fut),
        });
        self.last_sent.insert(tp.clone(), row.position);
        let tail = self.tails.entry(tp).or_insert((row.position, 0));
        *tail = (row.position, tail.1 + 1);
        self.published += 1;

        // A tombstone after a delete lets compaction drop the key; after an
        // update that changed the key, one for the old key.
        let old_key = match event.op {
            Op::Delete => Some(key.clone()),
            Op::Update => {
                let before = event.before.as_deref().unwrap_or_default();
                let pk = schemas.shape.pk_indexes();
                let after = event.after.as_deref().unwrap_or_default();
                if pk.iter().any(|&i| before.get(i) != after.get(i)) {
                    let old = Payload::Key(schemas, before);
                    let bytes = self
                        .encoder
                        .encode(&old, &out.key_subject, &schemas.key_json, &mut self.backoff)
                        .await?;
                    Some(bytes)
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(k) = old_key {
            let p = partition_for_key(&k, out.partitions);
            let fut = send(
                &self.producer,
                &out.topic,
                p,
                Some(&k),
                None,
                &[(HEADER_POSITION, &pos), (HEADER_TOMBSTONE, "1")],
            )
            .await?;
            let sent = Sent {
                position: row.position,
                chain: None,
                closes: Closes::Nothing,
            };
            let _ = pending.send(Pending {
                sent,
                fut: Some(fut),
            });
        }
        self.backoff.reset();
        Ok(true)
    }
}
