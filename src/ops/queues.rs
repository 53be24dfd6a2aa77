//! Task-queue operations (DESIGN.md "Task queues"): enqueue, the lease long-poll (woken by
//! the queue's channel), ack / nack / extend with fencing tokens, dead letters, pause and
//! resume. Tasks leased by a registered agent are recorded against it, so they are requeued at
//! once if it is lost.

use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Ops;
use crate::config::RedisMode;
use crate::domain::agent::Held;
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::json::canonical;
use crate::domain::names::{check_range, validate_name};
use crate::domain::page::{decode_cursor, encode_cursor, not_ours, page_limit, Page, PageQuery};
use crate::domain::queue::{
    check_lease_token, check_task_id, parse_ack_fence, AckBody, EnqueueBody, ExtendBody, LeaseBody, NackBody,
    QueueStats, Task, LISTABLE_STATES, MAX_ERROR_BYTES, MAX_LEASE_MS, MAX_WAIT_MS,
};
use crate::error::{ApiError, ApiResult};
use crate::store::queue::AckFence;

/// Hands a consumed wake-up on to the next waiter when dropped while still holding it.
struct PassOn<'a>(&'a Notify, bool);

impl Drop for PassOn<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.notify_one();
        }
    }
}

impl Ops {
    /// Enqueue; returns the task and whether it was created (false: a task with this
    /// idempotency key exists).
    pub async fn enqueue(&self, who: &Caller, q: &str, body: EnqueueBody) -> ApiResult<(Task, bool)> {
        who.check(Permission::Write, Scope::Queue(q))?;
        validate_name("queue", q)?;
        let task = body.task()?;
        self.store.register_queue(q).await?;
        self.store.q_enqueue(q, &task).await
    }

    /// Lease up to `max_tasks` ready tasks, long-polling up to `wait_ms` when there are none.
    pub async fn lease(&self, who: &Caller, q: &str, b: &LeaseBody) -> ApiResult<Vec<Task>> {
        who.check(Permission::Write, Scope::Queue(q))?;
        who.check(Permission::Write, Scope::ActAs(&b.worker))?;
        validate_name("queue", q)?;
        let (max, wait) = b.check()?;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
        let tokens = || -> Vec<String> {
            (0..max)
                .map(|_| uuid::Uuid::new_v4().simple().to_string())
                .collect()
        };
        let tasks = if wait == 0 {
            self.store
                .q_lease(q, &b.worker, &tokens(), b.lease_ms)
                .await?
                .tasks
        } else {
            // Only a lease that may wait needs the queue's wake-up channel.
            self.queues.ensure(&self.store).await?;
            let chan = self.queues.chan(q);
            // A wake-up is handed on if this request goes away before using it.
            let mut wake = PassOn(&chan.ready, false);
            let stop = self.stopping();
            tokio::pin!(stop);
            loop {
                // Armed before the lease call, so an enqueue between the call and the wait wakes us.
                let notified = chan.ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let r = self.store.q_lease(q, &b.worker, &tokens(), b.lease_ms).await?;
                wake.1 = false;
                if r.tasks.len() == max as usize {
                    // One waiter is woken per ready task; a full batch may have left more behind.
                    chan.ready.notify_one();
                }
                let now = tokio::time::Instant::now();
                if !r.tasks.is_empty() || now >= deadline {
                    break r.tasks;
                }
                // Sleep until woken, the next delayed task or lease expiry is due, or the deadline.
                let mut until = deadline;
                if let Some(in_ms) = r.next_due_in_ms.filter(|_| !r.paused) {
                    until = until.min(now + Duration::from_millis(in_ms.saturating_add(1).min(MAX_WAIT_MS)));
                }
                tokio::select! {
                    _ = &mut notified => wake.1 = true,
                    _ = tokio::time::sleep_until(until) => {}
                    // Shutting down: answer now with what there is (nothing).
                    _ = &mut stop => break r.tasks,
                }
            }
        };
        // Labelled only for leases that got tasks, so polling made-up queue names adds no series.
        if !tasks.is_empty() {
            metrics::histogram!("queue_lease_wait_seconds", "queue" => q.to_string())
                .record(started.elapsed().as_secs_f64());
        }
        self.hold_tasks(q, &b.worker, &tasks).await;
        Ok(tasks)
    }

