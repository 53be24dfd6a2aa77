//! Names and limits (DESIGN.md "Names and limits"): namespaces, queues, locks, channels,
//! partitions and agent ids share one rule; keys are free UTF-8; channel patterns are bounded
//! globs. Glob characters in names are impossible and in keys literal, so nothing a client
//! sends is ever a Redis pattern.

use crate::error::{ApiError, ApiResult};

/// Longest key in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Longest TTL (and delay): ten years.
pub const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Largest safe integer for counters (2^53 - 1).
pub const MAX_SAFE_INT: i64 = 9_007_199_254_740_991;

/// Namespace (and queue, lock, channel, partition, agent) names: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn validate_name(kind: &str, name: &str) -> ApiResult<()> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_name(format!(
            "{kind} name `{}` must match [a-z0-9][a-z0-9._-]{{0,62}}",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Keys: 1..=512 bytes of UTF-8 without control characters.
pub fn validate_key(key: &str) -> ApiResult<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid_name(format!(
            "keys must be 1 to {MAX_KEY_BYTES} bytes (got {})",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::invalid_name("keys may not contain control characters"));
    }
    Ok(())
}

/// A key prefix for listings and watches: at most 512 bytes without control characters.
pub fn validate_prefix(prefix: &str) -> ApiResult<()> {
    if prefix.len() > MAX_KEY_BYTES || prefix.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "prefix must be at most 512 bytes without control characters",
        ));
    }
    Ok(())
}

/// Free-text identifiers in bodies and headers (workers, owners, tokens, keys of idempotency):
/// 1 to `max` bytes without control characters.
pub fn validate_text(name: &str, v: &str, max: usize) -> ApiResult<()> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name} must be 1 to {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// `v` within `lo ..= hi`, or 400 naming the field.
pub fn check_range(name: &str, v: u64, lo: u64, hi: u64) -> ApiResult<()> {
    if v < lo || v > hi {
        return Err(ApiError::bad_request(format!(
            "{name} must be between {lo} and {hi}"
        )));
    }
    Ok(())
}

/// A fencing token `<lock>:<n>` (x-fencing-token): the lock's name and the token it granted.
pub fn parse_fence(v: &str) -> Option<(&str, u64)> {
    let (lock, n) = v.rsplit_once(':')?;
    validate_name("lock", lock).ok()?;
    let n = n.parse::<u64>().ok().filter(|n| *n >= 1)?;
    Some((lock, n))
}

/// Check a subscribe pattern: channel characters plus `*` and `?` only (no `[...]` classes,
/// no escapes), at most 63 bytes and 4 `*`, so matching stays linear.
pub fn validate_pattern(p: &str) -> ApiResult<()> {
    let ok_chars = p
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-*?".contains(&c));
    let stars = p.bytes().filter(|c| *c == b'*').count();
    if p.is_empty() || p.len() > 63 || !ok_chars || stars > 4 {
        return Err(ApiError::invalid_name(
            "channel patterns are 1-63 characters of [a-z0-9._-] plus the wildcards * and ? (at most 4 *)",
        ));
    }
    Ok(())
}

/// Glob match with `*` (any run) and `?` (one byte), iterative with one backtrack point.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("build.*", "build.1"));
        assert!(glob_match("build.*", "build."));
        assert!(!glob_match("build.*", "deploy.1"));
        assert!(glob_match("b?ild*", "build.x.y"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn patterns_are_bounded() {
        assert!(validate_pattern("build.*").is_ok());
        for bad in ["", "a[bc]", "a\\*", "UPPER", "a*b*c*d*e*f", &"x".repeat(64)] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_fences() {
        assert!(validate_name("namespace", "app-1.x_y").is_ok());
        for bad in ["", "App", "-a", "a*", "a{b}", &"a".repeat(64)] {
            assert!(validate_name("namespace", bad).is_err(), "{bad}");
        }
        assert_eq!(parse_fence("db:7"), Some(("db", 7)));
        assert_eq!(parse_fence("db:0"), None);
        assert_eq!(parse_fence("DB:1"), None);
        assert_eq!(parse_fence("db"), None);
    }
}
