//! One error type for the whole API and one table mapping each stable `code` to its HTTP
//! status and title. Errors leave as RFC 9457 `application/problem+json` documents; 5xx
//! bodies are generic, the details go to the log. (The HTTP rendering is `http::problem`.)

pub use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Stable machine-readable error codes. Clients switch on these, never on `title` or `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON (syntax error, truncated, number out of range).
    MalformedJson,
    /// The body is JSON but not the expected shape (wrong type, missing or unknown field).
    InvalidBody,
    /// A query parameter, header or field value is out of range or malformed.
    InvalidArgument,
    /// A namespace, key or other name breaks the naming rules.
    InvalidName,
    /// An `If-Match` / `If-None-Match` / `if_version` precondition failed.
    VersionMismatch,
    /// The entry, version or route does not exist.
    NotFound,
    /// The route exists but not with this method.
    MethodNotAllowed,
    /// The body is larger than `body_limit_bytes`.
    PayloadTooLarge,
    /// The request (body upload included) took longer than `request_timeout_ms`.
    RequestTimeout,
    /// The Content-Type is not accepted for this operation.
    UnsupportedMediaType,
    /// The counter key holds something other than an integer.
    NotACounter,
    /// The operation would overflow the safe integer range (±2^53-1).
    CounterOverflow,
    /// Too much contention to complete an optimistic merge; retry.
    Conflict,
    /// The lease token is not the task's current one (acked, expired, re-leased, or wrong).
    LeaseLost,
    /// The lock is held by someone else (or the token is not the holder's).
    LockHeld,
    /// `x-fencing-token` is not the newest token the lock has granted.
    StaleFencingToken,
    /// An agent lifecycle transition that is not allowed (or a heartbeat from a lost agent).
    InvalidTransition,
    /// A partition, or something else that must be unique, exists already.
    AlreadyExists,
    /// The write would pass the partition's quota_bytes or max_keys; nothing was written.
    QuotaExceeded,
    /// The pool has no room for this allocation.
    PoolExhausted,
    /// This `Idempotency-Key` was used on this route with a different request.
    IdempotencyKeyReused,
    /// The first request with this `Idempotency-Key` is still running; retry later.
    IdempotencyKeyInFlight,
    /// No bearer token, or one the tokens file does not know (with `WWW-Authenticate: Bearer`).
    Unauthorized,
    /// The token is valid but its permission or scope does not cover this operation (the
    /// detail names what is missing).
    Forbidden,
    /// The token (or the `x-agent-id`) is over its request budget; see `Retry-After`.
    RateLimited,
    /// Redis is down, failing over, or slower than `command_timeout_ms`.
    RedisUnavailable,
    /// The write was applied on the Redis primary but not confirmed by a replica (`replica`)
    /// or the append-only file (`aof`) within `durability_timeout_ms`: it may be lost if the
    /// primary fails now (`outcome: applied_unconfirmed`).
    DurabilityTimeout,
    /// A backup file that is not one, or of a version or structure this binary cannot restore.
    BackupInvalid,
    /// The backup is encrypted and no backup key is configured, or `encrypt: true` was asked
    /// without one (400).
    BackupKeyMissing,
    /// The backup was encrypted with a key that is neither the backup key nor an old one.
    BackupKeyMismatch,
    /// The backup is damaged or was altered (a chunk's tag, the zstd checksum or the SHA-256).
    BackupTampered,
    /// The backup ends early (no final chunk, or no trailer).
    BackupTruncated,
    /// An unexpected server error; see the log for the request id.
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            MalformedJson | InvalidArgument | InvalidName => StatusCode::BAD_REQUEST,
            InvalidBody => StatusCode::UNPROCESSABLE_ENTITY,
            VersionMismatch => StatusCode::PRECONDITION_FAILED,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            NotACounter
            | Conflict
            | LeaseLost
            | LockHeld
            | StaleFencingToken
            | InvalidTransition
            | AlreadyExists
            | IdempotencyKeyInFlight => StatusCode::CONFLICT,
            CounterOverflow | IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            QuotaExceeded | PoolExhausted => StatusCode::INSUFFICIENT_STORAGE,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RedisUnavailable | DurabilityTimeout => StatusCode::SERVICE_UNAVAILABLE,
            BackupInvalid | BackupKeyMissing | BackupKeyMismatch | BackupTampered | BackupTruncated => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn title(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "Malformed JSON",
            InvalidBody => "Invalid request body",
            InvalidArgument => "Invalid argument",
            InvalidName => "Invalid name",
            VersionMismatch => "Version mismatch",
            NotFound => "Not found",
            MethodNotAllowed => "Method not allowed",
            PayloadTooLarge => "Payload too large",
            RequestTimeout => "Request timeout",
            UnsupportedMediaType => "Unsupported media type",
            NotACounter => "Not a counter",
            CounterOverflow => "Counter overflow",
            Conflict => "Conflict",
            LeaseLost => "Lease lost",
            LockHeld => "Lock held",
            StaleFencingToken => "Stale fencing token",
            InvalidTransition => "Invalid transition",
            AlreadyExists => "Already exists",
            QuotaExceeded => "Quota exceeded",
            PoolExhausted => "Pool exhausted",
            IdempotencyKeyReused => "Idempotency key reused",
            IdempotencyKeyInFlight => "Idempotency key in flight",
            Unauthorized => "Unauthorized",
            Forbidden => "Forbidden",
            RateLimited => "Rate limited",
            RedisUnavailable => "Redis unavailable",
            DurabilityTimeout => "Durability not confirmed",
            BackupInvalid => "Not a valid backup",
            BackupKeyMissing => "Backup key missing",
            BackupKeyMismatch => "Backup key mismatch",
            BackupTampered => "Backup damaged or altered",
            BackupTruncated => "Backup truncated",
            Internal => "Internal server error",
        }
    }

    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedJson => "malformed_json",
            InvalidBody => "invalid_body",
            InvalidArgument => "invalid_argument",
            InvalidName => "invalid_name",
            VersionMismatch => "version_mismatch",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            PayloadTooLarge => "payload_too_large",
            RequestTimeout => "request_timeout",
            UnsupportedMediaType => "unsupported_media_type",
            NotACounter => "not_a_counter",
            CounterOverflow => "counter_overflow",
            Conflict => "conflict",
            LeaseLost => "lease_lost",
            LockHeld => "lock_held",
            StaleFencingToken => "stale_fencing_token",
            InvalidTransition => "invalid_transition",
            AlreadyExists => "already_exists",
            QuotaExceeded => "quota_exceeded",
            PoolExhausted => "pool_exhausted",
            IdempotencyKeyReused => "idempotency_key_reused",
            IdempotencyKeyInFlight => "idempotency_key_in_flight",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            RateLimited => "rate_limited",
            RedisUnavailable => "redis_unavailable",
            DurabilityTimeout => "durability_timeout",
            BackupInvalid => "backup_invalid",
            BackupKeyMissing => "backup_key_missing",
            BackupKeyMismatch => "backup_key_mismatch",
            BackupTampered => "backup_tampered",
            BackupTruncated => "backup_truncated",
            Internal => "internal",
        }
    }
}

/// An RFC 9457 problem document as sent to clients.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `https://swarmstate.dev/problems/<code>`
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The request path.
    pub instance: String,
    pub code: ErrorCode,
    /// The `x-request-id` of the failed request, to find it in the logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For `version_mismatch`: the entry's current version (0 when it does not exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_version: Option<u64>,
    /// For `redis_unavailable` and `durability_timeout`: whether a write took effect — `not_applied` (Redis refused it
    /// before running it), `unknown` (no answer: it may have been applied; retry with a
    /// precondition or the same Idempotency-Key), `applied_unconfirmed` (durability wait timed out).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Outcome>)]
    pub outcome: Option<String>,
}

