//! One client for every system: subscribe (or resume), read deliveries,
//! publish. It speaks each wire protocol itself: the relay's JSON frames,
//! Engine.IO v4 / Socket.IO over WebSocket, Nchan's WebSocket and
//! EventSource subscribers with its HTTP publisher, and STOMP 1.2 over
//! WebSocket (the relay's `/v1/stomp`, RabbitMQ's Web-STOMP).
//!
//! Every published payload is `{"p":publisher,"s":sequence,"t":sent_us}`,
//! `t` in microseconds since this process started, so one clock measures
//! publish-to-delivery latency.

use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::systems::{Endpoint, SystemKind};
use crate::wire::{self, Socket};

/// What a subscriber received.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Payload {
    #[serde(rename = "p")]
    pub publisher: u32,
    #[serde(rename = "s")]
    pub seq: u32,
    #[serde(rename = "t")]
    pub sent_us: u64,
}

/// Microseconds since the process started: the clock of every payload.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_micros()).unwrap_or(u64::MAX)
}

pub fn payload_json(publisher: u32, seq: u32) -> String {
    format!(r#"{{"p":{publisher},"s":{seq},"t":{}}}"#, now_us())
}

/// Where a subscriber resumes after its connection is lost.
#[derive(Debug, Clone, Default)]
pub enum Resume {
    /// Nothing received yet: subscribe afresh.
    #[default]
    Fresh,
    /// The relay: `since` = the last message id.
    Relay(String),
    /// Socket.IO connection state recovery: session id and last offset.
    SocketIo { pid: String, offset: String },
    /// Nchan EventSource: `Last-Event-ID`.
    Nchan(String),
}

/// A subscriber connection of any system.
pub enum Subscriber {
    Relay(Socket),
    SocketIo { socket: Socket, pid: String },
    NchanWebSocket(Socket),
    NchanEventSource(EventSource),
    Stomp(Socket),
}

#[derive(Deserialize)]
struct RelayFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    id: Option<&'a str>,
    body: Option<Payload>,
}

