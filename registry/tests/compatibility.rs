//! Registration under each compatibility level: ids, versions, and 409s that name the field.

use barista_registry::CompatibilityLevel;
use reqwest::StatusCode;
use serde_json::json;

use crate::{assert_error, order, TestRegistry, COFFEE, CUSTOMER, PRICE, PRICE_DEFAULT};

#[tokio::test]
async fn backward_rejects_a_new_field_without_default_naming_it() {
    let r = TestRegistry::start(CompatibilityLevel::Backward).await;
    TestRegistry::registered(r.register("orders-value", &order(CUSTOMER)).await);

    let answer = r
        .register("orders-value", &order(&format!("{CUSTOMER},{PRICE}")))
        .await;
    let message = assert_error(&answer, StatusCode::CONFLICT, 409);
    assert!(
        message.starts_with(
            "Schema being registered is incompatible with an earlier schema for subject \
             \"orders-value\", details: ["
        ),
        "{message}"
    );
    assert!(
        message.contains(
            "{errorType:'READER_FIELD_MISSING_DEFAULT_VALUE', description:'a reader using the \
             new schema cannot read data written with version 1: \
             READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1 (field 'price')"
        ),
        "{message}"
    );
    assert!(message.contains("{oldSchemaVersion: 1}"), "{message}");
    assert!(message.contains("{compatibility: 'BACKWARD'}"), "{message}");
    let (_, versions) = r.get("/subjects/orders-value/versions").await;
    assert_eq!(versions, json!([1]));
}

