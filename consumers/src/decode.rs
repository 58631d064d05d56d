//! Decode: Confluent-framed Avro → changes and commit records, with the
//! writer's schema fetched from the registry by id (cached by the client).
//! Tells poison (never decodable) from trouble that passes (registry down).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use barista_schemas::envelope::{decode_envelope, DecodedChange, RowShape};
use barista_schemas::Commit;
use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message can never be decoded (corrupt bytes, unknown schema id,
    /// not an envelope): it goes to the dead-letter topic.
    #[error("poison message: {0}")]
    Poison(String),
    /// The registry could not be reached; retry later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// The schema id of a Confluent-framed payload, if it has the frame.
pub fn schema_id(payload: &[u8]) -> Option<u32> {
    (payload.len() >= 5 && payload[0] == 0)
        .then(|| u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]))
}

/// Decodes barista messages.
pub struct Decoder {
    avro: AvroDecoder,
    shapes: Mutex<HashMap<u32, Arc<RowShape>>>,
}

impl Decoder {
    /// A decoder reading schemas from `registry_url`.
    pub fn new(registry_url: &str) -> anyhow::Result<Self> {
        let sr = SrSettings::new_builder(registry_url.to_owned())
            .set_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("schema registry settings: {e}"))?;
        Ok(Decoder {
            avro: AvroDecoder::new(sr),
            shapes: Mutex::new(HashMap::new()),
        })
    }

    fn classify(e: schema_registry_converter::error::SRCError) -> DecodeError {
        let text = e.to_string();
        if e.retriable || text.contains("error sending request") || text.contains("connect") {
            DecodeError::Unavailable(text)
        } else {
            DecodeError::Poison(text)
        }
    }

    /// Decodes a change-event value.
    pub async fn change(&self, payload: &[u8]) -> Result<DecodedChange, DecodeError> {
        let id = schema_id(payload).ok_or_else(|| {
            DecodeError::Poison("not Confluent-framed Avro (magic byte 0 + schema id)".into())
        })?;
        let r = self
            .avro
            .decode_with_schema(Some(payload))
            .await
            .map_err(|e| {
                self.avro.remove_errors_from_cache();
                Self::classify(e)
            })?;
        let Some(r) = r else {
            return Err(DecodeError::Poison("empty payload".into()));
        };
        let cached = self.shapes.lock().ok().and_then(|m| m.get(&id).cloned());
        let shape = match cached {
            Some(s) => s,
            None => {
                let s = Arc::new(
                    RowShape::from_value_schema(&r.schema.raw)
                        .map_err(|e| DecodeError::Poison(format!("schema {id}: {e}")))?,
                );
                if let Ok(mut m) = self.shapes.lock() {
                    m.insert(id, s.clone());
                }
                s
            }
        };
        decode_envelope(shape, &r.value)
            .map_err(|e| DecodeError::Poison(format!("schema {id}: {e}")))
    }

    /// Decodes a commit record.
    pub async fn commit(&self, payload: &[u8]) -> Result<Commit, DecodeError> {
        let r = self.avro.decode(Some(payload)).await.map_err(|e| {
            self.avro.remove_errors_from_cache();
            Self::classify(e)
        })?;
        Commit::from_avro(r.value).map_err(|e| DecodeError::Poison(e.to_string()))
    }
}
