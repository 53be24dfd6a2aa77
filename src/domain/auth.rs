//! Bearer tokens and the one rule deciding what a caller may do. The tokens file holds
//! `[[token]]` entries (name, hex SHA-256 of the secret, scope globs, permission, budget,
//! agent binding); [`Caller::check`] is called by every operation, whatever the transport.
//!
//! - `namespaces` globs cover namespaces and the partitions of the same name, `queues` queue
//!   names, `channels` pub/sub channels. The service's own channels are scoped by what they
//!   describe: `locks.<ns>.<lock>` by the namespace, `partitions.<name>` by the partition's
//!   namespace, `agents.<id>` like reading that agent (any read token).
//! - Permissions are ordered: read < write < admin.
//! - With `agents` set, every identity the request claims (`x-agent-id`, a lock's `owner`, a
//!   lease's `worker`, a partition's `owner_agent`) must match one of the globs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::names::glob_match;
use crate::error::{ApiError, ApiResult};

/// What a token may do, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// GET, list, watch, subscribe.
    Read,
    /// Key/value writes, enqueue, lease/ack, publish, locks, its own agents' lifecycle.
    Write,
    /// Partitions, the pool, other agents' lifecycle.
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Admin => "admin",
        }
    }
}

/// One `[[token]]` entry as written in the tokens file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Shown in logs and metrics, never the secret.
    pub name: String,
    /// Hex SHA-256 of the bearer token.
    pub sha256: String,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub queues: Vec<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    pub permission: Permission,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// A validated token: its digest and scope.
#[derive(Debug)]
pub struct Token {
    pub entry: TokenEntry,
    digest: [u8; 32],
}

impl Token {
    /// Whether both are the same secret (digest compared in constant time).
    pub fn same_secret(&self, other: &Token) -> bool {
        bool::from(self.digest.ct_eq(&other.digest))
    }
}

/// Parse and validate a tokens file (TOML). Errors name the entry and the field.
pub fn parse_tokens(text: &str) -> Result<Vec<Token>, String> {
    let file: TokensFile = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out: Vec<Token> = Vec::with_capacity(file.token.len());
    for (i, entry) in file.token.into_iter().enumerate() {
        let at = format!("token #{} (`{}`)", i + 1, entry.name);
        if entry.name.is_empty() || entry.name.len() > 64 || entry.name.chars().any(|c| c.is_control()) {
            return Err(format!("{at}: name must be 1-64 printable characters"));
        }
        let digest = decode_hex32(&entry.sha256)
            .ok_or_else(|| format!("{at}: sha256 must be 64 hex digits (the SHA-256 of the token)"))?;
        for (field, globs) in [
            ("namespaces", &entry.namespaces),
            ("queues", &entry.queues),
            ("channels", &entry.channels),
        ] {
            for g in globs {
                check_glob(g).map_err(|e| format!("{at}: {field}: {e}"))?;
            }
        }
        for g in entry.agents.iter().flatten() {
            if g.is_empty() || g.len() > 128 || g.chars().any(|c| c.is_control()) {
                return Err(format!("{at}: agents: globs are 1-128 printable characters"));
            }
        }
        if entry.rate_per_sec == Some(0) {
            return Err(format!(
                "{at}: rate_per_sec must be at least 1 (leave it out for no budget)"
            ));
        }
        if out.iter().any(|t| t.entry.name == entry.name) {
            return Err(format!("{at}: another token has this name"));
        }
        if out.iter().any(|t| t.digest == digest) {
            return Err(format!("{at}: another token has this sha256"));
        }
        out.push(Token { entry, digest });
    }
    Ok(out)
}

fn check_glob(g: &str) -> Result<(), String> {
    let ok = !g.is_empty()
        && g.len() <= 63
        && g.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-*?".contains(&c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{g}`: globs are 1-63 characters of [a-z0-9._-] and the wildcards * and ?"
        ))
    }
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new token: 32 random bytes from the OS, `sst_` + base64url. Returns the secret and its
/// `[[token]]` entry (TOML) for the tokens file, validated like the file itself.
pub fn new_token(mut entry: TokenEntry) -> Result<(String, String), String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let secret = format!(
        "sst_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    entry.sha256 = sha256_hex(&secret);
    let text = toml::to_string(&TokensFile { token: vec![entry] }).map_err(|e| e.to_string())?;
    parse_tokens(&text)?;
    Ok((secret, text))
}

/// Hex SHA-256 of a bearer token (what the tokens file stores).
pub fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Tokens by digest, for [`find_token`].
pub type TokenIndex = std::collections::HashMap<[u8; 32], Arc<Token>>;

