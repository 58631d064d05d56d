//! The run: wires the stages together and owns their lifetimes. Capture is installed, topics
//! are created, then the tail (a thread) hands commit groups to the publisher, which encodes
//! and sends them; an acker task awaits delivery reports in send order and tells the tail how
//! far it may prune. After a failed delivery the publisher rewinds to the oldest
//! unacknowledged position. On shutdown, outstanding reports are drained (bounded), the final
//! prune is sent, and the tail stops.
//!
//! Beside them: the HTTP endpoints and the backlog sampler ([`crate::ops`]), which every
//! stage reports to.
//!
//! Reads: the configuration and the shutdown signal. Writes: nothing itself; the stages do.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use barista_runtime::{lock, Backoff};
use barista_schemas::contract::{commits_topic, table_topic, value_subject};
use barista_schemas::Position;
use tokio::sync::mpsc;

use crate::ack::{Acked, Acks};
use crate::capture::{open_leader, Capture};
use crate::config::ProducerConfig;
use crate::encode::Encoder;
use crate::fence::{self, CommitReader};
use crate::kafka::{KafkaContext, KafkaSettings};
use crate::ops::{self, Ops};
use crate::publish::{AckerStop, Publisher, Window, ACKS};
use crate::registry::Registry;
use crate::tail::{CaptureMsg, Control, Tail};
use crate::topics::{claim_topic, NewTopics, TableOut};

/// How long a registry request may take before it counts as unavailable.
const REGISTRY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the topics' partition counts are looked up (partitions an operator adds).
const PARTITION_COUNTS_EVERY: Duration = Duration::from_secs(10);
/// Change events sent ahead of their acknowledgement, in chunks: enough to keep Kafka busy
/// while the next chunk is read, little enough that a kill resends little.
const WINDOW_CHUNKS: usize = 2;
/// How long shutdown waits for outstanding delivery reports.
const DRAIN: Duration = Duration::from_secs(10);

/// Runs the producer until `shutdown` resolves (then drains and returns Ok)
/// or a fatal error occurs; serves HTTP on `config.http_listen` when set.
pub async fn run(config: ProducerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener = match config.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the HTTP address {addr} (--http-listen)"))?,
        ),
        None => None,
    };
    run_on(listener, config, shutdown).await
}

/// Like [`run`], serving HTTP on a listener the caller already bound (tests bind port 0 and
/// read the address back: no port race), or on none.
pub async fn run_on(
    listener: Option<tokio::net::TcpListener>,
    config: ProducerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let ops = Arc::new(Ops::new(&config));
    // A oneshot rather than the shutdown future: HTTP stays up through the drain.
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = match listener {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "producer HTTP listening");
            let stopped = async move {
                let _ = http_stopped.await;
            };
            Some(tokio::spawn(ops::http::serve(
                listener,
                ops.clone(),
                stopped,
            )))
        }
        None => None,
    };
    let result = publish(config, ops, shutdown).await;
    let _ = stop_http.send(());
    if let Some(server) = server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server failed"),
            Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
        }
    }
    result
}

/// The pipeline itself, reporting to `ops`.
async fn publish(
    config: ProducerConfig,
    ops: Arc<Ops>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if let Some(why) = config.missing_leader() {
        anyhow::bail!(why);
    }
    if config.repair_triggers {
        crate::migrate::check_repair(&config.leader, &config.registry_url, &config.topic_prefix)
            .await?;
    }
    if config.promote {
        crate::promote::promote(&config).await?;
    }
    let capture = install(&config).await?;
    ops.skipped_by_capture(capture.skipped().clone());
    let acked = Acked {
        position: capture.acked()?,
        partitions: capture.acked_partitions()?,
        open: capture.open_group()?,
    };
    ops.metrics.acked_position.set(acked.position.0);
    // Everything acknowledged was published, by this run or an earlier one.
    ops.metrics.published_position.set(acked.position.0);
    // Aborted when the run ends: it only reads, and holds nothing to drain.
    let sampler = ops::backlog::spawn(config.leader.clone(), ops.clone(), config.backlog_interval);
    let result = publish_installed(&config, capture, acked, &ops, shutdown).await;
    sampler.abort();
    result
}

