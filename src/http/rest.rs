//! `POST /v1/rooms/{room}/messages` (publish) and
//! `GET /v1/rooms/{room}/messages` (history pages).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ApiError, AuthQuery, bad_query, identify, room_from_path};
use bytes::Bytes;

use crate::broker::StoredMessage;
use crate::node::{HISTORY_READS_PER_CLIENT, Node};
use crate::protocol::{
    BodyRefusal, ErrorCode, MAX_BODY_DEPTH, MAX_CMID_BYTES, MessageId, body, check_cmid, checked_body,
};
use crate::session::{HistoryBudget, REPLAY_MEMORY_WAIT, read_backward, read_forward};

/// Default page size of a history request without `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    body: Option<&'a RawValue>,
}

fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue as Deserialize>::deserialize(deserializer).map(Some)
}

/// Publishes one message.
pub async fn publish(
    State(node): State<Arc<Node>>,
    room: Result<Path<String>, PathRejection>,
    query: Result<Query<AuthQuery>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path(room) = room.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let room = room_from_path(&room)?;
    let Query(query) = query.map_err(|rejection| bad_query(&rejection))?;
    let identity = identify(&node, request.headers(), &query)?;
    may_publish(&identity, &room)?;
    let client = client_key(&identity, &request);
    let cmid = match request.headers().get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|key| check_cmid(key).is_ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Idempotency-Key must be 1 to {MAX_CMID_BYTES} bytes of visible ASCII"
                    ))
                })?;
            Some(key.to_owned())
        }
    };
    let body = read_body_field(request, node.settings.max_message_bytes, "max_message_bytes").await?;
    within_rates(&node, &client, body.len())?;
    let outcome = node
        .session
        .publisher
        .publish(room, identity.subject(), cmid, &body, None)
        .await
        .map_err(|error| {
            node.metrics.count_publish_failure(error.publish_stored());
            ApiError::publish_unavailable(&error)
        })?;
    let status = if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let reply = serde_json::json!({"id": outcome.id.to_string(), "prev": outcome.prev.to_string(), "duplicate": outcome.duplicate});
    Ok((status, axum::Json(reply)).into_response())
}

/// Refuses a publish or signal the token does not allow (403).
pub(super) fn may_publish(identity: &crate::auth::Identity, room: &crate::protocol::RoomName) -> Result<(), ApiError> {
    if !identity.may_publish(room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("your token does not allow publishing to {room}"),
        ));
    }
    Ok(())
}

/// The key of the client's shared budgets, from the identity and the
/// request's address.
pub(super) fn client_key(identity: &crate::auth::Identity, request: &Request) -> Arc<str> {
    let address = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip());
    identity.client_key(address)
}

/// Refuses (429) a publish or signal of `bytes` over the client's rates:
/// the HTTP rate (a connection's `RELAY_PUBLISH_RATE`, per client) and
/// what the client writes across all its connections.
pub(super) fn within_rates(node: &Node, client: &Arc<str>, bytes: usize) -> Result<(), ApiError> {
    let limited = |wait: std::time::Duration, message: String| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, message)
            .retry_after(wait.min(std::time::Duration::from_secs(3600)))
    };
    node.http_publish_limiter.check(client).map_err(|wait| {
        limited(
            wait,
            format!(
                "over {} publishes and signals per second from this client; retry after the given delay",
                node.settings.publish_rate
            ),
        )
    })?;
    node.session.client_writes.check(client, 1, bytes).map_err(|wait| {
        limited(
            wait,
            format!(
                "over {} publishes and signals, or {} bytes of bodies, per second from this client across its connections; retry after the given delay",
                node.settings.client_publish_rate, node.settings.client_publish_bytes
            ),
        )
    })
}

/// Reads a request body `{"body": <any JSON>}` and returns the body as
/// compact JSON of at most `max` bytes (`limit_name` names the limit in the
/// error). The envelope may be indented; the body is measured compacted.
pub(super) async fn read_body_field(request: Request, max: usize, limit_name: &str) -> Result<String, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::TooLarge,
            format!("body over {max} bytes ({limit_name})"),
        )
    };
    let bytes = axum::body::to_bytes(request.into_body(), max.saturating_mul(4).saturating_add(4096))
        .await
        .map_err(|_| too_large())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("request body is not UTF-8 JSON"))?;
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::bad_request(
            "request body must be a JSON object such as {\"body\": {\"text\": \"hi\"}}",
        ));
    }
    let too_deep =
        |refusal: BodyRefusal| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, refusal.to_string());
    let envelope: PublishBody<'_> = serde_json::from_str(text).map_err(|error| {
        // Too deep for the parser: the envelope is one level, the body the rest.
        match body::check_depth(text) {
            Err(BodyRefusal::TooDeep { depth }) if depth - 1 > MAX_BODY_DEPTH => {
                too_deep(BodyRefusal::TooDeep { depth: depth - 1 })
            }
            _ => ApiError::bad_request(format!("request body is not valid JSON: {error}")),
        }
    })?;
    let body = envelope
        .body
        .ok_or_else(|| ApiError::bad_request("request body needs a \"body\" field (any JSON value)"))?;
    match checked_body(body.get(), max) {
        Ok(body) => Ok(body.into_owned()),
        Err(BodyRefusal::TooLarge { .. }) => Err(too_large()),
        Err(refusal) => Err(too_deep(refusal)),
    }
}

