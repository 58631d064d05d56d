//! Looking into a schema's JSON (an `.avsc` file's contents) to word a message: a record field
//! found by name, a type in a few words.

use serde_json::Value;

/// The first record field named `name`, searching the whole schema depth-first.
pub(super) fn find_field<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
    match schema {
        Value::Object(map) => {
            if let Some(fields) = map.get("fields").and_then(Value::as_array) {
                if let Some(f) = fields.iter().find(|f| f["name"] == name) {
                    return Some(f);
                }
                for f in fields {
                    if let Some(found) = find_field(&f["type"], name) {
                        return Some(found);
                    }
                }
            }
            map.get("items")
                .or_else(|| map.get("values"))
                .and_then(|inner| find_field(inner, name))
        }
        Value::Array(branches) => branches.iter().find_map(|b| find_field(b, name)),
        _ => None,
    }
}

/// A type as one short word or union: `int`, `[null, long, string]`, `record Address`.
pub(super) fn type_text(t: &Value) -> String {
    match t {
        Value::String(s) => s.clone(),
        Value::Array(branches) => {
            let inner: Vec<String> = branches.iter().map(type_text).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => match map.get("type").and_then(Value::as_str) {
            Some(kind @ ("record" | "enum" | "fixed")) => {
                format!(
                    "{kind} {}",
                    map.get("name").and_then(Value::as_str).unwrap_or("?")
                )
            }
            Some(kind) => kind.to_owned(),
            None => t.to_string(),
        },
        other => other.to_string(),
    }
}
