//! Key/value operations (DESIGN.md "Key/value with versions"): reads, conditional writes with
//! `on_conflict`, RFC 7396 merges as an optimistic compare-and-swap loop, deletes, history,
//! rollback, listing, counters and the namespace list.

use serde_json::Value;

use super::{writer, Ops};
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::json::canonical;
use crate::domain::kv::{
    key_not_found, metadata_text, DeleteOutcome, Entry, Expect, IncrBody, NamespaceInfo, OnConflict,
    Provenance, PutBody, PutOutcome, Ttl,
};
use crate::domain::names::{validate_key, validate_name, validate_prefix, MAX_SAFE_INT};
use crate::domain::page::{decode_cursor, encode_cursor, not_ours, page_limit, Page};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Optimistic retries of a merge before answering 409 `conflict`.
const MERGE_ATTEMPTS: usize = 64;

/// An entry written, and whether the write created it.
pub struct Written {
    pub entry: Entry,
    pub created: bool,
}

/// A namespace and key as given, validated.
pub fn check_key(ns: &str, key: &str) -> ApiResult<()> {
    validate_name("namespace", ns)?;
    validate_key(key)
}

impl Ops {
    /// The current entry, or a retained version of it.
    pub async fn kv_get(&self, who: &Caller, ns: &str, key: &str, version: Option<u64>) -> ApiResult<Entry> {
        who.check(Permission::Read, Scope::Namespace(ns))?;
        let entry = match version {
            None => self.store.kv_get(ns, key).await?,
            Some(0) => return Err(ApiError::bad_request("versions start at 1")),
            Some(v) => self.store.kv_get_version(ns, key, v).await?,
        };
        entry.ok_or_else(|| match version {
            Some(v) => ApiError::not_found(format!(
                "version {v} of `{key}` does not exist or is not retained"
            )),
            None => key_not_found(key),
        })
    }

