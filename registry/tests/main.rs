//! End-to-end tests of barista-registry: each test starts a real server on port 0 with its own
//! temporary database and talks to it over HTTP, raw (reqwest) or through a Confluent client.

mod client;
mod compatibility;
mod config;
mod contracts;
mod errors;
mod persistence;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use barista_registry::{CompatibilityLevel, RegistryConfig, RunningRegistry};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `shop.Order` with the given fields, as a schema string.
pub fn order(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"Order","namespace":"shop","fields":[{fields}]}}"#)
}

pub const CUSTOMER: &str = r#"{"name":"customer","type":"string"}"#;
pub const COFFEE: &str = r#"{"name":"coffee","type":"string"}"#;
pub const PRICE: &str = r#"{"name":"price","type":"long"}"#;
pub const PRICE_DEFAULT: &str = r#"{"name":"price","type":"long","default":0}"#;

/// A registry on a free port with its own database, plus an HTTP client for it.
pub struct TestRegistry {
    /// `None` only while restarting.
    registry: Option<RunningRegistry>,
    pub http: reqwest::Client,
    /// Keeps the database directory alive for the test's duration.
    pub dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry whose global level defaults to `level`.
    pub async fn start(level: CompatibilityLevel) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = start_on(&dir.path().join("registry.db"), level).await;
        Self {
            registry: Some(registry),
            http: reqwest::Client::new(),
            dir,
        }
    }

    pub fn registry(&self) -> &RunningRegistry {
        self.registry.as_ref().expect("registry running")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("registry.db")
    }

    /// Shuts the registry down cleanly and starts a new one on the same database.
    pub async fn restart(&mut self, level: CompatibilityLevel) {
        if let Some(old) = self.registry.take() {
            old.shutdown().await.expect("clean shutdown");
        }
        self.registry = Some(start_on(&self.db_path(), level).await);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.registry().url())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(self.url(path)).send().await).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.delete(self.url(path)).send().await).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::PUT, path, body).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = self
            .http
            .request(method, self.url(path))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(body.to_string());
        answer(request.send().await).await
    }

    /// `POST /subjects/{subject}/versions` with an Avro schema.
    pub async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/subjects/{subject}/versions"),
            &json!({ "schema": schema }),
        )
        .await
    }

    /// Registers and expects success; returns the id.
    #[track_caller]
    pub fn registered(answer: (StatusCode, Value)) -> i64 {
        assert_eq!(answer.0, StatusCode::OK, "register failed: {}", answer.1);
        answer.1["id"].as_i64().expect("id in register answer")
    }

    /// Sets the subject's level.
    pub async fn set_level(&self, subject: &str, level: &str) {
        let (status, body) = self
            .put(
                &format!("/config/{subject}"),
                &json!({ "compatibility": level }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

/// Starts a registry on `127.0.0.1:0` over the database at `db_path`.
pub async fn start_on(db_path: &Path, level: CompatibilityLevel) -> RunningRegistry {
    let config = RegistryConfig {
        db_path: db_path.to_owned(),
        default_level: level,
    };
    barista_registry::spawn(config, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("registry starts")
}

/// Status and JSON body of a response; every answer of the registry must be JSON.
async fn answer(response: reqwest::Result<reqwest::Response>) -> (StatusCode, Value) {
    let response = response.expect("request reaches the registry");
    let status = response.status();
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, body)
}

/// Asserts a Confluent error answer and returns its message.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: i64) -> String {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error_code"], json!(code), "{}", answer.1);
    answer.1["message"]
        .as_str()
        .expect("error message")
        .to_owned()
}
