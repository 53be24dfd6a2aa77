//! `Idempotency-Key` (DESIGN.md "What no peer does"): the first request with a key on a route
//! runs and its answer is kept for 24 h; a repeat with the same fingerprint replays it, one
//! with another fingerprint is 422 `idempotency_key_reused`, one while the first still runs is
//! 409 `idempotency_key_in_flight`.
//!
//! Kept: every answer of a request that reached its operation — successes, refusals such as
//! 404/409/412/507, and 5xx whose outcome is unknown (a repeat replays that 503 rather than
//! applying the write a second time). Not kept (a repeat runs again): 400/405/413/415/422
//! (nothing ran) and a 503 with outcome `not_applied` (Redis refused the command up front).
//!
//! Not atomic with the operation: the record is reserved before the operation and written after
//! it, in the same hash slot but by separate commands. The operation and the keeping of its
//! answer run on their own task, so a client that disconnects or times out does not cut them
//! short. Only if the service process dies between the two does the reservation expire after
//! `request_timeout_ms` + 1 s and a repeat then runs the operation again.

use super::Ops;
use crate::domain::idempotency::{Answer, Home, Record, RETAIN_MS};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// What to do with a request that carries a key.
pub enum Begin {
    /// First use: run it, then [`Ops::idem_finish`] or [`Ops::idem_abandon`].
    Run(Ticket),
    /// A repeat of a finished request: send this answer again.
    Replay(Answer),
}

/// A reservation held while the first request runs.
pub struct Ticket {
    home: Home,
    id: String,
    fingerprint: String,
}

impl Ops {
    pub async fn idem_begin(&self, home: Home, id: String, fingerprint: String) -> ApiResult<Begin> {
        let running = Record {
            fingerprint: fingerprint.clone(),
            answer: None,
        };
        let hold_ms = self.cfg.request_timeout_ms + 1000;
        match self.store.idem_reserve(&home, &id, &running, hold_ms).await? {
            None => Ok(Begin::Run(Ticket {
                home,
                id,
                fingerprint,
            })),
            Some(r) if r.fingerprint != fingerprint => Err(ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was used on this route with a different request",
            )),
            Some(Record { answer: None, .. }) => {
                let mut e = ApiError::new(
                    ErrorCode::IdempotencyKeyInFlight,
                    "the first request with this Idempotency-Key is still running",
                );
                e.retry_after = Some(1);
                Err(e)
            }
            Some(Record { answer: Some(a), .. }) => Ok(Begin::Replay(a)),
        }
    }

    /// Keep the first answer for repeats.
    pub async fn idem_finish(&self, t: Ticket, answer: Answer) -> ApiResult<()> {
        let done = Record {
            fingerprint: t.fingerprint,
            answer: Some(answer),
        };
        self.store.idem_store(&t.home, &t.id, &done, RETAIN_MS).await
    }

    /// Forget the reservation: the outcome is unknown, a repeat runs again.
    pub async fn idem_abandon(&self, t: Ticket) -> ApiResult<()> {
        self.store.idem_drop(&t.home, &t.id).await
    }
}
