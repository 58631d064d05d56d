//! Confluent error codes for unknown subjects, versions and schemas, bad input and routes.

use barista_registry::CompatibilityLevel;
use reqwest::StatusCode;
use serde_json::json;

use crate::{assert_error, order, TestRegistry, CUSTOMER, PRICE_DEFAULT};

#[tokio::test]
async fn not_found_codes() {
    let r = TestRegistry::start(CompatibilityLevel::Backward).await;
    let v1 = order(CUSTOMER);
    TestRegistry::registered(r.register("s", &v1).await);

    assert_error(
        &r.get("/subjects/nope/versions").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_error(
        &r.get("/subjects/nope/versions/1").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_error(
        &r.get("/subjects/s/versions/2").await,
        StatusCode::NOT_FOUND,
        40402,
    );
    assert_error(
        &r.get("/schemas/ids/999").await,
        StatusCode::NOT_FOUND,
        40403,
    );
    assert_error(
        &r.get("/schemas/ids/999/versions").await,
        StatusCode::NOT_FOUND,
        40403,
    );

    let other = json!({ "schema": order(&format!("{CUSTOMER},{PRICE_DEFAULT}")) });
    let message = assert_error(
        &r.post("/subjects/s", &other).await,
        StatusCode::NOT_FOUND,
        40403,
    );
    assert_eq!(message, "Schema not found");
    assert_error(
        &r.post("/subjects/nope", &other).await,
        StatusCode::NOT_FOUND,
        40401,
    );

    assert_error(&r.get("/no/such/route").await, StatusCode::NOT_FOUND, 404);
    assert_error(
        &r.delete("/subjects").await,
        StatusCode::METHOD_NOT_ALLOWED,
        405,
    );
}

#[tokio::test]
async fn bad_input_codes() {
    let r = TestRegistry::start(CompatibilityLevel::Backward).await;
    let message = assert_error(
        &r.register("s", r#"{"type":"record","name":"Broken"}"#)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
    );
    assert!(message.starts_with("Invalid schema"), "{message}");
    assert_error(
        &r.register("s", "not json").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
    );
    assert_error(
        &r.post(
            "/subjects/s/versions",
            &json!({ "schema": "\"string\"", "schemaType": "PROTOBUF" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42201,
    );
    assert_error(
        &r.get("/subjects/s/versions/zero").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42202,
    );
    assert_error(
        &r.put("/config", &json!({ "compatibility": "SIDEWAYS" }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        42203,
    );
    assert_error(
        &r.post("/subjects/s/versions", &json!({ "schemaa": "\"string\"" }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        422,
    );

    // Not JSON at all, and sent as application/json.
    let response = r
        .http
        .post(r.url("/subjects/s/versions"))
        .header("Content-Type", "application/json")
        .body("{\"schema\": ")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error_code"], json!(400));
}

#[tokio::test]
async fn deleting_subjects_and_versions() {
    let r = TestRegistry::start(CompatibilityLevel::None).await;
    let id = TestRegistry::registered(r.register("s", r#""string""#).await);
    TestRegistry::registered(r.register("s", r#""long""#).await);
    TestRegistry::registered(r.register("s", r#""int""#).await);

    let (status, deleted) = r.delete("/subjects/s/versions/2").await;
    assert_eq!((status, deleted), (StatusCode::OK, json!(2)));
    let (_, versions) = r.get("/subjects/s/versions").await;
    assert_eq!(versions, json!([1, 3]));

    let (status, deleted) = r.delete("/subjects/s?permanent=true").await;
    assert_eq!((status, deleted), (StatusCode::OK, json!([1, 3])));
    assert_error(
        &r.get("/subjects/s/versions").await,
        StatusCode::NOT_FOUND,
        40401,
    );
    assert_error(&r.delete("/subjects/s").await, StatusCode::NOT_FOUND, 40401);
    let (_, subjects) = r.get("/subjects").await;
    assert_eq!(subjects, json!([]));
    // The id still resolves: consumers may hold data written with it.
    let (status, _) = r.get(&format!("/schemas/ids/{id}")).await;
    assert_eq!(status, StatusCode::OK);
}
