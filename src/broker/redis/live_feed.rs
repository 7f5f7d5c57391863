//! The node's live feed from Redis: one dedicated Pub/Sub connection and
//! the set of rooms it should carry. A task keeps it up: it checks the
//! connection with a PING every few seconds, and when the connection drops
//! it reconnects with jittered backoff, resubscribes every wanted room and
//! asks the hub to catch every room up from the streams (the live feed may
//! have dropped messages meanwhile).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::{Client, Value};

use super::entries::live_message;
use super::keys::KeyScheme;
use super::presence::{LivePayload, classify};
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, bounded, failure, lock};
use crate::broker::{BrokerError, LiveSink};
use crate::protocol::RoomName;

/// How often the live-feed connection is checked with a PING.
const LIVE_HEALTH_INTERVAL: Duration = Duration::from_secs(3);
/// Reconnect backoff bounds of the live feed.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The node's live feed: one Pub/Sub connection and what it should carry.
pub(super) struct LiveFeed {
    client: Client,
    keys: KeyScheme,
    /// Rooms the hub asked for.
    pub(super) wanted: Mutex<HashSet<RoomName>>,
    /// The subscribing half of the connection while it is up.
    pub(super) sink: Mutex<Option<PubSubSink>>,
    /// Where live messages go.
    pub(super) hub: Mutex<Option<Weak<dyn LiveSink>>>,
    /// Whether the connection is up (readiness).
    pub(super) connected: AtomicBool,
    /// Bumped each time the connection is lost: the publisher of the same
    /// Redis takes it as news that its own connection may be gone too.
    pub(super) losses: Arc<std::sync::atomic::AtomicU64>,
}

impl LiveFeed {
    pub(super) fn new(client: Client, keys: KeyScheme) -> Self {
        Self {
            client,
            keys,
            wanted: Mutex::new(HashSet::new()),
            sink: Mutex::new(None),
            hub: Mutex::new(None),
            connected: AtomicBool::new(false),
            losses: Arc::default(),
        }
    }

    fn hub(&self) -> Option<Arc<dyn LiveSink>> {
        lock(&self.hub).as_ref().and_then(Weak::upgrade)
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let Some(room) = self.keys.room_of_channel(channel) else {
            return;
        };
        let Some(hub) = self.hub() else { return };
        match classify(payload) {
            LivePayload::Message(payload) => {
                let Some(message) = live_message(&room, payload) else {
                    tracing::error!(%room, "live message from Redis is not a message frame; skipped");
                    return;
                };
                hub.deliver(&room, Arc::new(message));
            }
            LivePayload::Presence(change) => hub.presence(&room, change),
            LivePayload::Signal(frame) => hub.signal(&room, bytes::Bytes::copy_from_slice(frame)),
            LivePayload::Unreadable => {
                tracing::error!(%room, "presence change from Redis is unreadable; skipped");
            }
        }
    }

    /// Keeps one Pub/Sub connection up for as long as the broker lives.
    pub(super) async fn run(feed: Weak<LiveFeed>, first: redis::aio::PubSub) {
        let mut next = Some(first);
        let mut backoff = RECONNECT_MIN;
        let mut reconnected = false;
        loop {
            let pubsub = if let Some(pubsub) = next.take() {
                pubsub
            } else {
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
            live.losses.fetch_add(1, Ordering::AcqRel);
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
        Ok(Err(error)) => Err(failure(&error)),
        Err(_) => Err(BrokerError::NoAnswer(format!(
            "Redis did not confirm {} subscriptions within {:?}",
            channels.len(),
            COMMAND_TIMEOUT * 2
        ))),
    }
}
