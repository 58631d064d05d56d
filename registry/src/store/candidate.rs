//! A schema from a request, parsed, and its identity: the text apache-avro writes back, which
//! ignores layout but keeps defaults (see `store.sql`).

use apache_avro::Schema;

use super::{RegistryError, AVRO};

/// A schema from a request, parsed.
pub(crate) struct Candidate {
    /// As the client sent it.
    pub(super) text: String,
    pub(super) schema: Schema,
    /// apache-avro's re-serialisation; the identity of a schema (see `store.sql`).
    pub(super) normalized: String,
}

impl Candidate {
    /// Parses a request's schema; only Avro without references is supported.
    pub(crate) fn parse(
        text: &str,
        schema_type: Option<&str>,
        has_references: bool,
    ) -> Result<Self, RegistryError> {
        if let Some(other) = schema_type.filter(|t| !t.eq_ignore_ascii_case(AVRO)) {
            return Err(RegistryError::InvalidSchema(format!(
                "schema type {other} is not supported, only AVRO"
            )));
        }
        if has_references {
            return Err(RegistryError::InvalidSchema(
                "schema references are not supported by the embedded registry".into(),
            ));
        }
        let schema =
            Schema::parse_str(text).map_err(|e| RegistryError::InvalidSchema(format!("{e}")))?;
        let normalized = normalize(&schema)?;
        Ok(Self {
            text: text.to_owned(),
            schema,
            normalized,
        })
    }
}

fn normalize(schema: &Schema) -> Result<String, RegistryError> {
    serde_json::to_string(schema).map_err(|e| RegistryError::InvalidSchema(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(text: &str) -> Candidate {
        Candidate::parse(text, None, false).unwrap()
    }

    #[test]
    fn identity_ignores_layout_but_keeps_defaults() {
        let a = candidate(r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int"}]}"#);
        let b = candidate(
            r#"{ "name": "R", "type": "record",
                 "fields": [ { "type": "int", "name": "a" } ] }"#,
        );
        let c = candidate(
            r#"{"type":"record","name":"R","fields":[{"name":"a","type":"int","default":1}]}"#,
        );
        assert_eq!(a.normalized, b.normalized);
        assert_ne!(a.normalized, c.normalized);
        // Parsing Canonical Form would have called them equal.
        assert_eq!(a.schema.canonical_form(), c.schema.canonical_form());
    }
}
