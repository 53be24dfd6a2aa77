//! Who is calling, and whether they are within budget: the tokens file (loaded at start-up,
//! re-read on SIGHUP and when it changes, without dropping connections), bearer lookup, and
//! the per-token and per-agent request budgets (GCRA, `governor`; state is per process).
//! What a caller may do is decided by [`crate::domain::auth::Caller::check`], called by every
//! operation.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::Config;
use crate::domain::auth::{find_token, index_tokens, parse_tokens, Caller, Token, TokenIndex};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::shutdown::Stopped;

type Limiter = DefaultDirectRateLimiter<StateInformationMiddleware>;
type KeyedLimiter = DefaultKeyedRateLimiter<String, StateInformationMiddleware>;

/// A token's budget.
struct Budget {
    rate: u32,
    limiter: Limiter,
}

/// The tokens in force.
#[derive(Default)]
struct TokenSet {
    tokens: Vec<Arc<Token>>,
    /// The same tokens by digest.
    index: TokenIndex,
    /// By token name; kept across reloads while a token's rate is unchanged.
    budgets: HashMap<String, Arc<Budget>>,
    /// What the file looked like when read (modified time, length, contents).
    stamp: Option<(Option<SystemTime>, u64, String)>,
}

/// Authentication and budgets for the whole process.
pub struct Auth {
    file: Option<PathBuf>,
    set: RwLock<Arc<TokenSet>>,
    /// Bumped by every reload: open streams re-check their token then.
    generation: tokio::sync::watch::Sender<u64>,
    /// The file could not be read at the last check (logged once).
    unreadable: std::sync::atomic::AtomicBool,
    agent_rate: Option<u32>,
    agents: Option<KeyedLimiter>,
}

/// The rate-limit figures of one answer (`RateLimit-Limit` / `-Remaining` / `-Reset`).
#[derive(Debug, Clone, Copy)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until `remaining` is back at `limit`.
    pub reset: u32,
}

fn quota(rate: u32) -> Quota {
    let r = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.max(1).saturating_mul(2)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(r).allow_burst(burst)
}

impl Auth {
    /// Load the tokens file named by the configuration (none: every caller is [`Caller::Open`]).
    pub fn load(cfg: &Config) -> Result<Auth, String> {
        let auth = Auth {
            file: cfg.tokens_file.clone(),
            set: RwLock::new(Arc::default()),
            generation: tokio::sync::watch::channel(0).0,
            unreadable: Default::default(),
            agent_rate: cfg.agent_rate_per_sec,
            agents: cfg
                .agent_rate_per_sec
                .map(|r| RateLimiter::keyed(quota(r)).with_middleware::<StateInformationMiddleware>()),
        };
        if auth.file.is_some() {
            auth.reload()?;
        }
        Ok(auth)
    }

    /// Whether a tokens file is in use.
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    fn current(&self) -> Arc<TokenSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Read the tokens file again. On an error the tokens in force stay.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.file else {
            return Ok(0);
        };
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let stamp = (meta.modified().ok(), meta.len(), text.clone());
        let tokens = parse_tokens(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let old = self.current();
        let budgets = tokens
            .iter()
            .filter_map(|t| {
                let rate = t.entry.rate_per_sec?;
                let kept = old.budgets.get(&t.entry.name).filter(|b| b.rate == rate).cloned();
                Some((
                    t.entry.name.clone(),
                    kept.unwrap_or_else(|| {
                        Arc::new(Budget {
                            rate,
                            limiter: RateLimiter::direct(quota(rate))
                                .with_middleware::<StateInformationMiddleware>(),
                        })
                    }),
                ))
            })
            .collect();
        let n = tokens.len();
        let tokens: Vec<Arc<Token>> = tokens.into_iter().map(Arc::new).collect();
        let set = TokenSet {
            index: index_tokens(&tokens),
            tokens,
            budgets,
            stamp: Some(stamp),
        };
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        self.generation.send_modify(|g| *g += 1);
        Ok(n)
    }

