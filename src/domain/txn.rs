//! Transactions (etcd-style compare-then-apply, all-or-nothing): the request, its validated
//! plan (keys resolved to indexes, values canonical) and the result.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::json::{canonical, present};
use super::kv::{metadata_text, Entry, EntryDoc, Ttl};
use super::names::validate_key;
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Most operations in one transaction (success and failure branches together).
pub const MAX_TXN_OPS: usize = 128;

/// One compare of a transaction: `key` plus exactly one of `version`, `exists`, `value`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnCompareBody {
    key: String,
    /// The key's version must equal this (0 = absent).
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    version: Option<u64>,
    /// The key must (true) or must not (false) exist.
    #[serde(default)]
    exists: Option<bool>,
    /// The key must exist with exactly this JSON value.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    value: Option<Value>,
}

#[derive(Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnOpKind {
    Put,
    Delete,
    Get,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnOpBody {
    op: TxnOpKind,
    key: String,
    /// Required for `put`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    value: Option<Value>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// Expire the key this many milliseconds after the write (1 ..= 315360000000).
    #[schema(minimum = 1, maximum = 315360000000_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    ttl_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnBody {
    #[serde(default)]
    compare: Vec<TxnCompareBody>,
    #[serde(default)]
    success: Vec<TxnOpBody>,
    #[serde(default)]
    failure: Vec<TxnOpBody>,
}

/// A transaction resolved to key indexes (0-based into `keys`).
#[derive(Debug, Clone, Default)]
pub struct TxnPlan {
    pub keys: Vec<String>,
    pub compares: Vec<TxnCompare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Debug, Clone)]
pub enum TxnCompare {
    Version(usize, u64),
    Exists(usize, bool),
    /// Canonical JSON text the stored value must equal.
    Value(usize, String),
}

#[derive(Debug, Clone)]
pub enum TxnOp {
    Put {
        key: usize,
        value: String,
        metadata: Option<String>,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: usize,
    },
    Get {
        key: usize,
    },
}

impl TxnBody {
    /// Validate the whole transaction (nothing runs unless all of it is valid) and resolve it
    /// to a plan.
    pub fn plan(&self) -> ApiResult<TxnPlan> {
        if self.compare.len() > MAX_TXN_OPS {
            return Err(ApiError::bad_request(format!("at most {MAX_TXN_OPS} compares")));
        }
        if self.success.len() + self.failure.len() > MAX_TXN_OPS {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_TXN_OPS} operations in success and failure together"
            )));
        }
        let mut plan = TxnPlan::default();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut slot = |k: &str, plan: &mut TxnPlan| -> ApiResult<usize> {
            validate_key(k)?;
            Ok(*index.entry(k.to_string()).or_insert_with(|| {
                plan.keys.push(k.to_string());
                plan.keys.len() - 1
            }))
        };
        for (i, c) in self.compare.iter().enumerate() {
            let k = slot(&c.key, &mut plan)?;
            let given = c.version.is_some() as u8 + c.exists.is_some() as u8 + c.value.is_some() as u8;
            if given != 1 {
                return Err(ApiError::new(
                    ErrorCode::InvalidBody,
                    format!("compare[{i}] needs exactly one of version, exists, value"),
                ));
            }
            plan.compares.push(if let Some(v) = c.version {
                TxnCompare::Version(k, v)
            } else if let Some(b) = c.exists {
                TxnCompare::Exists(k, b)
            } else {
                TxnCompare::Value(k, canonical(c.value.as_ref().unwrap_or(&Value::Null)))
            });
        }
        let mut ops_of = |list: &[TxnOpBody], branch: &str, plan: &mut TxnPlan| -> ApiResult<Vec<TxnOp>> {
            let mut out = Vec::with_capacity(list.len());
            for (i, o) in list.iter().enumerate() {
                let k = slot(&o.key, plan)
                    .map_err(|e| ApiError::new(e.code, format!("{branch}[{i}]: {}", e.detail)))?;
                out.push(match o.op {
                    TxnOpKind::Put => {
                        let v = o.value.as_ref().ok_or_else(|| {
                            ApiError::new(
                                ErrorCode::InvalidBody,
                                format!("{branch}[{i}]: put needs `value`"),
                            )
                        })?;
                        let ttl = match Ttl::from_request(o.ttl_ms)? {
                            Ttl::Ms(t) => Some(t),
                            _ => None,
                        };
                        TxnOp::Put {
                            key: k,
                            value: canonical(v),
                            metadata: metadata_text(&o.metadata),
                            ttl_ms: ttl,
                        }
                    }
                    TxnOpKind::Delete | TxnOpKind::Get
                        if o.value.is_some() || o.ttl_ms.is_some() || o.metadata.is_some() =>
                    {
                        return Err(ApiError::new(
                            ErrorCode::InvalidBody,
                            format!("{branch}[{i}]: only put takes value, metadata or ttl_ms"),
                        ))
                    }
                    TxnOpKind::Delete => TxnOp::Delete { key: k },
                    TxnOpKind::Get => TxnOp::Get { key: k },
                });
            }
            Ok(out)
        };
        plan.success = ops_of(&self.success, "success", &mut plan)?;
        plan.failure = ops_of(&self.failure, "failure", &mut plan)?;
        Ok(plan)
    }
}

// One operation's result, as sent: `op` and `key`, then the fields of that kind of
// operation only (a `get` of an absent key has `"entry": null`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TxnResultDoc {
    /// `put`, `delete` or `get`.
    op: String,
    key: String,
    /// put: the new version.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    /// put: the revision of the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    mod_revision: Option<u64>,
    /// put: whether the key was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
    /// delete: whether the key existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<bool>,
    /// get: the entry or null.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<EntryDoc>)]
    entry: Option<Option<Entry>>,
}

impl TxnResultDoc {
    pub fn put(key: String, version: u64, mod_revision: u64, created: bool) -> Self {
        TxnResultDoc {
            op: "put".into(),
            key,
            version: Some(version),
            mod_revision: Some(mod_revision),
            created: Some(created),
            deleted: None,
            entry: None,
        }
    }

    pub fn delete(key: String, deleted: bool) -> Self {
        TxnResultDoc {
            op: "delete".into(),
            key,
            version: None,
            mod_revision: None,
            created: None,
            deleted: Some(deleted),
            entry: None,
        }
    }

    pub fn get(key: String, entry: Option<Entry>) -> Self {
        TxnResultDoc {
            op: "get".into(),
            key,
            version: None,
            mod_revision: None,
            created: None,
            deleted: None,
            entry: Some(entry),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TxnResponse {
    /// Whether every compare held (and `success` ran) or not (`failure` ran).
    pub succeeded: bool,
    /// The namespace revision after the transaction.
    pub revision: u64,
    pub results: Vec<TxnResultDoc>,
}
