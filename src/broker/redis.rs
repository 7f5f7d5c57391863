//! The Redis broker: any number of nodes share one set of rooms.
//!
//! Each room has a stream (its history) and a Pub/Sub channel (its live
//! feed), both under the room's hash tag: `{prefix}:{room}:s` and
//! `{prefix}:{room}:c`, plus `{prefix}:{room}:i:{cmid}` idempotency keys.
//! A publish is one Lua script (`publish.lua`, EVALSHA with a NOSCRIPT
//! fallback): dedupe, `prev`, `XADD MAXLEN ~`, TTL, `PUBLISH` of the ready
//! frame, idempotency key. Commands share one multiplexed, self-reconnecting
//! connection (`ConnectionManager`), so concurrent publishes are pipelined.
//! The live feed is one dedicated Pub/Sub connection per node; when it drops,
//! a task reconnects with jittered backoff, resubscribes every wanted room
//! and asks the hub to catch every room up from the streams.
//!
//! The stream entry stores `p` (prev) and `t` (the frame tail); the frame
//! head is rebuilt on read, so history and live frames are byte-identical.
//!
//! Why the `redis` crate: it is the maintained, widely used client, has a
//! multiplexed connection with automatic reconnect and response timeouts,
//! script caching with NOSCRIPT fallback, a split Pub/Sub connection whose
//! `subscribe` returns only once Redis confirmed it, and rustls TLS for
//! `rediss://`. `fred` is as capable but heavier and callback-oriented;
//! `deadpool-redis`/`bb8` pool connections, which would lose per-connection
//! ordering and pipelining.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{Client, Value};
use tokio::sync::{mpsc, oneshot};

use super::{
    Broker, BrokerError, HistoryPage, LiveSink, PendingPublish, PublishOutcome, PublishRequest, RetentionSettings,
    StoredMessage,
};
use crate::protocol::{MessageId, RoomName, server_frame};
use crate::telemetry::TraceParent;

/// Longest wait for any single Redis command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the live-feed connection is checked with a PING.
const LIVE_HEALTH_INTERVAL: Duration = Duration::from_secs(3);
/// Reconnect backoff bounds of the live feed.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unavailable(error: &redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(error.to_string())
}

async fn bounded<T>(work: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BrokerError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(unavailable(&error)),
        Err(_) => Err(BrokerError::Unavailable(format!(
            "no answer from Redis within {COMMAND_TIMEOUT:?}"
        ))),
    }
}

/// Key and channel names of rooms.
#[derive(Debug, Clone)]
struct KeyScheme {
    prefix: String,
}

impl KeyScheme {
    fn stream(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:s", self.prefix, room)
    }

    fn channel(&self, room: &RoomName) -> String {
        format!("{}:{{{}}}:c", self.prefix, room)
    }

    fn idempotency(&self, room: &RoomName, cmid: Option<&str>) -> String {
        match cmid {
            Some(cmid) => format!("{}:{{{}}}:i:{}", self.prefix, room, cmid),
            None => format!("{}:{{{}}}:i", self.prefix, room),
        }
    }

