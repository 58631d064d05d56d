use super::fake::{closed_port, serve, silent};
use super::*;

fn registry(url: &str) -> Registry {
    Registry::new(url, Duration::from_secs(5)).unwrap()
}

#[tokio::test]
async fn register_posts_the_schema_and_returns_its_id() {
    let fake = serve(vec![(200, r#"{"id": 42}"#)]).await;
    let id = registry(&format!("{}/", fake.url))
        .register("shop.t-value", r#"{"type":"string"}"#)
        .await
        .unwrap();
    assert_eq!(id, 42);
    let asked = fake.requests();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].line,
        "POST /subjects/shop.t-value/versions HTTP/1.1"
    );
    assert!(
        asked[0]
            .headers
            .contains(&("content-type".into(), SCHEMA_REGISTRY_JSON.into())),
        "{:?}",
        asked[0].headers
    );
    let body: Value = serde_json::from_str(&asked[0].body).unwrap();
    assert_eq!(body, json!({ "schema": r#"{"type":"string"}"# }));
}

#[tokio::test]
async fn incompatible_and_invalid_schemas_are_refused_with_the_registrys_code_and_message() {
    let fake = serve(vec![
        (
            409,
            r#"{"error_code": 409, "message": "Schema being registered is incompatible"}"#,
        ),
        (
            422,
            r#"{"error_code": 42201, "message": "Either the input schema or one of its references is invalid"}"#,
        ),
    ])
    .await;
    let r = registry(&fake.url);
    match r.register("t-value", "{}").await {
        Err(RegistryError::Refused {
            status: 409,
            error_code: 409,
            message,
        }) => assert_eq!(message, "Schema being registered is incompatible"),
        other => panic!("{other:?}"),
    }
    match r.register("t-value", "{}").await {
        Err(RegistryError::Refused {
            status: 422,
            error_code: 42201,
            message,
        }) => assert!(message.contains("is invalid"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_4xx_without_a_confluent_body_is_still_refused() {
    let fake = serve(vec![(403, "")]).await;
    match registry(&fake.url).register("t-value", "{}").await {
        Err(RegistryError::Refused {
            status: 403,
            error_code: 403,
            message,
        }) => assert_eq!(message, "Forbidden"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_errors_and_please_retry_answers_are_unavailable() {
    let fake = serve(vec![
        (500, r#"{"error_code": 50001, "message": "store failed"}"#),
        (503, "upstream starting"),
        (429, ""),
    ])
    .await;
    let r = registry(&fake.url);
    for expect in ["500", "503", "429"] {
        match r.register("t-value", "{}").await {
            Err(RegistryError::Unavailable(why)) => assert!(why.contains(expect), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_closed_port_is_unavailable_and_says_why() {
    match registry(&closed_port()).register("t-value", "{}").await {
        Err(RegistryError::Unavailable(why)) => {
            assert!(why.to_lowercase().contains("connect"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_registry_that_never_answers_times_out_as_unavailable() {
    let (url, server) = silent().await;
    let r = Registry::new(&url, Duration::from_millis(100)).unwrap();
    match r.register("t-value", "{}").await {
        Err(RegistryError::Unavailable(why)) => assert!(why.contains("timed out"), "{why}"),
        other => panic!("{other:?}"),
    }
    server.abort();
}

#[tokio::test]
async fn a_success_without_an_id_or_a_malformed_url_is_unexpected() {
    let fake = serve(vec![(200, "<html>not a registry</html>")]).await;
    assert!(matches!(
        registry(&fake.url).register("t-value", "{}").await,
        Err(RegistryError::Unexpected(_))
    ));
    assert!(matches!(
        registry("localhost:8081").register("t-value", "{}").await,
        Err(RegistryError::Unexpected(_))
    ));
}

#[tokio::test]
async fn compatibility_is_empty_for_a_new_subject_and_lists_the_registrys_reasons() {
    let fake = serve(vec![
        (404, r#"{"error_code": 40401, "message": "Subject not found"}"#),
        (200, r#"{"is_compatible": true}"#),
        (
            200,
            r#"{"is_compatible": false, "messages": ["{oldSchemaVersion: 1}", "READER_FIELD_MISSING_DEFAULT_VALUE at /fields/2", "{compatibility: 'BACKWARD'}"]}"#,
        ),
        (200, r#"{"is_compatible": false}"#),
        (409, r#"{"error_code": 40901, "message": "no"}"#),
    ])
    .await;
    let r = registry(&fake.url);
    assert!(r.compatibility("t-value", "{}").await.unwrap().is_empty());
    assert!(r.compatibility("t-value", "{}").await.unwrap().is_empty());
    assert_eq!(
        r.compatibility("t-value", "{}").await.unwrap(),
        ["READER_FIELD_MISSING_DEFAULT_VALUE at /fields/2"]
    );
    assert_eq!(
        r.compatibility("t-value", "{}").await.unwrap(),
        ["incompatible (the registry gave no reason)"]
    );
    assert!(matches!(
        r.compatibility("t-value", "{}").await,
        Err(RegistryError::Refused { status: 409, .. })
    ));
    assert_eq!(
        fake.requests()[0].line,
        "POST /compatibility/subjects/t-value/versions/latest?verbose=true HTTP/1.1"
    );
}

#[tokio::test]
async fn level_reads_the_subjects_level_or_the_global_one() {
    let fake = serve(vec![(200, r#"{"compatibilityLevel": "FULL"}"#)]).await;
    assert_eq!(registry(&fake.url).level("t-value").await.unwrap(), "FULL");
    assert_eq!(
        fake.requests()[0].line,
        "GET /config/t-value?defaultToGlobal=true HTTP/1.1"
    );
}