    /// Tasks leased by a registered agent are recorded against it.
    async fn hold_tasks(&self, q: &str, worker: &str, tasks: &[Task]) {
        let held = tasks
            .iter()
            .filter_map(|t| {
                Some(Held::Task {
                    queue: q.to_string(),
                    id: t.id.clone(),
                    token: t.lease_token.clone()?,
                })
            })
            .collect::<Vec<_>>();
        self.presence.hold(&self.store, worker, held).await;
    }

    /// Its lease is over: no longer held by its worker.
    async fn unhold_task(&self, q: &str, id: &str, owner: Option<String>, token: &str) {
        if let Some(owner) = owner {
            let held = Held::Task {
                queue: q.to_string(),
                id: id.to_string(),
                token: token.to_string(),
            };
            self.presence.unhold(&self.store, &owner, held).await;
        }
    }

    /// `x-fencing-token` of an ack or nack. The check runs inside the ack's function, which
    /// then touches two slots: standalone and Sentinel only.
    fn ack_fence(&self, who: &Caller, q: &str, header: Option<&str>) -> ApiResult<Option<AckFence>> {
        let Some(v) = header else { return Ok(None) };
        let fence = parse_ack_fence(q, v)?;
        // The fence reads another namespace's lock: the caller must be able to read it.
        who.check(Permission::Read, Scope::Namespace(&fence.0))?;
        if matches!(self.store.mode(), RedisMode::Cluster) {
            return Err(ApiError::bad_request(
                "x-fencing-token on task acks is not available with Redis Cluster (the lock and the queue live in different slots)",
            ));
        }
        Ok(Some(fence))
    }

    pub async fn ack(
        &self,
        who: &Caller,
        q: &str,
        id: &str,
        b: &AckBody,
        fence: Option<&str>,
    ) -> ApiResult<Task> {
        who.check(Permission::Write, Scope::Queue(q))?;
        validate_name("queue", q)?;
        let id = check_task_id(id)?;
        check_lease_token(&b.lease_token)?;
        let result = b.result.as_ref().map(canonical);
        let fence = self.ack_fence(who, q, fence)?;
        let (t, owner) = self
            .store
            .q_ack(q, id, &b.lease_token, result.as_deref(), fence.as_ref())
            .await?;
        self.unhold_task(q, &t.id, owner, &b.lease_token).await;
        Ok(t)
    }

    pub async fn nack(
        &self,
        who: &Caller,
        q: &str,
        id: &str,
        b: &NackBody,
        fence: Option<&str>,
    ) -> ApiResult<Task> {
        who.check(Permission::Write, Scope::Queue(q))?;
        validate_name("queue", q)?;
        let id = check_task_id(id)?;
        check_lease_token(&b.lease_token)?;
        if b.error.len() > MAX_ERROR_BYTES {
            return Err(ApiError::bad_request("error must be at most 8192 bytes"));
        }
        if let Some(d) = b.retry_delay_ms {
            check_range("retry_delay_ms", d, 0, MAX_LEASE_MS)?;
        }
        let fence = self.ack_fence(who, q, fence)?;
        let (t, owner) = self
            .store
            .q_nack(q, id, &b.lease_token, &b.error, b.retry_delay_ms, fence.as_ref())
            .await?;
        self.unhold_task(q, &t.id, owner, &b.lease_token).await;
        Ok(t)
    }

    pub async fn extend(&self, who: &Caller, q: &str, id: &str, b: &ExtendBody) -> ApiResult<Task> {
        who.check(Permission::Write, Scope::Queue(q))?;
        validate_name("queue", q)?;
        let id = check_task_id(id)?;
        check_lease_token(&b.lease_token)?;
        check_range("lease_ms", b.lease_ms, 1, MAX_LEASE_MS)?;
        self.store.q_extend(q, id, &b.lease_token, b.lease_ms).await
    }

    pub async fn task(&self, who: &Caller, q: &str, id: &str) -> ApiResult<Task> {
        who.check(Permission::Read, Scope::Queue(q))?;
        validate_name("queue", q)?;
        let id = check_task_id(id)?;
        self.store
            .q_task(q, id)
            .await?
            .ok_or_else(|| ApiError::not_found("no such task"))
    }