    fn room_of_channel(&self, channel: &str) -> Option<RoomName> {
        let inner = channel
            .strip_prefix(&self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:c")?;
        RoomName::parse(inner).ok()
    }
}

/// The head of a message frame, up to its id.
fn frame_head(room: &RoomName) -> String {
    format!("{{\"type\":\"message\",\"room\":\"{room}\",\"id\":\"")
}

/// Splits a live payload into the publisher's trace context, which the
/// script puts before the frame as `<traceparent>\n` while traces are
/// exported, and the frame itself (which always starts with `{`).
fn split_trace_prefix(payload: &[u8]) -> (Option<TraceParent>, &[u8]) {
    if payload.first() == Some(&b'{') {
        return (None, payload);
    }
    let Some(newline) = payload.iter().position(|&byte| byte == b'\n') else {
        return (None, payload);
    };
    let trace = std::str::from_utf8(&payload[..newline])
        .ok()
        .and_then(TraceParent::parse);
    (trace, &payload[newline + 1..])
}

/// Reads `id` and `prev` out of a frame the script composed.
fn parse_frame_ids(room: &RoomName, frame: &[u8]) -> Option<(MessageId, MessageId)> {
    let text = std::str::from_utf8(frame).ok()?;
    let rest = text.strip_prefix(frame_head(room).as_str())?;
    let (id, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(",\"prev\":\"")?;
    let (prev, _) = rest.split_once('"')?;
    Some((id.parse().ok()?, prev.parse().ok()?))
}

fn bulk_text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Parses an `XRANGE`/`XREVRANGE` reply into messages, in reply order.
fn parse_entries(room: &RoomName, reply: &Value) -> Result<Vec<Arc<StoredMessage>>, BrokerError> {
    let malformed = || BrokerError::Internal("unexpected stream entry shape from Redis".to_owned());
    let Value::Array(entries) = reply else {
        return if matches!(reply, Value::Nil) {
            Ok(Vec::new())
        } else {
            Err(malformed())
        };
    };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(malformed());
        };
        let [id, Value::Array(fields)] = parts.as_slice() else {
            return Err(malformed());
        };
        let id: MessageId = bulk_text(id).and_then(|id| id.parse().ok()).ok_or_else(malformed)?;
        let (mut prev, mut tail) = (None, None);
        for pair in fields.chunks(2) {
            if let [name, value] = pair {
                match bulk_text(name) {
                    Some("p") => prev = bulk_text(value).and_then(|prev| prev.parse::<MessageId>().ok()),
                    Some("t") => tail = bulk_text(value),
                    _ => {}
                }
            }
        }
        let (Some(prev), Some(tail)) = (prev, tail) else {
            return Err(malformed());
        };
        let frame = server_frame::message_frame(room, id, prev, tail);
        messages.push(Arc::new(StoredMessage {
            id,
            prev,
            frame: Bytes::from(frame),
            trace: None,
        }));
    }
    Ok(messages)
}

fn newest_id(reply: &Value) -> Option<MessageId> {
    let Value::Array(entries) = reply else { return None };
    let Value::Array(parts) = entries.first()? else {
        return None;
    };
    bulk_text(parts.first()?)?.parse().ok()
}

/// The node's live feed: one Pub/Sub connection and what it should carry.
struct LiveFeed {
    client: Client,
    keys: KeyScheme,
    wanted: Mutex<HashSet<RoomName>>,
    sink: Mutex<Option<PubSubSink>>,
    hub: Mutex<Option<Weak<dyn LiveSink>>>,
    connected: AtomicBool,
}

impl LiveFeed {
    fn hub(&self) -> Option<Arc<dyn LiveSink>> {
        lock(&self.hub).as_ref().and_then(Weak::upgrade)
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let Some(room) = self.keys.room_of_channel(channel) else {
            return;
        };
        let (trace, payload) = split_trace_prefix(payload);
        let Some((id, prev)) = parse_frame_ids(&room, payload) else {
            tracing::error!(%room, "live message from Redis is not a message frame; skipped");
            return;
        };
        if let Some(hub) = self.hub() {
            hub.deliver(
                &room,
                Arc::new(StoredMessage {
                    id,
                    prev,
                    frame: Bytes::copy_from_slice(payload),
                    trace,
                }),
            );
        }
    }

