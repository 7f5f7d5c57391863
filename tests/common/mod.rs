//! Test harness: starts relays on 127.0.0.1 with an ephemeral port, and
//! drives them with real WebSocket, HTTP and SSE clients. Every wait is
//! bounded; failures say what was expected and what came instead.

#![allow(dead_code, reason = "each test binary uses a different part of the harness")]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use chat_relay::RunningNode;

pub mod cluster;
pub mod nodes;
pub mod redis;
pub mod stomp;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected frame or event may take.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A relay running in this test's runtime.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub running: RunningNode,
}

impl TestRelay {
    /// A relay with default settings (memory broker) plus `args`.
    pub async fn start(args: &[&str]) -> Self {
        let mut all = vec!["chat-relay", "--listen", "127.0.0.1:0", "--node-id", "test-node"];
        all.extend_from_slice(args);
        let settings = chat_relay::config::settings_from(all).expect("test settings are valid");
        let running = chat_relay::start(settings).await.expect("relay starts");
        Self {
            addr: running.local_addr,
            running,
        }
    }

    pub fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/v1/ws{query}", self.addr)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// A WebSocket client that keeps frames it skipped for later.
pub struct WsClient {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    pending: VecDeque<Value>,
}

impl WsClient {
    pub async fn connect(relay: &TestRelay) -> Self {
        Self::connect_url(&relay.ws_url("")).await
    }

    pub async fn connect_url(url: &str) -> Self {
        let (stream, _) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("WebSocket handshake");
        let mut client = Self {
            stream,
            welcome: Value::Null,
            pending: VecDeque::new(),
        };
        client.welcome = client.next_frame().await;
        assert_eq!(client.welcome["type"], "welcome", "first frame: {}", client.welcome);
        client
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("send frame");
    }

    /// The next JSON frame (pending ones first); panics on close or timeout.
    pub async fn next_frame(&mut self) -> Value {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
                .await
                .expect("a frame within the timeout")
                .expect("connection open")
                .expect("frame read");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("server frames are JSON");
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next JSON frame, or `None` once the connection is closed or broken.
    pub async fn try_next_frame(&mut self) -> Option<Value> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        loop {
            match tokio::time::timeout(FRAME_TIMEOUT, self.stream.next()).await.ok()?? {
                Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next frame satisfying `wanted`; other frames are kept for later.
    pub async fn wait_for(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(index) = self.pending.iter().position(&wanted) {
            return self.pending.remove(index).expect("index is valid");
        }
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.read_frame())
                .await
                .unwrap_or_else(|_| panic!("no {what} within the timeout; kept: {:?}", self.pending));
            if wanted(&frame) {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// The next frame with this `type` (others kept).
    pub async fn wait_type(&mut self, kind: &str) -> Value {
        self.wait_for(kind, |frame| frame["type"] == kind).await
    }

    /// The reply carrying this `req` (others kept).
    pub async fn reply_to(&mut self, req: &str) -> Value {
        self.wait_for(&format!("reply to {req}"), |frame| frame["req"] == req)
            .await
    }

    pub async fn subscribe(&mut self, room: &str, extra: Value) -> Value {
        let req = format!("sub-{}", fastrand::u64(..));
        let mut frame = json!({"type": "subscribe", "room": room, "req": req});
        if let (Some(frame), Some(extra)) = (frame.as_object_mut(), extra.as_object()) {
            frame.extend(extra.clone());
        }
        self.send_json(frame).await;
        let reply = self.reply_to(&req).await;
        assert_eq!(reply["type"], "subscribed", "subscribe reply: {reply}");
        reply
    }

    pub async fn publish(&mut self, room: &str, body: Value, cmid: Option<&str>) -> Value {
        let req = format!("pub-{}", fastrand::u64(..));
        let mut frame = json!({"type": "publish", "room": room, "body": body, "req": req});
        if let Some(cmid) = cmid {
            frame["cmid"] = json!(cmid);
        }
        self.send_json(frame).await;
        self.reply_to(&req).await
    }

    /// Collects `count` messages of a room (other frames kept).
    pub async fn messages(&mut self, room: &str, count: usize) -> Vec<Value> {
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            messages.push(
                self.wait_for("message", |frame| frame["type"] == "message" && frame["room"] == room)
                    .await,
            );
        }
        messages
    }

    /// Waits for the server's close frame; returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.stream.next())
                .await
                .expect("close within the timeout");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Asserts no frame arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        assert!(self.pending.is_empty(), "unexpected frames: {:?}", self.pending);
        if let Ok(Some(Ok(message))) = tokio::time::timeout(quiet, self.stream.next()).await {
            assert!(
                matches!(message, Message::Ping(_) | Message::Pong(_)),
                "expected silence, got {message:?}"
            );
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: String,
    pub retry: Option<String>,
    pub comment: bool,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|error| panic!("event data is not JSON ({error}): {self:?}"))
    }
}

/// An SSE client that parses the event stream itself.
pub struct SseClient {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    pub status: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
}

impl SseClient {
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        let mut request = reqwest::Client::new().get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = tokio::time::timeout(FRAME_TIMEOUT, request.send())
            .await
            .expect("response in time")
            .expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            status,
            headers,
        }
    }