/// What a failed write did (the `outcome` of a 503).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum Outcome {
    NotApplied,
    Unknown,
    AppliedUnconfirmed,
}

/// The error every handler returns.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    /// Extra members merged into the problem document (e.g. `current_version`).
    pub extra: Map<String, Value>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
    /// A status other than the code's own (`backup_key_missing` is 400 on create, 422 on restore).
    pub status: Option<StatusCode>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ApiError {
            code,
            detail: detail.into(),
            extra: Map::new(),
            retry_after: None,
            status: None,
        }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, detail)
    }
    pub fn invalid_name(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidName, detail)
    }
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, detail)
    }
    pub fn version_mismatch(current: u64) -> Self {
        let mut e = Self::new(
            ErrorCode::VersionMismatch,
            format!("precondition failed: the current version is {current}"),
        );
        e.extra.insert("current_version".into(), current.into());
        e
    }
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, detail)
    }
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, detail)
    }
    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorCode::RedisUnavailable, detail);
        e.retry_after = Some(1);
        e
    }
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error; the log has the details")
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.code.status())
    }

    /// Render the problem document for the request at `instance`.
    pub fn to_body(&self, instance: &str, request_id: Option<&str>) -> Vec<u8> {
        let mut doc = Map::new();
        doc.insert(
            "type".into(),
            format!("https://swarmstate.dev/problems/{}", self.code.as_str()).into(),
        );
        doc.insert("title".into(), self.code.title().into());
        doc.insert("status".into(), self.status().as_u16().into());
        doc.insert("detail".into(), self.detail.clone().into());
        doc.insert("instance".into(), instance.into());
        doc.insert("code".into(), self.code.as_str().into());
        if let Some(id) = request_id {
            doc.insert("request_id".into(), id.into());
        }
        for (k, v) in &self.extra {
            doc.insert(k.clone(), v.clone());
        }
        serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for ApiError {}

pub const PROBLEM_JSON: &str = "application/problem+json";
