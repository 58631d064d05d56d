//! What the routes read from a request: JSON bodies, whatever their content type, path
//! segments and query flags, each refused with Confluent's error code.

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::ApiError;
use crate::compat::CompatibilityLevel;
use crate::store::{Candidate, RegistryError, VersionRef};

/// Parses a JSON body whatever its content type (Confluent's, `application/json`, or curl's
/// form default): 400 if it is not JSON, 422 if it has the wrong shape.
pub(super) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, 422, e.to_string())
        }
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            400,
            format!("Malformed JSON body: {e}"),
        ),
    })
}

/// Whether the query string sets `name=true`.
pub(super) fn flag(query: &Option<String>, name: &str) -> bool {
    query.as_deref().unwrap_or_default().split('&').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(k, v)| k == name && v.eq_ignore_ascii_case("true"))
    })
}

/// `latest`, `-1`, or 1..=2^31-1, else 42202.
pub(super) fn parse_version(raw: &str) -> Result<VersionRef, ApiError> {
    if raw == "latest" || raw == "-1" {
        return Ok(VersionRef::Latest);
    }
    match raw.parse::<u32>() {
        Ok(n) if (1..=i32::MAX as u32).contains(&n) => Ok(VersionRef::Number(n)),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
            format!(
                "The specified version '{raw}' is not a valid version id. Allowed values are \
                 between [1, 2^31-1] and the string \"latest\""
            ),
        )),
    }
}

pub(super) fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::from(RegistryError::SchemaNotFound(format!(
            "Schema {raw} not found"
        )))
    })
}

pub(super) fn parse_level(raw: &str) -> Result<CompatibilityLevel, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level '{raw}'. Valid values are none, backward, forward, \
                 full, backward_transitive, forward_transitive, and full_transitive"
            ),
        )
    })
}

/// `{"schema", "schemaType"?, "references"?}`; other fields (metadata, ruleSet) are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SchemaRequest {
    schema: String,
    schema_type: Option<String>,
    references: Option<Vec<Value>>,
}

impl SchemaRequest {
    pub(super) fn candidate(body: &[u8]) -> Result<Candidate, ApiError> {
        let request: SchemaRequest = parse_body(body)?;
        let has_references = request.references.is_some_and(|r| !r.is_empty());
        Ok(Candidate::parse(
            &request.schema,
            request.schema_type.as_deref(),
            has_references,
        )?)
    }
}

/// `{"compatibility": "FULL"}` (`compatibilityLevel` also accepted).
#[derive(Deserialize)]
pub(super) struct ConfigRequest {
    #[serde(alias = "compatibilityLevel")]
    pub(super) compatibility: String,
}