    /// Every queue with its counts, by name.
    /// A page of queues by name, with their figures.
    pub async fn queues(&self, who: &Caller, page: &Page) -> ApiResult<(Vec<QueueStats>, Option<String>)> {
        let mut names = self.store.queue_names().await?;
        names.retain(|n| who.may(Permission::Read, Scope::Queue(n)));
        names.sort();
        let (names, next) = page.of_names(&names);
        let mut items = Vec::with_capacity(names.len());
        for q in names {
            items.push(self.store.q_stats(&q).await?);
        }
        Ok((items, next))
    }

    pub async fn queue_stats(&self, who: &Caller, q: &str) -> ApiResult<QueueStats> {
        who.check(Permission::Read, Scope::Queue(q))?;
        validate_name("queue", q)?;
        self.store.q_stats(q).await
    }

    /// A page of the dead-letter list, oldest death first: tasks, how many in all, the cursor
    /// of the next page (the death time and id of the page's last task).
    pub async fn dead(
        &self,
        who: &Caller,
        q: &str,
        page: &PageQuery,
    ) -> ApiResult<(Vec<Task>, u64, Option<String>)> {
        self.tasks_in(who, q, "dead", page).await
    }

    /// A page of the tasks in `state`, in that state's order: tasks, how many in all, the
    /// cursor of the next page (the score and id of the page's last task).
    pub async fn tasks_in(
        &self,
        who: &Caller,
        q: &str,
        state: &str,
        page: &PageQuery,
    ) -> ApiResult<(Vec<Task>, u64, Option<String>)> {
        who.check(Permission::Read, Scope::Queue(q))?;
        validate_name("queue", q)?;
        if !LISTABLE_STATES.contains(&state) {
            return Err(ApiError::bad_request(format!(
                "state must be one of {}",
                LISTABLE_STATES.join(", ")
            )));
        }
        let limit = page_limit(page.limit, 100)?;
        let after = match decode_cursor(page.cursor.as_deref())? {
            None => None,
            Some(c) => Some(
                c.split_once(':')
                    .filter(|(score, id)| {
                        score.parse::<f64>().is_ok_and(f64::is_finite) && check_task_id(id).is_ok()
                    })
                    .map(|(score, id)| (score.to_string(), id.to_string()))
                    .ok_or_else(not_ours)?,
            ),
        };
        let (items, total, last) = if state == "dead" {
            self.store.q_dead_list(q, after, limit as u64).await?
        } else {
            self.store.q_task_list(q, state, after, limit as u64).await?
        };
        let next = last.map(|position| encode_cursor(&position));
        Ok((items, total, next))
    }

    pub async fn retry_dead(&self, who: &Caller, q: &str, id: &str) -> ApiResult<Task> {
        who.check(Permission::Write, Scope::Queue(q))?;
        validate_name("queue", q)?;
        let id = check_task_id(id)?;
        self.store.q_retry_dead(q, id).await
    }

    pub async fn purge_dead(&self, who: &Caller, q: &str) -> ApiResult<u64> {
        who.check(Permission::Write, Scope::Queue(q))?;
        validate_name("queue", q)?;
        self.store.q_purge_dead(q).await
    }

    /// Pause (or resume) handing out tasks; returns the queue's figures after.
    pub async fn pause(&self, who: &Caller, q: &str, paused: bool) -> ApiResult<QueueStats> {
        who.check(Permission::Write, Scope::Queue(q))?;
        validate_name("queue", q)?;
        self.store.register_queue(q).await?;
        self.store.q_pause(q, paused).await?;
        self.store.q_stats(q).await
    }

    /// Task state changes of `q` from now on (JSON texts).
    pub async fn queue_events(
        &self,
        who: &Caller,
        q: &str,
    ) -> ApiResult<tokio::sync::broadcast::Receiver<std::sync::Arc<str>>> {
        who.check(Permission::Read, Scope::Queue(q))?;
        validate_name("queue", q)?;
        self.queues.events(&self.store, q).await
    }
}
