//! Dead letters: a message the follower can never apply (corrupt bytes, an
//! unknown schema id, not an envelope) is copied, key, payload and headers
//! intact, to `<prefix>.__dead_letters` with headers saying why and where it
//! came from, so an operator can inspect and replay it.

use std::time::Duration;

use barista_schemas::contract::{
    HEADER_DLQ_ERROR, HEADER_DLQ_FOLLOWER, HEADER_DLQ_OFFSET, HEADER_DLQ_PARTITION,
    HEADER_DLQ_SCHEMA_ID, HEADER_DLQ_TOPIC,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::FollowerConfig;
use crate::decode::schema_id;

/// Writes poison messages to the dead-letter topic.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    follower_id: String,
}

impl DeadLetters {
    /// A writer to `topic`.
    pub fn new(config: &FollowerConfig, topic: String) -> anyhow::Result<Self> {
        let producer = crate::kafka::client_config(config)
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(DeadLetters {
            producer,
            topic,
            follower_id: config.follower_id.clone(),
        })
    }

    /// The headers of the copy: the original's, then why and from where.
    fn headers(&self, m: &OwnedMessage, error: &str) -> OwnedHeaders {
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
            (HEADER_DLQ_FOLLOWER, &self.follower_id),
        ] {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        h
    }

    /// Copies `m` with `error` to the dead-letter topic. A failure to write
    /// it is logged: the message stays unapplied either way, and a
    /// position-bearing one keeps its offset as the restart point.
    pub async fn send(&self, m: &OwnedMessage, error: &str) {
        let mut rec: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(self.headers(m, error));
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        if let Some(p) = m.payload() {
            rec = rec.payload(p);
        }
        tracing::error!(topic = m.topic(), partition = m.partition(), offset = m.offset(), %error, "message sent to the dead-letter topic");
        if let Err((e, _)) = self.producer.send(rec, Duration::from_secs(30)).await {
            tracing::error!(error = %e, "could not write the dead-letter topic; the message stays unapplied");
        }
    }
}