impl Subscriber {
    /// Connects to `endpoint` and subscribes to `room`, resuming from
    /// `resume`. Nchan subscribers use EventSource when `event_source`
    /// (they can resume), else WebSocket.
    pub async fn connect(endpoint: &Endpoint, room: &str, resume: &Resume, event_source: bool) -> anyhow::Result<Self> {
        match endpoint.kind {
            SystemKind::RelayStomp | SystemKind::RabbitMq => {
                let mut socket = stomp_connect(endpoint).await?;
                let since = match resume {
                    Resume::Relay(id) => format!("since:{id}\n"),
                    _ => String::new(),
                };
                let subscribe = format!("SUBSCRIBE\nid:0\ndestination:/topic/{room}\nreceipt:s\n{since}\n\0");
                socket.send(Message::text(subscribe)).await?;
                loop {
                    let text = wire::next_text(&mut socket).await?;
                    if text.starts_with("RECEIPT") {
                        break;
                    }
                    if text.starts_with("ERROR") {
                        bail!("STOMP subscribe refused: {text}");
                    }
                }
                Ok(Subscriber::Stomp(socket))
            }
            SystemKind::Relay => {
                let mut socket = wire::connect(&endpoint.ws_url("/v1/ws")).await?;
                let since = match resume {
                    Resume::Relay(id) => format!(r#","since":"{id}""#),
                    _ => String::new(),
                };
                let subscribe = format!(r#"{{"type":"subscribe","room":"{room}","req":"s"{since}}}"#);
                wire::send_text(&mut socket, subscribe.clone()).await?;
                let mut refusals = 0;
                loop {
                    let text = wire::next_text(&mut socket).await?;
                    let frame: serde_json::Value = serde_json::from_str(&text)?;
                    match frame["type"].as_str() {
                        Some("subscribed") => break,
                        // As the protocol asks of clients: try again later.
                        Some("error") if frame["code"] == "unavailable" && refusals < 10 => {
                            refusals += 1;
                            let wait = frame["retry_after_ms"].as_u64().unwrap_or(1000);
                            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                            wire::send_text(&mut socket, subscribe.clone()).await?;
                        }
                        Some("error") => bail!("subscribe refused: {frame}"),
                        Some("message") => bail!("relay sent a message before subscribed"),
                        _ => {}
                    }
                }
                Ok(Subscriber::Relay(socket))
            }
            SystemKind::SocketIo => {
                let (mut socket, pid) = socketio_connect(endpoint, resume).await?;
                // A recovered session keeps its rooms (the server answers
                // with the same pid); otherwise join again, as an
                // application would, and count what was missed as lost.
                let recovered = matches!(resume, Resume::SocketIo { pid: old, .. } if *old == pid);
                if !recovered {
                    socketio_join(&mut socket, room).await?;
                }
                Ok(Subscriber::SocketIo { socket, pid })
            }
            SystemKind::Nchan if event_source => {
                let last = match resume {
                    Resume::Nchan(id) => Some(id.as_str()),
                    _ => None,
                };
                Ok(Subscriber::NchanEventSource(
                    EventSource::open(&endpoint.http_url(&format!("/sub/{room}")), last).await?,
                ))
            }
            SystemKind::Nchan => {
                let url = endpoint.ws_url(&format!("/sub/{room}"));
                wire::ensure_loopback(&url)?;
                let (socket, _) = tokio_tungstenite::connect_async(&url)
                    .await
                    .with_context(|| format!("connect {url}"))?;
                Ok(Subscriber::NchanWebSocket(socket))
            }
        }
    }

    /// The next delivery and where to resume after it.
    pub async fn next(&mut self) -> anyhow::Result<(Payload, Resume)> {
        match self {
            Subscriber::Relay(socket) => loop {
                let text = wire::next_text(socket).await?;
                let frame: RelayFrame<'_> = serde_json::from_str(&text).context("relay frame")?;
                if frame.kind == "message"
                    && let (Some(body), Some(id)) = (frame.body, frame.id)
                {
                    return Ok((body, Resume::Relay(id.to_owned())));
                }
            },
            Subscriber::SocketIo { socket, pid } => loop {
                let text = wire::next_text(socket).await?;
                if text.as_str() == "2" {
                    socket.send(Message::text("3")).await?;
                    continue;
                }
                let Some(event) = text.strip_prefix("42") else { continue };
                let (name, payload, offset): (&str, Payload, Option<String>) =
                    serde_json::from_str(event).context("Socket.IO event")?;
                if name != "message" {
                    continue;
                }
                let resume = offset.map_or(Resume::Fresh, |offset| Resume::SocketIo {
                    pid: pid.clone(),
                    offset,
                });
                return Ok((payload, resume));
            },
            Subscriber::NchanWebSocket(socket) => {
                let text = wire::next_text(socket).await?;
                Ok((serde_json::from_str(&text).context("Nchan message")?, Resume::Fresh))
            }
            Subscriber::NchanEventSource(events) => {
                let (id, data) = events.next().await?;
                Ok((serde_json::from_str(&data).context("Nchan event")?, Resume::Nchan(id)))
            }
            Subscriber::Stomp(socket) => loop {
                let text = wire::next_text(socket).await?;
                let Some((id, body)) = stomp_message(&text) else {
                    continue;
                };
                let payload = serde_json::from_str(body).context("STOMP message body")?;
                return Ok((payload, id.map_or(Resume::Fresh, |id| Resume::Relay(id.to_owned()))));
            },
        }
    }

    /// Reads and answers keep-alives until the connection ends, for idle
    /// connections.
    pub async fn hold(mut self) {
        loop {
            let result = match &mut self {
                Subscriber::Relay(socket) | Subscriber::NchanWebSocket(socket) | Subscriber::Stomp(socket) => {
                    wire::next_text(socket).await.map(drop)
                }
                Subscriber::SocketIo { .. } | Subscriber::NchanEventSource(_) => self.next().await.map(drop),
            };
            if result.is_err() {
                return;
            }
        }
    }
}

/// A STOMP 1.2 WebSocket after CONNECTED (RabbitMQ's default user, which
/// the relay ignores; no heart-beats: WebSocket pings keep it alive).
async fn stomp_connect(endpoint: &Endpoint) -> anyhow::Result<Socket> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = endpoint.stomp_url();
    wire::ensure_loopback(&url)?;
    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "v12.stomp".parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("connect {url}"))?;
    socket
        .send(Message::text(
            "CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\0",
        ))
        .await?;
    let connected = wire::next_text(&mut socket).await?;
    if !connected.starts_with("CONNECTED") {
        bail!("expected CONNECTED, got {connected}");
    }
    Ok(socket)
}

