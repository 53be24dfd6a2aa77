//! Versioned key/value (DESIGN.md "Key/value with versions"): the entry, write preconditions
//! and expiries, provenance, and the request and result documents of entries, listings,
//! batches and counters.

use serde::ser::{Error as _, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::json::{canonical, present};
use super::names::{validate_key, MAX_TTL_MS};
use super::time::rfc3339;
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Most value bytes one listing page or batch read may carry (a page ends early, with a
/// cursor, when the next value would pass it; a batch asking for more is refused).
pub const MAX_VALUE_BYTES_PER_RESPONSE: u64 = 8 * 1024 * 1024;
/// Most items in one batch request.
pub const MAX_BATCH: usize = 1000;

/// Who made a change and why (`x-agent-id`, `x-change-reason`), stored with the version.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub agent: Option<String>,
    pub reason: Option<String>,
    /// `x-fencing-token: <lock>:<n>`: the write is refused unless `n` is still the newest
    /// token the namespace's lock `<lock>` has granted.
    pub fence: Option<(String, u64)>,
}

/// One key's state as clients see it. `value` and `metadata` hold JSON text as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub namespace: String,
    pub key: String,
    /// `None` in listings without `?values=true`.
    pub value: Option<String>,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    pub metadata: Option<String>,
    pub agent_id: Option<String>,
    pub change_reason: Option<String>,
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Entry", 12)?;
        st.serialize_field("namespace", &self.namespace)?;
        st.serialize_field("key", &self.key)?;
        if let Some(v) = &self.value {
            let raw: &RawValue = serde_json::from_str(v).map_err(S::Error::custom)?;
            st.serialize_field("value", raw)?;
        }
        st.serialize_field("version", &self.version)?;
        st.serialize_field("create_revision", &self.create_revision)?;
        st.serialize_field("mod_revision", &self.mod_revision)?;
        st.serialize_field("created_at", &rfc3339(self.created_at))?;
        st.serialize_field("updated_at", &rfc3339(self.updated_at))?;
        st.serialize_field("expires_at", &self.expires_at.map(rfc3339))?;
        match &self.metadata {
            Some(m) => {
                let raw: &RawValue = serde_json::from_str(m).map_err(S::Error::custom)?;
                st.serialize_field("metadata", raw)?;
            }
            None => st.serialize_field("metadata", &Option::<()>::None)?,
        }
        st.serialize_field("agent_id", &self.agent_id)?;
        st.serialize_field("change_reason", &self.change_reason)?;
        st.end()
    }
}

impl Entry {
    /// Parse a stored record: `ver\tcrev\tmrev\tct\tut\texp\tsz\tagent\treason`, newline,
    /// metadata, newline, value (see migrations/functions/kv.lua). Entries and history share it.
    pub fn from_record(ns: &str, key: &str, rec: &str, with_value: bool) -> Option<Entry> {
        let (header, rest) = rec.split_once('\n')?;
        let (meta, value) = rest.split_once('\n')?;
        let mut h = header.split('\t');
        let mut num = || h.next().and_then(|s| s.parse::<i64>().ok());
        let version = num()? as u64;
        let (crev, mrev, ct, ut, exp) = (num(), num(), num(), num(), num());
        let _size = num();
        let mut text = || h.next().filter(|s| !s.is_empty()).map(str::to_string);
        let (agent_id, change_reason) = (text(), text());
        Some(Entry {
            namespace: ns.to_string(),
            key: key.to_string(),
            value: with_value.then(|| value.to_string()),
            version,
            create_revision: crev.unwrap_or(0) as u64,
            mod_revision: mrev.unwrap_or(0) as u64,
            created_at: ct.unwrap_or(0),
            updated_at: ut.unwrap_or(0),
            expires_at: exp,
            metadata: (!meta.is_empty()).then(|| meta.to_string()),
            agent_id,
            change_reason,
        })
    }
}

/// Schema of an entry as returned by the API.
// (The `Entry` serializer writes this shape.)
#[derive(Serialize, ToSchema)]
#[schema(as = Entry)]
#[allow(dead_code)]
pub struct EntryDoc {
    namespace: String,
    key: String,
    /// Any JSON value. Left out of listings unless `values=true`.
    #[schema(required = false)]
    value: Value,
    /// Writes to this key since it was created (1 on create).
    version: u64,
    /// Namespace revision that created the key.
    create_revision: u64,
    /// Namespace revision of the last change.
    mod_revision: u64,
    /// RFC 3339.
    created_at: String,
    updated_at: String,
    expires_at: Option<String>,
    metadata: Option<Map<String, Value>>,
    /// `x-agent-id` of the write that made this version.
    agent_id: Option<String>,
    /// `x-change-reason` of the write that made this version.
    change_reason: Option<String>,
}

/// A write's precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Any,
    /// `If-None-Match: *`
    Absent,
    /// `If-Match: *`
    Exists,
    /// `If-Match: "<n>"`; `Version(0)` is the same as `Absent`.
    Version(u64),
}

/// A write's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    None,
    /// Keep the entry's current expiry (PATCH, merge, counters).
    Keep,
    Ms(u64),
}

impl Ttl {
    /// `ttl_ms` of a request: absent = none, else 1 ..= ten years.
    pub fn from_request(ttl: Option<u64>) -> ApiResult<Ttl> {
        match ttl {
            None => Ok(Ttl::None),
            Some(t) if (1..=MAX_TTL_MS).contains(&t) => Ok(Ttl::Ms(t)),
            Some(t) => Err(ApiError::bad_request(format!(
                "ttl_ms must be between 1 and {MAX_TTL_MS} (got {t})"
            ))),
        }
    }
}

