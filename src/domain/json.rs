//! Canonical JSON: the one text form values are stored, compared and published in.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Canonical JSON text of a value: compact, object keys sorted (serde_json's map is ordered).
pub fn canonical(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Deserialize a field that must be present but may be `null` (`Some(Value::Null)`), so a
/// missing `value` can be told from `"value": null`.
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":[true,null]}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"a":[true,null],"b":1}"#);
    }
}