/// Index tokens by digest.
pub fn index_tokens(tokens: &[Arc<Token>]) -> TokenIndex {
    tokens.iter().map(|t| (t.digest, t.clone())).collect()
}

/// The token whose digest is the SHA-256 of `presented`. The candidate is found by its digest
/// (what an attacker can compute anyway: the lookup's timing says nothing about the stored
/// secrets) and confirmed with a constant-time comparison of the digests.
pub fn find_token<'a>(index: &'a TokenIndex, presented: &str) -> Option<&'a Arc<Token>> {
    let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    index.get(&digest).filter(|t| bool::from(t.digest.ct_eq(&digest)))
}

/// What an operation touches, for [`Caller::check`].
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// A namespace, or the partition of that name.
    Namespace(&'a str),
    Queue(&'a str),
    /// A pub/sub channel name (a literal, not a pattern).
    Channel(&'a str),
    /// An agent's lifecycle (register, heartbeat, state): its own with write, others' with admin.
    Agent(&'a str),
    /// An identity the request claims (`x-agent-id`, owner, worker): must match `agents`.
    ActAs(&'a str),
    /// The deployment as a whole (status, metrics, the pool).
    Service,
}

/// Who is asking: anyone (no tokens file configured) or a known token.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No tokens file: every operation is allowed (the service then listens on loopback only,
    /// unless started with `insecure_no_auth`).
    Open,
    Token(Arc<Token>),
}

impl Caller {
    /// The token's name (`anonymous` when no tokens are configured), for logs and idempotency records.
    pub fn name(&self) -> &str {
        match self {
            Caller::Open => "anonymous",
            Caller::Token(t) => &t.entry.name,
        }
    }

    /// Ok when this caller may do `perm` on `scope`; 403 `forbidden` naming what is missing.
    pub fn check(&self, perm: Permission, scope: Scope<'_>) -> ApiResult<()> {
        let Caller::Token(t) = self else {
            return Ok(());
        };
        let e = &t.entry;
        let need = |what: String| {
            Err(ApiError::forbidden(format!(
                "token `{}` may not do this: it needs {} on {what}",
                e.name,
                perm.as_str()
            )))
        };
        let covered = match scope {
            Scope::Namespace(ns) => any_glob(&e.namespaces, ns),
            Scope::Queue(q) => any_glob(&e.queues, q),
            Scope::Channel(c) => return self.check_channel(perm, c),
            Scope::ActAs(id) => {
                if !self.may_act_as(id) {
                    return Err(ApiError::forbidden(format!(
                        "token `{}` may not act as agent `{id}` (its `agents` globs do not match)",
                        e.name
                    )));
                }
                true
            }
            Scope::Agent(id) => {
                // A token's own agents are the ones its `agents` globs name; any other agent's
                // lifecycle (re-registering it, a state that frees its locks and leases in
                // whatever namespace or queue) is an admin operation.
                let own = e.agents.as_ref().is_some_and(|g| any_glob(g, id));
                if perm > Permission::Read && !own && e.permission < Permission::Admin {
                    return need(format!(
                        "agent `{id}` (only agents matching the token's `agents` globs are its own; others need admin)"
                    ));
                }
                true
            }
            Scope::Service => true,
        };
        if !covered {
            return need(describe(scope));
        }
        if e.permission < perm {
            return Err(ApiError::forbidden(format!(
                "token `{}` has {} permission; this needs {} on {}",
                e.name,
                e.permission.as_str(),
                perm.as_str(),
                describe(scope)
            )));
        }
        Ok(())
    }

    /// Whether `check` would pass (for filtering listings and deliveries).
    pub fn may(&self, perm: Permission, scope: Scope<'_>) -> bool {
        self.check(perm, scope).is_ok()
    }

    /// Whether the request may claim to be agent `id`.
    pub fn may_act_as(&self, id: &str) -> bool {
        match self {
            Caller::Open => true,
            Caller::Token(t) => match &t.entry.agents {
                None => true,
                Some(globs) => globs.iter().any(|g| glob_match(g, id)),
            },
        }
    }

    /// A pub/sub channel: the service's own channels follow what they describe, and only the
    /// service (or an admin) publishes on them, so their events can be trusted.
    fn check_channel(&self, perm: Permission, c: &str) -> ApiResult<()> {
        if perm > Permission::Read && is_service_channel(c) {
            if let Caller::Token(t) = self {
                if t.entry.permission < Permission::Admin {
                    return Err(ApiError::forbidden(format!(
                        "token `{}` may not publish on `{c}`: locks.*, partitions.* and agents.* carry the service's own events (admin only)",
                        t.entry.name
                    )));
                }
            }
        }
        if let Some(rest) = c.strip_prefix("locks.") {
            // `locks.<ns>.<lock>`: both names may hold dots, so every reading of the name must
            // be covered (a token for `a` does not see `locks.a.b.c` if that is lock `c` of `a.b`).
            let mut any = false;
            for (i, _) in rest.match_indices('.') {
                any = true;
                self.check(perm, Scope::Namespace(&rest[..i]))?;
            }
            if any {
                return Ok(());
            }
        }
        if let Some(name) = c.strip_prefix("partitions.") {
            return self.check(perm, Scope::Namespace(name));
        }
        if let Some(id) = c.strip_prefix("agents.") {
            return match perm {
                Permission::Read => self.check(perm, Scope::Service),
                _ => self.check(perm, Scope::Agent(id)),
            };
        }
        let Caller::Token(t) = self else {
            return Ok(());
        };
        if !any_glob(&t.entry.channels, c) {
            return Err(ApiError::forbidden(format!(
                "token `{}` may not do this: it needs {} on channel `{c}`",
                t.entry.name,
                perm.as_str()
            )));
        }
        self.check(perm, Scope::Service)
    }

    /// A `subscribe` pattern: allowed when every channel it can match is in scope. A literal
    /// name is checked as such; a pattern must lie inside one of the token's `channels` globs,
    /// or address the service's own channels (`locks.*`, `partitions.*`, `agents.*`), whose
    /// messages are then filtered one by one with [`Caller::may`].
    pub fn check_subscribe(&self, pattern: &str) -> ApiResult<()> {
        let Caller::Token(t) = self else {
            return Ok(());
        };
        if !pattern.contains(['*', '?']) {
            return self.check(Permission::Read, Scope::Channel(pattern));
        }
        self.check(Permission::Read, Scope::Service)?;
        if is_service_channel(pattern) || t.entry.channels.iter().any(|g| glob_covers(g, pattern)) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "token `{}` may not subscribe to `{pattern}`: the pattern reaches channels outside its `channels` globs",
            t.entry.name
        )))
    }
}

