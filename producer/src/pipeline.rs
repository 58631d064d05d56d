//! The producer's dataflow: a capture thread reads committed changes by
//! position and hands them over in chunks; the publisher encodes and sends
//! them; an acker awaits delivery reports in send order and tells capture how
//! far it may prune. After any failed delivery the publisher stops, builds a
//! fresh Kafka producer and rewinds to the oldest unacknowledged position,
//! so Kafka never holds a gap (only, at worst, duplicates, which followers
//! drop by position).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use apache_avro::types::Value as Avro;
use barista_schemas::contract::{
    commits_topic, partition_for_key, table_topic, HEADER_GROUP, HEADER_POSITION, HEADER_TOMBSTONE,
};
use barista_schemas::{ChangeEvent, Commit, Op, PartitionTail, Source, TableSchemas};
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use schema_registry_converter::async_impl::avro::AvroEncoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use tokio::sync::mpsc;

use crate::capture::{open_leader, Capture, ChangeRow};
use crate::config::ProducerConfig;
use crate::kafka::{send, KafkaSettings};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the capture thread hands to the publisher.
enum CaptureMsg {
    /// Part of a commit group `(first ..= last)`; `done` on its last chunk.
    Chunk {
        gen: u64,
        first: i64,
        last: i64,
        ts_ms: i64,
        rows: Vec<ChangeRow>,
        done: bool,
    },
    /// The leader is idle at `position`.
    Heartbeat { gen: u64, position: i64, ts_ms: i64 },
}

/// What the publisher and acker tell the capture thread.
enum Control {
    /// Start again after `from`, tagging chunks with `gen`.
    Rewind { gen: u64, from: i64 },
    /// Everything up to `acked` is in Kafka.
    Prune {
        acked: i64,
        partitions: HashMap<(String, i32), i64>,
    },
}

/// How far Kafka has acknowledged, shared by the acker and the publisher.
#[derive(Default, Clone)]
struct Acked {
    position: i64,
    partitions: HashMap<(String, i32), i64>,
}

/// A sent message whose delivery report is awaited.
struct Pending {
    position: i64,
    chain: Option<(String, i32)>,
    /// The commit record that closes a group: only its acknowledgement moves
    /// the acknowledged position (and so pruning and the restart point).
    group_end: bool,
    fut: DeliveryFuture,
}

/// A captured table's topic and subject strategies.
struct TableOut {
    topic: String,
    partitions: i32,
    schemas: Arc<TableSchemas>,
    key_strategy: Arc<SubjectNameStrategy>,
    value_strategy: Arc<SubjectNameStrategy>,
}

/// Shared, because a strategy holds the whole schema text and is needed for
/// every message.
fn strategy(topic: &str, is_key: bool, schema: &str) -> Arc<SubjectNameStrategy> {
    Arc::new(SubjectNameStrategy::TopicNameStrategyWithSchema(
        topic.to_owned(),
        is_key,
        SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned()),
    ))
}

