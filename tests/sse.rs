//! Server-Sent Events: stream shape, resume by `Last-Event-ID` and `since`,
//! `last`, keep-alive comments and errors before the stream starts.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

mod common;

use std::time::Duration;

use common::{SseClient, TestRelay, WsClient, http_publish};
use serde_json::json;

#[tokio::test]
async fn stream_starts_with_retry_then_subscribed_then_messages_with_ids() {
    let relay = TestRelay::start(&[]).await;
    let mut events = SseClient::open(&relay.url("/v1/rooms/lobby/events"), &[]).await;
    assert_eq!(events.status, 200);
    assert_eq!(events.headers["content-type"], "text/event-stream");
    assert_eq!(events.next_event().await.retry.as_deref(), Some("1000"));
    let subscribed = events.next_named("subscribed").await.json();
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "room": "lobby", "replay": 0, "position": "0-0"})
    );
    let (status, ack) = http_publish(&relay, "lobby", json!({"text": "hi"}), None).await;
    assert_eq!(status, 201);
    let message = events.next_named("message").await;
    assert_eq!(message.id.as_deref(), ack["id"].as_str());
    let body = message.json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["id"], ack["id"]);
    assert_eq!(body["prev"], "0-0");
    assert_eq!(body["body"], json!({"text": "hi"}));
}

#[tokio::test]
async fn last_event_id_resumes_exactly_and_wins_over_since() {
    let relay = TestRelay::start(&[]).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let (_, ack) = http_publish(&relay, "r", json!(n), None).await;
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    let url = relay.url(&format!("/v1/rooms/r/events?since={}&last=2", ids[0]));
    let mut events = SseClient::open(&url, &[("Last-Event-ID", &ids[3])]).await;
    events.next_event().await;
    let subscribed = events.next_named("subscribed").await.json();
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["replay"], 2);
    assert_eq!(subscribed["position"], ids[3].as_str(), "Last-Event-ID is the position");
    for (n, expected) in ids[4..].iter().enumerate() {
        let message = events.next_named("message").await;
        assert_eq!(message.id.as_deref(), Some(expected.as_str()), "message {n}");
    }
    let mut by_query = SseClient::open(&relay.url(&format!("/v1/rooms/r/events?since={}", ids[1])), &[]).await;
    by_query.next_event().await;
    assert_eq!(by_query.next_named("subscribed").await.json()["replay"], 4);
}

#[tokio::test]
async fn last_n_replays_the_newest() {
    let relay = TestRelay::start(&[]).await;
    for n in 0..5 {
        http_publish(&relay, "r", json!(n), None).await;
    }
    let mut events = SseClient::open(&relay.url("/v1/rooms/r/events?last=2"), &[]).await;
    events.next_event().await;
    let subscribed = events.next_named("subscribed").await.json();
    assert_eq!(subscribed["replay"], 2);
    let history = common::history_at(&relay.url(""), "r", 10).await;
    assert_eq!(
        subscribed["position"], history[2]["id"],
        "right before the two replayed"
    );
    assert_eq!(events.next_named("message").await.json()["body"], 3);
    assert_eq!(events.next_named("message").await.json()["body"], 4);
}

#[tokio::test]
async fn idle_streams_get_keepalive_comments() {
    let relay = TestRelay::start(&["--sse-keepalive-secs", "1"]).await;
    let mut events = SseClient::open(&relay.url("/v1/rooms/quiet/events"), &[]).await;
    events.next_event().await;
    events.next_named("subscribed").await;
    let started = std::time::Instant::now();
    let comment = events.next_event().await;
    assert!(comment.comment && comment.event.is_none(), "{comment:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn bad_requests_are_refused_before_the_stream_with_json() {
    let relay = TestRelay::start(&[]).await;
    for (path, code) in [
        ("/v1/rooms/bad%20room/events", "invalid_room"),
        ("/v1/rooms/r/events?since=yesterday", "bad_request"),
        ("/v1/rooms/r/events?last=-3", "bad_request"),
        ("/v1/rooms/r/events?last=5000", "bad_request"),
    ] {
        let (status, body) = common::http_get_json(&relay.url(path)).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
}

#[tokio::test]
async fn sse_and_websocket_subscribers_see_the_same_messages() {
    let relay = TestRelay::start(&[]).await;
    let mut events = SseClient::open(&relay.url("/v1/rooms/mixed/events"), &[]).await;
    events.next_event().await;
    events.next_named("subscribed").await;
    let mut ws = WsClient::connect(&relay).await;
    ws.subscribe("mixed", json!({})).await;
    for n in 0..20 {
        ws.publish("mixed", json!(n), None).await;
    }
    let over_ws = ws.messages("mixed", 20).await;
    for expected in over_ws {
        assert_eq!(events.next_named("message").await.json(), expected);
    }
}