/// The channels the service publishes its own events on.
pub fn is_service_channel(c: &str) -> bool {
    ["locks.", "partitions.", "agents."]
        .iter()
        .any(|p| c.starts_with(p))
}

/// Whether a message on `channel` may reach this caller. Lock events name their namespace in
/// the payload (trustworthy: only the service and admins publish there), so a dotted lock
/// name reaches the namespace it belongs to; everything else is decided by the channel name.
pub fn may_receive(who: &Caller, channel: &str, payload: &str) -> bool {
    if matches!(who, Caller::Open) {
        return true;
    }
    if channel.starts_with("locks.") {
        #[derive(Deserialize)]
        struct LockEvent<'a> {
            #[serde(borrow)]
            namespace: Option<std::borrow::Cow<'a, str>>,
        }
        if let Ok(LockEvent { namespace: Some(ns) }) = serde_json::from_str::<LockEvent>(payload) {
            return who.may(Permission::Read, Scope::Namespace(&ns));
        }
    }
    who.may(Permission::Read, Scope::Channel(channel))
}

fn describe(scope: Scope<'_>) -> String {
    match scope {
        Scope::Namespace(n) => format!("namespace `{n}`"),
        Scope::Queue(q) => format!("queue `{q}`"),
        Scope::Channel(c) => format!("channel `{c}`"),
        Scope::Agent(a) | Scope::ActAs(a) => format!("agent `{a}`"),
        Scope::Service => "the service".to_string(),
    }
}

fn any_glob(globs: &[String], name: &str) -> bool {
    globs.iter().any(|g| glob_match(g, name))
}

