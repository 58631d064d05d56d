//! The registry door: the one place the producer speaks to the schema registry (the Confluent
//! REST API). Encode registers each subject's schema here to learn its id; migrate asks for
//! compatibility verdicts and levels and registers new versions.
//!
//! A failure is classified by what failed, never by searching its text: the request did not
//! get an answer, or the registry failed (5xx), means [`RegistryError::Unavailable`] and is
//! worth retrying; a 4xx answer means [`RegistryError::Refused`], carrying the registry's own
//! error code and message, and asking again gets the same answer.
//!
//! Reads: the registry's answers. Writes: schema versions in the registry.

use std::error::Error as _;
use std::time::Duration;

use anyhow::Context as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

/// The Confluent API's content type.
const SCHEMA_REGISTRY_JSON: &str = "application/vnd.schemaregistry.v1+json";

/// Why the registry did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No usable answer: connection refused, timeout, a request or transport error, a 5xx, or
    /// 408/429 (the registry asks to be asked again later). Retrying later can succeed.
    #[error("the schema registry is unavailable: {0}")]
    Unavailable(String),
    /// The registry answered 4xx: it refuses the request, for example 409 (the schema is
    /// incompatible with the subject's latest version under its compatibility level) or 422
    /// (the schema is invalid). Asking again gets the same answer.
    #[error("HTTP {status}, error code {error_code}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The registry's `error_code` (the HTTP status when the answer has none).
        error_code: i64,
        /// The registry's `message` (the answer's text when it has none).
        message: String,
    },
    /// Neither: the request cannot be made (the URL is malformed) or the answer is not the
    /// Confluent API's (a success without the expected fields), so the URL most likely points
    /// at something else. Retrying cannot help.
    #[error("{0} (is the schema registry URL right?)")]
    Unexpected(String),
}

/// A client of one schema registry.
#[derive(Debug, Clone)]
pub struct Registry {
    http: reqwest::Client,
    url: String,
}

impl Registry {
    /// A client of the registry at `url`; each request gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Registry> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .context("building the schema registry client")?;
        Ok(Registry {
            http,
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Registers `schema` under `subject` (`POST /subjects/{subject}/versions`) and returns
    /// its id; a schema the subject already has keeps its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let endpoint = format!("{}/subjects/{subject}/versions", self.url);
        let body = self.call(self.post_schema(&endpoint, schema)).await?;
        body["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| {
                RegistryError::Unexpected(format!(
                    "no schema id in the registry's answer to registering {subject}: {body}"
                ))
            })
    }

    /// Whether `schema` may follow the latest version of `subject`
    /// (`POST /compatibility/subjects/{subject}/versions/latest?verbose=true`): the registry's
    /// reasons, empty when compatible or when the subject has no version yet.
    pub async fn compatibility(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let endpoint = format!(
            "{}/compatibility/subjects/{subject}/versions/latest?verbose=true",
            self.url
        );
        let body = match self.call(self.post_schema(&endpoint, schema)).await {
            Ok(body) => body,
            // No version yet (40401 subject / 40402 version not found): anything is compatible.
            Err(RegistryError::Refused { status: 404, .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if body["is_compatible"].as_bool() == Some(true) {
            return Ok(Vec::new());
        }
        let messages: Vec<String> = body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(Value::as_str)
                    .filter(|m| {
                        !m.starts_with("{oldSchemaVersion") && !m.starts_with("{compatibility")
                    })
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(if messages.is_empty() {
            vec!["incompatible (the registry gave no reason)".to_owned()]
        } else {
            messages
        })
    }

    /// The compatibility level the registry applies to `subject` (its own, else the global one).
    pub async fn level(&self, subject: &str) -> Result<String, RegistryError> {
        let endpoint = format!("{}/config/{subject}?defaultToGlobal=true", self.url);
        let body = self.call(self.http.get(&endpoint)).await?;
        body["compatibilityLevel"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                RegistryError::Unexpected(format!("no compatibilityLevel for {subject}: {body}"))
            })
    }

    /// The schema text registered under `id` (`GET /schemas/ids/{id}`): the writer schema of
    /// a record read back from Kafka.
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let endpoint = format!("{}/schemas/ids/{id}", self.url);
        let body = self.call(self.http.get(&endpoint)).await?;
        body["schema"].as_str().map(str::to_owned).ok_or_else(|| {
            RegistryError::Unexpected(format!(
                "no schema in the registry's answer for id {id}: {body}"
            ))
        })
    }

    /// The latest schema text of `subject` (`GET /subjects/{subject}/versions/latest`), or
    /// `None` when the subject has none.
    pub async fn latest(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let endpoint = format!("{}/subjects/{subject}/versions/latest", self.url);
        match self.call(self.http.get(&endpoint)).await {
            Ok(body) => Ok(body["schema"].as_str().map(str::to_owned)),
            Err(RegistryError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A POST of `{"schema": …}` in the registry's content type.
    fn post_schema(&self, endpoint: &str, schema: &str) -> reqwest::RequestBuilder {
        self.http
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, SCHEMA_REGISTRY_JSON)
            .body(json!({ "schema": schema }).to_string())
    }

    /// Sends `request` and classifies the outcome; a success's JSON body (`null` when it has
    /// none; the caller says what it expected).
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, RegistryError> {
        let response = request.send().await.map_err(unsent)?;
        let status = response.status();
        // Reading the body can fail too (the connection drops): no answer, so unavailable.
        let text = response.text().await.map_err(unsent)?;
        classify(status, &text)
    }
}

/// A request that got no answer: unavailable, unless it could not even be made.
fn unsent(e: reqwest::Error) -> RegistryError {
    if e.is_builder() || e.is_redirect() {
        RegistryError::Unexpected(chain(&e))
    } else {
        RegistryError::Unavailable(chain(&e))
    }
}

/// The verdict on an answer: the body of a success, else who is to blame.
fn classify(status: StatusCode, text: &str) -> Result<Value, RegistryError> {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let message = body["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| match text.trim() {
            "" => status.canonical_reason().unwrap_or("no message").to_owned(),
            t => t.chars().take(500).collect(),
        });
    let transient = status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS;
    if transient {
        Err(RegistryError::Unavailable(format!(
            "HTTP {status}: {message}"
        )))
    } else if status.is_client_error() {
        Err(RegistryError::Refused {
            status: status.as_u16(),
            error_code: body["error_code"]
                .as_i64()
                .unwrap_or(i64::from(status.as_u16())),
            message,
        })
    } else {
        Err(RegistryError::Unexpected(format!(
            "the schema registry answered HTTP {status}: {message}"
        )))
    }
}

/// An error and its causes on one line: reqwest's own text says only "error sending
/// request"; the cause says why (connection refused, timed out…).
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
