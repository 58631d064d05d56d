//! A typed consumer: Rust structs compiled against one version of the customers contract
//! (`schemas/contracts/coffee.customers-value`) that keep decoding while the leader moves on.
//!
//! Each message names its writer schema (Confluent framing: magic 0, schema id); Avro schema
//! resolution turns what the writer wrote into what this reader expects: fields the reader does
//! not know are skipped, fields the writer did not have get the reader's default. So a
//! [`CustomerV1`] consumer reads v2 events (it never sees `stamps`), and a [`CustomerV2`]
//! consumer reads v1 events with `stamps = 0`. The subject's FULL_TRANSITIVE level is what
//! makes both hold for every pair of versions.

use std::collections::HashMap;
use std::marker::PhantomData;

use anyhow::Context as _;
use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{get_schema_by_id, SrSettings};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// v1 of the customers value schema, as checked in.
pub const CUSTOMERS_VALUE_V1: &str =
    include_str!("../../schemas/contracts/coffee.customers-value/v1.avsc");
/// v2 of the customers value schema (adds `stamps`, default 0), as checked in.
pub const CUSTOMERS_VALUE_V2: &str =
    include_str!("../../schemas/contracts/coffee.customers-value/v2.avsc");

/// A customer row as v1 of the contract describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CustomerV1 {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Their usual.
    pub favourite: String,
    /// Orders so far.
    pub visits: i64,
}

/// A customer row as v2 describes it: v1 plus loyalty stamps.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CustomerV2 {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Their usual.
    pub favourite: String,
    /// Orders so far.
    pub visits: i64,
    /// Loyalty stamps; 0 for events written before the column existed.
    pub stamps: i64,
}

/// Where a change came from (the part of `source` a typed consumer usually needs).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Origin {
    /// Leader table.
    pub table: String,
    /// Leader position.
    pub position: i64,
}

/// A change event read into the reader's row type `T`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TypedChange<T> {
    /// The row before the change (updates and deletes).
    pub before: Option<T>,
    /// The row after the change (creates, updates, snapshot reads).
    pub after: Option<T>,
    /// `c`, `u`, `d` or `r`.
    pub op: String,
    /// Where it came from.
    pub source: Origin,
}

/// Decodes Confluent-framed change events of one subject into [`TypedChange<T>`] through a
/// fixed reader schema, fetching (and caching) each writer schema from the registry by id.
pub struct TypedDecoder<T> {
    reader: Schema,
    registry: SrSettings,
    writers: HashMap<u32, Schema>,
    row: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> TypedDecoder<T> {
    /// A decoder whose reader schema is `reader_json` (e.g. [`CUSTOMERS_VALUE_V1`]).
    pub fn new(registry_url: &str, reader_json: &str) -> anyhow::Result<Self> {
        Ok(TypedDecoder {
            reader: Schema::parse_str(reader_json).context("parsing the reader schema")?,
            registry: SrSettings::new(registry_url.to_owned()),
            writers: HashMap::new(),
            row: PhantomData,
        })
    }

    /// Decodes one message value.
    pub async fn decode(&mut self, payload: &[u8]) -> anyhow::Result<TypedChange<T>> {
        anyhow::ensure!(
            payload.len() >= 5 && payload[0] == 0,
            "not in the Confluent wire format (magic byte 0 and a schema id)"
        );
        let id = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]);
        if !self.writers.contains_key(&id) {
            let registered = get_schema_by_id(id, &self.registry)
                .await
                .with_context(|| format!("fetching writer schema {id}"))?;
            let writer = Schema::parse_str(&registered.schema)
                .with_context(|| format!("parsing writer schema {id}"))?;
            self.writers.insert(id, writer);
        }
        let writer = &self.writers[&id];
        resolve(writer, &self.reader, &payload[5..])
            .with_context(|| format!("reading a change written with schema {id}"))
    }
}

/// Reads one Avro datum written with `writer` as `reader` describes it, into `T`.
pub fn resolve<T: DeserializeOwned>(
    writer: &Schema,
    reader: &Schema,
    mut datum: &[u8],
) -> anyhow::Result<T> {
    let value = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()
        .and_then(|r| r.read_value(&mut datum))
        .context("Avro schema resolution from the writer's schema to the reader's")?;
    apache_avro::from_value(&value).context("the resolved value does not fit the Rust type")
}