    /// PUT: `pre` is the request's precondition; `on_conflict` what to do when it fails
    /// (default `reject`). Without a precondition, `reject` makes the PUT create-only and
    /// `merge` merges into the existing value.
    #[allow(clippy::too_many_arguments)]
    pub async fn kv_put(
        &self,
        who: &Caller,
        ns: &str,
        key: &str,
        body: PutBody,
        pre: Option<Expect>,
        on_conflict: Option<OnConflict>,
        prov: &Provenance,
    ) -> ApiResult<Written> {
        writer(who, ns, prov)?;
        let ttl = Ttl::from_request(body.ttl_ms)?;
        let value = body
            .value
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidBody, "missing field `value`"))?;
        let meta = metadata_text(&body.metadata);
        let mode = on_conflict.unwrap_or(if pre.is_some() {
            OnConflict::Reject
        } else {
            OnConflict::Overwrite
        });
        // A merge keeps the entry's expiry unless the body sets one.
        let merge_ttl = if body.ttl_ms.is_some() { ttl } else { Ttl::Keep };
        let expect = match (pre, mode) {
            (_, OnConflict::Overwrite) => Expect::Any,
            (None, OnConflict::Reject) => Expect::Absent,
            (None, OnConflict::Merge) => {
                return self
                    .merge_into(ns, key, &value, meta, merge_ttl, prov, None, false)
                    .await
            }
            (Some(p), _) => p,
        };
        match self
            .store
            .kv_put(ns, key, canonical(&value), meta.clone(), ttl, expect, prov)
            .await?
        {
            PutOutcome::Written { entry, created } => Ok(Written { entry, created }),
            PutOutcome::Mismatch(_) if mode == OnConflict::Merge => {
                self.merge_into(ns, key, &value, meta, merge_ttl, prov, None, false)
                    .await
            }
            PutOutcome::Mismatch(current) => Err(ApiError::version_mismatch(current)),
        }
    }

    /// PATCH: RFC 7396 merge into an existing entry (TTL and metadata kept), optionally only
    /// into version `if_match`.
    pub async fn kv_patch(
        &self,
        who: &Caller,
        ns: &str,
        key: &str,
        patch: &Value,
        if_match: Option<u64>,
        prov: &Provenance,
    ) -> ApiResult<Entry> {
        writer(who, ns, prov)?;
        self.merge_into(ns, key, patch, None, Ttl::Keep, prov, if_match, true)
            .await
            .map(|w| w.entry)
    }

    /// RFC 7396 merge of `patch` into the current value as one conditional write, retried on
    /// concurrent change: the result is always the patch applied to exactly one version.
    #[allow(clippy::too_many_arguments)]
    async fn merge_into(
        &self,
        ns: &str,
        key: &str,
        patch: &Value,
        metadata: Option<String>,
        ttl: Ttl,
        prov: &Provenance,
        if_match: Option<u64>,
        must_exist: bool,
    ) -> ApiResult<Written> {
        for attempt in 0..MERGE_ATTEMPTS {
            let (mut doc, expect, cur_meta) = match self.store.kv_get(ns, key).await? {
                Some(e) => {
                    if let Some(v) = if_match {
                        if v != e.version {
                            return Err(ApiError::version_mismatch(e.version));
                        }
                    }
                    let doc: Value = serde_json::from_str(e.value.as_deref().unwrap_or("null"))
                        .map_err(|err| ApiError::internal(format!("stored value is not JSON: {err}")))?;
                    (doc, Expect::Version(e.version), e.metadata)
                }
                None => {
                    if must_exist {
                        return Err(key_not_found(key));
                    }
                    if if_match.is_some() {
                        return Err(ApiError::version_mismatch(0));
                    }
                    (Value::Null, Expect::Absent, None)
                }
            };
            json_patch::merge(&mut doc, patch);
            let meta = metadata.clone().or(cur_meta);
            match self
                .store
                .kv_put(ns, key, canonical(&doc), meta, ttl, expect, prov)
                .await?
            {
                PutOutcome::Written { entry, created } => return Ok(Written { entry, created }),
                PutOutcome::Mismatch(current) => {
                    if if_match.is_some() {
                        return Err(ApiError::version_mismatch(current));
                    }
                    if attempt > 4 {
                        tokio::time::sleep(std::time::Duration::from_millis(attempt as u64)).await;
                    }
                }
            }
        }
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!("`{key}` changed too often to merge; retry"),
        ))
    }

    pub async fn kv_delete(
        &self,
        who: &Caller,
        ns: &str,
        key: &str,
        expect: Expect,
        prov: &Provenance,
    ) -> ApiResult<()> {
        writer(who, ns, prov)?;
        match self.store.kv_delete(ns, key, expect, prov).await? {
            DeleteOutcome::Deleted { .. } => Ok(()),
            DeleteOutcome::NotFound => Err(key_not_found(key)),
            DeleteOutcome::Mismatch(cur) => Err(ApiError::version_mismatch(cur)),
        }
    }

    /// Retained versions, newest first (the current one included), a page at a time: the
    /// cursor stands for the lowest version returned.
    pub async fn kv_history(
        &self,
        who: &Caller,
        ns: &str,
        key: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> ApiResult<(Vec<Entry>, Option<String>)> {
        who.check(Permission::Read, Scope::Namespace(ns))?;
        let limit = page_limit(limit, 10)?;
        let below = match decode_cursor(cursor)? {
            None => None,
            Some(c) => Some(
                c.strip_prefix('v')
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(not_ours)?,
            ),
        };
        // One more than the page: whether an older retained version follows.
        let mut items = self
            .store
            .kv_history(ns, key, limit + 1, below)
            .await?
            .ok_or_else(|| key_not_found(key))?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = more
            .then(|| {
                items
                    .last()
                    .map(|last| encode_cursor(&format!("v{}", last.version)))
            })
            .flatten();
        Ok((items, next))
    }

    /// Write a retained version's value and metadata as a new version (TTL kept).
    pub async fn kv_rollback(
        &self,
        who: &Caller,
        ns: &str,
        key: &str,
        version: u64,
        prov: &Provenance,
    ) -> ApiResult<Entry> {
        writer(who, ns, prov)?;
        if version == 0 {
            return Err(ApiError::bad_request("versions start at 1"));
        }
        self.store.kv_rollback(ns, key, version, prov).await
    }

    /// A page of keys by prefix in byte order; the cursor for the next page when there is one.
    pub async fn kv_list(
        &self,
        who: &Caller,
        ns: &str,
        prefix: Option<String>,
        cursor: Option<&str>,
        limit: Option<usize>,
        values: bool,
    ) -> ApiResult<(Vec<Entry>, Option<String>)> {
        who.check(Permission::Read, Scope::Namespace(ns))?;
        validate_name("namespace", ns)?;
        let limit = page_limit(limit, 100)?;
        let prefix = prefix.unwrap_or_default();
        validate_prefix(&prefix)?;
        let after = decode_cursor(cursor)?;
        let (items, next) = self
            .store
            .kv_list(ns, &prefix, after.as_deref(), limit, values)
            .await?;
        Ok((items, next.map(|k| encode_cursor(&k))))
    }

    /// Add to a counter; returns its new value and entry.
    pub async fn kv_incr(
        &self,
        who: &Caller,
        ns: &str,
        name: &str,
        body: IncrBody,
        prov: &Provenance,
    ) -> ApiResult<(i64, Entry)> {
        writer(who, ns, prov)?;
        check_key(ns, name)?;
        let by = body.by.unwrap_or(1);
        if !(-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&by) {
            return Err(ApiError::bad_request("by must be within ±9007199254740991"));
        }
        let ttl = Ttl::from_request(body.ttl_ms)?;
        self.store.kv_incr(ns, name, by, ttl, prov).await
    }

    /// A page of namespaces by name.
    pub async fn namespaces(
        &self,
        who: &Caller,
        page: &Page,
    ) -> ApiResult<(Vec<NamespaceInfo>, Option<String>)> {
        let mut names = self.store.namespace_names().await?;
        // Only what the token may read (before paging, so pages stay full).
        names.retain(|n| who.may(Permission::Read, Scope::Namespace(n)));
        names.sort();
        let (names, next) = page.of_names(&names);
        Ok((self.store.namespace_infos(&names).await?, next))
    }
}
