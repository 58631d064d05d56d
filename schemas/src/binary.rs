//! The envelope in Avro binary, written and read without building
//! apache-avro `Value` trees.
//!
//! Profiles of the publisher and of a follower's decode put most of their
//! time in allocating, filling and walking `Value`s (a `String` per field
//! name, a `Box` per union) rather than in the bytes themselves. The envelope
//! is barista's own shape, so both directions are written against it here:
//! - [`TableSchemas::write_key`] and [`TableSchemas::write_envelope`] write
//!   the bytes apache-avro writes for [`TableSchemas::key_value`] and
//!   [`TableSchemas::envelope_value`] (a property test compares them);
//! - [`EnvelopeReader`] is planned once per writer schema and reads what
//!   apache-avro's generic reader plus [`decode_envelope`] read. A schema it
//!   does not recognise gives no plan, and the caller keeps the generic path.
//!
//! The writer is in `binary/write.rs`, the planned reader in `binary/read.rs`.
//!
//! [`TableSchemas::write_key`]: crate::TableSchemas::write_key
//! [`TableSchemas::write_envelope`]: crate::TableSchemas::write_envelope
//! [`TableSchemas::key_value`]: crate::TableSchemas::key_value
//! [`TableSchemas::envelope_value`]: crate::TableSchemas::envelope_value
//! [`decode_envelope`]: crate::envelope::decode_envelope

mod read;
mod write;

pub use read::EnvelopeReader;
pub use write::put_long;

#[cfg(test)]
mod tests;