/// Result of a conditional write.
#[derive(Debug, Clone)]
pub enum PutOutcome {
    Written {
        entry: Entry,
        created: bool,
    },
    /// The precondition failed; the entry's current version (0 = absent).
    Mismatch(u64),
}

#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    Deleted { revision: u64, version: u64 },
    NotFound,
    Mismatch(u64),
}

/// Canonical metadata text of a request's `metadata` object.
pub fn metadata_text(m: &Option<Map<String, Value>>) -> Option<String> {
    m.as_ref().map(|m| canonical(&Value::Object(m.clone())))
}

pub fn key_not_found(key: &str) -> ApiError {
    ApiError::not_found(format!("key `{key}` does not exist"))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Any JSON value (required; may be null).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value, required = true)]
    pub value: Option<Value>,
    /// Free-form object stored with the version.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Expire the key this many milliseconds after the write (1 ..= 315360000000).
    #[schema(minimum = 1, maximum = 315360000000_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub ttl_ms: Option<u64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    Reject,
    Overwrite,
    Merge,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// A retained version whose value and metadata become the new version.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "crate::domain::json::int::req")]
    pub version: u64,
}

#[derive(Serialize, ToSchema)]
pub struct EntryPage {
    #[schema(value_type = Vec<EntryDoc>)]
    pub items: Vec<Entry>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysBody {
    /// 1 ..= 1000 keys.
    #[schema(min_items = 1, max_items = 1000)]
    pub keys: Vec<String>,
}

impl KeysBody {
    /// 1 ..= 1000 valid keys.
    pub fn check(&self) -> ApiResult<()> {
        if self.keys.is_empty() || self.keys.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!(
                "send 1 to {MAX_BATCH} keys (got {})",
                self.keys.len()
            )));
        }
        self.keys.iter().try_for_each(|k| validate_key(k))
    }
}

#[derive(Serialize, ToSchema)]
pub struct BatchGetResult {
    /// One per requested key, in order; null where the key does not exist.
    #[schema(value_type = Vec<Option<EntryDoc>>)]
    pub items: Vec<Option<Entry>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchPutItem {
    pub key: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value, required = true)]
    pub value: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Expire the key this many milliseconds after the write (1 ..= 315360000000).
    #[schema(minimum = 1, maximum = 315360000000_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub ttl_ms: Option<u64>,
    /// Write only if the key is at this version (0 = only if absent).
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub if_version: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchPutBody {
    /// 1 ..= 1000 items.
    #[schema(min_items = 1, max_items = 1000)]
    pub items: Vec<BatchPutItem>,
}

/// One validated batch write.
pub struct BatchWrite {
    pub key: String,
    /// Canonical JSON.
    pub value: String,
    pub metadata: Option<String>,
    pub ttl: Ttl,
    pub expect: Expect,
}

impl BatchPutBody {
    /// Every item validated before anything is written.
    pub fn writes(self) -> ApiResult<Vec<BatchWrite>> {
        if self.items.is_empty() || self.items.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!(
                "send 1 to {MAX_BATCH} items (got {})",
                self.items.len()
            )));
        }
        let at = |i: usize, e: ApiError| ApiError::new(e.code, format!("items[{i}]: {}", e.detail));
        let mut writes = Vec::with_capacity(self.items.len());
        for (i, it) in self.items.into_iter().enumerate() {
            validate_key(&it.key).map_err(|e| at(i, e))?;
            let ttl = Ttl::from_request(it.ttl_ms).map_err(|e| at(i, e))?;
            let value = it.value.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidBody,
                    format!("items[{i}]: missing field `value`"),
                )
            })?;
            writes.push(BatchWrite {
                key: it.key,
                value: canonical(&value),
                metadata: metadata_text(&it.metadata),
                ttl,
                expect: it.if_version.map(Expect::Version).unwrap_or(Expect::Any),
            });
        }
        Ok(writes)
    }
}

#[derive(Serialize, ToSchema)]
pub struct BatchPutItemResult {
    pub key: String,
    /// 201 created, 200 updated, 412 version mismatch, 507 quota_exceeded (partition),
    /// 409 stale_fencing_token.
    pub status: u16,
    /// The new entry on success.
    #[schema(value_type = Option<EntryDoc>)]
    pub entry: Option<Entry>,
    /// The current version on 412.
    pub current_version: Option<u64>,
    /// The error code on 507 / 409.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchPutResult {
    pub items: Vec<BatchPutItemResult>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchDeleteItemResult {
    pub key: String,
    pub deleted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct BatchDeleteResult {
    pub items: Vec<BatchDeleteItemResult>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncrBody {
    /// Amount to add (default 1; may be negative), |by| ≤ 2^53-1.
    #[schema(minimum = -9007199254740991_i64, maximum = 9007199254740991_i64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub by: Option<i64>,
    /// Expiry set when this increment creates the counter (fixed window).
    #[schema(minimum = 1, maximum = 315360000000_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub ttl_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct IncrResponse {
    pub value: i64,
    pub version: u64,
    pub mod_revision: u64,
}

/// Per-namespace figures for `GET /v1/namespaces`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NamespaceInfo {
    pub namespace: String,
    /// Live keys.
    pub keys: u64,
    /// The namespace's current revision.
    pub revision: u64,
    /// Bytes of live keys, values and metadata.
    pub bytes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct NamespaceList {
    pub items: Vec<NamespaceInfo>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}
