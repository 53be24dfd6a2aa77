//! Many keys at once: batch reads (one MGET), batch writes and deletes (each item its own
//! atomic call, pipelined in chunks on one connection so they apply in request order), and
//! transactions (validated into a plan, run as one atomic call).

use super::{writer, Ops};
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::kv::{
    BatchDeleteItemResult, BatchPutBody, BatchPutItemResult, Entry, Expect, KeysBody, Provenance, PutOutcome,
    MAX_VALUE_BYTES_PER_RESPONSE,
};
use crate::domain::names::validate_name;
use crate::domain::txn::{TxnBody, TxnResponse};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Batch items processed concurrently (pipelined) at a time.
const BATCH_CHUNK: usize = 128;

impl Ops {
    /// Entries in request order, `None` where a key does not exist.
    pub async fn batch_get(&self, who: &Caller, ns: &str, body: &KeysBody) -> ApiResult<Vec<Option<Entry>>> {
        who.check(Permission::Read, Scope::Namespace(ns))?;
        validate_name("namespace", ns)?;
        body.check()?;
        let total: u64 = self.store.sizes(ns, &body.keys).await?.iter().sum();
        if total > MAX_VALUE_BYTES_PER_RESPONSE {
            return Err(ApiError::bad_request(format!(
                "these keys hold {total} bytes, more than the {MAX_VALUE_BYTES_PER_RESPONSE} one response may carry; ask for fewer keys"
            )));
        }
        self.store.kv_get_many(ns, &body.keys, true).await
    }

    /// Every item validated first, then written in order; per-item results. Refusals that
    /// concern one item alone (quota, fencing token, precondition) become its status.
    pub async fn batch_put(
        &self,
        who: &Caller,
        ns: &str,
        body: BatchPutBody,
        prov: &Provenance,
    ) -> ApiResult<Vec<BatchPutItemResult>> {
        writer(who, ns, prov)?;
        validate_name("namespace", ns)?;
        let writes = body.writes()?;
        // One connection for the whole batch: items apply in request order.
        let store = self.store.pinned();
        store.register_namespace(ns).await?;
        let mut results = Vec::with_capacity(writes.len());
        for chunk in writes.chunks(BATCH_CHUNK) {
            let calls = chunk.iter().map(|w| {
                let store = &store;
                async move {
                    let out = store
                        .kv_put(
                            ns,
                            &w.key,
                            w.value.clone(),
                            w.metadata.clone(),
                            w.ttl,
                            w.expect,
                            prov,
                        )
                        .await;
                    let item =
                        |status: u16, entry, current_version, err: Option<ApiError>| BatchPutItemResult {
                            key: w.key.clone(),
                            status,
                            entry,
                            current_version,
                            code: err.as_ref().map(|e| e.code.as_str().to_string()),
                            detail: err.map(|e| e.detail),
                        };
                    Ok::<_, ApiError>(match out {
                        Err(e)
                            if matches!(e.code, ErrorCode::QuotaExceeded | ErrorCode::StaleFencingToken) =>
                        {
                            item(e.status().as_u16(), None, None, Some(e))
                        }
                        Err(e) => return Err(e),
                        Ok(PutOutcome::Written { entry, created }) => {
                            item(if created { 201 } else { 200 }, Some(entry), None, None)
                        }
                        Ok(PutOutcome::Mismatch(cur)) => item(412, None, Some(cur), None),
                    })
                }
            });
            results.extend(futures::future::try_join_all(calls).await?);
        }
        Ok(results)
    }

    /// Delete many keys; absent keys report `deleted: false`.
    pub async fn batch_delete(
        &self,
        who: &Caller,
        ns: &str,
        body: &KeysBody,
        prov: &Provenance,
    ) -> ApiResult<Vec<BatchDeleteItemResult>> {
        writer(who, ns, prov)?;
        validate_name("namespace", ns)?;
        body.check()?;
        let store = self.store.pinned();
        let mut results = Vec::with_capacity(body.keys.len());
        for chunk in body.keys.chunks(BATCH_CHUNK) {
            let calls = chunk.iter().map(|k| {
                let store = &store;
                async move {
                    let out = store.kv_delete(ns, k, Expect::Any, prov).await?;
                    Ok::<_, ApiError>(BatchDeleteItemResult {
                        key: k.clone(),
                        deleted: matches!(out, crate::domain::kv::DeleteOutcome::Deleted { .. }),
                    })
                }
            });
            results.extend(futures::future::try_join_all(calls).await?);
        }
        Ok(results)
    }

    /// Compare-then-apply, all-or-nothing.
    pub async fn txn(
        &self,
        who: &Caller,
        ns: &str,
        body: &TxnBody,
        prov: &Provenance,
    ) -> ApiResult<TxnResponse> {
        writer(who, ns, prov)?;
        validate_name("namespace", ns)?;
        let plan = body.plan()?;
        self.store.kv_txn(ns, &plan, prov).await
    }
}
