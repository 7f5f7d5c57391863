//! `GET /v1/rooms/{room}/events`: Server-Sent Events, receive only.
//!
//! The same session as WebSockets (one subscribe, made by a
//! [`ClientSession`] that lives as long as the stream); the body is the
//! connection's writer, encoding the session's events as SSE. `Last-Event-ID` wins over `since`, and either wins
//! over `last`, because a browser's `EventSource` reconnects to the same URL
//! with `Last-Event-ID` added.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use std::sync::Arc;

use super::{ApiError, AuthQuery, GaugeGuard, admit, bad_query, identify, room_from_path, until_expiry};
use crate::node::Node;
use crate::protocol::{ErrorCode, MessageId, ReplayRequest, server_frame};
use crate::session::{
    ClientSession, ConnectionHandle, ConnectionQueues, Encoding, Event, HANDOVER_MARGIN, LiveMessage, Outbound,
};
use crate::telemetry::TransportLabel;

/// Query of the events endpoint.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct EventsQuery {
    since: Option<String>,
    last: Option<String>,
    presence: Option<String>,
    #[serde(flatten)]
    auth: AuthQuery,
}

/// Opens an event stream.
pub async fn events(
    State(node): State<Arc<Node>>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    room: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let address = connect_info.map(|info| info.0.0);
    match open_stream(node, address, room, &headers, query) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn open_stream(
    node: Arc<Node>,
    address: Option<std::net::SocketAddr>,
    room: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    if node.is_draining() {
        return Err(ApiError::draining());
    }
    let Path(room) = room.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let room = room_from_path(&room)?;
    let Query(query) = query.map_err(|rejection| bad_query(&rejection))?;
    let identity = identify(&node, headers, &query.auth)?;
    if !identity.may_subscribe(&room) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            format!("your token does not allow reading {room}"),
        ));
    }
    let presence = match query.presence.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("presence must be true or false")),
    };
    let client = identity.client_key(address.map(|address| address.ip()));
    let slot = admit(&node, &client)?;
    // The stream ends when the token expires; the browser reconnects with
    // a fresh one (and Last-Event-ID).
    let expiry = until_expiry(&node, &identity).map(|left| Box::pin(tokio::time::sleep(left)));
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty());
    let replay = match (last_event_id.or(query.since.as_deref()), query.last.as_deref()) {
        (Some(since), _) => ReplayRequest::Since(
            since
                .parse::<MessageId>()
                .map_err(|error| ApiError::bad_request(format!("since / Last-Event-ID: {error}")))?,
        ),
        (None, Some(last)) => {
            let max = node.settings.max_replay;
            let last = last.parse::<usize>().ok().filter(|last| *last <= max).ok_or_else(|| {
                ApiError::bad_request(format!("last must be an integer from 0 to {max} (max_replay)"))
            })?;
            ReplayRequest::Last(last)
        }
        (None, None) => ReplayRequest::None,
    };

    let (connection, replies, queues) =
        ConnectionHandle::with_limits(node.settings.outbound_queue, node.settings.outbound_queue_bytes);
    let mut session = ClientSession::new(node.session.clone(), identity, client, connection, replies.clone());
    // Chosen now: the session hands its presence over for as long as the
    // stream tells the client to wait (session::handover).
    let drain_delay = node.reconnect_delay();
    let draining = node.draining.clone();
    node.connections.spawn(async move {
        // A subscribe the broker refused queues an `error` event, which
        // ends the stream; the browser reconnects with Last-Event-ID.
        let _ = session.subscribe(None, room, replay, presence).await;
        // Stay subscribed until the stream is dropped.
        tokio::select! {
            () = replies.closed() => {}
            () = draining.cancelled() => {
                session.hand_over_presence(std::time::Instant::now() + drain_delay + HANDOVER_MARGIN);
                replies.closed().await;
            }
        }
        drop(session);
    });

    // A comment line this often keeps proxies from closing an idle stream.
    let keepalive = node.settings.sse_keepalive;
    let gauge = node
        .metrics
        .connections
        .get_or_create(&TransportLabel { transport: "sse" })
        .clone();
    let state = StreamState {
        expiry,
        _slot: slot,
        guard: GaugeGuard::inc(gauge),
        node,
        queues,
        keepalive: tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive),
        started: false,
        done: false,
        drain_delay,
    };
    let body = Body::from_stream(stream::unfold(state, next_chunk));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct StreamState {
    expiry: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    _slot: crate::session::ConnectionSlot,
    node: Arc<Node>,
    queues: ConnectionQueues,
    keepalive: tokio::time::Interval,
    started: bool,
    done: bool,
    /// What `reconnect` says when the node drains.
    drain_delay: std::time::Duration,
    #[allow(dead_code, reason = "held for its Drop: the connection gauge")]
    guard: GaugeGuard,
}

