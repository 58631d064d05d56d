//! State survives a restart on the same database file.

use barista_registry::CompatibilityLevel;
use reqwest::StatusCode;
use serde_json::json;

use crate::{order, TestRegistry, CUSTOMER, PRICE_DEFAULT};

#[tokio::test]
async fn restart_keeps_ids_versions_and_levels() {
    let mut r = TestRegistry::start(CompatibilityLevel::Backward).await;
    let v1 = order(CUSTOMER);
    let v2 = order(&format!("{CUSTOMER},{PRICE_DEFAULT}"));
    let id1 = TestRegistry::registered(r.register("orders-value", &v1).await);
    let id2 = TestRegistry::registered(r.register("orders-value", &v2).await);
    r.set_level("orders-value", "FULL").await;
    let (status, _) = r.put("/config", &json!({ "compatibility": "NONE" })).await;
    assert_eq!(status, StatusCode::OK);

    // Restart with a different default: the stored global level wins.
    r.restart(CompatibilityLevel::Forward).await;

    let (_, versions) = r.get("/subjects/orders-value/versions").await;
    assert_eq!(versions, json!([1, 2]));
    let (_, by_id) = r.get(&format!("/schemas/ids/{id1}")).await;
    assert_eq!(by_id, json!({ "schema": v1 }));
    let (_, latest) = r.get("/subjects/orders-value/versions/latest").await;
    assert_eq!(latest["id"], json!(id2));
    assert_eq!(
        r.get("/config").await.1,
        json!({ "compatibilityLevel": "NONE" })
    );
    assert_eq!(
        r.get("/config/orders-value").await.1,
        json!({ "compatibilityLevel": "FULL" })
    );
    // Re-registering after the restart is still idempotent, and ids keep counting.
    assert_eq!(
        TestRegistry::registered(r.register("orders-value", &v1).await),
        id1
    );
    let id3 = TestRegistry::registered(r.register("other", r#""string""#).await);
    assert!(id3 > id2);
    // The subject's FULL still applies (the global NONE would accept a type change).
    let (status, body) = r
        .register(
            "orders-value",
            &order(&format!(
                r#"{CUSTOMER},{{"name":"price","type":"string","default":""}}"#
            )),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("{compatibility: 'FULL'}")));
}
