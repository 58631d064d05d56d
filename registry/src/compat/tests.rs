//! The compatibility rules on small `shop.Order` schemas: level names, each rule named and
//! located, and which versions the transitive levels reach.

use super::*;

fn schema(json: &str) -> Schema {
    Schema::parse_str(json).unwrap()
}

fn order(fields: &str) -> Schema {
    schema(&format!(
        r#"{{"type":"record","name":"Order","namespace":"shop","fields":[{fields}]}}"#
    ))
}

const CUSTOMER: &str = r#"{"name":"customer","type":"string"}"#;
const PRICE: &str = r#"{"name":"price","type":"long"}"#;
const PRICE_DEFAULT: &str = r#"{"name":"price","type":"long","default":0}"#;

#[test]
fn level_names_round_trip_and_ignore_case() {
    for level in CompatibilityLevel::ALL {
        assert_eq!(level.to_string().parse::<CompatibilityLevel>(), Ok(level));
    }
    assert_eq!(
        "full_transitive".parse::<CompatibilityLevel>(),
        Ok(CompatibilityLevel::FullTransitive)
    );
    let err = "SIDEWAYS".parse::<CompatibilityLevel>().unwrap_err();
    assert!(err.to_string().contains("'SIDEWAYS'"), "{err}");
}

#[test]
fn added_field_without_default_breaks_backward_naming_the_field() {
    let v1 = order(CUSTOMER);
    let v2 = order(&format!("{CUSTOMER},{PRICE}"));
    let err = check(CompatibilityLevel::Backward, &v2, &[v1]).unwrap_err();
    assert_eq!(err.version, 1);
    assert_eq!(err.direction, Direction::Backward);
    assert_eq!(
        err.reasons,
        vec![Reason {
            rule: Rule::ReaderFieldMissingDefaultValue,
            path: "/fields/1".into(),
            field: Some("price".into()),
            detail: "the writer has no such field and the reader gives it no default value".into(),
        }]
    );
    assert_eq!(
        err.to_string(),
        "new schema is not BACKWARD compatible with version 1: a reader using the new \
         schema cannot read data written with version 1: READER_FIELD_MISSING_DEFAULT_VALUE \
         at /fields/1 (field 'price'): the writer has no such field and the reader gives it \
         no default value"
    );
    assert!(err.avro_error.unwrap().contains("'price'"));
}

#[test]
fn added_field_with_default_is_full_compatible() {
    let v1 = order(CUSTOMER);
    let v2 = order(&format!("{CUSTOMER},{PRICE_DEFAULT}"));
    for level in CompatibilityLevel::ALL {
        assert_eq!(
            check(level, &v2, std::slice::from_ref(&v1)),
            Ok(()),
            "{level}"
        );
    }
}

#[test]
fn removed_field_without_default_breaks_forward() {
    let v1 = order(&format!("{CUSTOMER},{PRICE}"));
    let v2 = order(CUSTOMER);
    assert_eq!(
        check(CompatibilityLevel::Backward, &v2, std::slice::from_ref(&v1)),
        Ok(())
    );
    let err = check(CompatibilityLevel::Forward, &v2, &[v1]).unwrap_err();
    assert_eq!(err.direction, Direction::Forward);
    assert_eq!(err.reasons[0].rule, Rule::ReaderFieldMissingDefaultValue);
    assert!(
        err.to_string()
            .contains("a reader using version 1 cannot read data written with the new schema"),
        "{err}"
    );
}

#[test]
fn type_change_names_the_path_and_types() {
    let v1 = order(&format!("{CUSTOMER},{PRICE}"));
    let v2 = order(&format!(r#"{CUSTOMER},{{"name":"price","type":"string"}}"#));
    let err = check(CompatibilityLevel::Backward, &v2, &[v1]).unwrap_err();
    assert_eq!(
        err.reasons[0].to_string(),
        "TYPE_MISMATCH at /fields/1/type (field 'price'): the reader's type string cannot \
         read the writer's type long"
    );
    // int → long is a promotion Avro allows.
    let v1 = order(r#"{"name":"qty","type":"int"}"#);
    let v2 = order(r#"{"name":"qty","type":"long"}"#);
    assert_eq!(check(CompatibilityLevel::Backward, &v2, &[v1]), Ok(()));
}

#[test]
fn nested_and_partial_problems_are_located() {
    let v1 = order(
        r#"{"name":"size","type":{"type":"enum","name":"Size","symbols":["S","M","L"]}},
           {"name":"note","type":["null","string"],"default":null},
           {"name":"address","type":["null",{"type":"record","name":"Address",
             "fields":[{"name":"street","type":"string"}]}],"default":null}"#,
    );
    let v2 = order(
        r#"{"name":"size","type":{"type":"enum","name":"Size","symbols":["S","M"]}},
           {"name":"note","type":["null","long"],"default":null},
           {"name":"address","type":["null",{"type":"record","name":"Address",
             "fields":[{"name":"street","type":"string"},{"name":"zip","type":"string"}]}],
             "default":null}"#,
    );
    let err = check(CompatibilityLevel::Backward, &v2, &[v1]).unwrap_err();
    let reasons: Vec<String> = err.reasons.iter().map(ToString::to_string).collect();
    assert_eq!(
        reasons,
        vec![
            "MISSING_ENUM_SYMBOLS at /fields/0/type/symbols (field 'size'): the reader's \
             enum shop.Size lacks the writer's symbols [L] and has no default",
            "MISSING_UNION_BRANCH at /fields/1/type/1 (field 'note'): the reader's union \
             has no branch for the writer's type string",
            "READER_FIELD_MISSING_DEFAULT_VALUE at /fields/2/type/1/fields/1 (field \
             'address.zip'): the writer has no such field and the reader gives it no \
             default value",
        ]
    );
}

#[test]
fn renamed_record_and_resized_fixed() {
    let v1 = order(CUSTOMER);
    let v2 = schema(r#"{"type":"record","name":"Purchase","fields":[]}"#);
    let err = check(CompatibilityLevel::Backward, &v2, &[v1]).unwrap_err();
    assert_eq!(err.reasons[0].rule, Rule::NameMismatch);
    assert_eq!(err.reasons[0].path, "/name");

    let v1 = schema(r#"{"type":"fixed","name":"Hash","size":16}"#);
    let v2 = schema(r#"{"type":"fixed","name":"Hash","size":32}"#);
    let err = check(CompatibilityLevel::Backward, &v2, &[v1]).unwrap_err();
    assert_eq!(err.reasons[0].rule, Rule::FixedSizeMismatch);
    assert_eq!(err.reasons[0].path, "/size");
}

#[test]
fn transitive_levels_check_every_version() {
    let v1 = order(CUSTOMER);
    let v2 = order(&format!("{CUSTOMER},{PRICE_DEFAULT}"));
    let v3 = order(&format!("{CUSTOMER},{PRICE}"));
    let history = [v1, v2];
    assert_eq!(check(CompatibilityLevel::Backward, &v3, &history), Ok(()));
    let err = check(CompatibilityLevel::BackwardTransitive, &v3, &history).unwrap_err();
    assert_eq!(err.version, 1);
    assert_eq!(err.level, CompatibilityLevel::BackwardTransitive);
}

#[test]
fn none_accepts_anything() {
    let v1 = order(CUSTOMER);
    let v2 = schema(r#""string""#);
    assert_eq!(check(CompatibilityLevel::None, &v2, &[v1]), Ok(()));
}
