//! Pub/sub fan-out: one Redis subscriber connection per process, one PSUBSCRIBE per distinct
//! pattern (however many sockets use it), messages fanned out in-process to every socket
//! subscribed with that pattern. Redis channels are `<prefix>:ch:<channel>`.
//!
//! Patterns are validated before they reach Redis: channel characters plus `*` and `?` only
//! (no `[...]` classes, no escapes), at most 63 bytes and 4 `*`, so matching stays linear.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use serde_json::value::RawValue;
use tokio::sync::{broadcast, OnceCell};

use crate::error::{ApiError, ApiResult};
use crate::store::Store;

/// Messages buffered per pattern for slow sockets (pub/sub is fire-and-forget: a socket that
/// falls further behind is told how many it missed).
const CAPACITY: usize = 1024;

/// One published message.
#[derive(Debug)]
pub struct PubMessage {
    pub channel: String,
    pub payload: Box<RawValue>,
}

/// Check a subscribe pattern.
pub fn validate_pattern(p: &str) -> Result<(), ApiError> {
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

/// The per-process pub/sub registry.
#[derive(Default)]
pub struct PubSub {
    client: OnceCell<SubscriberClient>,
    patterns: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<PubMessage>>>>>,
}

fn redis_channel(store: &Store, name: &str) -> String {
    format!("{}:ch:{}", store.keys().prefix(), name)
}

impl PubSub {
    async fn client(&self, store: &Store) -> ApiResult<&SubscriberClient> {
        self.client
            .get_or_try_init(|| async {
                let sub = store.subscriber_client().await?;
                let prefix = format!("{}:ch:", store.keys().prefix());
                let patterns = self.patterns.clone();
                let mut rx = sub.message_rx();
                tokio::spawn(async move {
                    loop {
                        let msg = match rx.recv().await {
                            Ok(m) => m,
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(n, "pub/sub dispatcher lagged");
                                continue;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        let Some(channel) = msg.channel.strip_prefix(prefix.as_str()) else {
                            continue;
                        };
                        let Some(text) = msg.value.as_string() else {
                            continue;
                        };
                        let Ok(payload) = RawValue::from_string(text) else {
                            continue;
                        };
                        let m = Arc::new(PubMessage {
                            channel: channel.to_string(),
                            payload,
                        });
                        if let Ok(p) = patterns.lock() {
                            for (pat, tx) in p.iter() {
                                if glob_match(pat, channel) {
                                    let _ = tx.send(m.clone());
                                }
                            }
                        }
                    }
                });
                Ok::<_, ApiError>(sub)
            })
            .await
    }

    /// Receive every message published to a channel matching `pattern` from now on.
    pub async fn subscribe(
        &self,
        store: &Store,
        pattern: &str,
    ) -> ApiResult<broadcast::Receiver<Arc<PubMessage>>> {
        validate_pattern(pattern)?;
        let client = self.client(store).await?;
        let (rx, is_new, stale) = {
            let Ok(mut p) = self.patterns.lock() else {
                return Err(ApiError::internal("pub/sub registry poisoned"));
            };
            // Patterns nobody listens to any more are dropped here.
            let stale: Vec<String> = p
                .iter()
                .filter(|(k, t)| t.receiver_count() == 0 && k.as_str() != pattern)
                .map(|(k, _)| k.clone())
                .collect();
            for k in &stale {
                p.remove(k);
            }
            match p.get(pattern) {
                Some(tx) => (tx.subscribe(), false, stale),
                None => {
                    let (tx, rx) = broadcast::channel(CAPACITY);
                    p.insert(pattern.to_string(), tx);
                    (rx, true, stale)
                }
            }
        };
        for k in stale {
            let _ = client.punsubscribe(redis_channel(store, &k)).await;
        }
        if is_new {
            if let Err(e) = client.psubscribe(redis_channel(store, pattern)).await {
                if let Ok(mut p) = self.patterns.lock() {
                    p.remove(pattern);
                }
                return Err(crate::store::map_redis_error("psubscribe", e));
            }
        }
        Ok(rx)
    }
}

/// Publish a service event (agents, locks, partitions) on `channel`: `msg` plus `time`.
/// Fire-and-forget like all pub/sub; a failure only loses the notification.
pub async fn event(store: &Store, channel: &str, mut msg: serde_json::Value) {
    if let Some(m) = msg.as_object_mut() {
        m.insert(
            "time".into(),
            crate::store::kv::rfc3339(crate::store::kv::now_ms()).into(),
        );
    }
    if let Err(e) = publish(store, channel, &msg.to_string()).await {
        tracing::debug!(channel, error = %e.detail, "event not published");
    }
}

/// PUBLISH a JSON message; returns how many Redis subscriptions (one per pattern per service
/// process) received it.
pub async fn publish(store: &Store, channel: &str, message: &str) -> ApiResult<u64> {
    let ch = redis_channel(store, channel);
    store
        .timed("publish", store.client().publish::<u64, _, _>(ch, message))
        .await
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
}