/// From an installed capture on: topics, then the stages until shutdown or a fatal error.
async fn publish_installed(
    config: &ProducerConfig,
    capture: Capture,
    acked: Acked,
    ops: &Arc<Ops>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if capture.tables().is_empty() {
        tracing::info!(leader = %config.leader.display(), "no table with a primary key to capture yet: waiting for one to be created");
    }
    let kafka = KafkaSettings {
        brokers: config.brokers.clone(),
        options: config.kafka_options.clone(),
        retention_ms: config.retention_ms,
        context: KafkaContext { ops: ops.clone() },
    };
    let commits = commits_topic(&config.topic_prefix);
    let topic = |c: &crate::capture::CapturedTable| {
        table_topic(&config.topic_prefix, &c.schemas.shape.name)
    };
    let mut wanted: Vec<(String, i32)> = capture
        .tables()
        .values()
        .map(|t| (topic(t), config.partitions))
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
                    let e = format!("{e:#}");
                    tracing::warn!(error = %e, retry_in = ?backoff.peek(), "Kafka not ready, retrying");
                    ops.broker_error(e);
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = backoff.wait() => {}
                    }
                }
            }
        }
    };
    // Fencing: nothing is published while the commits topic holds a newer epoch than ours,
    // and the watch stops the run as soon as one appears.
    let epoch = crate::takeover::epoch(capture.conn())?;
    let pending_takeover = crate::takeover::pending_takeover(capture.conn())?;
    let (fence_end, mut fenced_rx, watcher) = {
        let mut backoff = Backoff::new();
        let mut reader = CommitReader::new(Registry::new(&config.registry_url, REGISTRY_TIMEOUT)?);
        let (view, end) = loop {
            match fence::read(
                &config.brokers,
                &config.kafka_options,
                &commits,
                &mut reader,
                Some(fence::TAIL_RECORDS),
            )
            .await
            {
                Ok(v) => break v,
                Err(e) => {
                    let e = format!("{e:#}");
                    tracing::warn!(error = %e, retry_in = ?backoff.peek(), "reading the commits topic's epochs failed, retrying");
                    ops.broker_error(e);
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = backoff.wait() => {}
                    }
                }
            }
        };
        if view.epoch > epoch {
            // Name the takeover even when it lies further back than the tail just read.
            let view = match view.takeover_after(epoch) {
                Some(_) => view,
                None => fence::read(
                    &config.brokers,
                    &config.kafka_options,
                    &commits,
                    &mut reader,
                    None,
                )
                .await
                .map_or(view, |(all, _)| all),
            };
            if let Some(f) = view.fenced(epoch) {
                return Err(f.into());
            }
        }
        let (rx, watcher) = fence::watch(
            &config.brokers,
            &config.kafka_options,
            &commits,
            reader,
            epoch,
            end,
        )?;
        (end, rx, watcher)
    };
    tracing::info!(
        epoch,
        commits_end = fence_end,
        "epoch checked: no newer leader in the commits topic"
    );
    ops.metrics.epoch.set(epoch);
    let drain_to = config
        .drain
        .then(|| crate::takeover::head(capture.conn()))
        .transpose()?;
    let mut outs: HashMap<i64, TableOut> = HashMap::new();
    let mut ids: Vec<&i64> = capture.tables().keys().collect();
    ids.sort(); // the table captured first keeps a contested topic
    for id in ids {
        let t = &capture.tables()[id];
        let topic = topic(t);
        let partitions = counts.get(&topic).copied().unwrap_or(1);
        claim_topic(&mut outs, t, topic, partitions, ops);
    }
    ops.started();
    tracing::info!(acked = %acked.position, group = ?acked.open.as_ref().map(|g| (g.first, g.last)), backlog = capture.backlog()?, "producer starting");

    let (chunk_tx, mut chunk_rx) = mpsc::channel::<CaptureMsg>(4);
    let (ctl_tx, ctl_rx) = std_mpsc::channel::<Control>();
    let stop = Arc::new(AtomicBool::new(false));
    let tail = Tail {
        capture,
        tx: chunk_tx,
        ctl: ctl_rx,
        stop: stop.clone(),
        next_from: acked.position,
        open: acked.open.clone(),
        poll: config.poll_interval,
        heartbeat: config.heartbeat_interval,
        chunk: config.chunk_size,
        gen: 0,
        ops: ops.clone(),
        checksums: config.checksums,
        sums: None,
        snapshots: crate::snapshot::Driver::new(config.snapshot),
        boundaries: Default::default(),
    };
    let acked_open = tail.open.clone();
    let capture_thread = tail.spawn()?;

    let mut publisher = Publisher {
        db_name: config.db_name.clone(),
        epoch,
        kafka: &kafka,
        encoder: Encoder::new(
            Registry::new(&config.registry_url, REGISTRY_TIMEOUT)?,
            ops.clone(),
        ),
        outs,
        commits_subject: value_subject(&commits),
        commits,
        gen: 0,
        producer: kafka.producer()?,
        last_sent: acked.partitions.clone(),
        tails: Default::default(),
        acks: Arc::new(Mutex::new(Acks::new(acked))),
        ctl_tx: ctl_tx.clone(),
        backoff: Backoff::new(),
        published: 0,
        begun: None,
        resumed: None,
        drops: Vec::new(),
        partition_counts: kafka.watch_partition_counts(PARTITION_COUNTS_EVERY)?,
        topics: NewTopics {
            prefix: config.topic_prefix.clone(),
            partitions: config.partitions,
            replication_factor: config.replication_factor,
        },
        ops: ops.clone(),
        window: Window::new(WINDOW_CHUNKS * config.chunk_size),
    };
    publisher.resume(acked_open.as_ref());
    if let Some(at) = pending_takeover {
        // The epoch-change record goes out before anything of the new epoch: followers learn
        // the takeover position from it before they see a change numbered past it.
        let record = publisher.commit(at, Position(at.0 - 1), now_ms(), Vec::new());
        let delivery = publisher.send_commit(&record, &[]).await?;
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => anyhow::bail!("publishing the epoch-change record: {e}"),
            Err(_) => anyhow::bail!("publishing the epoch-change record: the producer went away"),
        }
        let leader = config.leader.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            Ok(crate::takeover::takeover_published(&open_leader(&leader)?)?)
        })
        .await??;
        tracing::info!(epoch, takeover = %at, "epoch-change record published");
    }
    let acks = publisher.acks.clone();
    let (stop_tx, mut stop_rx) = mpsc::unbounded_channel::<AckerStop>();
    let (mut pending_tx, mut acker) = publisher.spawn_acker(stop_tx.clone());
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut drain_tick = tokio::time::interval(Duration::from_millis(50));
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            Some(why) = stop_rx.recv() => match why {
                AckerStop::Poisoned(e) => break Err(e.into()),
                AckerStop::Failed { gen, error } if gen == publisher.gen => {
                    tracing::warn!(%error, "delivery failed; rewinding to the oldest unacknowledged position");
                    ops.broker_error(format!("delivery failed at {error}"));
                    ops.metrics.resends.inc();
                    acker.abort();
                    if let Err(e) = publisher.rewind() { break Err(e); }
                    (pending_tx, acker) = publisher.spawn_acker(stop_tx.clone());
                    tokio::select! { _ = &mut shutdown => break Ok(()), _ = publisher.backoff.wait() => {} }
                }
                // An older generation's failure: already rewound past it.
                AckerStop::Failed { .. } => {}
            },
            Some(f) = fenced_rx.recv() => break Err(f.into()),
            _ = drain_tick.tick(), if drain_to.is_some() => match lock(&acks, ACKS) {
                Ok(a) => {
                    let a = a.acked();
                    if drain_to.is_some_and(|h| a.position >= h) && a.open.is_none() {
                        tracing::info!(acked = %a.position, "drained: every change committed before --drain started is acknowledged by Kafka");
                        break Ok(());
                    }
                }
                Err(e) => break Err(e.into()),
            },
            _ = progress.tick() => match lock(&acks, ACKS) {
                Ok(a) => tracing::info!(published = publisher.published, acked = %a.acked().position, "producer progress"),
                Err(e) => break Err(e.into()),
            },
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

    watcher.abort();
    // Drain: wait (bounded) for outstanding delivery reports so the final
    // prune records as much as Kafka acknowledged, then stop capture.
    drop(pending_tx);
    if tokio::time::timeout(DRAIN, &mut acker).await.is_err() {
        tracing::warn!(
            "delivery reports still outstanding after 10s; they will be re-sent on the next start"
        );
        acker.abort();
    }
    // A poisoned lock during the drain still ends the run with its error; the changelog
    // keeps what was not pruned.
    let final_acked = lock(&acks, ACKS).map(|a| a.acked().clone());
    if let Ok(a) = &final_acked {
        let _ = ctl_tx.send(Control::Prune(a.clone()));
    }
    stop.store(true, Ordering::SeqCst);
    drop(chunk_rx);
    let capture_result = tokio::task::spawn_blocking(move || capture_thread.join())
        .await
        .map_err(|e| anyhow::anyhow!("joining the capture thread: {e}"))?
        .map_err(|_| anyhow::anyhow!("the capture thread panicked"))?;
    if let Ok(a) = &final_acked {
        tracing::info!(acked = %a.position, published = publisher.published, "producer stopped");
    }
    // The capture thread's own error (e.g. DDL behind our back) says more than the
    // publisher's "the capture thread stopped".
    capture_result
        .and(result)
        .and(final_acked.map(drop).map_err(anyhow::Error::from))
}

/// Opens the leader and installs capture on a blocking thread (rusqlite is synchronous).
async fn install(config: &ProducerConfig) -> anyhow::Result<Capture> {
    let (path, tables, repair) = (
        config.leader.clone(),
        config.tables.clone(),
        config.repair_triggers,
    );
    let capture = tokio::task::spawn_blocking(move || -> anyhow::Result<Capture> {
        let conn = open_leader(&path)
            .with_context(|| format!("opening leader database {}", path.display()))?;
        Ok(Capture::install(conn, &tables, repair)?)
    })
    .await??;
    Ok(capture)
}

/// Milliseconds since the Unix epoch on this (the leader's) clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
