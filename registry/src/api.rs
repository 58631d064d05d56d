//! HTTP API: the subset of Confluent Schema Registry's REST API that Confluent clients use,
//! read from requests and written as Confluent-shaped JSON, backed by [`Store`].
//!
//! This file holds the store handle, the routes and their handlers; `request` reads bodies, path
//! segments and query flags, `response` writes answers and errors in Confluent's shapes.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::store::{self, RegistryError, Store, VersionRef, AVRO};

mod request;
mod response;

use request::{
    flag, parse_body, parse_id, parse_level, parse_version, ConfigRequest, SchemaRequest,
};
use response::{ok, raw_schema, version_body, with_schema_type, ApiError};

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