    /// Keeps one Pub/Sub connection up for as long as the broker lives.
    async fn run(feed: Weak<LiveFeed>, first: redis::aio::PubSub) {
        let mut next = Some(first);
        let mut backoff = RECONNECT_MIN;
        let mut reconnected = false;
        loop {
            let pubsub = match next.take() {
                Some(pubsub) => pubsub,
                None => {
                    let Some(live) = feed.upgrade() else { return };
                    match tokio::time::timeout(CONNECT_TIMEOUT, live.client.get_async_pubsub()).await {
                        Ok(Ok(pubsub)) => pubsub,
                        failure => {
                            let reason = match failure {
                                Ok(Err(error)) => error.to_string(),
                                _ => "connect timed out".to_owned(),
                            };
                            drop(live);
                            tracing::warn!(%reason, retry_in_ms = backoff.as_millis(), "cannot reach Redis for the live feed");
                            tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
                            backoff = (backoff * 2).min(RECONNECT_MAX);
                            continue;
                        }
                    }
                }
            };
            let Some(live) = feed.upgrade() else { return };
            let (sink, mut stream) = pubsub.split();
            let channels: Vec<String> = lock(&live.wanted).iter().map(|room| live.keys.channel(room)).collect();
            if let Err(error) = resubscribe(&sink, &channels).await {
                tracing::warn!(%error, rooms = channels.len(), "resubscribing the live feed failed; reconnecting");
                continue;
            }
            *lock(&live.sink) = Some(sink.clone());
            live.connected.store(true, Ordering::Release);
            backoff = RECONNECT_MIN;
            if reconnected {
                tracing::info!(
                    rooms = channels.len(),
                    "live feed reconnected; catching rooms up from history"
                );
                if let Some(hub) = live.hub() {
                    hub.resync_all();
                }
            }
            reconnected = true;
            drop(live);
            let mut health =
                tokio::time::interval_at(tokio::time::Instant::now() + LIVE_HEALTH_INTERVAL, LIVE_HEALTH_INTERVAL);
            // The health PING runs beside the stream, which keeps flowing
            // while the answer is awaited.
            let mut ping: Option<HealthPing> = None;
            let reason = loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(message) => match feed.upgrade() {
                            Some(live) => live.dispatch(message.get_channel_name(), message.get_payload_bytes()),
                            None => return,
                        },
                        None => break "the connection closed".to_owned(),
                    },
                    _ = health.tick(), if ping.is_none() => {
                        let mut pinger = sink.clone();
                        // In subscribed mode Redis answers PING with
                        // `["pong", ""]`, not `PONG`: any answer will do.
                        ping = Some(Box::pin(async move { bounded(pinger.ping::<Value>()).await.map(drop) }));
                    }
                    Some(answer) = async { Some(ping.as_mut()?.await) }, if ping.is_some() => {
                        ping = None;
                        if let Err(error) = answer {
                            break format!("the health check failed: {error}");
                        }
                    }
                }
            };
            let Some(live) = feed.upgrade() else { return };
            live.connected.store(false, Ordering::Release);
            *lock(&live.sink) = None;
            tracing::warn!(%reason, "live feed connection to Redis lost; reconnecting");
        }
    }
}

/// A health-check PING of the live feed connection in flight.
type HealthPing = std::pin::Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// Subscribes a fresh Pub/Sub connection to `channels`, one `SUBSCRIBE`
/// each (pipelined): the client pairs one reply with one request, and a
/// `SUBSCRIBE` of many channels gets a reply per channel, which would
/// answer later requests too early.
async fn resubscribe(sink: &PubSubSink, channels: &[String]) -> Result<(), BrokerError> {
    let subscribes = channels.iter().map(|channel| {
        let mut sink = sink.clone();
        async move { sink.subscribe(channel).await }
    });
    let all = futures_util::future::try_join_all(subscribes);
    // Bounded as one command would be, with time for many rooms.
    match tokio::time::timeout(COMMAND_TIMEOUT * 2, all).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(unavailable(&error)),
        Err(_) => Err(BrokerError::Unavailable(format!(
            "Redis did not confirm {} subscriptions within {:?}",
            channels.len(),
            COMMAND_TIMEOUT * 2
        ))),
    }
}

/// The Redis broker; see the module docs.
pub struct RedisBroker {
    keys: KeyScheme,
    commands: ConnectionManager,
    publishes: mpsc::UnboundedSender<PublishJob>,
    live: Arc<LiveFeed>,
}