    /// Whether the file differs from what was last read (cheap: metadata first).
    fn changed(&self) -> bool {
        let Some(path) = &self.file else {
            return false;
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => {
                self.unreadable.store(false, std::sync::atomic::Ordering::Relaxed);
                m
            }
            Err(e) => {
                if !self.unreadable.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::error!(file = %path.display(), error = %e, "tokens file unreadable; the tokens loaded before stay in force");
                }
                return false;
            }
        };
        let cur = self.current();
        match &cur.stamp {
            Some((mtime, len, text)) => {
                if meta.modified().ok() != *mtime || meta.len() != *len {
                    return true;
                }
                // Same size and time (a rewrite within the clock's resolution): compare text.
                std::fs::read_to_string(path).is_ok_and(|t| t != *text)
            }
            None => true,
        }
    }

    /// Re-read the file on SIGHUP and whenever it changes (checked every second), until stop.
    pub async fn watch(self: Arc<Self>, stopped: Stopped) {
        if self.file.is_none() {
            return;
        }
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let stop = crate::shutdown::wait(stopped);
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_error: Option<String> = None;
        loop {
            let forced = tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => false,
                _ = async {
                    match hup.as_mut() {
                        Some(h) => { h.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => true,
            };
            if let Some(agents) = &self.agents {
                agents.retain_recent();
            }
            if !forced && !self.changed() {
                continue;
            }
            match self.reload() {
                Ok(n) => {
                    last_error = None;
                    tracing::info!(tokens = n, sighup = forced, "tokens file loaded");
                }
                Err(e) => {
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::error!(error = %e, "tokens file not reloaded; the tokens loaded before stay in force");
                    }
                    last_error = Some(e);
                }
            }
        }
    }

    /// The caller presenting `bearer`: [`Caller::Open`] without a tokens file; 401
    /// `unauthorized` when a tokens file is set and the token is missing or unknown.
    pub fn authenticate(&self, bearer: Option<&str>) -> ApiResult<Caller> {
        if self.file.is_none() {
            return Ok(Caller::Open);
        }
        let Some(presented) = bearer else {
            return Err(ApiError::unauthorized(
                "this route needs `Authorization: Bearer <token>`",
            ));
        };
        let set = self.current();
        match find_token(&set.index, presented) {
            Some(t) => Ok(Caller::Token(t.clone())),
            None => Err(ApiError::unauthorized("unknown bearer token")),
        }
    }

    /// The caller as the tokens in force now see it (its entry as the file now has it):
    /// `None` when its token was removed. Long-lived sockets look it up per operation.
    pub fn current_caller(&self, caller: &Caller) -> Option<Caller> {
        match caller {
            Caller::Open => Some(Caller::Open),
            Caller::Token(t) => self
                .current()
                .tokens
                .iter()
                .find(|c| c.same_secret(t))
                .map(|c| Caller::Token(c.clone())),
        }
    }

    /// Whether the caller's token is still in force with the entry it had.
    fn unchanged(&self, caller: &Caller) -> bool {
        match (caller, self.current_caller(caller)) {
            (Caller::Open, _) => true,
            (Caller::Token(old), Some(Caller::Token(new))) => old.entry == new.entry,
            _ => false,
        }
    }

    /// Resolves when the caller's token is removed from the tokens file or its entry changes
    /// (never for [`Caller::Open`]): streams it opened end then.
    pub fn revoked(
        self: &Arc<Self>,
        caller: Caller,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.generation.subscribe();
        let auth = self.clone();
        async move {
            if matches!(caller, Caller::Open) {
                return std::future::pending().await;
            }
            loop {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if !auth.unchanged(&caller) {
                    return;
                }
            }
        }
    }

    /// Spend one request of the caller's budget (and of the `x-agent-id`'s, when set). `Ok`
    /// carries the figures for the answer's headers (none for a token without a budget); 429
    /// `rate_limited` with `Retry-After` when over.
    pub fn admit(&self, caller: &Caller, agent: Option<&str>) -> Result<Option<RateInfo>, Limited> {
        let mut info = None;
        if let Caller::Token(t) = caller {
            let set = self.current();
            if let Some(b) = set.budgets.get(&t.entry.name) {
                let decision = b.limiter.check().map_err(|n| wait(n.wait_time_from(clock_now())));
                info = Some(spend(&decision, b.rate, || format!("token `{}`", t.entry.name))?);
            }
        }
        if let (Some(agents), Some(rate), Some(id)) = (&self.agents, self.agent_rate, agent) {
            let decision = agents
                .check_key(&id.to_string())
                .map_err(|n| wait(n.wait_time_from(clock_now())));
            let agent_info = spend(&decision, rate, || format!("agent `{id}`"))?;
            info = info.or(Some(agent_info));
        }
        Ok(info)
    }
}

/// Over budget: the 429 and the figures for its headers.
pub struct Limited {
    pub error: ApiError,
    pub info: RateInfo,
}

fn clock_now() -> <DefaultClock as Clock>::Instant {
    DefaultClock::default().now()
}

fn wait(d: Duration) -> u32 {
    (d.as_millis().div_ceil(1000) as u32).max(1)
}

type Decision = Result<governor::middleware::StateSnapshot, u32>;

/// The figures of a decision, or the 429 when over budget (`Err(seconds to wait)`).
fn spend(d: &Decision, rate: u32, who: impl FnOnce() -> String) -> Result<RateInfo, Limited> {
    match d {
        Ok(snap) => {
            // Bursts up to twice the rate are allowed; Remaining never claims more than the
            // per-second limit, so a client pacing itself by it stays within the rate.
            let remaining = snap.remaining_burst_capacity().min(rate);
            Ok(RateInfo {
                limit: rate,
                remaining,
                reset: u32::from(remaining < rate),
            })
        }
        Err(secs) => {
            let mut error = ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "{} is over its budget of {rate} requests per second (bursts up to {}); retry in {secs} s",
                    who(),
                    rate.saturating_mul(2)
                ),
            );
            error.retry_after = Some(*secs);
            Err(Limited {
                error,
                info: RateInfo {
                    limit: rate,
                    remaining: 0,
                    reset: *secs,
                },
            })
        }
    }
}