#[tokio::test]
async fn type_change_is_rejected_with_its_path() {
    let r = TestRegistry::start(CompatibilityLevel::Backward).await;
    TestRegistry::registered(
        r.register("s", &order(&format!("{CUSTOMER},{PRICE}")))
            .await,
    );
    let answer = r
        .register(
            "s",
            &order(&format!(r#"{CUSTOMER},{{"name":"price","type":"string"}}"#)),
        )
        .await;
    let message = assert_error(&answer, StatusCode::CONFLICT, 409);
    assert!(
        message.contains("TYPE_MISMATCH at /fields/1/type (field 'price')"),
        "{message}"
    );
}

#[tokio::test]
async fn compatible_evolution_and_idempotent_registration() {
    let r = TestRegistry::start(CompatibilityLevel::Backward).await;
    let v1 = order(CUSTOMER);
    let v2 = order(&format!("{CUSTOMER},{PRICE_DEFAULT}"));
    let id1 = TestRegistry::registered(r.register("orders-value", &v1).await);
    let id2 = TestRegistry::registered(r.register("orders-value", &v2).await);
    assert_ne!(id1, id2);

    // Same schema again, even laid out differently: same id, no new version.
    let v1_spaced = v1.replace(',', ", ").replace(':', ": ");
    assert_eq!(
        TestRegistry::registered(r.register("orders-value", &v1_spaced).await),
        id1
    );
    assert_eq!(
        TestRegistry::registered(r.register("orders-value", &v2).await),
        id2
    );
    let (_, versions) = r.get("/subjects/orders-value/versions").await;
    assert_eq!(versions, json!([1, 2]));

    let (status, latest) = r.get("/subjects/orders-value/versions/latest").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        latest,
        json!({ "subject": "orders-value", "version": 2, "id": id2, "schema": v2 })
    );
    let (_, by_minus_one) = r.get("/subjects/orders-value/versions/-1").await;
    assert_eq!(by_minus_one, latest);

    // Ids are global: the same schema under another subject keeps its id, as version 1.
    assert_eq!(
        TestRegistry::registered(r.register("archive-value", &v2).await),
        id2
    );
    let (_, archive) = r.get("/subjects/archive-value/versions/1").await;
    assert_eq!(archive["id"], json!(id2));
    let (_, uses) = r.get(&format!("/schemas/ids/{id2}/versions")).await;
    assert_eq!(
        uses,
        json!([
            { "subject": "archive-value", "version": 1 },
            { "subject": "orders-value", "version": 2 },
        ])
    );
    let (_, by_id) = r.get(&format!("/schemas/ids/{id1}")).await;
    assert_eq!(by_id, json!({ "schema": v1 }), "no schemaType for AVRO");

    // Lookup finds the version holding a schema.
    let (status, found) = r
        .post("/subjects/orders-value", &json!({ "schema": v1 }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        found,
        json!({ "subject": "orders-value", "version": 1, "id": id1, "schema": v1 })
    );
    let (_, subjects) = r.get("/subjects").await;
    assert_eq!(subjects, json!(["archive-value", "orders-value"]));
}

#[tokio::test]
async fn forward_rejects_removing_a_field_without_default() {
    let r = TestRegistry::start(CompatibilityLevel::Backward).await;
    r.set_level("s", "FORWARD").await;
    TestRegistry::registered(
        r.register("s", &order(&format!("{CUSTOMER},{COFFEE}")))
            .await,
    );
    let message = assert_error(
        &r.register("s", &order(CUSTOMER)).await,
        StatusCode::CONFLICT,
        409,
    );
    assert!(
        message.contains(
            "a reader using version 1 cannot read data written with the new schema: \
             READER_FIELD_MISSING_DEFAULT_VALUE at /fields/1 (field 'coffee')"
        ),
        "{message}"
    );
    // Adding a field without default is fine forward: old readers ignore it.
    TestRegistry::registered(
        r.register("s", &order(&format!("{CUSTOMER},{COFFEE},{PRICE}")))
            .await,
    );
}

#[tokio::test]
async fn full_needs_defaults_both_ways() {
    let r = TestRegistry::start(CompatibilityLevel::Full).await;
    TestRegistry::registered(r.register("s", &order(CUSTOMER)).await);
    let message = assert_error(
        &r.register("s", &order(&format!("{CUSTOMER},{PRICE}")))
            .await,
        StatusCode::CONFLICT,
        409,
    );
    assert!(message.contains("field 'price'"), "{message}");
    assert!(message.contains("{compatibility: 'FULL'}"), "{message}");
    TestRegistry::registered(
        r.register("s", &order(&format!("{CUSTOMER},{PRICE_DEFAULT}")))
            .await,
    );
    // Removing the defaulted field and adding another with a default is fine both ways too.
    TestRegistry::registered(
        r.register(
            "s",
            &order(&format!(
                r#"{CUSTOMER},{{"name":"size","type":"string","default":"M"}}"#
            )),
        )
        .await,
    );
    let (_, versions) = r.get("/subjects/s/versions").await;
    assert_eq!(versions, json!([1, 2, 3]));
}

#[tokio::test]
async fn none_accepts_anything() {
    let r = TestRegistry::start(CompatibilityLevel::None).await;
    TestRegistry::registered(r.register("s", &order(CUSTOMER)).await);
    TestRegistry::registered(r.register("s", r#""string""#).await);
    TestRegistry::registered(r.register("s", &order(&format!("{PRICE},{COFFEE}"))).await);
    let (_, versions) = r.get("/subjects/s/versions").await;
    assert_eq!(versions, json!([1, 2, 3]));
}

#[tokio::test]
async fn transitive_checks_every_version() {
    // v1 has no price; v2 adds it with a default; v3 drops the default. v3 reads v2's data
    // (which has price) but not v1's.
    let v1 = order(CUSTOMER);
    let v2 = order(&format!("{CUSTOMER},{PRICE_DEFAULT}"));
    let v3 = order(&format!("{CUSTOMER},{PRICE}"));

    let plain = TestRegistry::start(CompatibilityLevel::Backward).await;
    for schema in [&v1, &v2, &v3] {
        TestRegistry::registered(plain.register("s", schema).await);
    }

    let transitive = TestRegistry::start(CompatibilityLevel::BackwardTransitive).await;
    TestRegistry::registered(transitive.register("s", &v1).await);
    TestRegistry::registered(transitive.register("s", &v2).await);
    let message = assert_error(
        &transitive.register("s", &v3).await,
        StatusCode::CONFLICT,
        409,
    );
    assert!(message.contains("{oldSchemaVersion: 1}"), "{message}");
    assert!(message.contains("field 'price'"), "{message}");
}

#[tokio::test]
async fn compatibility_endpoint_answers_without_registering() {
    let r = TestRegistry::start(CompatibilityLevel::Backward).await;
    let breaking = json!({ "schema": order(&format!("{CUSTOMER},{PRICE}")) });

    // No versions yet: anything is compatible.
    let (status, answer) = r
        .post("/compatibility/subjects/s/versions/latest", &breaking)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!({ "is_compatible": true }));

    TestRegistry::registered(r.register("s", &order(CUSTOMER)).await);
    let (_, answer) = r
        .post("/compatibility/subjects/s/versions/latest", &breaking)
        .await;
    assert_eq!(answer, json!({ "is_compatible": false }));
    let (_, answer) = r
        .post(
            "/compatibility/subjects/s/versions/1?verbose=true",
            &breaking,
        )
        .await;
    assert_eq!(answer["is_compatible"], json!(false));
    let messages = answer["messages"].as_array().expect("messages");
    assert!(
        messages[0].as_str().is_some_and(
            |m| m.contains("READER_FIELD_MISSING_DEFAULT_VALUE") && m.contains("'price'")
        ),
        "{answer}"
    );
    let fine = json!({ "schema": order(&format!("{CUSTOMER},{PRICE_DEFAULT}")) });
    let (_, answer) = r
        .post("/compatibility/subjects/s/versions?verbose=true", &fine)
        .await;
    assert_eq!(answer, json!({ "is_compatible": true, "messages": [] }));
    let (_, versions) = r.get("/subjects/s/versions").await;
    assert_eq!(versions, json!([1]));
}
