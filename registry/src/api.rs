//! HTTP API: the subset of Confluent Schema Registry's REST API that Confluent clients use,
//! read from requests and written as Confluent-shaped JSON, backed by [`Store`].

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::compat::CompatibilityLevel;
use crate::store::{self, Candidate, RegistryError, Store, SubjectVersion, VersionRef, AVRO};

/// The content type Confluent answers with; clients also accept it for requests.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Shared handle to the store.
///
/// A `std::sync::Mutex`, not a tokio one: rusqlite is synchronous, so every use runs inside
/// `spawn_blocking` and the guard never lives across an `.await`. One connection serialises
/// writers, which the register check-then-insert needs anyway.
#[derive(Clone)]
pub(crate) struct Registry {
    store: Arc<Mutex<Store>>,
}

impl Registry {
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store: Arc::new(Mutex::new(store)),
        }
    }

    /// Runs `work` on the store in a blocking task.
    async fn with_store<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, RegistryError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock unwound through any open rusqlite Transaction,
            // whose Drop rolled it back, so the connection is consistent: take it back.
            let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut store)
        })
        .await
        .map_err(|e| ApiError::internal(format!("registry task failed: {e}")))?
        .map_err(ApiError::from)
    }
}

/// The router for every supported route; anything else is a JSON 404 (or 405).
pub(crate) fn router(registry: Registry) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/schemas/types", get(schema_types))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(raw_schema_of_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_with_level),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_with_version),
        )
        .route("/config", get(global_config).put(set_global_config))
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(registry)
}

/// A Confluent error: HTTP status plus `{"error_code", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(message: String) -> Self {
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

fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, body))
}

/// Parses a JSON body whatever its content type (Confluent's, `application/json`, or curl's
/// form default): 400 if it is not JSON, 422 if it has the wrong shape.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
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
fn flag(query: &Option<String>, name: &str) -> bool {
    query.as_deref().unwrap_or_default().split('&').any(|pair| {
        pair.split_once('=')
            .is_some_and(|(k, v)| k == name && v.eq_ignore_ascii_case("true"))
    })
}

/// `latest`, `-1`, or 1..=2^31-1, else 42202.
fn parse_version(raw: &str) -> Result<VersionRef, ApiError> {
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

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::from(RegistryError::SchemaNotFound(format!(
            "Schema {raw} not found"
        )))
    })
}

