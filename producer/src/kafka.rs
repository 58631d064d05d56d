//! Kafka, the client side of publish: the idempotent producer, topic creation, and one send
//! with back-pressure.
//!
//! Reads: broker metadata. Writes: topics and records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::ops::Ops;

/// The context of the producer's Kafka clients: librdkafka's client errors (brokers down,
/// transport failures, authentication) are logged and reported to [`Ops`], so `/status` shows
/// the last one while deliveries are still being retried.
#[derive(Clone)]
pub struct KafkaContext {
    /// Where errors are reported.
    pub ops: Arc<Ops>,
}

impl ClientContext for KafkaContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // librdkafka's own log line (through `log`) already says it, once per client.
        tracing::debug!(%error, reason, "Kafka client error");
        self.ops.broker_error(format!("{error}: {reason}"));
    }
}

/// The producer's Kafka producer.
pub type KafkaProducer = FutureProducer<KafkaContext>;

/// Kafka settings shared by the producer's clients.
#[derive(Clone)]
pub struct KafkaSettings {
    /// bootstrap.servers
    pub brokers: String,
    /// Extra librdkafka properties (`key=value`), applied last.
    pub options: Vec<(String, String)>,
    /// `retention.ms` of the topics it creates; `None` = the broker's default.
    pub retention_ms: Option<i64>,
    /// Every client's context.
    pub context: KafkaContext,
}

impl KafkaSettings {
    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }

    fn apply_options(&self, c: &mut ClientConfig) {
        for (k, v) in &self.options {
            c.set(k, v);
        }
    }

    /// An idempotent producer: `acks=all`, ordered per partition, retried by
    /// librdkafka within `message.timeout.ms`.
    pub fn producer(&self) -> anyhow::Result<KafkaProducer> {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "60000")
            .set("queue.buffering.max.messages", "200000");
        self.apply_options(&mut c);
        c.create_with_context(self.context.clone())
            .context("creating the Kafka producer")
    }

    /// Every topic's partition count, refreshed every `every` off the publish loop (a
    /// blocking metadata request that may wait for a broker that is down) into a `watch` the
    /// publisher reads at group boundaries: partitions an operator adds to a topic are used
    /// from the next group on. The task ends when the receiver is dropped.
    pub fn watch_partition_counts(
        &self,
        every: Duration,
    ) -> anyhow::Result<tokio::sync::watch::Receiver<HashMap<String, i32>>> {
        let producer = self.producer()?;
        let (tx, rx) = tokio::sync::watch::channel(HashMap::new());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                let p = producer.clone();
                let counts = tokio::task::spawn_blocking(move || {
                    p.client()
                        .fetch_metadata(None, Duration::from_secs(10))
                        .map(|md| {
                            md.topics()
                                .iter()
                                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                                .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
                                .collect::<HashMap<_, _>>()
                        })
                })
                .await;
                match counts {
                    Ok(Ok(c)) => {
                        tx.send_replace(c);
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "partition counts not refreshed"),
                    Err(e) => tracing::debug!(error = %e, "partition counts not refreshed"),
                }
            }
        });
        Ok(rx)
    }

    /// Creates the topics that do not exist yet and returns every topic's
    /// partition count as the broker reports it.
    pub async fn ensure_topics(
        &self,
        topics: &[(String, i32)],
        replication: i32,
    ) -> anyhow::Result<HashMap<String, i32>> {
        let producer = self.producer()?;
        let counts = |p: KafkaProducer, wanted: Vec<String>| async move {
            tokio::task::spawn_blocking(move || -> anyhow::Result<HashMap<String, i32>> {
                let md = p
                    .client()
                    .fetch_metadata(None, Duration::from_secs(10))
                    .context("fetching Kafka metadata")?;
                Ok(md
                    .topics()
                    .iter()
                    .filter(|t| {
                        wanted.iter().any(|w| w == t.name())
                            && t.error().is_none()
                            && !t.partitions().is_empty()
                    })
                    .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
                    .collect())
            })
            .await?
        };
        let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
        let have = counts(producer.clone(), names.clone()).await?;
        let missing: Vec<&(String, i32)> = topics
            .iter()
            .filter(|(t, _)| !have.contains_key(t))
            .collect();
        if !missing.is_empty() {
            let mut c = self.base();
            self.apply_options(&mut c);
            let admin: AdminClient<KafkaContext> = c
                .create_with_context(self.context.clone())
                .context("creating the Kafka admin client")?;
            let retention = self.retention_ms.map(|ms| ms.to_string());
            let new = new_topics(&missing, replication, retention.as_deref());
            let opts = AdminOptions::new()
                .operation_timeout(Some(Duration::from_secs(10)))
                .request_timeout(Some(Duration::from_secs(15)));
            let results = admin
                .create_topics(&new, &opts)
                .await
                .context("creating topics")?;
            for r in results {
                match r {
                    Ok(t) => tracing::info!(topic = %t, "topic created"),
                    Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                        tracing::debug!(topic = %t, "topic exists")
                    }
                    Err((t, code)) => anyhow::bail!("creating topic {t}: {code}"),
                }
            }
        }
        let all = counts(producer, names).await?;
        for (t, _) in topics {
            anyhow::ensure!(
                all.contains_key(t),
                "topic {t} is not in the broker's metadata yet"
            );
        }
        Ok(all)
    }
}

/// The topics to create, with `retention.ms` when one is configured (else
/// the broker's default applies).
fn new_topics<'a>(
    missing: &'a [&'a (String, i32)],
    replication: i32,
    retention_ms: Option<&'a str>,
) -> Vec<NewTopic<'a>> {
    missing
        .iter()
        .map(|(t, p)| {
            let topic = NewTopic::new(t, *p, TopicReplication::Fixed(replication));
            match retention_ms {
                Some(ms) => topic.set("retention.ms", ms),
                None => topic,
            }
        })
        .collect()
}

/// Sends one message, waiting while librdkafka's queue is full.
pub async fn send(
    producer: &KafkaProducer,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    let mut h = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut rec: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).partition(partition).headers(h);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(p) = payload {
        rec = rec.payload(p);
    }
    loop {
        // A refused record comes back whole, headers included: no copy per attempt.
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                // Back-pressure: the broker is slow or down; wait for room.
                rec = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::new_topics;

    #[test]
    fn created_topics_carry_the_configured_retention_or_none() {
        let (a, c) = (("p.t".to_owned(), 3), ("p.__commits".to_owned(), 1));
        let missing = [&a, &c];
        let with = new_topics(&missing, 1, Some("3600000"));
        assert_eq!(with.len(), 2);
        for t in &with {
            assert_eq!(t.config, [("retention.ms", "3600000")], "{}", t.name);
        }
        assert!(new_topics(&missing, 1, None)
            .iter()
            .all(|t| t.config.is_empty()));
    }
}
