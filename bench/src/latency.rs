//! End-to-end latency at a fixed offered rate: leader commit → visible on a
//! follower, against one Kafka produce → consume hop on the same broker with
//! the same client settings.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rusqlite::params;

use crate::env::{self, Broker};
use crate::pipeline::{Follower, Leader};
use crate::publish::producer_settings;

/// Latencies in milliseconds, warm-up dropped.
pub struct Latencies {
    /// Samples (ms).
    pub ms: Vec<f64>,
}

/// Calls `tick(i)` every millisecond (absolute schedule) for `duration`.
fn paced(
    duration: Duration,
    mut tick: impl FnMut(u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < duration {
        tick(i)?;
        i += 1;
        let next = start + Duration::from_millis(i);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    Ok(())
}

fn drop_warmup(mut v: Vec<f64>) -> Vec<f64> {
    let skip = v.len() / 10;
    v.drain(..skip);
    v
}

/// barista: `rate` changes/s written as one transaction per millisecond;
/// each transaction's latency is from its commit until the follower applied
/// its position (its token).
pub async fn barista(
    broker: &Broker,
    registry: &str,
    dir: &std::path::Path,
    rate: u64,
    duration: Duration,
    partitions: i32,
    fetch_wait_ms: u64,
) -> anyhow::Result<Latencies> {
    let leader = Leader::start(broker, registry, dir, partitions, 0).await?;
    let follower = Follower::start_with(
        broker,
        registry,
        dir,
        &leader.prefix,
        vec![("fetch.wait.max.ms".into(), fetch_wait_ms.to_string())],
    );
    // Warm: one write all the way through before measuring.
    {
        let mut w = env::writer(&leader.path)?;
        env::write_rows(&mut w, 1, 2, 1)?;
        let head = env::head(&w)?;
        follower.wait_applied(head, Duration::from_secs(60)).await?;
    }
    let per_ms = (rate / 1000).max(1);
    let (tx, rx) = mpsc::channel::<(i64, Instant)>();
    let done = Arc::new(AtomicBool::new(false));
    let applied = follower.shared.clone();
    let d = done.clone();
    let observer = std::thread::spawn(move || {
        let mut pending: VecDeque<(i64, Instant)> = VecDeque::new();
        let mut out = Vec::new();
        let mut finished_at: Option<Instant> = None;
        loop {
            while let Ok(x) = rx.try_recv() {
                pending.push_back(x);
            }
            let a = applied.metrics.applied_position.get();
            let now = Instant::now();
            while pending.front().is_some_and(|(p, _)| *p <= a) {
                let (_, t) = pending.pop_front().unwrap();
                out.push((now - t).as_secs_f64() * 1e3);
            }
            if d.load(Ordering::Relaxed) {
                let f = *finished_at.get_or_insert(now);
                if pending.is_empty() || now - f > Duration::from_secs(30) {
                    return (out, pending.len());
                }
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    });
    let path = leader.path.clone();
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut w = env::writer(&path)?;
        let mut id = 1_000_000i64;
        paced(duration, |_| {
            let t = w.transaction()?;
            {
                let mut stmt = t.prepare_cached(
                    "INSERT INTO items(id, name, note, qty, price) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for _ in 0..per_ms {
                    id += 1;
                    stmt.execute(params![
                        id,
                        format!("item-{id:012}-latte"),
                        "a double shot, oat milk, no sugar; pick up at the side counter",
                        id % 17,
                        id as f64 * 0.25
                    ])?;
                }
            }
            let token: i64 =
                t.query_row("SELECT max(position) FROM _barista_changelog", [], |r| {
                    r.get(0)
                })?;
            t.commit()?;
            let _ = tx.send((token, Instant::now()));
            Ok(())
        })
    });
    let w = writer.await?;
    done.store(true, Ordering::Relaxed);
    let (ms, missing) = tokio::task::spawn_blocking(move || observer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("observer panicked"))?;
    w?;
    follower.check()?;
    leader.check()?;
    if missing > 0 {
        anyhow::bail!("{missing} transactions never became visible on the follower");
    }
    follower.stop().await?;
    leader.stop().await?;
    Ok(Latencies {
        ms: drop_warmup(ms),
    })
}

/// One hop: raw librdkafka producer → raw consumer on the same broker, the
/// same number of messages per millisecond, each about `size` bytes, with
/// barista's producer settings and the follower's fetch settings.
pub async fn raw(
    broker: &Broker,
    rate: u64,
    duration: Duration,
    size: usize,
    partitions: i32,
    fetch_wait_ms: u64,
) -> anyhow::Result<Latencies> {
    let topic = format!("hop{}", rand::random::<u32>());
    broker.create_topic(&topic, partitions).await?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_settings(&broker.bootstrap()).create()?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", format!("hop-{}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("enable.partition.eof", "false")
        .create()
        .context("raw consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let per_ms = (rate / 1000).max(1);
    let total = (duration.as_millis() as u64 + 1) * per_ms;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total as usize]));
    let done = Arc::new(AtomicBool::new(false));
    let (s2, d2) = (sent.clone(), done.clone());
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut idle_since: Option<Instant> = None;
        loop {
            match consumer.poll(Duration::from_millis(5)) {
                Some(Ok(m)) => {
                    let now = Instant::now();
                    idle_since = None;
                    if let Some(p) = m.payload() {
                        let seq = u64::from_be_bytes(p[..8].try_into().unwrap()) as usize;
                        if let Some(Some(t)) = s2.lock().unwrap().get(seq) {
                            out.push((now - *t).as_secs_f64() * 1e3);
                        }
                    }
                }
                _ => {
                    if d2.load(Ordering::Relaxed) {
                        let s = *idle_since.get_or_insert_with(Instant::now);
                        if s.elapsed() > Duration::from_secs(2) {
                            return out;
                        }
                    }
                }
            }
        }
    });
    let mut payload = vec![0u8; size.max(8)];
    let mut seq = 0u64;
    tokio::task::block_in_place(|| {
        paced(duration, |_| {
            for _ in 0..per_ms {
                if seq >= total {
                    break;
                }
                payload[..8].copy_from_slice(&seq.to_be_bytes());
                let key = seq.to_be_bytes();
                sent.lock().unwrap()[seq as usize] = Some(Instant::now());
                producer
                    .send(BaseRecord::to(&topic).key(&key[..]).payload(&payload[..]))
                    .map_err(|(e, _)| anyhow::anyhow!("raw produce: {e}"))?;
                seq += 1;
            }
            Ok(())
        })
    })?;
    done.store(true, Ordering::Relaxed);
    let ms = tokio::task::spawn_blocking(move || reader.join())
        .await?
        .map_err(|_| anyhow::anyhow!("reader panicked"))?;
    if (ms.len() as u64) < seq {
        anyhow::bail!("raw hop: {} of {seq} messages arrived", ms.len());
    }
    Ok(Latencies {
        ms: drop_warmup(ms),
    })
}