    /// The next event (a comment or `retry:` block counts as one).
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        let _ = comment;
                        event.comment = true;
                    } else if let Some((field, value)) = line.split_once(": ").or_else(|| line.split_once(':')) {
                        match field {
                            "event" => event.event = Some(value.to_owned()),
                            "id" => event.id = Some(value.to_owned()),
                            "data" => data.push(value.to_owned()),
                            "retry" => event.retry = Some(value.to_owned()),
                            _ => {}
                        }
                    }
                }
                event.data = data.join("\n");
                return event;
            }
            let chunk = tokio::time::timeout(FRAME_TIMEOUT, self.body.next())
                .await
                .expect("an event within the timeout")
                .expect("stream still open")
                .expect("chunk read");
            self.buffer.push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream"));
        }
    }

    /// The next event named `name`, skipping comments.
    pub async fn next_named(&mut self, name: &str) -> SseEvent {
        loop {
            let event = self.next_event().await;
            if event.comment && event.event.is_none() {
                continue;
            }
            assert_eq!(event.event.as_deref(), Some(name), "unexpected event {event:?}");
            return event;
        }
    }

    /// Whether the server ended the stream within `wait`.
    pub async fn ended_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_))) => return true,
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
            }
        }
    }
}

/// Publishes over HTTP; returns status and JSON body.
pub async fn http_publish(relay: &TestRelay, room: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(relay.url(&format!("/v1/rooms/{room}/messages")))
        .json(&json!({"body": body}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("publish request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Publishes over HTTP to a full URL; returns status and JSON body.
pub async fn http_publish_to(url: &str, body: Value, key: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&json!({"body": body}));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("publish request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// GET returning status and JSON body.
pub async fn http_get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// GET returning status and text body.
pub async fn http_get_text(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The value of the first `/metrics` line of the node at `base`
/// (`http://host:port`) that starts with `line_start`.
pub async fn metric_at(base: &str, line_start: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find(|line| line.starts_with(line_start))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start}:\n{text}"))
}

/// Every message of a room's history, oldest first, paging with `after`.
pub async fn full_history(relay: &TestRelay, room: &str, page: usize) -> Vec<Value> {
    history_at(&relay.url(""), room, page).await
}

/// The same through any node, given its base URL (`http://host:port`).
pub async fn history_at(base: &str, room: &str, page: usize) -> Vec<Value> {
    let mut all: Vec<Value> = Vec::new();
    let mut after = "0-0".to_owned();
    loop {
        let (status, body) =
            http_get_json(&format!("{base}/v1/rooms/{room}/messages?after={after}&limit={page}")).await;
        assert_eq!(status, 200, "history page: {body}");
        let messages = body["messages"].as_array().expect("messages array").clone();
        if messages.is_empty() {
            return all;
        }
        after = messages
            .last()
            .and_then(|last| last["id"].as_str())
            .expect("id")
            .to_owned();
        all.extend(messages);
    }
}

/// Parses `<ms>-<seq>` for ordering checks.
pub fn id_key(id: &Value) -> (u64, u64) {
    let text = id.as_str().unwrap_or_else(|| panic!("id is not a string: {id}"));
    let (ms, seq) = text.split_once('-').unwrap_or_else(|| panic!("bad id {text}"));
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// Checks a subscriber's sequence exhaustively against the room's history:
/// strictly increasing ids, no duplicate, unbroken `prev` chain from
/// `start_prev`, and exactly the history's messages from that point on.
pub fn assert_exact_sequence(who: &str, received: &[Value], history: &[Value], start_prev: &str) {
    let is_last = history.last().is_some_and(|last| last["id"] == start_prev);
    let start = if is_last {
        history.len()
    } else {
        history
            .iter()
            .position(|message| message["prev"] == start_prev)
            .unwrap_or_else(|| panic!("{who}: history has no message after {start_prev}"))
    };
    let expected = &history[start..];
    let mut previous = start_prev.to_owned();
    for (index, message) in received.iter().enumerate() {
        assert_eq!(
            message["prev"],
            previous.as_str(),
            "{who}: message {index} breaks the prev chain: {message}"
        );
        previous = message["id"].as_str().expect("id").to_owned();
    }
    for pair in received.windows(2) {
        assert!(
            id_key(&pair[1]["id"]) > id_key(&pair[0]["id"]),
            "{who}: ids not strictly increasing: {} then {}",
            pair[0]["id"],
            pair[1]["id"]
        );
    }
    assert_eq!(
        received.len(),
        expected.len(),
        "{who}: received {} messages, history holds {} from that point",
        received.len(),
        expected.len()
    );
    for (got, want) in received.iter().zip(expected) {
        assert_eq!(got, want, "{who}: delivered message differs from history");
    }
}
