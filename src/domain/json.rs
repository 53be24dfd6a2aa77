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

/// Integer fields of request bodies, read as JSON Schema counts integers: `5` and also `5.0`
/// (what Python's `json.dumps` writes for a float that happens to be whole, and what
/// schema-driven clients may send for `type: integer`). A fraction, or a float beyond 2^53
/// (where floats stop being exact), is refused like any other wrong type. Use with
/// `#[serde(deserialize_with = "int::req")]`, or `#[serde(default, deserialize_with =
/// "int::opt")]` on `Option` fields.
pub mod int {
    use std::fmt;

    use serde::de::{Deserializer, Error, Visitor};
    use serde::Deserialize;

    /// 2^53: every whole float below it is exact (2^53 + 1 parses as 2^53, so it is refused).
    const EXACT: f64 = 9_007_199_254_740_992.0;

    struct Integral(i128);

    impl<'de> Deserialize<'de> for Integral {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Integral;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("an integer")
                }
                fn visit_u64<E: Error>(self, v: u64) -> Result<Integral, E> {
                    Ok(Integral(v.into()))
                }
                fn visit_i64<E: Error>(self, v: i64) -> Result<Integral, E> {
                    Ok(Integral(v.into()))
                }
                fn visit_f64<E: Error>(self, v: f64) -> Result<Integral, E> {
                    if v.fract() == 0.0 && v.abs() < EXACT {
                        Ok(Integral(v as i128))
                    } else {
                        Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
                    }
                }
            }
            d.deserialize_any(V)
        }
    }

    fn fit<T: TryFrom<i128>, E: Error>(v: i128) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    pub fn req<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
        fit(Integral::deserialize(d)?.0)
    }

    pub fn opt<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
        Option::<Integral>::deserialize(d)?.map(|i| fit(i.0)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Body {
        #[serde(deserialize_with = "int::req")]
        n: u64,
        #[serde(default, deserialize_with = "int::opt")]
        m: Option<u8>,
    }

    #[test]
    fn whole_floats_are_integers() {
        let b: Body = serde_json::from_str(r#"{"n": 2500.0, "m": 7.0}"#).unwrap();
        assert_eq!(b, Body { n: 2500, m: Some(7) });
        let b: Body = serde_json::from_str(r#"{"n": 3}"#).unwrap();
        assert_eq!(b, Body { n: 3, m: None });
        let b: Body = serde_json::from_str(r#"{"n": 3, "m": null}"#).unwrap();
        assert_eq!(b.m, None);
        for bad in [
            r#"{"n": 2.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": "3"}"#,
            r#"{"n": 1, "m": 256}"#,
        ] {
            assert!(serde_json::from_str::<Body>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":[true,null]}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"a":[true,null],"b":1}"#);
    }
}