/// Most publishes sent to Redis in one pipeline.
const MAX_PUBLISH_BATCH: usize = 256;

/// A publish waiting for the publisher task.
struct PublishJob {
    request: PublishRequest,
    reply: oneshot::Sender<Result<PublishOutcome, BrokerError>>,
    /// The script's round trip, while traces are exported; it ends when
    /// the job is answered and dropped.
    _round_trip: tracing::Span,
    /// `<traceparent>\n` of that span, sent before the live frame; empty
    /// while traces are not exported.
    trace_prefix: String,
}

/// Sends publishes to Redis in exactly the order they were submitted: what
/// queued up while the previous pipeline was out goes as the next pipeline
/// of `EVALSHA`s (one round trip for many publishes under load, at once
/// when idle). Keeping one pipeline in flight is what makes the order
/// certain; the batching is what keeps it fast.
async fn run_publisher(
    mut jobs: mpsc::UnboundedReceiver<PublishJob>,
    mut connection: ConnectionManager,
    script: redis::Script,
    keys: KeyScheme,
) {
    while let Some(first) = jobs.recv().await {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_PUBLISH_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A caller that gave up must not have its message stored later.
        batch.retain(|job| !job.reply.is_closed());
        if !batch.is_empty() {
            publish_batch(&mut connection, &script, &keys, batch).await;
        }
    }
}

fn parse_outcome(reply: (i64, String, String)) -> Result<PublishOutcome, BrokerError> {
    let (duplicate, id, prev) = reply;
    let parse = |text: &str| {
        text.parse::<MessageId>()
            .map_err(|error| BrokerError::Internal(error.to_string()))
    };
    Ok(PublishOutcome {
        id: parse(&id)?,
        prev: parse(&prev)?,
        duplicate: duplicate == 1,
    })
}

