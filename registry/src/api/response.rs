//! What the routes answer: Confluent-shaped JSON under Confluent's content type, and errors as
//! `{"error_code", "message"}` with Confluent's codes.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::store::{RegistryError, SubjectVersion, AVRO};

/// The content type Confluent answers with; clients also accept it for requests.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A Confluent error: HTTP status plus `{"error_code", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u32,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn internal(message: String) -> Self {
        tracing::error!(%message, "registry request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, 50001, message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        let (status, code) = match &err {
            RegistryError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            RegistryError::VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
            RegistryError::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            RegistryError::SubjectLevelNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            RegistryError::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            RegistryError::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            RegistryError::Storage(_) | RegistryError::Corrupt(_) => {
                return Self::internal(err.to_string());
            }
        };
        Self::new(status, code, err.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(
            self.status,
            json!({ "error_code": self.code, "message": self.message }),
        )
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, body))
}

/// Adds `schemaType` to a response when it is not Avro, as Confluent does.
pub(super) fn with_schema_type(mut body: Value, schema_type: &str) -> Value {
    if schema_type != AVRO {
        body["schemaType"] = json!(schema_type);
    }
    body
}

pub(super) fn version_body(found: SubjectVersion) -> Value {
    with_schema_type(
        json!({
            "subject": found.subject,
            "version": found.version,
            "id": found.id,
            "schema": found.schema,
        }),
        &found.schema_type,
    )
}

/// The schema text itself as the body, as Confluent's `/schema` routes answer.
pub(super) fn raw_schema(schema: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema,
    )
        .into_response()
}