/// One Server-Sent Event: its name, its id when it has one, and its data.
/// Frames are one line, except around a STOMP sender's pretty-printed
/// JSON body: each line of the data then gets its own `data:` field, which
/// the reader joins with line feeds (JSON whitespace either way).
fn sse_event(event: &str, id: Option<&str>, data: &[u8]) -> Bytes {
    let mut chunk = BytesMut::with_capacity(data.len() + event.len() + 48);
    chunk.extend_from_slice(b"event: ");
    chunk.extend_from_slice(event.as_bytes());
    if let Some(id) = id {
        chunk.extend_from_slice(b"\nid: ");
        chunk.extend_from_slice(id.as_bytes());
    }
    let mut rest = data;
    loop {
        chunk.extend_from_slice(b"\ndata: ");
        let Some(end) = rest.iter().position(|byte| matches!(byte, b'\n' | b'\r')) else {
            chunk.extend_from_slice(rest);
            break;
        };
        chunk.extend_from_slice(&rest[..end]);
        let skip = if rest[end..].starts_with(b"\r\n") { 2 } else { 1 };
        rest = &rest[end + skip..];
    }
    chunk.extend_from_slice(b"\n\n");
    chunk.freeze()
}

fn control_event(event: &str, json: &str) -> Bytes {
    sse_event(event, None, json.as_bytes())
}

/// A message as one Server-Sent Event: its id, and the `message` frame as data.
fn message_event(message: &LiveMessage) -> Bytes {
    sse_event("message", Some(&message.id.to_string()), message.frame())
}

type Chunk = Result<Bytes, std::convert::Infallible>;

async fn next_chunk(mut state: StreamState) -> Option<(Chunk, StreamState)> {
    if state.done {
        return None;
    }
    if !state.started {
        state.started = true;
        return Some((Ok(Bytes::from_static(b"retry: 1000\n\n")), state));
    }
    loop {
        let item = tokio::select! {
            biased;
            () = state.queues.slow() => {
                state.node.metrics.slow_consumer_closes.inc();
                return None;
            }
            () = state.node.draining.cancelled() => {
                state.done = true;
                let delay_ms = u64::try_from(state.drain_delay.as_millis()).unwrap_or(u64::MAX);
                let event = control_event("reconnect", &server_frame::reconnect("draining", delay_ms));
                return Some((Ok(event), state));
            }
            () = async { if let Some(expiry) = state.expiry.as_mut() { expiry.await } else { std::future::pending().await } } => return None,
            item = state.queues.next() => item,
            _ = state.keepalive.tick() => return Some((Ok(Bytes::from_static(b": keepalive\n\n")), state)),
        };
        match item {
            Some(Outbound::Message(message)) => {
                return Some((Ok(message.encoded(Encoding::Sse, message_event)), state));
            }
            Some(Outbound::Room(event)) => {
                let chunk = event.encoded(Encoding::Sse, |event| control_event(event.sse_name(), event.json()));
                return Some((Ok(chunk), state));
            }
            Some(Outbound::Event(event)) => match *event {
                // Its subscribe failed (and was logged): the stream ends.
                Event::Error(_) => return None,
                event => {
                    if let Some(json) = event.to_json() {
                        return Some((Ok(control_event(event.sse_name(), &json)), state));
                    }
                }
            },
            Some(Outbound::Barrier(reached)) => {
                let _ = reached.send(());
            }
            // Only a WebSocket writes directly; an SSE stream never has one.
            Some(Outbound::Rest(_)) => {}
            Some(Outbound::Close { .. }) | None => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_of_several_lines_gets_a_data_field_each() {
        assert_eq!(
            sse_event("message", Some("5-0"), br#"{"a":1}"#),
            Bytes::from_static(b"event: message\nid: 5-0\ndata: {\"a\":1}\n\n")
        );
        assert_eq!(
            sse_event("message", None, b"{\n \"a\": 1\r\n}\r"),
            Bytes::from_static(b"event: message\ndata: {\ndata:  \"a\": 1\ndata: }\ndata: \n\n")
        );
    }
}
