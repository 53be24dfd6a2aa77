//! HTTP transport: one `router()` per resource file, merged here with the OpenAPI document and
//! the middleware every answer goes through. Handlers only extract, call `ops`, and map the
//! result; every failure, including axum's own rejections (bad JSON, bad query, 404, 405,
//! 413), leaves as a problem document ([`problem`]).

pub mod agents;
pub mod auth;
pub mod backups;
pub mod batch;
pub mod channels;
pub mod dashboard;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod kv;
pub mod locks;
pub mod partitions;
pub mod problem;
pub mod queues;
pub mod spec;
pub mod sse;
pub mod ws;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::classify::StatusInRangeAsFailures;
use tower_http::compression::predicate::{DefaultPredicate, NotForContentType, Predicate};
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;
use problem::X_REQUEST_ID;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "swarmstate",
        description = "Coordination state for multi-agent systems: versioned JSON key/value with compare-and-swap, history and transactions, stored in Redis. Errors are RFC 9457 problem documents with a stable `code`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        kv::get_entry,
        kv::put_entry,
        kv::patch_entry,
        kv::delete_entry,
        kv::get_history,
        kv::rollback_entry
    ),
    components(schemas(
        crate::error::Problem,
        crate::error::ErrorCode,
        crate::domain::kv::OnConflict,
        crate::domain::agent::AgentState,
        crate::domain::queue::TaskStateDoc
    )),
    tags(
        (name = "kv", description = "Versioned key/value"),
        (name = "ops", description = "Health, status and metrics"),
        (name = "watch", description = "Change stream over WebSocket"),
        (name = "locks", description = "Locks with fencing tokens"),
        (name = "partitions", description = "Quota-bounded namespaces allocated from a pool"),
        (name = "agents", description = "Agent presence and lifecycle; a lost agent's locks and leased tasks are freed at once"),
        (name = "queues", description = "Task queues: at-least-once, priorities, delays, leases, retries, dead letters"),
        (name = "backups", description = "Consistent, compressed, encrypted backups of namespaces and partitions; verify and restore (admin)")
    )
)]
pub struct ApiDoc;

/// The API routes (each resource's `router()`), the routes outside the body limit and the
/// request timeout (backup upload and restore), and the OpenAPI document describing both.
fn api() -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (long, long_doc) = backups::long_router().split_for_parts();
    let (routes, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(kv::router())
        .merge(batch::router())
        .merge(health::router())
        .merge(ws::router())
        .merge(sse::router())
        .merge(channels::router())
        .merge(agents::router())
        .merge(partitions::router())
        .merge(locks::router())
        .merge(queues::router())
        .merge(backups::router())
        .split_for_parts();
    doc.merge(long_doc);
    (routes, long, doc)
}

/// The OpenAPI document (served at /openapi.json, printed by `swarmstate openapi`).
pub fn openapi() -> serde_json::Value {
    let mut doc = api().2;
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    spec::finish(&doc)
}

/// The whole application: API routes, docs, and middleware.
pub fn router(state: AppState) -> Router {
    let (api_router, long_routes, _) = api();
    let body_limit = state.cfg.body_limit_bytes;
    let request_timeout = std::time::Duration::from_millis(state.cfg.request_timeout_ms);
    api_router
        .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", openapi()))
        .merge(dashboard::router())
        .fallback(problem::fallback)
        // Every route but the long ones: a declared Content-Length over the limit is 413 at
        // once, before any body byte is awaited (the lazy limit catches chunked bodies as they
        // stream); a request not answered within request_timeout_ms is 408.
        .layer(
            ServiceBuilder::new()
                .layer(RequestBodyLimitLayer::new(body_limit))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    request_timeout,
                ))
                .layer(DefaultBodyLimit::max(body_limit)),
        )
        // Upload (its own limit, checked as it streams) and restore (as long as it takes).
        .merge(long_routes.layer(DefaultBodyLimit::max(body_limit)))
        .route_layer(middleware::from_fn_with_state(state.clone(), idempotency::layer))
        // Outside the idempotency layer: a replay needs the same token as the first request.
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::layer))
        .route_layer(middleware::from_fn(problem::capture_route))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                // A client's x-request-id is kept only when it is short, visible ASCII (a
                // 64 KB one was echoed back whole); otherwise a fresh one is made.
                .map_request(problem::sanitize_request_id)
                .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
                // 500..=506 are logged at WARN here: the ones that are our fault are logged at
                // ERROR where they arise (`ApiError::internal`). 507 (quota_exceeded,
                // pool_exhausted) is the client's, like a 4xx: not logged as a failure.
                .layer(
                    TraceLayer::new(StatusInRangeAsFailures::new(500..=506).into_make_classifier())
                        // DefaultMakeSpan's fields, with `?access_token=` redacted.
                        .make_span_with(|req: &axum::http::Request<axum::body::Body>| {
                            tracing::debug_span!(
                                "request",
                                method = %req.method(),
                                uri = %auth::redacted_uri(req.uri()),
                                version = ?req.version(),
                            )
                        })
                        .on_failure(DefaultOnFailure::new().level(tracing::Level::WARN)),
                )
                // Outside `observe`: the problem documents it writes are compressed like every
                // other body (inside it, they kept the `content-encoding: gzip` of the body they
                // replaced and no client could decode them).
                // Backup files are zstd already: sent as they are, with their Content-Length.
                .layer(CompressionLayer::new().compress_when(
                    DefaultPredicate::new().and(NotForContentType::const_new(backups::BACKUP_MEDIA_TYPE)),
                ))
                .layer(middleware::from_fn(problem::observe)),
        )
}