/// Runs the producer until `shutdown` resolves (then drains and returns Ok)
/// or a fatal error occurs.
pub async fn run(config: ProducerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let path = config.leader.clone();
    let tables = config.tables.clone();
    let repair = config.repair_triggers;
    if repair {
        crate::migrate::check_repair(&config.leader, &config.registry_url, &config.topic_prefix)
            .await?;
    }
    let capture = tokio::task::spawn_blocking(move || -> anyhow::Result<Capture> {
        let conn = open_leader(&path)
            .with_context(|| format!("opening leader database {}", path.display()))?;
        Ok(Capture::install(conn, &tables, repair)?)
    })
    .await??;
    anyhow::ensure!(
        !capture.tables().is_empty(),
        "no table to capture in {}",
        config.leader.display()
    );

    let kafka = KafkaSettings {
        brokers: config.brokers.clone(),
        options: config.kafka_options.clone(),
    };
    let commits = commits_topic(&config.topic_prefix);
    let mut wanted: Vec<(String, i32)> = capture
        .tables()
        .values()
        .map(|t| {
            (
                table_topic(&config.topic_prefix, &t.schemas.shape.name),
                config.partitions,
            )
        })
        .collect();
    wanted.push((commits.clone(), 1));
    tokio::pin!(shutdown);
    let counts = {
        let mut backoff = Backoff::new();
        loop {
            match kafka
                .ensure_topics(&wanted, config.replication_factor)
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff.peek(), "Kafka not ready, retrying");
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = backoff.wait() => {}
                    }
                }
            }
        }
    };
    let outs: HashMap<i64, TableOut> = capture
        .tables()
        .iter()
        .map(|(id, t)| {
            let topic = table_topic(&config.topic_prefix, &t.schemas.shape.name);
            let out = TableOut {
                partitions: counts.get(&topic).copied().unwrap_or(1),
                key_strategy: strategy(&topic, true, &t.schemas.key_json),
                value_strategy: strategy(&topic, false, &t.schemas.value_json),
                schemas: t.schemas.clone(),
                topic,
            };
            (*id, out)
        })
        .collect();
    let commit_strategy = strategy(&commits, false, barista_schemas::avro_schema::COMMIT_AVSC);
    let sr = SrSettings::new_builder(config.registry_url.clone())
        .set_timeout(Duration::from_secs(5))
        .build()
        .context("schema registry settings")?;
    let encoder = AvroEncoder::new(sr.clone());

    let acked = Acked {
        position: capture.acked()?,
        partitions: capture.acked_partitions()?,
    };
    tracing::info!(
        acked = acked.position,
        backlog = capture.backlog()?,
        "producer starting"
    );
    let acked = Arc::new(Mutex::new(acked));

    let (chunk_tx, mut chunk_rx) = mpsc::channel::<CaptureMsg>(4);
    let (ctl_tx, ctl_rx) = std_mpsc::channel::<Control>();
    let stop = Arc::new(AtomicBool::new(false));
    let start = acked.lock().map(|a| a.position).unwrap_or(0);
    let capture_thread = {
        let stop = stop.clone();
        let (poll, hb, chunk) = (
            config.poll_interval,
            config.heartbeat_interval,
            config.chunk_size,
        );
        std::thread::Builder::new()
            .name("barista-capture".into())
            .spawn(move || capture_loop(capture, chunk_tx, ctl_rx, stop, start, poll, hb, chunk))
            .context("spawning the capture thread")?
    };

    let mut publisher = Publisher {
        config: &config,
        kafka: &kafka,
        sr,
        encoder,
        outs,
        commits,
        commit_strategy,
        gen: 0,
        producer: kafka.producer()?,
        last_sent: acked
            .lock()
            .map(|a| a.partitions.clone())
            .unwrap_or_default(),
        tails: BTreeMap::new(),
        acked: acked.clone(),
        ctl_tx: ctl_tx.clone(),
        backoff: Backoff::new(),
        writers: HashMap::new(),
        begun: None,
        published: 0,
    };
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel::<(u64, String)>();
    let (mut pending_tx, mut acker) = publisher.spawn_acker(fail_tx.clone());
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            Some((gen, error)) = fail_rx.recv() => {
                if gen == publisher.gen {
                    tracing::warn!(%error, "delivery failed; rewinding to the oldest unacknowledged position");
                    acker.abort();
                    publisher.rewind()?;
                    (pending_tx, acker) = publisher.spawn_acker(fail_tx.clone());
                    tokio::select! { _ = &mut shutdown => break Ok(()), _ = publisher.backoff.wait() => {} }
                }
            }
            _ = progress.tick() => {
                let a = publisher.acked.lock().map(|a| a.position).unwrap_or(0);
                tracing::info!(published = publisher.published, acked = a, "producer progress");
            }
            msg = chunk_rx.recv() => match msg {
                None => break Err(anyhow::anyhow!("the capture thread stopped")),
                Some(msg) => {
                    let r = tokio::select! {
                        _ = &mut shutdown => break Ok(()),
                        r = publisher.publish(msg, &pending_tx) => r,
                    };
                    if let Err(e) = r { break Err(e); }
                }
            }
        }
    };

    // Drain: wait (bounded) for outstanding delivery reports so the final
    // prune records as much as Kafka acknowledged, then stop capture.
    drop(pending_tx);
    if tokio::time::timeout(Duration::from_secs(10), &mut acker)
        .await
        .is_err()
    {
        tracing::warn!(
            "delivery reports still outstanding after 10s; they will be re-sent on the next start"
        );
        acker.abort();
    }
    if let Ok(a) = acked.lock() {
        let _ = ctl_tx.send(Control::Prune {
            acked: a.position,
            partitions: a.partitions.clone(),
        });
    }
    stop.store(true, Ordering::SeqCst);
    drop(chunk_rx);
    let capture_result = tokio::task::spawn_blocking(move || capture_thread.join())
        .await
        .map_err(|e| anyhow::anyhow!("joining the capture thread: {e}"))?
        .map_err(|_| anyhow::anyhow!("the capture thread panicked"))?;
    let final_acked = acked.lock().map(|a| a.position).unwrap_or(0);
    tracing::info!(
        acked = final_acked,
        published = publisher.published,
        "producer stopped"
    );
    // The capture thread's own error (e.g. DDL behind our back) says more than the
    // publisher's "the capture thread stopped".
    capture_result.and(result)
}