/// One pipeline of publishes; on NOSCRIPT (Redis restarted or flushed its
/// script cache) the script is loaded and the refused ones, which Redis did
/// not run, are sent again in their order.
async fn publish_batch(
    connection: &mut ConnectionManager,
    script: &redis::Script,
    keys: &KeyScheme,
    mut batch: Vec<PublishJob>,
) {
    for attempt in 0..2 {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for job in &batch {
            let request = &job.request;
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(3)
                .arg(keys.stream(&request.room))
                .arg(keys.idempotency(&request.room, request.cmid.as_deref()))
                .arg(keys.channel(&request.room))
                .arg(if request.cmid.is_some() { "1" } else { "0" })
                .arg(frame_head(&request.room))
                .arg(request.tail.as_str())
                .arg(job.trace_prefix.as_str());
        }
        let results: Vec<redis::RedisResult<(i64, String, String)>> = match bounded(pipe.query_async(connection)).await
        {
            Ok(results) => results,
            Err(error) => {
                for job in batch {
                    let _ = job.reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let mut refused = Vec::new();
        for (job, result) in batch.into_iter().zip(results) {
            match result {
                Ok(reply) => {
                    let _ = job.reply.send(parse_outcome(reply));
                }
                Err(error) if error.code() == Some("NOSCRIPT") && attempt == 0 => refused.push(job),
                Err(error) => {
                    let _ = job.reply.send(Err(unavailable(&error)));
                }
            }
        }
        if refused.is_empty() {
            return;
        }
        if let Err(error) = bounded(script.load_async(connection)).await {
            for job in refused {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
        batch = refused;
    }
}

/// The publish script with this node's retention settings filled in.
fn publish_script(retention: &RetentionSettings, publish_command: &str) -> redis::Script {
    let millis = |duration: Duration| {
        u64::try_from(duration.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
            .to_string()
    };
    let source = include_str!("publish.lua")
        .replace("@MAXLEN@", &retention.history_maxlen.to_string())
        .replace("@HISTORY_TTL_MS@", &millis(retention.history_ttl))
        .replace("@IDEMPOTENCY_TTL_MS@", &millis(retention.idempotency_ttl))
        .replace("@PUBLISH@", publish_command);
    redis::Script::new(&source)
}

/// Why the Redis broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    /// The URL does not parse.
    #[error("REDIS_URL is not a usable Redis URL: {0}")]
    BadUrl(String),
    /// Redis did not answer.
    #[error("cannot reach Redis at {address} (REDIS_URL): {reason}")]
    Unreachable {
        /// Host and port (never the password).
        address: String,
        /// What went wrong.
        reason: String,
    },
}

impl RedisBroker {
    /// Connects both connections (commands and live feed) and starts the
    /// live-feed task. `ca_pem` replaces the public web roots for
    /// `rediss://` servers signed by a private CA.
    ///
    /// # Errors
    /// [`RedisStartError`] when the URL is bad or Redis cannot be reached.
    pub async fn connect(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
        retention: RetentionSettings,
    ) -> Result<Arc<Self>, RedisStartError> {
        // Two rustls crypto back-ends are compiled in through dependencies;
        // pick one explicitly (a second install is a harmless no-op error).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match ca_pem {
            None => Client::open(url),
            Some(root_cert) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
        }
        .map_err(|error| RedisStartError::BadUrl(error.to_string()))?;
        let address = client.get_connection_info().addr().to_string();
        let unreachable = |reason: String| RedisStartError::Unreachable {
            address: address.clone(),
            reason,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let commands = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| unreachable("connect timed out".to_owned()))?
        .map_err(|error| unreachable(error.to_string()))?;
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| unreachable("connect timed out".to_owned()))?
            .map_err(|error| unreachable(error.to_string()))?;
        let keys = KeyScheme {
            prefix: prefix.to_owned(),
        };
        let live = Arc::new(LiveFeed {
            client,
            keys: keys.clone(),
            wanted: Mutex::new(HashSet::new()),
            sink: Mutex::new(None),
            hub: Mutex::new(None),
            connected: AtomicBool::new(false),
        });
        let (publishes, jobs) = mpsc::unbounded_channel();
        tokio::spawn(run_publisher(
            jobs,
            commands.clone(),
            publish_script(&retention, "PUBLISH"),
            keys.clone(),
        ));
        let broker = Arc::new(Self {
            keys,
            commands,
            publishes,
            live: live.clone(),
        });
        tokio::spawn(LiveFeed::run(Arc::downgrade(&live), pubsub));
        // Ready once the live feed is up, so the first subscribe succeeds.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        while !live.connected.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(broker)
    }

    fn connection(&self) -> ConnectionManager {
        self.commands.clone()
    }

    async fn read_with_newest(
        &self,
        room: &RoomName,
        range: redis::Cmd,
        reverse: bool,
    ) -> Result<HistoryPage, BrokerError> {
        let stream = self.keys.stream(room);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(range)
            .cmd("XREVRANGE")
            .arg(&stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let mut connection = self.connection();
        let (entries, newest): (Value, Value) = bounded(pipe.query_async(&mut connection)).await?;
        let mut messages = parse_entries(room, &entries)?;
        if reverse {
            messages.reverse();
        }
        Ok(HistoryPage {
            messages,
            last_id: newest_id(&newest),
        })
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn set_live_sink(&self, sink: Weak<dyn LiveSink>) {
        *lock(&self.live.hub) = Some(sink);
    }

    fn publish(&self, request: PublishRequest) -> PendingPublish {
        let (reply, answer) = oneshot::channel();
        let span = if crate::telemetry::trace_context::is_exporting() {
            tracing::info_span!("redis publish", "otel.kind" = "client", "db.system" = "redis", "db.operation" = "EVALSHA", room = %request.room)
        } else {
            tracing::Span::none()
        };
        let trace_prefix =
            TraceParent::of_span(&span).map_or_else(String::new, |trace| format!("{}\n", trace.as_str()));
        let queued = self.publishes.send(PublishJob {
            request,
            reply,
            _round_trip: span,
            trace_prefix,
        });
        Box::pin(async move {
            if queued.is_err() {
                return Err(BrokerError::Unavailable("the publisher task stopped".to_owned()));
            }
            // Bounded even when Redis hangs; the publisher skips a job whose
            // caller gave up before it was sent.
            match tokio::time::timeout(COMMAND_TIMEOUT + Duration::from_millis(250), answer).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Err(BrokerError::Unavailable("the publisher task stopped".to_owned())),
                Err(_) => Err(BrokerError::Unavailable(format!(
                    "no answer from Redis within {COMMAND_TIMEOUT:?}"
                ))),
            }
        })
    }

    async fn read_after(&self, room: &RoomName, after: MessageId, limit: usize) -> Result<HistoryPage, BrokerError> {
        let mut range = redis::cmd("XRANGE");
        range
            .arg(self.keys.stream(room))
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(limit.max(1));
        let mut page = self.read_with_newest(room, range, false).await?;
        page.messages.truncate(limit);
        Ok(page)
    }

    async fn read_before(
        &self,
        room: &RoomName,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let mut range = redis::cmd("XREVRANGE");
        let end = before.map_or_else(|| "+".to_owned(), |before| format!("({before}"));
        range
            .arg(self.keys.stream(room))
            .arg(end)
            .arg("-")
            .arg("COUNT")
            .arg(limit.max(1));
        let mut page = self.read_with_newest(room, range, true).await?;
        let excess = page.messages.len().saturating_sub(limit);
        page.messages.drain(..excess);
        Ok(page)
    }

    async fn subscribe_live(&self, room: &RoomName) -> Result<(), BrokerError> {
        lock(&self.live.wanted).insert(room.clone());
        let sink = lock(&self.live.sink).clone();
        let Some(mut sink) = sink else {
            return Err(BrokerError::Unavailable(
                "the live feed is reconnecting to Redis".to_owned(),
            ));
        };
        bounded(sink.subscribe(self.keys.channel(room))).await
    }

    async fn unsubscribe_live(&self, room: &RoomName) -> Result<(), BrokerError> {
        lock(&self.live.wanted).remove(room);
        let sink = lock(&self.live.sink).clone();
        match sink {
            Some(mut sink) => bounded(sink.unsubscribe(self.keys.channel(room))).await,
            None => Ok(()),
        }
    }

    async fn is_ready(&self) -> bool {
        if !self.live.connected.load(Ordering::Acquire) {
            return false;
        }
        let mut connection = self.connection();
        matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                redis::cmd("PING").query_async::<String>(&mut connection)
            )
            .await,
            Ok(Ok(_))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_room_hash_tag() {
        let keys = KeyScheme {
            prefix: "relay".to_owned(),
        };
        let room = RoomName::parse("team:42").unwrap();
        assert_eq!(keys.stream(&room), "relay:{team:42}:s");
        assert_eq!(keys.channel(&room), "relay:{team:42}:c");
        assert_eq!(keys.idempotency(&room, Some("c-1")), "relay:{team:42}:i:c-1");
        assert_eq!(keys.room_of_channel("relay:{team:42}:c"), Some(room));
        assert_eq!(keys.room_of_channel("other:{team:42}:c"), None);
    }

    #[test]
    fn frame_ids_are_read_from_the_composed_head() {
        let room = RoomName::parse("r").unwrap();
        let frame = server_frame::message_frame(
            &room,
            MessageId::new(5, 2),
            MessageId::new(4, 9),
            "\"from\":null,\"ts\":1,\"body\":1}",
        );
        assert_eq!(
            parse_frame_ids(&room, frame.as_bytes()),
            Some((MessageId::new(5, 2), MessageId::new(4, 9)))
        );
        assert_eq!(parse_frame_ids(&room, b"{\"type\":\"gap\"}"), None);
    }
}
