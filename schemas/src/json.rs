//! The read API's JSON encoding of SQLite values: every storage class
//! round-trips exactly, so a client can tell `1` (INTEGER) from `1.0` (REAL)
//! and `'abc'` (TEXT) from `x'616263'` (BLOB).
//!
//! | storage class | JSON                                   |
//! |---------------|----------------------------------------|
//! | NULL          | `null`                                 |
//! | INTEGER       | a number without fraction or exponent, exact over the whole i64 range |
//! | TEXT          | a string                               |
//! | REAL          | `{"real": 1.5}`; infinities as `{"real": "Infinity"}` / `{"real": "-Infinity"}` |
//! | BLOB          | `{"blob": "<standard base64, padded>"}` |
//!
//! REAL is tagged because most JSON parsers drop the difference between `1`
//! and `1.0`; INTEGER is not, because it is the common case and serde_json
//! (like Python, Go's `json.Number`, Java's Jackson) reads it exactly. A
//! JavaScript client needs a big-integer-aware parser beyond 2^53. A Rust
//! client needs serde_json's `float_roundtrip` feature (the workspace turns it
//! on) for REAL values to come back bit for bit.

use base64::Engine;
use serde_json::{json, Value};

use crate::SqlValue;

/// Encodes one value (see the module table).
pub fn to_json(v: &SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => json!(i),
        SqlValue::Text(s) => Value::String(s.clone()),
        SqlValue::Real(f) if f.is_finite() => json!({ "real": f }),
        SqlValue::Real(f) if *f > 0.0 => json!({ "real": "Infinity" }),
        // SQLite stores NaN as NULL, so a non-finite value that is not
        // positive is negative infinity.
        SqlValue::Real(_) => json!({ "real": "-Infinity" }),
        SqlValue::Blob(b) => json!({ "blob": base64::engine::general_purpose::STANDARD.encode(b) }),
    }
}

/// Decodes one value; the inverse of [`to_json`]. A JSON number with a
/// fraction or exponent is taken as REAL, for hand-written requests.
pub fn from_json(v: &Value) -> Result<SqlValue, String> {
    match v {
        Value::Null => Ok(SqlValue::Null),
        Value::String(s) => Ok(SqlValue::Text(s.clone())),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(SqlValue::Integer(i)),
            None => n
                .as_f64()
                .map(SqlValue::Real)
                .ok_or_else(|| format!("number {n} is neither an i64 nor a double")),
        },
        Value::Object(o) if o.len() == 1 => match o.iter().next() {
            Some((k, Value::Number(n))) if k == "real" => n
                .as_f64()
                .map(SqlValue::Real)
                .ok_or_else(|| format!("bad real {n}")),
            Some((k, Value::String(s))) if k == "real" => match s.as_str() {
                "Infinity" => Ok(SqlValue::Real(f64::INFINITY)),
                "-Infinity" => Ok(SqlValue::Real(f64::NEG_INFINITY)),
                _ => Err(format!("bad real {s:?}")),
            },
            Some((k, Value::String(s))) if k == "blob" => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(SqlValue::Blob)
                .map_err(|e| format!("bad base64 in blob: {e}")),
            _ => Err(format!(
                "expected {{\"real\": …}} or {{\"blob\": …}}, got {v}"
            )),
        },
        _ => Err(format!("not a SQLite value: {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = SqlValue> {
        prop_oneof![
            Just(SqlValue::Null),
            any::<i64>().prop_map(SqlValue::Integer),
            any::<f64>()
                .prop_filter("SQLite has no NaN", |f| !f.is_nan())
                .prop_map(SqlValue::Real),
            ".*".prop_map(SqlValue::Text),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(SqlValue::Blob),
        ]
    }

    proptest! {
        #[test]
        fn every_storage_class_round_trips_through_json_text(v in value()) {
            let text = serde_json::to_string(&to_json(&v)).unwrap();
            let back = from_json(&serde_json::from_str(&text).unwrap()).unwrap();
            prop_assert_eq!(back, v);
        }
    }

    #[test]
    fn the_documented_shapes() {
        assert_eq!(
            to_json(&SqlValue::Integer(i64::MAX)).to_string(),
            "9223372036854775807"
        );
        assert_eq!(to_json(&SqlValue::Real(1.0)).to_string(), r#"{"real":1.0}"#);
        assert_eq!(
            to_json(&SqlValue::Blob(vec![0, 255])).to_string(),
            r#"{"blob":"AP8="}"#
        );
        assert_eq!(
            to_json(&SqlValue::Real(f64::NEG_INFINITY)).to_string(),
            r#"{"real":"-Infinity"}"#
        );
    }
}
