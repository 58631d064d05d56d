//! Global and per-subject compatibility levels.

use barista_registry::CompatibilityLevel;
use reqwest::StatusCode;
use serde_json::json;

use crate::{assert_error, order, TestRegistry, CUSTOMER, PRICE};

#[tokio::test]
async fn global_and_subject_levels() {
    let r = TestRegistry::start(CompatibilityLevel::Backward).await;
    assert_eq!(
        r.get("/config").await,
        (StatusCode::OK, json!({ "compatibilityLevel": "BACKWARD" }))
    );
    assert_eq!(
        r.put("/config", &json!({ "compatibility": "FULL" })).await,
        (StatusCode::OK, json!({ "compatibility": "FULL" }))
    );
    assert_eq!(
        r.get("/config").await,
        (StatusCode::OK, json!({ "compatibilityLevel": "FULL" }))
    );

    assert_error(&r.get("/config/s").await, StatusCode::NOT_FOUND, 40408);
    assert_eq!(
        r.get("/config/s?defaultToGlobal=true").await,
        (StatusCode::OK, json!({ "compatibilityLevel": "FULL" }))
    );
    assert_eq!(
        r.put("/config/s", &json!({ "compatibility": "none" }))
            .await,
        (StatusCode::OK, json!({ "compatibility": "NONE" }))
    );
    assert_eq!(
        r.get("/config/s").await,
        (StatusCode::OK, json!({ "compatibilityLevel": "NONE" }))
    );

    // The subject's NONE overrides the global FULL.
    TestRegistry::registered(r.register("s", &order(CUSTOMER)).await);
    TestRegistry::registered(
        r.register("s", &order(&format!("{CUSTOMER},{PRICE}")))
            .await,
    );
    // Another subject follows the global level.
    TestRegistry::registered(r.register("t", &order(CUSTOMER)).await);
    assert_error(
        &r.register("t", &order(&format!("{CUSTOMER},{PRICE}")))
            .await,
        StatusCode::CONFLICT,
        409,
    );

    assert_eq!(
        r.delete("/config/s").await,
        (StatusCode::OK, json!({ "compatibilityLevel": "NONE" }))
    );
    assert_error(&r.get("/config/s").await, StatusCode::NOT_FOUND, 40408);
    assert_error(&r.delete("/config/s").await, StatusCode::NOT_FOUND, 40408);
}
