//! The HTTP listener: one axum router for WebSocket, SSE, REST, health,
//! readiness and metrics, with CORS on the `/v1/` endpoints.

mod error;
pub mod listener;
mod presence;
mod rest;
pub mod socket;
mod sse;
mod stomp;
mod ws;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use error::ApiError;

use crate::auth::{Credentials, Identity};
use crate::config::AllowedOrigins;
use crate::node::Node;
use crate::protocol::{ErrorCode, RoomName};

/// Builds the router of a node.
pub fn router(node: Arc<Node>) -> Router {
    // CORS is the outermost layer so that preflight requests are answered
    // before routing (a route has no OPTIONS handler of its own).
    let cors = cors(&node.settings.allowed_origins);
    // STOMP's paths stay outside the other endpoints' layer: SockJS's
    // `info` answers CORS as SockJS clients need (below).
    let info_cors = sockjs_cors(&node.settings.allowed_origins);
    let mut stomp_routes = Router::new();
    stomp_routes = stomp::add_routes(stomp_routes, "/v1/stomp", "/v1/stomp/sockjs", &info_cors);
    for endpoint in &node.settings.stomp_endpoints {
        stomp_routes = stomp::add_routes(stomp_routes, endpoint, endpoint, &info_cors);
    }
    Router::new()
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/rooms/{room}/events", get(sse::events))
        .route("/v1/rooms/{room}/messages", get(rest::history).post(rest::publish))
        .route("/v1/rooms/{room}/presence", get(presence::members))
        .route("/v1/rooms/{room}/signals", axum::routing::post(presence::signal))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors)
        .merge(stomp_routes)
        .layer(axum::middleware::map_response_with_state(
            node.clone(),
            count_http_error,
        ))
        .with_state(node)
}

/// Counts every HTTP error answered (`relay_errors_total`, by code): an
/// [`ApiError`] leaves its code on the response.
async fn count_http_error(State(node): State<Arc<Node>>, response: Response) -> Response {
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        node.metrics.count_error(*code);
    }
    response
}

/// SockJS clients fetch `info` with credentials, which a wildcard CORS
/// answer does not allow: an allowed origin is mirrored, with
/// `Access-Control-Allow-Credentials` (as SockJS servers answer). Under
/// `RELAY_ALLOWED_ORIGINS=*` that is any origin: `info` says only that the
/// WebSocket transport is there (no session, no cookie, nothing of the
/// user), so a credentialed read of it gives a page nothing. Nothing else
/// answers with credentials.
fn sockjs_cors(origins: &AllowedOrigins) -> CorsLayer {
    let origins = origins.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|origin| origins.allows(origin))
        }))
        .allow_credentials(true)
        .allow_methods([Method::GET])
        .max_age(Duration::from_secs(600))
}

fn cors(origins: &AllowedOrigins) -> CorsLayer {
    let allow_origin = match origins {
        AllowedOrigins::Any => AllowOrigin::any(),
        AllowedOrigins::List(list) => AllowOrigin::list(list.iter().filter_map(|origin| origin.parse().ok())),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response();
    }
    let (ready, shards) = broker_ready(&node).await;
    if shards.is_empty() {
        if !ready {
            return (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable\n").into_response();
        }
        return "ready\n".into_response();
    }
    let mut body = String::new();
    body.push_str(if ready { "ready\n" } else { "broker unreachable\n" });
    for shard in &shards {
        let state = if shard.up { "up" } else { "down" };
        let _ = writeln!(body, "shard {} {state}", shard.address);
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

/// Whether the broker answers, with each shard's state on a cluster. On a
/// cluster the node is ready while any primary answers (every node shares
/// the shards: a 503 would take the whole fleet out of the load balancer),
/// and rooms of a shard that is down answer `unavailable` on their own.
async fn broker_ready(node: &Node) -> (bool, Vec<crate::broker::ShardState>) {
    let shards = node.broker.shards().await;
    if shards.is_empty() {
        return (node.broker.is_ready().await, shards);
    }
    (shards.iter().any(|shard| shard.up), shards)
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let (broker_up, _) = broker_ready(&node).await;
    node.metrics.broker_up.set(i64::from(broker_up));
    node.metrics.draining.set(i64::from(node.is_draining()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(),
    )
        .into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!(
            "no endpoint at {}; see docs/protocol.md for the endpoints",
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{} is not supported on {}", request.method(), request.uri().path()),
    )
}

/// Query parameters every `/v1/` endpoint may carry.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct AuthQuery {
    pub(crate) access_token: Option<String>,
    pub(crate) user: Option<String>,
}

/// Authenticates a request from its headers and query.
pub(crate) fn identify(node: &Node, headers: &HeaderMap, query: &AuthQuery) -> Result<Identity, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")));
    let credentials = Credentials {
        bearer,
        access_token: query.access_token.as_deref(),
        user: query.user.as_deref(),
    };
    node.authenticator
        .authenticate(&credentials)
        .map_err(|error| ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, error.to_string()))
}

/// Takes a connection place for a client, by the key of its budgets
/// ([`Identity::client_key`]: the token's subject, else the address).
pub(crate) fn admit(node: &Node, client: &str) -> Result<crate::session::ConnectionSlot, ApiError> {
    node.admission.admit(client).map_err(|refusal| match refusal {
        crate::session::AdmissionRefusal::NodeFull => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            "this node is at its connection limit; connect again to reach another node",
        )
        .retry_after(Duration::from_secs(1)),
        crate::session::AdmissionRefusal::ClientFull => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many open connections for this client (RELAY_MAX_CONNECTIONS_PER_CLIENT); close some first",
        )
        .retry_after(Duration::from_secs(5)),
    })
}

/// How long until a token's expiry (plus the leeway), from now, at most
/// [`FAR_FUTURE`].
pub(crate) fn until_expiry(node: &Node, identity: &Identity) -> Option<Duration> {
    let expires_at = identity.expires_at()?;
    let leeway = match &*node.authenticator {
        crate::auth::Authenticator::Jwt(verifier) => verifier.leeway_secs(),
        crate::auth::Authenticator::Open => 0,
    };
    // A client chooses `exp`: one past what a clock can hold (2^63 and
    // more) is simply far away, never a panic.
    let Some(deadline) = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(expires_at.saturating_add(leeway)))
    else {
        return Some(FAR_FUTURE);
    };
    let left = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Some(left.min(FAR_FUTURE))
}

/// The longest wait a timer is given (about a century): every deadline a
/// client can name is cut to it, so adding it to a clock reading cannot
/// overflow.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Validates the `{room}` path segment.
pub(crate) fn room_from_path(room: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(room).map_err(|error| ApiError::invalid_room(error.to_string()))
}

/// Maps axum's query rejection to a JSON error.
pub(crate) fn bad_query(rejection: &axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::bad_request(format!("bad query string: {}", rejection.body_text()))
}

/// Holds a gauge up while a connection lives.
pub(crate) struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);

impl GaugeGuard {
    pub(crate) fn inc(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