/// The capture thread: owns the leader connection (rusqlite is synchronous,
/// one owner per connection), polls `PRAGMA data_version`, and reads each new
/// commit group `(last read, head]` in chunks.
#[allow(clippy::too_many_arguments)]
fn capture_loop(
    mut capture: Capture,
    tx: mpsc::Sender<CaptureMsg>,
    ctl: std_mpsc::Receiver<Control>,
    stop: Arc<AtomicBool>,
    start: i64,
    poll: Duration,
    heartbeat: Duration,
    chunk: usize,
) -> anyhow::Result<()> {
    let mut gen = 0u64;
    let mut next_from = start;
    let mut last_dv = i64::MIN;
    let mut last_sent = Instant::now();
    loop {
        while let Ok(c) = ctl.try_recv() {
            match c {
                Control::Rewind { gen: g, from } => {
                    gen = g;
                    next_from = from;
                    last_dv = i64::MIN;
                }
                Control::Prune { acked, partitions } => match capture.prune(acked, &partitions) {
                    Ok(n) => tracing::debug!(acked, pruned = n, "changelog pruned"),
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning the changelog failed; will retry")
                    }
                },
            }
        }
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        // The leader time is taken BEFORE looking for new commits: everything
        // committed before `now` is then at or below the head read next, so
        // "(position, ts_ms)" in a commit record or heartbeat means "every
        // write committed on the leader before ts_ms is at or below position".
        // Bounded-staleness reads on followers rely on that direction.
        let now = now_ms();
        let dv = capture.data_version().context("polling the leader")?;
        if dv != last_dv {
            // Another connection committed: if that was DDL made behind our back, stop
            // before reading past it (see CaptureError::Drift for how to resume).
            capture.check_schema()?;
        }
        let head = if dv != last_dv {
            capture.head().context("reading the leader head")?
        } else {
            next_from
        };
        last_dv = dv;
        if head > next_from {
            let ts_ms = now;
            let first = next_from + 1;
            let mut from = next_from;
            loop {
                let (rows, scanned) = capture
                    .read(from, head, chunk)
                    .context("reading the changelog")?;
                let done = scanned.is_none_or(|s| s >= head);
                from = scanned.unwrap_or(head);
                if tx
                    .blocking_send(CaptureMsg::Chunk {
                        gen,
                        first,
                        last: head,
                        ts_ms,
                        rows,
                        done,
                    })
                    .is_err()
                {
                    return Ok(());
                }
                if done {
                    break;
                }
            }
            next_from = head;
            last_sent = Instant::now();
        } else if last_sent.elapsed() >= heartbeat {
            if tx
                .blocking_send(CaptureMsg::Heartbeat {
                    gen,
                    position: next_from,
                    ts_ms: now,
                })
                .is_err()
            {
                return Ok(());
            }
            last_sent = Instant::now();
        }
        std::thread::sleep(poll);
    }
}

struct Publisher<'a> {
    config: &'a ProducerConfig,
    kafka: &'a KafkaSettings,
    sr: SrSettings,
    encoder: AvroEncoder,
    outs: HashMap<i64, TableOut>,
    commits: String,
    commit_strategy: Arc<SubjectNameStrategy>,
    gen: u64,
    producer: FutureProducer,
    /// Last position sent per partition: the next event's `prev_position`.
    last_sent: HashMap<(String, i32), i64>,
    /// Tails of the commit group being sent.
    tails: BTreeMap<(String, i32), (i64, i64)>,
    acked: Arc<Mutex<Acked>>,
    ctl_tx: std_mpsc::Sender<Control>,
    backoff: Backoff,
    published: u64,
    /// Registered schemas by (topic, is_key): id and a writer with its names
    /// resolved once, so that encoding a message does not re-resolve them.
    writers: HashMap<(String, bool), Registered>,
    /// First position of the group whose begin record was sent.
    begun: Option<i64>,
}

