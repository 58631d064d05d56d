//! Encode, the stage between tail and publish: turns a change's key and envelope, or a commit
//! record, into Confluent-framed Avro (magic byte, schema id, Avro binary) with the schema
//! registered for its subject. Each subject's schema is registered once through the registry
//! door; every message, the first included, is then written directly from the change.
//!
//! Reads: changes and commit records; the registry, once per subject and schema version.
//! Writes: the bytes publish sends.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::writer::datum::GenericDatumWriter;
use barista_runtime::Backoff;
use barista_schemas::{ChangeEvent, Commit, SqlValue, TableSchemas};

use crate::ops::Ops;
use crate::registry::{Registry, RegistryError};

#[cfg(test)]
mod tests;

/// What a message carries, encoded with its subject's registered schema.
pub(crate) enum Payload<'a> {
    /// A table's key: the primary-key columns of a row image.
    Key(&'a TableSchemas, &'a [SqlValue]),
    /// A table's value: the change-event envelope.
    Envelope(&'a TableSchemas, &'a ChangeEvent),
    /// A record on the commits topic.
    Commit(&'a Commit),
}

/// A schema the registry accepted, ready to encode with.
pub(crate) struct Registered {
    raw: String,
    id: u32,
    writer: GenericDatumWriter<'static>,
}

impl Registered {
    /// Parses `raw` once; the parsed schema lives for the rest of the process
    /// (one per subject and schema version), which lets the writer keep its
    /// resolved names instead of rebuilding them for every message.
    pub fn new(raw: &str, id: u32) -> anyhow::Result<Registered> {
        let schema: &'static apache_avro::Schema =
            Box::leak(Box::new(apache_avro::Schema::parse_str(raw)?));
        Ok(Registered {
            raw: raw.to_owned(),
            id,
            writer: GenericDatumWriter::builder(schema).build()?,
        })
    }

    /// Confluent wire format: magic byte, schema id, Avro binary.
    pub fn encode(&self, payload: &Payload<'_>) -> anyhow::Result<Vec<u8>> {
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

/// Encodes messages, registering each subject's schema on first use.
pub(crate) struct Encoder {
    registry: Registry,
    /// Registered schemas by subject. A subject whose schema changed (a migration) is
    /// registered again and its entry replaced.
    writers: HashMap<String, Registered>,
    /// Registry errors are counted and the last one kept there.
    ops: Arc<Ops>,
}

impl Encoder {
    /// An encoder that registers schemas in `registry` and reports its errors to `ops`.
    pub fn new(registry: Registry, ops: Arc<Ops>) -> Encoder {
        Encoder {
            registry,
            writers: HashMap::new(),
            ops,
        }
    }

    /// Encodes `payload` with `schema`, registered under `subject`. Registering retries, with
    /// `backoff`, while the registry is unavailable; it fails when the registry refuses the
    /// schema (for example 409 incompatible), which no retry can change.
    pub async fn encode(
        &mut self,
        payload: &Payload<'_>,
        subject: &str,
        schema: &str,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Vec<u8>> {
        if let Some(r) = self.writers.get(subject).filter(|r| r.raw == schema) {
            return r.encode(payload);
        }
        let id = self.register(subject, schema, backoff).await?;
        let registered = Registered::new(schema, id)?;
        let bytes = registered.encode(payload);
        self.writers.insert(subject.to_owned(), registered);
        bytes
    }

    async fn register(
        &self,
        subject: &str,
        schema: &str,
        backoff: &mut Backoff,
    ) -> anyhow::Result<u32> {
        loop {
            let r = self.registry.register(subject, schema).await;
            if let Err(e) = &r {
                self.ops.registry_error(format!(
                    "registering {subject} at {}: {e}",
                    self.registry.url()
                ));
            }
            match r {
                Ok(id) => return Ok(id),
                Err(RegistryError::Unavailable(why)) => {
                    tracing::warn!(error = %why, %subject, retry_in = ?backoff.peek(), "schema registry unavailable; retrying");
                    backoff.wait().await;
                }
                Err(e @ RegistryError::Refused { .. }) => anyhow::bail!(
                    "the schema registry refused a schema ({subject}: {e}). If a table changed, \
                     run the change through `producer migrate`"
                ),
                Err(e @ RegistryError::Unexpected(_)) => anyhow::bail!(
                    "registering {subject} at the schema registry {}: {e}",
                    self.registry.url()
                ),
            }
        }
    }
}
