//! Versioned key/value: typed wrappers around the `kv_*` functions of
//! `migrations/functions/kv.lua`, plus the plain reads (entry, history, listing, namespaces).
//! Owns the namespace keys described in [`super::keys`].

use fred::prelude::*;
use fred::types::Value;

use super::fcall::{v_str, Arity, Function, Refusal, Reply};
use super::Store;
use crate::domain::kv::{
    DeleteOutcome, Entry, Expect, NamespaceInfo, Provenance, PutOutcome, Ttl, MAX_VALUE_BYTES_PER_RESPONSE,
};
use crate::domain::txn::{TxnCompare, TxnOp, TxnPlan, TxnResponse, TxnResultDoc};
use crate::error::{ApiError, ApiResult, ErrorCode};

const WRITE_REFUSALS: &[Refusal] = &[Refusal::Quota, Refusal::StaleFence];

pub const KV_PUT: Function =
    Function::new("kv_put", Arity::Exactly(8), Arity::Exactly(11)).refusing(WRITE_REFUSALS);
pub const KV_DELETE: Function =
    Function::new("kv_delete", Arity::Exactly(8), Arity::Exactly(8)).refusing(&[Refusal::StaleFence]);
pub const KV_ROLLBACK: Function =
    Function::new("kv_rollback", Arity::Exactly(8), Arity::Exactly(8)).refusing(WRITE_REFUSALS);
pub const KV_INCR: Function =
    Function::new("kv_incr", Arity::Exactly(8), Arity::Exactly(9)).refusing(WRITE_REFUSALS);
pub const KV_TXN: Function =
    Function::new("kv_txn", Arity::AtLeast(6), Arity::AtLeast(10)).refusing(WRITE_REFUSALS);
pub const KV_FORGET: Function = Function::new("kv_forget", Arity::Exactly(7), Arity::Exactly(7));
pub const KV_OBSERVE: Function = Function::new("kv_observe", Arity::AtLeast(5), Arity::AtLeast(7));
pub const KV_ADOPT: Function = Function::new("kv_adopt", Arity::Exactly(7), Arity::Exactly(12));

pub const FUNCTIONS: &[&Function] = &[
    &KV_PUT,
    &KV_DELETE,
    &KV_ROLLBACK,
    &KV_INCR,
    &KV_TXN,
    &KV_FORGET,
    &KV_OBSERVE,
    &KV_ADOPT,
];

/// `expect` argument: '' any, '0' absent, '-1' exists, n version.
fn expect_arg(e: Expect) -> String {
    match e {
        Expect::Any => String::new(),
        Expect::Absent | Expect::Version(0) => "0".into(),
        Expect::Exists => "-1".into(),
        Expect::Version(n) => n.to_string(),
    }
}

/// `ttl_ms` argument: '' none, '-1' keep, n ms.
fn ttl_arg(t: Ttl) -> String {
    match t {
        Ttl::None => String::new(),
        Ttl::Keep => "-1".into(),
        Ttl::Ms(n) => n.to_string(),
    }
}

/// The entry just written, from the `ver crev mrev ct ut exp` fields of a write's reply.
fn read_written(
    r: &mut Reply,
    ns: &str,
    key: &str,
    value: Option<String>,
    metadata: Option<String>,
    prov: &Provenance,
) -> ApiResult<Entry> {
    Ok(Entry {
        namespace: ns.to_string(),
        key: key.to_string(),
        value,
        version: r.u64("version")?,
        create_revision: r.u64("create_revision")?,
        mod_revision: r.u64("mod_revision")?,
        created_at: r.i64("created_at")?,
        updated_at: r.i64("updated_at")?,
        expires_at: r.opt_i64(),
        metadata,
        agent_id: prov.agent.clone(),
        change_reason: prov.reason.clone(),
    })
}