/// Whether every name `pattern` matches is also matched by `glob` (both with `*` and `?`).
/// Decided symbolically: a literal of the pattern is matched by the same literal, `?` or `*`
/// of the glob; its `?` by `?` or `*`; its `*` only by `*`. Sound (never says yes wrongly);
/// it may say no for exotic equivalent pairs such as `?*` inside `*?`.
pub fn glob_covers(glob: &str, pattern: &str) -> bool {
    let (g, p) = (glob.as_bytes(), pattern.as_bytes());
    // m[i][j]: glob[i..] covers pattern[j..].
    let mut m = vec![vec![false; p.len() + 1]; g.len() + 1];
    m[g.len()][p.len()] = true;
    for i in (0..g.len()).rev() {
        for j in (0..=p.len()).rev() {
            m[i][j] = match g[i] {
                b'*' => m[i + 1][j] || (j < p.len() && m[i][j + 1]),
                b'?' => j < p.len() && p[j] != b'*' && m[i + 1][j + 1],
                c => j < p.len() && p[j] == c && m[i + 1][j + 1],
            };
        }
    }
    m[0][0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(toml: &str) -> Caller {
        let t = parse_tokens(toml).unwrap().pop().unwrap();
        Caller::Token(Arc::new(t))
    }

    const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn scopes_and_permissions() {
        let c = caller(&format!(
            "[[token]]\nname='p'\nsha256='{H}'\nnamespaces=['app*']\nqueues=['jobs']\nchannels=['build.*']\npermission='write'\nagents=['a-*']"
        ));
        assert!(c.may(Permission::Write, Scope::Namespace("app2")));
        assert!(!c.may(Permission::Read, Scope::Namespace("other")));
        assert!(!c.may(Permission::Admin, Scope::Namespace("app")));
        assert!(c.may(Permission::Write, Scope::Queue("jobs")));
        assert!(!c.may(Permission::Read, Scope::Queue("jobs2")));
        assert!(c.may(Permission::Write, Scope::Channel("build.1")));
        assert!(!c.may(Permission::Read, Scope::Channel("deploy.1")));
        assert!(c.may(Permission::Read, Scope::Channel("locks.app.x")));
        assert!(!c.may(Permission::Read, Scope::Channel("locks.other.x")));
        assert!(c.may(Permission::Read, Scope::Channel("partitions.app-mem")));
        assert!(c.may(Permission::Write, Scope::ActAs("a-1")));
        assert!(!c.may(Permission::Write, Scope::ActAs("b-1")));
        assert!(c.may(Permission::Write, Scope::Agent("a-1")));
        assert!(!c.may(Permission::Write, Scope::Agent("b-1")));
        assert!(c.may(Permission::Read, Scope::Agent("b-1")));
        assert!(c.check_subscribe("build.*").is_ok());
        assert!(c.check_subscribe("build.x?").is_ok());
        assert!(c.check_subscribe("*").is_err());
        assert!(c.check_subscribe("bu*").is_err());
        assert!(c.check_subscribe("deploy.1").is_err());
        let e = c.check(Permission::Write, Scope::Namespace("other")).unwrap_err();
        assert!(e.detail.contains("namespace `other`"), "{}", e.detail);
        assert!(!e.detail.contains(H));
    }

    #[test]
    fn unbound_write_tokens_own_no_agents_and_service_channels_are_the_services() {
        let w = caller(&format!(
            "[[token]]\nname='w'\nsha256='{H}'\nnamespaces=['app']\nchannels=['*']\npermission='write'"
        ));
        assert!(w.may(Permission::Write, Scope::ActAs("anyone")));
        assert!(!w.may(Permission::Write, Scope::Agent("anyone")));
        assert!(w.may(Permission::Read, Scope::Agent("anyone")));
        assert!(!w.may(Permission::Write, Scope::Channel("locks.app.x")));
        assert!(!w.may(Permission::Write, Scope::Channel("agents.x")));
        assert!(w.may(Permission::Write, Scope::Channel("build.x")));
        assert!(may_receive(
            &w,
            "locks.app.db.primary",
            r#"{"event":"acquired","namespace":"app","lock":"db.primary"}"#
        ));
        assert!(!may_receive(
            &w,
            "locks.app.x",
            r#"{"event":"acquired","namespace":"app.x","lock":"y"}"#
        ));
    }

    #[test]
    fn covering() {
        assert!(glob_covers("*", "a*b"));
        assert!(glob_covers("a*", "ab*"));
        assert!(glob_covers("a?c", "abc"));
        assert!(!glob_covers("a?c", "a*c"));
        assert!(!glob_covers("ab*", "a*"));
        assert!(glob_covers("a*c", "a?*c"));
        assert!(!glob_covers("a", "a*"));
    }

    #[test]
    fn lookup_is_by_digest() {
        let tokens: Vec<Arc<Token>> = parse_tokens(&format!(
            "[[token]]\nname='t'\nsha256='{}'\npermission='read'",
            sha256_hex("s3cret")
        ))
        .unwrap()
        .into_iter()
        .map(Arc::new)
        .collect();
        let tokens = index_tokens(&tokens);
        assert_eq!(find_token(&tokens, "s3cret").unwrap().entry.name, "t");
        assert!(find_token(&tokens, "s3cret ").is_none());
        assert!(parse_tokens("[[token]]\nname='t'\nsha256='xyz'\npermission='read'").is_err());
        assert!(parse_tokens("[[token]]\nname='t'\nsha256='ab'\npermission='root'").is_err());
    }
}