/// A schema the registry accepted, ready to encode with.
struct Registered {
    raw: String,
    id: u32,
    writer: apache_avro::writer::datum::GenericDatumWriter<'static>,
}

impl Registered {
    /// Parses `raw` once; the parsed schema lives for the rest of the process
    /// (one per subject and schema version), which lets the writer keep its
    /// resolved names instead of rebuilding them for every message.
    fn new(raw: &str, id: u32) -> anyhow::Result<Registered> {
        let schema: &'static apache_avro::Schema =
            Box::leak(Box::new(apache_avro::Schema::parse_str(raw)?));
        Ok(Registered {
            raw: raw.to_owned(),
            id,
            writer: apache_avro::writer::datum::GenericDatumWriter::builder(schema).build()?,
        })
    }

    /// Confluent wire format: magic byte, schema id, Avro binary.
    fn encode(&self, payload: &Payload<'_>) -> anyhow::Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(256);
        buf.push(0);
        buf.extend_from_slice(&self.id.to_be_bytes());
        match payload {
            // Rows and envelopes are written straight from the change
            // (`barista_schemas::binary`): no apache-avro `Value` per message.
            Payload::Key(s, row) => s.write_key(row, &mut buf)?,
            Payload::Envelope(s, ev) => s.write_envelope(ev, &mut buf)?,
            Payload::Commit(c) => {
                self.writer.write_value_ref(&mut buf, &c.to_avro()?)?;
            }
        }
        Ok(buf)
    }
}

/// What a message carries, encoded with its subject's registered schema.
enum Payload<'a> {
    Key(&'a TableSchemas, &'a [barista_schemas::SqlValue]),
    Envelope(&'a TableSchemas, &'a ChangeEvent),
    Commit(&'a Commit),
}

impl Payload<'_> {
    /// As an apache-avro value, for the first message of a schema, which
    /// the converter registers and encodes.
    fn value(&self) -> Result<Avro, barista_schemas::ContractError> {
        match self {
            Payload::Key(s, row) => s.key_value(row),
            Payload::Envelope(s, ev) => s.envelope_value(ev),
            Payload::Commit(c) => c.to_avro(),
        }
    }
}