impl Store {
    /// The current entry, or `None`.
    pub async fn kv_get(&self, ns: &str, key: &str) -> ApiResult<Option<Entry>> {
        let ekey = self.keys().ns(ns).entry(key);
        // Something another client wrote there (another type, bytes that are not a record)
        // reads as absent until the relay or the next write deals with it.
        let rec: Option<Vec<u8>> = self
            .timed("get", async {
                match self.client().get::<Option<Vec<u8>>, _>(ekey).await {
                    Err(e) if e.details().starts_with("WRONGTYPE") => Ok(None),
                    r => r,
                }
            })
            .await?;
        Ok(rec
            .and_then(|r| String::from_utf8(r).ok())
            .and_then(|r| Entry::from_record(ns, key, &r, true)))
    }

    /// Accounted sizes (key + value + metadata bytes) of `keys`; 0 for absent keys.
    pub async fn sizes(&self, ns: &str, keys: &[String]) -> ApiResult<Vec<u64>> {
        let sz = self.keys().ns(ns).sz;
        let v: Vec<Option<u64>> = if keys.len() == 1 {
            vec![
                self.timed("hget", self.client().hget(sz, keys[0].as_str()))
                    .await?,
            ]
        } else {
            self.timed("hmget", self.client().hmget(sz, keys.to_vec()))
                .await?
        };
        Ok(v.into_iter().map(|x| x.unwrap_or(0)).collect())
    }

