//! A real Confluent client (schema_registry_converter) registers, encodes and decodes through
//! the registry.

use apache_avro::types::Value;
use barista_registry::CompatibilityLevel;
use reqwest::StatusCode;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::{order, TestRegistry, COFFEE, CUSTOMER};

#[tokio::test]
async fn confluent_client_round_trip() {
    let registry = TestRegistry::start(CompatibilityLevel::Backward).await;
    let settings = SrSettings::new(registry.registry().url().to_owned());
    let encoder = AvroEncoder::new(settings.clone());
    let decoder = AvroDecoder::new(settings);
    let schema = order(&format!("{CUSTOMER},{COFFEE}"));
    let supplied = SuppliedSchema::new(Some("shop.Order".into()), SchemaType::Avro, schema);
    let fields = || {
        vec![
            ("customer", Value::String("ada".into())),
            ("coffee", Value::String("flat white".into())),
        ]
    };

    // With a supplied schema the client registers it under "orders-value".
    let strategy =
        SubjectNameStrategy::TopicNameStrategyWithSchema("orders".into(), false, supplied);
    let bytes = encoder.encode(fields(), strategy).await.expect("encode");

    let (status, latest) = registry.get("/subjects/orders-value/versions/latest").await;
    assert_eq!(status, StatusCode::OK, "{latest}");
    assert_eq!(latest["version"], 1);
    let id = u32::try_from(latest["id"].as_u64().expect("id")).expect("id fits u32");
    assert_eq!(bytes[0], 0, "magic byte");
    assert_eq!(bytes[1..5], id.to_be_bytes(), "schema id");

    let decoded = decoder.decode(Some(&bytes)).await.expect("decode");
    assert_eq!(
        decoded.value,
        Value::Record(
            fields()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect()
        )
    );

    // Without one it encodes with the latest version of the subject: same bytes.
    let latest_strategy = SubjectNameStrategy::TopicNameStrategy("orders".into(), false);
    let again = AvroEncoder::new(SrSettings::new(registry.registry().url().to_owned()))
        .encode(fields(), latest_strategy)
        .await
        .expect("encode with latest");
    assert_eq!(again, bytes);
}
