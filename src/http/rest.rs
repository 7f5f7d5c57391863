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
use crate::broker::StoredMessage;
use crate::node::Node;
use crate::protocol::{ErrorCode, MAX_CMID_BYTES, MessageId, compact_json};

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
    may_publish_now(&node, &identity, &room, &request)?;
    let cmid = match request.headers().get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|key| !key.is_empty() && key.len() <= MAX_CMID_BYTES)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Idempotency-Key must be 1 to {MAX_CMID_BYTES} bytes of visible ASCII"
                    ))
                })?;
            Some(key.to_owned())
        }
    };
    let body = read_body_field(request, node.settings.max_message_bytes, "max_message_bytes").await?;
    let outcome = node
        .session
        .publisher
        .publish(room, identity.subject(), cmid, &body)
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

/// Refuses a publish or signal the token does not allow (403) or that is
/// over the per-address rate (429).
pub(super) fn may_publish_now(
    node: &Node,
    identity: &crate::auth::Identity,
    room: &crate::protocol::RoomName,
    request: &Request,
) -> Result<(), ApiError> {
    if !identity.may_publish(room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("your token does not allow publishing to {room}"),
        ));
    }
    if let Some(ConnectInfo(address)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        if let Err(wait) = node.http_publish_limiter.check(address.ip()) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!(
                    "over {} publishes and signals per second from this address; retry after the given delay",
                    node.settings.publish_rate
                ),
            )
            .retry_after(wait));
        }
    }
    Ok(())
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
    let envelope: PublishBody<'_> = serde_json::from_str(text)
        .map_err(|error| ApiError::bad_request(format!("request body is not valid JSON: {error}")))?;
    let body = envelope
        .body
        .ok_or_else(|| ApiError::bad_request("request body needs a \"body\" field (any JSON value)"))?;
    let body = compact_json(body.get());
    if body.len() > max {
        return Err(too_large());
    }
    Ok(body.into_owned())
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

fn parse_id(name: &str, text: &str) -> Result<MessageId, ApiError> {
    text.parse()
        .map_err(|error| ApiError::bad_request(format!("{name}: {error}")))
}

fn chained(messages: &[std::sync::Arc<StoredMessage>]) -> bool {
    messages
        .windows(2)
        .all(|pair| matches!(pair, [older, newer] if newer.prev == older.id))
}

/// Reads a page of history, oldest first.
pub async fn history(
    State(node): State<Arc<Node>>,
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
    let broker = node.broker.as_ref();
    let unavailable = |error: crate::broker::BrokerError| ApiError::unavailable(&error);
    let (messages, complete) = match (query.after.as_deref(), query.before.as_deref()) {
        (Some(_), Some(_)) => return Err(ApiError::bad_request("give after or before, not both")),
        (Some(after), None) => {
            let after = parse_id("after", after)?;
            let page = broker.read_after(&room, after, limit).await.map_err(unavailable)?;
            let connected = match page.messages.first() {
                Some(first) => first.prev == after,
                None => page.last_id.unwrap_or(MessageId::ZERO) == after,
            };
            let complete = connected && chained(&page.messages);
            (page.messages, complete)
        }
        (None, Some(before)) => {
            let before = parse_id("before", before)?;
            let through = before.successor().unwrap_or(before);
            let mut messages = broker
                .read_before(&room, Some(through), limit + 1)
                .await
                .map_err(unavailable)?
                .messages;
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
            (messages, complete)
        }
        (None, None) => {
            let page = broker.read_before(&room, None, limit).await.map_err(unavailable)?;
            let complete = chained(&page.messages);
            (page.messages, complete)
        }
    };
    let mut body = String::with_capacity(messages.iter().map(|message| message.frame.len() + 1).sum::<usize>() + 40);
    body.push_str("{\"messages\":[");
    for (index, message) in messages.iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(std::str::from_utf8(&message.frame).unwrap_or("null"));
    }
    body.push_str("],\"complete\":");
    body.push_str(if complete { "true" } else { "false" });
    body.push('}');
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response())
}