fn parse_level(raw: &str) -> Result<CompatibilityLevel, ApiError> {
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
struct SchemaRequest {
    schema: String,
    schema_type: Option<String>,
    references: Option<Vec<Value>>,
}

impl SchemaRequest {
    fn candidate(body: &[u8]) -> Result<Candidate, ApiError> {
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
struct ConfigRequest {
    #[serde(alias = "compatibilityLevel")]
    compatibility: String,
}

/// Adds `schemaType` to a response when it is not Avro, as Confluent does.
fn with_schema_type(mut body: Value, schema_type: &str) -> Value {
    if schema_type != AVRO {
        body["schemaType"] = json!(schema_type);
    }
    body
}

fn version_body(found: SubjectVersion) -> Value {
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

async fn root() -> Result<Response, ApiError> {
    ok(json!({}))
}

async fn schema_types() -> Result<Response, ApiError> {
    ok(json!([AVRO]))
}

async fn schema_by_id(
    State(registry): State<Registry>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let found = registry.with_store(move |s| s.schema_by_id(id)).await?;
    ok(with_schema_type(
        json!({ "schema": found.schema }),
        &found.schema_type,
    ))
}

async fn raw_schema_by_id(
    State(registry): State<Registry>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let found = registry.with_store(move |s| s.schema_by_id(id)).await?;
    Ok(raw_schema(found.schema))
}

async fn versions_of_id(
    State(registry): State<Registry>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let found = registry.with_store(move |s| s.versions_of_id(id)).await?;
    let body: Vec<Value> = found
        .into_iter()
        .map(|(subject, version)| json!({ "subject": subject, "version": version }))
        .collect();
    ok(json!(body))
}

async fn subjects(State(registry): State<Registry>) -> Result<Response, ApiError> {
    let subjects = registry.with_store(|s| s.subjects()).await?;
    ok(json!(subjects))
}

async fn versions(
    State(registry): State<Registry>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let versions = registry.with_store(move |s| s.versions(&subject)).await?;
    ok(json!(versions))
}

async fn register(
    State(registry): State<Registry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let candidate = SchemaRequest::candidate(&body)?;
    let logged_subject = subject.clone();
    let result = registry
        .with_store(move |s| s.register(&subject, &candidate))
        .await;
    match result {
        Ok((id, Some(version))) => {
            tracing::info!(subject = %logged_subject, version, id, "registered new schema version");
            ok(json!({ "id": id }))
        }
        Ok((id, None)) => ok(json!({ "id": id })),
        Err(err) => {
            tracing::debug!(subject = %logged_subject, message = %err.message, "registration refused");
            Err(err)
        }
    }
}

async fn version(
    State(registry): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    let found = registry
        .with_store(move |s| s.version(&subject, version))
        .await?;
    ok(version_body(found))
}

async fn raw_schema_of_version(
    State(registry): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    let found = registry
        .with_store(move |s| s.version(&subject, version))
        .await?;
    Ok(raw_schema(found.schema))
}

/// The schema text itself as the body, as Confluent's `/schema` routes answer.
fn raw_schema(schema: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        schema,
    )
        .into_response()
}

async fn lookup(
    State(registry): State<Registry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let candidate = SchemaRequest::candidate(&body)?;
    let found = registry
        .with_store(move |s| s.lookup(&subject, &candidate))
        .await?;
    ok(version_body(found))
}

/// Deletes are hard deletes; `?permanent=true` is accepted and changes nothing.
async fn delete_subject(
    State(registry): State<Registry>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let logged_subject = subject.clone();
    let versions = registry
        .with_store(move |s| s.delete_subject(&subject))
        .await?;
    tracing::info!(subject = %logged_subject, ?versions, "deleted subject");
    ok(json!(versions))
}

async fn delete_version(
    State(registry): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    let logged_subject = subject.clone();
    let deleted = registry
        .with_store(move |s| s.delete_version(&subject, version))
        .await?;
    tracing::info!(subject = %logged_subject, version = deleted, "deleted subject version");
    ok(json!(deleted))
}

async fn compatibility_with_level(
    State(registry): State<Registry>,
    Path(subject): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    compatibility(registry, subject, None, flag(&query, "verbose"), &body).await
}

async fn compatibility_with_version(
    State(registry): State<Registry>,
    Path((subject, version)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let version = parse_version(&version)?;
    compatibility(
        registry,
        subject,
        Some(version),
        flag(&query, "verbose"),
        &body,
    )
    .await
}

async fn compatibility(
    registry: Registry,
    subject: String,
    against: Option<VersionRef>,
    verbose: bool,
    body: &[u8],
) -> Result<Response, ApiError> {
    let candidate = SchemaRequest::candidate(body)?;
    let found = registry
        .with_store(move |s| s.test_compatibility(&subject, against, &candidate))
        .await?;
    let mut answer = json!({ "is_compatible": found.is_empty() });
    if verbose {
        let messages: Vec<String> = found
            .iter()
            .flat_map(|incompatibility| {
                let mut messages = store::confluent_messages(incompatibility);
                messages.push(format!("{{oldSchemaVersion: {}}}", incompatibility.version));
                messages.push(format!("{{compatibility: '{}'}}", incompatibility.level));
                messages
            })
            .collect();
        answer["messages"] = json!(messages);
    }
    ok(answer)
}

async fn global_config(State(registry): State<Registry>) -> Result<Response, ApiError> {
    let level = registry.with_store(|s| s.global_level()).await?;
    ok(json!({ "compatibilityLevel": level.as_str() }))
}

async fn set_global_config(
    State(registry): State<Registry>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ConfigRequest = parse_body(&body)?;
    let level = parse_level(&request.compatibility)?;
    registry
        .with_store(move |s| s.set_global_level(level))
        .await?;
    tracing::info!(compatibility = %level, "set global compatibility level");
    ok(json!({ "compatibility": level.as_str() }))
}

async fn subject_config(
    State(registry): State<Registry>,
    Path(subject): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let default_to_global = flag(&query, "defaultToGlobal");
    let level = registry
        .with_store(move |s| match s.subject_level(&subject)? {
            Some(level) => Ok(level),
            None if default_to_global => s.global_level(),
            None => Err(RegistryError::SubjectLevelNotFound(subject)),
        })
        .await?;
    ok(json!({ "compatibilityLevel": level.as_str() }))
}

async fn set_subject_config(
    State(registry): State<Registry>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ConfigRequest = parse_body(&body)?;
    let level = parse_level(&request.compatibility)?;
    let logged_subject = subject.clone();
    registry
        .with_store(move |s| s.set_subject_level(&subject, level))
        .await?;
    tracing::info!(subject = %logged_subject, compatibility = %level, "set subject compatibility level");
    ok(json!({ "compatibility": level.as_str() }))
}

async fn delete_subject_config(
    State(registry): State<Registry>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let level = registry
        .with_store(move |s| s.delete_subject_level(&subject))
        .await?;
    ok(json!({ "compatibilityLevel": level.as_str() }))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        405,
        "HTTP 405 Method Not Allowed",
    )
}