impl Publisher<'_> {
    fn spawn_acker(
        &self,
        fail_tx: mpsc::UnboundedSender<(u64, String)>,
    ) -> (mpsc::UnboundedSender<Pending>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
        let gen = self.gen;
        let acked = self.acked.clone();
        let ctl = self.ctl_tx.clone();
        let handle = tokio::spawn(async move {
            let mut last_prune = Instant::now();
            // Tails of the group whose commit record is not acknowledged yet.
            let mut group: HashMap<(String, i32), i64> = HashMap::new();
            // Reports are awaited in send order, so the acknowledged position
            // only moves past a group once its commit record and everything
            // sent before it are acknowledged. Moving it per change would let
            // a crash between a group's last change and its commit record
            // skip that record on restart, and followers wait for it forever.
            while let Some(p) = rx.recv().await {
                match p.fut.await {
                    Ok(Ok(_)) => {
                        if let Some(tp) = p.chain {
                            group.insert(tp, p.position);
                        }
                        if !p.group_end {
                            continue;
                        }
                        let Ok(mut a) = acked.lock() else { return };
                        a.position = a.position.max(p.position);
                        a.partitions.extend(group.drain());
                        if last_prune.elapsed() > Duration::from_millis(250) || rx.is_empty() {
                            let _ = ctl.send(Control::Prune {
                                acked: a.position,
                                partitions: a.partitions.clone(),
                            });
                            last_prune = Instant::now();
                        }
                    }
                    Ok(Err((e, _))) => {
                        let _ = fail_tx.send((gen, format!("position {}: {e}", p.position)));
                        return;
                    }
                    Err(_) => {
                        let _ = fail_tx.send((
                            gen,
                            format!("position {}: delivery report lost", p.position),
                        ));
                        return;
                    }
                }
            }
        });
        (tx, handle)
    }

    /// After a failed delivery: a fresh producer (the old one's idempotence
    /// state may be fenced or its queue poisoned) and capture restarted from
    /// the oldest unacknowledged position.
    fn rewind(&mut self) -> anyhow::Result<()> {
        self.producer
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        self.producer = self.kafka.producer()?;
        self.gen += 1;
        let a = self.acked.lock().map(|a| a.clone()).unwrap_or_default();
        self.last_sent = a.partitions;
        self.tails.clear();
        self.begun = None;
        self.ctl_tx
            .send(Control::Rewind {
                gen: self.gen,
                from: a.position,
            })
            .context("capture thread gone")?;
        tracing::info!(from = a.position + 1, generation = self.gen, "resending");
        Ok(())
    }

    /// Encodes with the registry, retrying while it is unavailable. Fatal only
    /// when the registry refuses the schema (for example 409 incompatible).
    async fn encode(
        &mut self,
        payload: Payload<'_>,
        strategy: &SubjectNameStrategy,
    ) -> anyhow::Result<Vec<u8>> {
        let SubjectNameStrategy::TopicNameStrategyWithSchema(topic, is_key, supplied) = strategy
        else {
            anyhow::bail!("unexpected subject name strategy {strategy:?}");
        };
        let slot = (topic.clone(), *is_key);
        if let Some(r) = self.writers.get(&slot).filter(|r| r.raw == supplied.schema) {
            return r.encode(&payload);
        }
        let value = payload.value()?;
        // First use of this schema: the converter registers it (or finds
        // it) and encodes this message; its id is in bytes 1..5.
        loop {
            match self.encoder.encode_value(value.clone(), strategy).await {
                Ok(b) => {
                    let id = u32::from_be_bytes(b[1..5].try_into()?);
                    self.writers
                        .insert(slot, Registered::new(&supplied.schema, id)?);
                    return Ok(b);
                }
                Err(e)
                    if e.retriable
                        || e.error.contains("error sending request")
                        || e.error.contains("connect") =>
                {
                    tracing::warn!(error = %e, retry_in = ?self.backoff.peek(), "schema registry unavailable; retrying");
                    self.encoder.remove_errors_from_cache();
                    self.backoff.wait().await;
                }
                Err(e) => {
                    anyhow::bail!("the schema registry refused a schema ({e}). If a table changed, run the change through `producer migrate`")
                }
            }
        }
    }

    async fn publish(
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
            CaptureMsg::Heartbeat {
                position, ts_ms, ..
            } => {
                let commit = Commit {
                    db: self.config.db_name.clone(),
                    first_position: position + 1,
                    last_position: position,
                    ts_ms,
                    partitions: vec![],
                };
                let strategy = self.commit_strategy.clone();
                let bytes = self.encode(Payload::Commit(&commit), &strategy).await?;
                // A heartbeat is not part of the acknowledged chain: losing one
                // only delays the next lag reading.
                drop(send(&self.producer, &self.commits, 0, None, Some(&bytes), &[]).await?);
                Ok(())
            }
            CaptureMsg::Chunk {
                first,
                last,
                ts_ms,
                rows,
                done,
                ..
            } => {
                if !done && self.begun != Some(first) {
                    // A group of several chunks: say where it ends before
                    // sending it, so followers need not hold it in memory.
                    self.begun = Some(first);
                    let begin = Commit {
                        db: self.config.db_name.clone(),
                        first_position: first,
                        last_position: last,
                        ts_ms,
                        partitions: vec![],
                    };
                    let strategy = self.commit_strategy.clone();
                    let bytes = self.encode(Payload::Commit(&begin), &strategy).await?;
                    drop(
                        send(
                            &self.producer,
                            &self.commits,
                            0,
                            None,
                            Some(&bytes),
                            &[(HEADER_GROUP, "begin")],
                        )
                        .await?,
                    );
                }
                if done {
                    self.begun = None;
                }
                for row in rows {
                    self.publish_row(row, last, ts_ms, pending).await?;
                }
                if done {
                    let partitions = std::mem::take(&mut self.tails)
                        .into_iter()
                        .map(
                            |((topic, partition), (last_position, count))| PartitionTail {
                                topic,
                                partition,
                                last_position,
                                count,
                            },
                        )
                        .collect();
                    let commit = Commit {
                        db: self.config.db_name.clone(),
                        first_position: first,
                        last_position: last,
                        ts_ms,
                        partitions,
                    };
                    let strategy = self.commit_strategy.clone();
                    let bytes = self.encode(Payload::Commit(&commit), &strategy).await?;
                    let pos = last.to_string();
                    let fut = send(
                        &self.producer,
                        &self.commits,
                        0,
                        None,
                        Some(&bytes),
                        &[(HEADER_POSITION, &pos)],
                    )
                    .await?;
                    let _ = pending.send(Pending {
                        position: last,
                        chain: None,
                        group_end: true,
                        fut,
                    });
                }
                Ok(())
            }
        }
    }

    async fn publish_row(
        &mut self,
        row: ChangeRow,
        txn: i64,
        ts_ms: i64,
        pending: &mpsc::UnboundedSender<Pending>,
    ) -> anyhow::Result<()> {
        let Some(out) = self.outs.get_mut(&row.table_id) else {
            return Ok(());
        };
        if !Arc::ptr_eq(&out.schemas, &row.schemas) {
            // The change was captured with other columns than the one before it (a
            // migration's schema-change marker lies between them): encode with its schemas.
            // The encoder caches one schema per subject, so it starts afresh.
            tracing::info!(topic = %out.topic, columns = ?row.schemas.shape.column_names(), position = row.position, "table schema changed; encoding with the new schema");
            out.key_strategy = strategy(&out.topic, true, &row.schemas.key_json);
            out.value_strategy = strategy(&out.topic, false, &row.schemas.value_json);
            out.schemas = row.schemas.clone();
            self.encoder = AvroEncoder::new(self.sr.clone());
        }
        let (topic, partitions, schemas) = (out.topic.clone(), out.partitions, out.schemas.clone());
        let (key_strategy, value_strategy) = (out.key_strategy.clone(), out.value_strategy.clone());
        let key_row = row
            .after
            .as_deref()
            .or(row.before.as_deref())
            .context("change without a row image")?;
        let key = self
            .encode(Payload::Key(&schemas, key_row), &key_strategy)
            .await?;
        let partition = partition_for_key(&key, partitions);
        let tp = (topic.clone(), partition);
        let event = ChangeEvent {
            op: row.op,
            source: Source {
                connector: barista_schemas::contract::CONNECTOR.into(),
                db: self.config.db_name.clone(),
                table: schemas.shape.name.clone(),
                position: row.position,
                txn,
                prev_position: self.last_sent.get(&tp).copied(),
                snapshot: row.op == Op::Read,
                ts_ms,
            },
            before: row.before,
            after: row.after,
            ts_ms: now_ms(),
        };
        let value = self
            .encode(Payload::Envelope(&schemas, &event), &value_strategy)
            .await?;
        let pos = row.position.to_string();
        let fut = send(
            &self.producer,
            &topic,
            partition,
            Some(&key),
            Some(&value),
            &[(HEADER_POSITION, &pos)],
        )
        .await?;
        let _ = pending.send(Pending {
            position: row.position,
            chain: Some(tp.clone()),
            group_end: false,
            fut,
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
                    Some(
                        self.encode(Payload::Key(&schemas, before), &key_strategy)
                            .await?,
                    )
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(k) = old_key {
            let p = partition_for_key(&k, partitions);
            let fut = send(
                &self.producer,
                &topic,
                p,
                Some(&k),
                None,
                &[(HEADER_POSITION, &pos), (HEADER_TOMBSTONE, "1")],
            )
            .await?;
            let _ = pending.send(Pending {
                position: row.position,
                chain: None,
                group_end: false,
                fut,
            });
        }
        self.backoff.reset();
        Ok(())
    }
}

/// Exponential backoff, 100 ms doubling to 10 s.
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// Starts at 100 ms.
    pub fn new() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
    /// The next wait.
    pub fn peek(&self) -> Duration {
        self.next
    }
    /// Waits, then doubles the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Duration::from_secs(10));
    }
    /// Back to 100 ms after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}
