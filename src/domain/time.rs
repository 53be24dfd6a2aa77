//! Time as the API shows it: unix milliseconds inside, RFC 3339 outside.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// This host's clock, unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    // humantime formats years up to 9999; clamp rather than fail on absurd stored times.
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX_MS) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A point in time given as RFC 3339 text or unix milliseconds.
pub fn parse_instant_ms(v: &Value, field: &str) -> ApiResult<i64> {
    let bad = || ApiError::bad_request(format!("{field} must be an RFC 3339 time or unix milliseconds"));
    match v {
        Value::Number(n) => n.as_i64().filter(|n| *n >= 0).ok_or_else(bad),
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s).map_err(|_| bad())?;
            let d = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?;
            Ok(d.as_millis() as i64)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_clamp_instead_of_failing() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(parse_instant_ms(&Value::from(5), "t").unwrap(), 5);
        assert!(parse_instant_ms(&Value::from(-5), "t").is_err());
        assert_eq!(
            parse_instant_ms(&Value::from("1970-01-01T00:00:01Z"), "t").unwrap(),
            1000
        );
    }
}