    /// Many entries of one namespace in one MGET (they share a slot), in order.
    pub async fn kv_get_many(
        &self,
        ns: &str,
        keys: &[String],
        with_values: bool,
    ) -> ApiResult<Vec<Option<Entry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let nk = self.keys().ns(ns);
        let ekeys: Vec<String> = keys.iter().map(|k| nk.entry(k)).collect();
        let recs: Vec<Option<String>> = if ekeys.len() == 1 {
            vec![self.timed("get", self.client().get(ekeys[0].clone())).await?]
        } else {
            self.timed("mget", self.client().mget(ekeys)).await?
        };
        Ok(keys
            .iter()
            .zip(recs)
            .map(|(k, r)| r.and_then(|r| Entry::from_record(ns, k, &r, with_values)))
            .collect())
    }

    /// A specific version: the current one, or one retained in history.
    pub async fn kv_get_version(&self, ns: &str, key: &str, version: u64) -> ApiResult<Option<Entry>> {
        let cur = self.kv_get(ns, key).await?;
        match cur {
            Some(e) if e.version == version => Ok(Some(e)),
            Some(e) if version < e.version => {
                let hkey = self.keys().ns(ns).hist(key);
                let rec: Option<String> = self
                    .timed("hget", self.client().hget(hkey, version.to_string()))
                    .await?;
                // Same life only: the key may have been deleted and re-created between reads.
                Ok(rec
                    .and_then(|r| Entry::from_record(ns, key, &r, true))
                    .filter(|h| h.create_revision == e.create_revision))
            }
            _ => Ok(None),
        }
    }

    /// Newest first, the current version included, `limit` versions below `below` (all when
    /// `None`); `None` when the key does not exist.
    pub async fn kv_history(
        &self,
        ns: &str,
        key: &str,
        limit: usize,
        below: Option<u64>,
    ) -> ApiResult<Option<Vec<Entry>>> {
        let Some(cur) = self.kv_get(ns, key).await? else {
            return Ok(None);
        };
        let top = below.map_or(cur.version, |b| b.saturating_sub(1).min(cur.version));
        let with_current = top == cur.version;
        let past: Vec<String> = (0..limit as u64)
            .filter_map(|i| top.checked_sub(i))
            .filter(|v| *v >= 1 && *v < cur.version)
            .map(|v| v.to_string())
            .collect();
        let crev = cur.create_revision;
        let mut out = Vec::with_capacity(limit);
        if with_current && top >= 1 {
            out.push(cur);
        }
        if !past.is_empty() {
            let hkey = self.keys().ns(ns).hist(key);
            let recs: Vec<Option<String>> = if past.len() == 1 {
                vec![
                    self.timed("hget", self.client().hget(hkey, past[0].clone()))
                        .await?,
                ]
            } else {
                self.timed("hmget", self.client().hmget(hkey, past)).await?
            };
            out.extend(
                recs.into_iter()
                    .flatten()
                    .filter_map(|r| Entry::from_record(ns, key, &r, true))
                    // Same life only: the key may have been deleted and re-created between reads.
                    .filter(|h| h.create_revision == crev),
            );
        }
        Ok(Some(out))
    }

    /// Conditional write of canonical JSON `value`.
    #[allow(clippy::too_many_arguments)]
    pub async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: String,
        metadata: Option<String>,
        ttl: Ttl,
        expect: Expect,
        prov: &Provenance,
    ) -> ApiResult<PutOutcome> {
        self.register_namespace(ns).await?;
        let keys = self.keys().ns(ns).for_fenced_entry(key);
        let mut args = self.ctx_args(prov);
        args.push(key.into());
        args.push(value.as_str().into());
        args.push(metadata.as_deref().unwrap_or("").into());
        args.push(ttl_arg(ttl).into());
        args.push(expect_arg(expect).into());
        let mut r = self.fcall(&KV_PUT, keys, args).await?;
        match r.status()?.as_str() {
            "ok" => {
                let entry = read_written(&mut r, ns, key, Some(value), metadata, prov)?;
                self.history_began(ns, entry.mod_revision).await?;
                Ok(PutOutcome::Written {
                    entry,
                    created: r.flag(),
                })
            }
            "version_mismatch" => Ok(PutOutcome::Mismatch(r.u64_or_0())),
            other => Err(r.unexpected(other)),
        }
    }

    pub async fn kv_delete(
        &self,
        ns: &str,
        key: &str,
        expect: Expect,
        prov: &Provenance,
    ) -> ApiResult<DeleteOutcome> {
        let keys = self.keys().ns(ns).for_fenced_entry(key);
        let mut args = self.ctx_args(prov);
        args.push(key.into());
        args.push(expect_arg(expect).into());
        let mut r = self.fcall(&KV_DELETE, keys, args).await?;
        match r.status()?.as_str() {
            "ok" => Ok(DeleteOutcome::Deleted {
                revision: r.u64("revision")?,
                version: r.u64("version")?,
            }),
            "not_found" => Ok(DeleteOutcome::NotFound),
            "version_mismatch" => Ok(DeleteOutcome::Mismatch(r.u64_or_0())),
            other => Err(r.unexpected(other)),
        }
    }

    /// Write retained `version`'s value and metadata as a new version.
    pub async fn kv_rollback(
        &self,
        ns: &str,
        key: &str,
        version: u64,
        prov: &Provenance,
    ) -> ApiResult<Entry> {
        let keys = self.keys().ns(ns).for_fenced_entry(key);
        let mut args = self.ctx_args(prov);
        args.push(key.into());
        args.push(version.to_string().into());
        let mut r = self.fcall(&KV_ROLLBACK, keys, args).await?;
        match r.status()?.as_str() {
            "ok" => {
                // {'ok', ver, crev, mrev, ct, ut, exp, created, value, metadata}
                let mut entry = read_written(&mut r, ns, key, None, None, prov)?;
                let _created = r.flag();
                entry.value = r.opt_str();
                entry.metadata = r.opt_str().filter(|m| !m.is_empty());
                Ok(entry)
            }
            "not_found" => Err(ApiError::not_found(format!("key `{key}` does not exist"))),
            "version_not_found" => Err(ApiError::not_found(format!(
                "version {version} of `{key}` is not retained"
            ))),
            "version_mismatch" => Err(ApiError::new(
                ErrorCode::Conflict,
                format!("`{key}` changed during the rollback; retry"),
            )),
            other => Err(r.unexpected(other)),
        }
    }

    pub async fn kv_incr(
        &self,
        ns: &str,
        key: &str,
        by: i64,
        ttl: Ttl,
        prov: &Provenance,
    ) -> ApiResult<(i64, Entry)> {
        self.register_namespace(ns).await?;
        let keys = self.keys().ns(ns).for_fenced_entry(key);
        let mut args = self.ctx_args(prov);
        args.push(key.into());
        args.push(by.to_string().into());
        args.push(ttl_arg(ttl).into());
        let mut r = self.fcall(&KV_INCR, keys, args).await?;
        match r.status()?.as_str() {
            "ok" => {
                let value = r.i64("value")?;
                let entry = read_written(&mut r, ns, key, Some(value.to_string()), None, prov)?;
                self.history_began(ns, entry.mod_revision).await?;
                Ok((value, entry))
            }
            "not_a_counter" => Err(ApiError::new(
                ErrorCode::NotACounter,
                format!("`{key}` holds a value that is not an integer"),
            )),
            "overflow" => Err(ApiError::new(
                ErrorCode::CounterOverflow,
                "the result would leave the safe integer range ±9007199254740991",
            )),
            other => Err(r.unexpected(other)),
        }
    }

    /// One page of keys in byte order, starting after `after` (exclusive) within `prefix`.
    /// Returns the entries still alive and the last key scanned when the page was full.
    pub async fn kv_list(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        with_values: bool,
    ) -> ApiResult<(Vec<Entry>, Option<String>)> {
        let nk = self.keys().ns(ns);
        let min = match after {
            Some(a) if a.as_bytes() >= prefix.as_bytes() => format!("({a}"),
            _ => format!("[{prefix}"),
        };
        // 0xFF never occurs in UTF-8, so it sorts after every key that starts with `prefix`.
        let max: Value = if prefix.is_empty() {
            "+".into()
        } else {
            let mut m = b"[".to_vec();
            m.extend_from_slice(prefix.as_bytes());
            m.push(0xFF);
            Value::Bytes(m.into())
        };
        let cmd =
            fred::types::CustomCommand::new_static("ZRANGEBYLEX", fred::types::ClusterHash::FirstKey, false);
        let args: Vec<Value> = vec![
            nk.idx.as_str().into(),
            min.into(),
            max,
            "LIMIT".into(),
            0i64.into(),
            // One more than the page: whether another page follows (null cursor on the last).
            (limit as i64 + 1).into(),
        ];
        let mut names: Vec<String> = self.timed("zrangebylex", self.client().custom(cmd, args)).await?;
        let mut full = names.len() > limit;
        names.truncate(limit);
        if with_values && !names.is_empty() {
            let sizes = self.sizes(ns, &names).await?;
            let mut total = 0u64;
            let fit = sizes
                .iter()
                .take_while(|sz| {
                    total += **sz;
                    total <= MAX_VALUE_BYTES_PER_RESPONSE
                })
                .count()
                .max(1);
            if fit < names.len() {
                names.truncate(fit);
                full = true;
            }
        }
        let next = full.then(|| names.last().cloned()).flatten();
        let items = self
            .kv_get_many(ns, &names, with_values)
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok((items, next))
    }

    pub async fn kv_txn(&self, ns: &str, plan: &TxnPlan, prov: &Provenance) -> ApiResult<TxnResponse> {
        let resp = self.kv_txn_call(ns, plan, prov).await?;
        // A revision no higher than the ops run means the history may have begun in this
        // transaction (maybe again after Redis lost it): register for sure (one SADD at worst).
        let ops = plan.success.len().max(plan.failure.len()) as u64;
        if resp.revision >= 1 && resp.revision <= ops {
            self.history_began(ns, 1).await?;
        }
        Ok(resp)
    }

    async fn kv_txn_call(&self, ns: &str, plan: &TxnPlan, prov: &Provenance) -> ApiResult<TxnResponse> {
        if !plan.success.is_empty() || !plan.failure.is_empty() {
            self.register_namespace(ns).await?;
        }
        let nk = self.keys().ns(ns);
        let mut keys = nk.common();
        keys.push(nk.fence());
        for k in &plan.keys {
            keys.push(nk.entry(k));
            keys.push(nk.hist(k));
        }
        let mut args = self.ctx_args(prov);
        args.push(plan.keys.len().to_string().into());
        args.extend(plan.keys.iter().map(|k| Value::from(k.as_str())));
        args.push(plan.compares.len().to_string().into());
        for c in &plan.compares {
            let (i, kind, arg) = match c {
                TxnCompare::Version(i, v) => (i, "version", v.to_string()),
                TxnCompare::Exists(i, b) => (i, "exists", if *b { "1" } else { "0" }.to_string()),
                TxnCompare::Value(i, v) => (i, "value", v.clone()),
            };
            args.push((i + 1).to_string().into());
            args.push(kind.into());
            args.push(arg.into());
        }
        for ops in [&plan.success, &plan.failure] {
            args.push(ops.len().to_string().into());
            for op in ops {
                let (kind, i, value, meta, ttl) = match op {
                    TxnOp::Put {
                        key,
                        value,
                        metadata,
                        ttl_ms,
                    } => (
                        "put",
                        *key,
                        value.clone(),
                        metadata.clone().unwrap_or_default(),
                        ttl_ms.map(|t| t.to_string()).unwrap_or_default(),
                    ),
                    TxnOp::Delete { key } => ("delete", *key, String::new(), String::new(), String::new()),
                    TxnOp::Get { key } => ("get", *key, String::new(), String::new(), String::new()),
                };
                args.push(kind.into());
                args.push((i + 1).to_string().into());
                args.push(value.into());
                args.push(meta.into());
                args.push(ttl.into());
            }
        }
        let mut r = self.fcall(&KV_TXN, keys, args).await?;
        let succeeded = r.flag();
        let revision = r.u64("revision")?;
        let ops = if succeeded { &plan.success } else { &plan.failure };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            // Each result: {'put', ver, mrev, created} | {'delete', found} | {'get', record}.
            let mut one = Reply::new(KV_TXN.name, Value::Array(r.array()));
            one.value();
            results.push(match op {
                TxnOp::Put { key, .. } => {
                    let (version, mod_revision) = (one.u64("version")?, one.u64("mod_revision")?);
                    TxnResultDoc::put(plan.keys[*key].clone(), version, mod_revision, one.flag())
                }
                TxnOp::Delete { key } => TxnResultDoc::delete(plan.keys[*key].clone(), one.flag()),
                TxnOp::Get { key } => {
                    let name = &plan.keys[*key];
                    let entry = one
                        .opt_str()
                        .and_then(|rec| Entry::from_record(ns, name, &rec, true));
                    TxnResultDoc::get(name.clone(), entry)
                }
            });
        }
        Ok(TxnResponse {
            succeeded,
            revision,
            results,
        })
    }

    /// Every namespace in the registry with its figures, sorted by name.
    /// Figures of these namespaces, in the order given.
    pub async fn namespace_infos(&self, names: &[String]) -> ApiResult<Vec<NamespaceInfo>> {
        let reads = names.iter().map(|ns| {
            let nk = self.keys().ns(ns);
            async move {
                let c = self.client();
                let (meta, count): (Vec<Option<u64>>, u64) = futures::try_join!(
                    c.hmget::<Vec<Option<u64>>, _, _>(nk.meta.clone(), vec!["rev", "bytes"]),
                    c.zcard::<u64, _>(nk.idx.clone()),
                )?;
                Ok::<_, fred::error::Error>(NamespaceInfo {
                    namespace: ns.clone(),
                    keys: count,
                    revision: meta.first().copied().flatten().unwrap_or(0),
                    bytes: meta.get(1).copied().flatten().unwrap_or(0),
                })
            }
        });
        self.timed("namespace_info", futures::future::try_join_all(reads))
            .await
    }

    /// Every namespace name in the registry.
    pub async fn namespace_names(&self) -> ApiResult<Vec<String>> {
        self.timed("smembers", self.client().smembers(self.keys().namespaces()))
            .await
    }

    /// Keys of `ns` whose TTL has passed (up to `limit`), for the expiry reconciler.
    pub async fn due_expiries(&self, ns: &str, now_ms: i64, limit: i64) -> ApiResult<Vec<String>> {
        let nk = self.keys().ns(ns);
        self.timed(
            "zrangebyscore",
            self.client()
                .zrangebyscore(nk.ttl, "-inf", now_ms as f64, false, Some((0, limit))),
        )
        .await
    }

    /// Record the removal of `key` by Redis (expiry/eviction) if not yet recorded.
    pub async fn kv_forget(&self, ns: &str, key: &str) -> ApiResult<bool> {
        let keys = self.keys().ns(ns).for_entry(key);
        let mut args = self.ctx_args(&Provenance::default());
        args.push(key.into());
        Ok(self.fcall(&KV_FORGET, keys, args).await?.flag())
    }

    /// Check keys named by keyspace notifications (`(key, hint)`, hint one of `expired`,
    /// `evicted`, `gone`, `written`): removals are recorded, and the keys whose entry holds
    /// something the service did not write are returned for [`Store::kv_adopt`].
    pub async fn kv_observe(&self, ns: &str, items: &[(String, &'static str)]) -> ApiResult<Vec<String>> {
        let nk = self.keys().ns(ns);
        let mut keys = nk.common();
        let mut args = self.ctx_args(&Provenance::default());
        args.push((items.len() as i64).into());
        for (key, hint) in items {
            keys.push(nk.entry(key));
            keys.push(nk.hist(key));
            args.push(key.as_str().into());
            args.push((*hint).into());
        }
        let r = self.fcall(&KV_OBSERVE, keys, args).await?;
        Ok(r.rest().iter().filter_map(v_str).collect())
    }

    /// The raw contents of an entry key another client wrote: `Ok(None)` when absent,
    /// `Err(len)` when it is not a string or longer than `limit` bytes.
    pub async fn raw_entry(
        &self,
        ns: &str,
        key: &str,
        limit: u64,
    ) -> ApiResult<Option<Result<Vec<u8>, u64>>> {
        let ekey = self.keys().ns(ns).entry(key);
        let kind: String = self.timed("type", self.client().r#type(ekey.clone())).await?;
        match kind.as_str() {
            "none" => return Ok(None),
            "string" => {}
            _ => return Ok(Some(Err(u64::MAX))),
        }
        let len: u64 = self.timed("strlen", self.client().strlen(ekey.clone())).await?;
        if len > limit {
            return Ok(Some(Err(len)));
        }
        let raw: Option<Vec<u8>> = self.timed("get", self.client().get(ekey)).await?;
        Ok(raw.map(Ok))
    }

    /// Adopt a foreign value (see `kv_adopt` in the functions library): `adopt` =
    /// `Some((sha1 of the contents read, canonical value, metadata))`, `None` = drop it.
    /// Returns the function's status (`ok`, `own`, `gone`, `changed`, `dropped`).
    pub async fn kv_adopt(
        &self,
        ns: &str,
        key: &str,
        adopt: Option<(&str, &str, &str)>,
        limit: u64,
    ) -> ApiResult<String> {
        let keys = self.keys().ns(ns).for_entry(key);
        let mut args = self.ctx_args(&Provenance::default());
        let (mode, sha, value, meta) = match adopt {
            Some((sha, value, meta)) => ("adopt", sha, value, meta),
            None => ("drop", "", "", ""),
        };
        for a in [key, mode, sha, value, meta] {
            args.push(a.into());
        }
        args.push((limit as i64).into());
        self.fcall(&KV_ADOPT, keys, args).await?.status()
    }
}