/// A MESSAGE frame's `message-id` (the relay's ids resume; RabbitMQ's do
/// not) and body; `None` for anything else (heart-beats, receipts).
fn stomp_message(text: &str) -> Option<(Option<&str>, &str)> {
    let frame = text.trim_start_matches(['\n', '\r']);
    let rest = frame.strip_prefix("MESSAGE\n")?;
    let (headers, body) = rest.split_once("\n\n")?;
    let body = body.split('\0').next().unwrap_or("");
    let id = headers
        .lines()
        .find_map(|line| line.strip_prefix("message-id:"))
        .filter(|id| id.contains('-') && id.bytes().all(|byte| byte.is_ascii_digit() || byte == b'-'));
    Some((id, body))
}

/// Engine.IO open, then the Socket.IO CONNECT of the main namespace (with
/// the recovery session when resuming). Returns the session id (`pid`).
async fn socketio_connect(endpoint: &Endpoint, resume: &Resume) -> anyhow::Result<(Socket, String)> {
    let url = endpoint.ws_url("/socket.io/?EIO=4&transport=websocket");
    wire::ensure_loopback(&url)?;
    let (mut socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("connect {url}"))?;
    let open = wire::next_text(&mut socket).await?;
    if !open.starts_with('0') {
        bail!("expected the Engine.IO open packet, got {open}");
    }
    let connect = match resume {
        Resume::SocketIo { pid, offset } => format!(r#"40{{"pid":"{pid}","offset":"{offset}"}}"#),
        _ => "40".to_owned(),
    };
    socket.send(Message::text(connect)).await?;
    loop {
        let text = wire::next_text(&mut socket).await?;
        if text.as_str() == "2" {
            socket.send(Message::text("3")).await?;
        } else if let Some(reply) = text.strip_prefix("40") {
            let reply: serde_json::Value = serde_json::from_str(reply).context("Socket.IO connect reply")?;
            let pid = reply["pid"].as_str().unwrap_or_default().to_owned();
            return Ok((socket, pid));
        } else if text.starts_with("44") {
            bail!("Socket.IO refused the connection: {text}");
        }
    }
}

/// Emits `join` with an acknowledgement and waits for it.
async fn socketio_join(socket: &mut Socket, room: &str) -> anyhow::Result<()> {
    socket.send(Message::text(format!(r#"421["join","{room}"]"#))).await?;
    loop {
        let text = wire::next_text(socket).await?;
        if text.as_str() == "2" {
            socket.send(Message::text("3")).await?;
        } else if text.starts_with("431") {
            return Ok(());
        }
    }
}

type SocketSink = futures_util::stream::SplitSink<Socket, Message>;

/// A publishing connection of any system.
pub enum Publisher {
    Relay(SocketSink),
    Stomp(SocketSink),
    /// Shared with the task that answers the server's pings.
    SocketIo(std::sync::Arc<tokio::sync::Mutex<SocketSink>>),
    /// HTTP publishes, several in flight (at most one per room, so that a
    /// room's order is the publisher's): a lane waiting for each answer
    /// would fall behind the schedule and offer Nchan a lighter load than
    /// the others get over their pipelined WebSockets.
    Nchan {
        http: reqwest::Client,
        base: String,
        in_flight: std::collections::HashMap<String, tokio::task::JoinHandle<anyhow::Result<()>>>,
    },
}

/// Most HTTP publishes one Nchan publisher keeps in flight.
const NCHAN_PUBLISHES_IN_FLIGHT: usize = 64;

async fn settled(request: tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    request.await.context("Nchan publish task")?
}

impl Publisher {
    /// Connects a publisher; a task reads (and discards) what the server
    /// sends it, answering Socket.IO pings.
    pub async fn connect(endpoint: &Endpoint) -> anyhow::Result<Self> {
        match endpoint.kind {
            SystemKind::Relay => {
                let socket = wire::connect(&endpoint.ws_url("/v1/ws")).await?;
                let (sink, mut stream) = socket.split();
                tokio::spawn(async move { while stream.next().await.is_some() {} });
                Ok(Publisher::Relay(sink))
            }
            SystemKind::RelayStomp | SystemKind::RabbitMq => {
                let socket = stomp_connect(endpoint).await?;
                let (sink, mut stream) = socket.split();
                tokio::spawn(async move { while stream.next().await.is_some() {} });
                Ok(Publisher::Stomp(sink))
            }
            SystemKind::SocketIo => {
                let (socket, _) = socketio_connect(endpoint, &Resume::Fresh).await?;
                let (sink, mut stream) = socket.split();
                let sink = std::sync::Arc::new(tokio::sync::Mutex::new(sink));
                let answering = sink.clone();
                tokio::spawn(async move {
                    while let Some(Ok(message)) = stream.next().await {
                        if matches!(&message, Message::Text(text) if text.as_str() == "2") {
                            let _ = answering.lock().await.send(Message::text("3")).await;
                        }
                    }
                });
                Ok(Publisher::SocketIo(sink))
            }
            SystemKind::Nchan => Ok(Publisher::Nchan {
                http: reqwest::Client::builder()
                    .pool_max_idle_per_host(NCHAN_PUBLISHES_IN_FLIGHT)
                    .build()?,
                base: endpoint.http_url(""),
                in_flight: std::collections::HashMap::new(),
            }),
        }
    }

    /// Publishes `payload` (JSON) to `room`.
    pub async fn publish(&mut self, room: &str, payload: &str) -> anyhow::Result<()> {
        match self {
            Publisher::Relay(sink) => sink
                .send(Message::text(format!(
                    r#"{{"type":"publish","room":"{room}","body":{payload}}}"#
                )))
                .await
                .context("relay publish"),
            Publisher::Stomp(sink) => sink
                .send(Message::text(format!(
                    "SEND\ndestination:/topic/{room}\ncontent-type:application/json\ncontent-length:{}\n\n{payload}\0",
                    payload.len()
                )))
                .await
                .context("STOMP publish"),
            Publisher::SocketIo(sink) => sink
                .lock()
                .await
                .send(Message::text(format!(r#"42["publish","{room}",{payload}]"#)))
                .await
                .context("Socket.IO publish"),
            Publisher::Nchan { http, base, in_flight } => {
                if let Some(previous) = in_flight.remove(room) {
                    settled(previous).await?;
                }
                if in_flight.len() >= NCHAN_PUBLISHES_IN_FLIGHT {
                    for (_, request) in in_flight.drain() {
                        settled(request).await?;
                    }
                }
                let request = http.post(format!("{base}/pub/{room}")).body(payload.to_owned());
                let sent = tokio::spawn(async move {
                    let response = request.send().await.context("Nchan publish")?;
                    if !response.status().is_success() {
                        bail!("Nchan publish answered {}", response.status());
                    }
                    Ok(())
                });
                in_flight.insert(room.to_owned(), sent);
                Ok(())
            }
        }
    }

    /// Waits until every publish has been answered (Nchan's HTTP
    /// publishes; the WebSocket publishers have nothing outstanding).
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        if let Publisher::Nchan { in_flight, .. } = self {
            for (_, request) in in_flight.drain() {
                settled(request).await?;
            }
        }
        Ok(())
    }
}

/// An EventSource (SSE) stream read by hand: `id:` and `data:` lines.
pub struct EventSource {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl EventSource {
    pub async fn open(url: &str, last_event_id: Option<&str>) -> anyhow::Result<Self> {
        wire::ensure_loopback(url)?;
        let mut request = reqwest::Client::new().get(url).header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.with_context(|| format!("GET {url}"))?;
        if !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        Ok(Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        })
    }

    /// The next event with data: its id and data.
    pub async fn next(&mut self) -> anyhow::Result<(String, String)> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut data) = (String::new(), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if !data.is_empty() {
                    return Ok((id, data));
                }
            }
            let chunk = self.body.next().await.context("event stream ended")??;
            self.buffer
                .push_str(std::str::from_utf8(&chunk).context("event stream is not UTF-8")?);
        }
    }
}

#[cfg(test)]
mod stomp_tests {
    #[test]
    fn a_stomp_message_gives_its_id_and_body() {
        let relay = "MESSAGE\ndestination:/topic/f\nsubscription:0\nmessage-id:17-2\n\n{\"p\":0}\0";
        assert_eq!(super::stomp_message(relay), Some((Some("17-2"), "{\"p\":0}")));
        let rabbit = "MESSAGE\nsubscription:0\nmessage-id:T_0@@session-x@@1\n\n{}\0";
        assert_eq!(super::stomp_message(rabbit), Some((None, "{}")));
        assert_eq!(super::stomp_message("\n"), None);
        assert_eq!(super::stomp_message("RECEIPT\nreceipt-id:s\n\n\0"), None);
    }
}
