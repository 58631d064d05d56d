//! Publish throughput: barista's producer draining a changelog of N
//! committed changes into Kafka (read, encode through the registry, produce,
//! await acknowledgements, prune), against raw librdkafka producing N
//! messages of the same size with the same settings to the same broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use barista_producer::ProducerConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::env::{self, Broker};

/// One measurement.
pub struct Run {
    /// Changes (or messages) per second.
    pub rate: f64,
    /// CPU time of the whole process per change, in microseconds.
    pub cpu_us: f64,
}

/// barista: N changes committed before the producer starts; timed from its
/// start until Kafka acknowledged the last one. `checksums`: whether the producer keeps the
/// table checksums (`ProducerConfig::checksums`), to measure what they cost.
pub async fn barista(
    broker: &Broker,
    registry: &str,
    dir: &std::path::Path,
    n: i64,
    partitions: i32,
    checksums: bool,
) -> anyhow::Result<(Run, f64)> {
    let leader = dir.join(format!("publish-{}.db", rand::random::<u32>()));
    env::leader(&leader)?;
    let mut w = env::writer(&leader)?;
    env::write_rows(&mut w, 1, n + 1, 1000)?;
    let head = env::head(&w)?;
    let prefix = format!("pub{}", rand::random::<u32>());
    broker.create_barista_topics(&prefix, partitions).await?;
    let mut config = ProducerConfig::new(&leader, &broker.bootstrap(), registry);
    config.topic_prefix = prefix.clone();
    config.partitions = partitions;
    config.checksums = checksums;
    let token = CancellationToken::new();
    let cpu0 = env::cpu_time();
    let t0 = Instant::now();
    let t = token.clone();
    let task =
        tokio::spawn(async move { barista_producer::run(config, t.cancelled_owned()).await });
    loop {
        if task.is_finished() {
            task.await??;
            bail!("the producer stopped early");
        }
        if env::acked(&w)? >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = t0.elapsed();
    let cpu = env::cpu_time() - cpu0;
    token.cancel();
    task.await??;
    drop(w);
    let size = mean_value_size(&broker.bootstrap(), &format!("{prefix}.items"), 2000)?;
    let _ = std::fs::remove_file(&leader);
    Ok((
        Run {
            rate: n as f64 / elapsed.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
        },
        size,
    ))
}

/// Mean payload size of the first `sample` messages of `topic`.
fn mean_value_size(brokers: &str, topic: &str, sample: usize) -> anyhow::Result<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("size-{}", rand::random::<u32>()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    c.assign(&tpl)?;
    let (mut total, mut count) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count < sample && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            if let Some(p) = m.payload() {
                total += p.len();
                count += 1;
            }
        }
    }
    if count == 0 {
        bail!("read nothing back from {topic}");
    }
    Ok(total as f64 / count as f64)
}

/// Counts delivery reports.
#[derive(Default)]
struct Counting {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Ctx(Arc<Counting>);
impl ClientContext for Ctx {}
impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.0.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The same producer settings barista uses (`producer/src/publish.rs`).
pub fn producer_settings(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "200000");
    c
}

/// Raw librdkafka: `n` messages of `size` bytes with 8-byte keys, keyed
/// across `partitions`, timed until every delivery report arrived.
pub async fn raw(broker: &Broker, n: i64, size: usize, partitions: i32) -> anyhow::Result<Run> {
    let topic = format!("raw{}", rand::random::<u32>());
    broker.create_topic(&topic, partitions).await?;
    let counts = Arc::new(Counting::default());
    let producer: ThreadedProducer<Ctx> = producer_settings(&broker.bootstrap())
        .create_with_context(Ctx(counts.clone()))
        .context("creating the raw producer")?;
    let mut payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let cpu0 = env::cpu_time();
    let t0 = Instant::now();
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        for i in 0..n {
            let key = i.to_be_bytes();
            payload[..8.min(size)].copy_from_slice(&key[..8.min(size)]);
            let mut rec = BaseRecord::to(&topic).key(&key[..]).payload(&payload[..]);
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((e, r))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        rec = r;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err((e, _)) => bail!("raw produce: {e}"),
                }
            }
        }
        while counts.ok.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed) < n as u64 {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })?;
    let elapsed = t0.elapsed();
    let cpu = env::cpu_time() - cpu0;
    let failed = counts.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} raw deliveries failed");
    }
    Ok(Run {
        rate: n as f64 / elapsed.as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
    })
}

/// What the table checksums add to one change, measured alone: nanoseconds to hash one
/// benchmark row (an insert hashes its after image once, an update both images), the way
/// the producer does, from the table's value schema. Noise-free next to the end-to-end
/// figures, which a shared machine blurs by more than the cost itself.
pub fn row_hash_ns(hashes: usize) -> anyhow::Result<f64> {
    use barista_schemas::checksum::RowHasher;
    use barista_schemas::envelope::RowShape;
    use barista_schemas::{SqlValue, TableSchemas, TableShape};
    let conn = rusqlite::Connection::open_in_memory()?;
    conn.execute_batch(env::TABLE_SQL)?;
    let schemas = TableSchemas::derive(TableShape::read(&conn, "items")?)?;
    let hasher = RowHasher::new(&RowShape::from_value_schema(&schemas.value_json)?);
    let rows: Vec<Vec<SqlValue>> = (0..1000i64)
        .map(|i| {
            vec![
                SqlValue::Integer(i),
                SqlValue::Text(format!("item-{i:012}-espresso")),
                SqlValue::Text(
                    "a double shot, oat milk, no sugar; pick up at the side counter".into(),
                ),
                SqlValue::Integer(i % 17),
                SqlValue::Real(i as f64 * 0.25),
            ]
        })
        .collect();
    let t0 = Instant::now();
    let mut sum = 0u64;
    for i in 0..hashes {
        sum = sum.wrapping_add(hasher.hash(std::hint::black_box(&rows[i % rows.len()])));
    }
    std::hint::black_box(sum);
    Ok(t0.elapsed().as_secs_f64() * 1e9 / hashes as f64)
}