/// Query of a history request.
#[derive(Debug, Deserialize)]
pub(crate) struct HistoryQuery {
    after: Option<String>,
    before: Option<String>,
    limit: Option<String>,
    #[serde(flatten)]
    auth: AuthQuery,
}

fn overloaded() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Overloaded,
        "this node holds as much history in flight as it may; retry shortly",
    )
    .retry_after(std::time::Duration::from_secs(1))
}

fn parse_id(name: &str, text: &str) -> Result<MessageId, ApiError> {
    text.parse()
        .map_err(|error| ApiError::bad_request(format!("{name}: {error}")))
}

fn chained(messages: &[std::sync::Arc<StoredMessage>]) -> bool {
    messages
        .windows(2)
        .all(|pair| matches!(pair, [older, newer] if newer.prev == older.id))
}

/// Reads a page of history, oldest first, within `limit` messages and
/// `RELAY_MAX_REPLAY_BYTES` (a page cut short by bytes says `"more":true`).
/// The body is written frame by frame from the page's shared bytes; the
/// read's place among the client's and the node's concurrent reads is held
/// until the body is written or the client is gone.
pub async fn history(
    State(node): State<Arc<Node>>,
    connect_info: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    room: Result<Path<String>, PathRejection>,
    headers: axum::http::HeaderMap,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(room) = room.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let room = room_from_path(&room)?;
    let Query(query) = query.map_err(|rejection| bad_query(&rejection))?;
    let identity = identify(&node, &headers, &query.auth)?;
    if !identity.may_subscribe(&room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("your token does not allow reading {room}"),
        ));
    }
    let max = node.settings.max_replay;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_HISTORY_LIMIT.min(max),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| ApiError::bad_request(format!("limit must be an integer from 1 to {max} (max_replay)")))?,
    };
    let client = identity.client_key(connect_info.map(|info| info.0.0.ip()));
    let permit = node.history_reads.admit(&client).map_err(|refusal| match refusal {
        crate::session::AdmissionRefusal::ClientFull => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            format!(
                "{HISTORY_READS_PER_CLIENT} history reads of this client are under way; read pages one after another"
            ),
        )
        .retry_after(std::time::Duration::from_secs(1)),
        crate::session::AdmissionRefusal::NodeFull => overloaded(),
    })?;
    let mut reservation = node
        .session
        .replay_memory
        .reserve(REPLAY_MEMORY_WAIT)
        .await
        .map_err(|_| overloaded())?;
    let budget = HistoryBudget {
        messages: limit,
        bytes: node.settings.max_replay_bytes,
    };
    let broker = node.broker.as_ref();
    let unavailable = |error: crate::broker::BrokerError| ApiError::unavailable(&error);
    let (messages, complete, more) = match (query.after.as_deref(), query.before.as_deref()) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give after or before, not both")),
        (Some(after), None) => {
            let after = parse_id("after", after)?;
            let page = read_forward(broker, &room, after, budget).await.map_err(unavailable)?;
            let connected = match page.messages.first() {
                Some(first) => first.prev == after,
                None => page.last_id.unwrap_or(MessageId::ZERO) == after,
            };
            let complete = connected && chained(&page.messages);
            (page.messages, complete, page.cut_by_bytes)
        }
        (None, Some(before)) => {
            let before = parse_id("before", before)?;
            // The message at `before` too, to check the chain up to it.
            let through = before.successor();
            let with_anchor = HistoryBudget {
                messages: limit + 1,
                ..budget
            };
            let page = read_backward(broker, &room, through, None, with_anchor)
                .await
                .map_err(unavailable)?;
            let mut messages = page.messages;
            let anchor = if messages.last().is_some_and(|last| last.id == before) {
                messages.pop()
            } else {
                None
            };
            if messages.len() > limit {
                messages.remove(0);
            }
            let complete = match anchor {
                None => false,
                Some(anchor) => {
                    anchor.prev == messages.last().map_or(MessageId::ZERO, |last| last.id) && chained(&messages)
                }
            };
            (messages, complete, page.cut_by_bytes)
        }
        (None, None) => {
            let page = read_backward(broker, &room, None, None, budget)
                .await
                .map_err(unavailable)?;
            let complete = chained(&page.messages);
            (page.messages, complete, page.cut_by_bytes)
        }
    };
    reservation.keep_for(&messages);
    let mut chunks: Vec<Bytes> = Vec::with_capacity(messages.len() * 2 + 2);
    chunks.push(Bytes::from_static(b"{\"messages\":["));
    for (index, message) in messages.iter().enumerate() {
        if index > 0 {
            chunks.push(Bytes::from_static(b","));
        }
        chunks.push(message.frame.clone());
    }
    drop(messages);
    chunks.push(Bytes::from(format!("],\"complete\":{complete},\"more\":{more}}}")));
    // The permit and the memory ride with the body: given back when it is
    // written or dropped.
    let body = futures_util::stream::iter(chunks.into_iter().map(move |chunk| {
        let _held = (&permit, &reservation);
        Ok::<_, std::convert::Infallible>(chunk)
    }));
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}
