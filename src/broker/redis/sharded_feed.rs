//! The node's live feed from a Redis Cluster: sharded Pub/Sub, one
//! subscription connection per primary that serves a room this node
//! carries, each room subscribed (`SSUBSCRIBE`, one channel per command, so
//! never across slots) on the primary that owns its slot.
//!
//! Redis moves a room's channel without a word that a client library acts
//! on: after a slot migration or a failover it sends `sunsubscribe` and
//! later `SPUBLISH`es reach nobody. So this module follows the topology
//! itself:
//! - a placement task reads the slot map every two seconds, and at once
//!   when a shard link asks; every wanted room whose owner is not where it
//!   is subscribed is subscribed on its owner and caught up from its stream;
//! - a server `sunsubscribe` the node did not ask for restarts that link
//!   (its replies may now be out of step with its requests), and the rooms
//!   it carried are placed again and caught up;
//! - a dropped link (redis-rs's disconnection notice) or a silent one (a
//!   PING every 3 s that must be answered within 2 s: the liveness probe)
//!   reconnects and catches its rooms up, exactly as the single-Redis feed
//!   does after a Pub/Sub blip.
//!
//! The links speak RESP3, where subscriptions and messages share one
//! multiplexed connection and messages arrive as push frames.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc, watch};

use super::entries::live_message;
use super::keys::KeyScheme;
use super::presence::{LivePayload, classify};
use super::shards::{ShardMetrics, Shards};
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, bounded, lock};
use crate::broker::{BrokerError, LiveSink};
use crate::protocol::RoomName;
use crate::tasks::NodeTasks;

/// How often the slot map is read to find rooms that moved.
const PLACEMENT_INTERVAL: Duration = Duration::from_secs(2);
/// How often each link is checked with a PING.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(3);
/// Reconnect backoff bounds of a link.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// The live feed of a cluster; see the module docs.
pub(super) struct ShardedFeed {
    shards: Arc<Shards>,
    keys: KeyScheme,
    tasks: Arc<NodeTasks>,
    /// Where live messages go.
    pub(super) hub: Mutex<Option<Weak<dyn LiveSink>>>,
    /// Rooms the hub asked for.
    wanted: Mutex<HashSet<RoomName>>,
    /// The primary each wanted room is subscribed on now.
    placed: Mutex<HashMap<RoomName, String>>,
    /// One link per primary in use.
    links: Mutex<HashMap<String, Arc<ShardLink>>>,
    /// Wakes the placement task.
    replace: Arc<Notify>,
}

/// One primary's subscription connection.
pub(super) struct ShardLink {
    address: String,
    /// The connection while it is up.
    connection: Mutex<Option<MultiplexedConnection>>,
    /// Channels this node unsubscribed and Redis has not confirmed yet:
    /// their `sunsubscribe` is an answer, not news.
    leaving: Mutex<HashMap<String, usize>>,
    /// Set when the primary serves nothing this node wants: the task ends.
    retired: AtomicBool,
    /// Whether the connection is up and carries what is placed on it.
    up: watch::Sender<bool>,
}

impl ShardedFeed {
    pub(super) fn start(shards: Arc<Shards>, keys: KeyScheme, tasks: &Arc<NodeTasks>) -> Arc<Self> {
        let feed = Arc::new(Self {
            shards,
            keys,
            tasks: tasks.clone(),
            hub: Mutex::new(None),
            wanted: Mutex::new(HashSet::new()),
            placed: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            replace: Arc::new(Notify::new()),
        });
        tasks.spawn("redis cluster placement", place_rooms(Arc::downgrade(&feed)));
        feed
    }

    fn hub(&self) -> Option<Arc<dyn LiveSink>> {
        lock(&self.hub).as_ref().and_then(Weak::upgrade)
    }

    /// The link to `address`, started if there is none.
    fn link(self: &Arc<Self>, address: &str) -> Arc<ShardLink> {
        let mut links = lock(&self.links);
        if let Some(link) = links.get(address) {
            return link.clone();
        }
        let link = Arc::new(ShardLink {
            address: address.to_owned(),
            connection: Mutex::new(None),
            leaving: Mutex::new(HashMap::new()),
            retired: AtomicBool::new(false),
            up: watch::Sender::new(false),
        });
        links.insert(address.to_owned(), link.clone());
        self.tasks
            .spawn("redis shard link", run_link(Arc::downgrade(self), link.clone()));
        link
    }

    /// Subscribes a room on the primary that serves it; answers once
    /// Redis confirmed it.
    pub(super) async fn subscribe(self: &Arc<Self>, room: &RoomName) -> Result<(), BrokerError> {
        lock(&self.wanted).insert(room.clone());
        let mut refreshed = false;
        loop {
            let owner = self.shards.owner(room).await?;
            let link = self.link(&owner);
            // A link just started gets a moment to connect.
            let mut up = link.up.subscribe();
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, up.wait_for(|up| *up)).await;
            let Some(mut connection) = lock(&link.connection).clone() else {
                return Err(BrokerError::Unavailable(format!(
                    "the live feed from the Redis primary {owner} is reconnecting"
                )));
            };
            let channel = self.keys.channel(room);
            match bounded(redis::cmd("SSUBSCRIBE").arg(&channel).exec_async(&mut connection)).await {
                Ok(()) => {
                    let previous = lock(&self.placed).insert(room.clone(), owner.clone());
                    if let Some(previous) = previous.filter(|previous| *previous != owner) {
                        self.leave(&previous, &channel).await;
                    }
                    return Ok(());
                }
                // MOVED: the map is behind; read it once more.
                Err(BrokerError::Unavailable(_)) if !refreshed => {
                    refreshed = true;
                    self.shards.refresh().await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    pub(super) async fn unsubscribe(&self, room: &RoomName) -> Result<(), BrokerError> {
        lock(&self.wanted).remove(room);
        let Some(address) = lock(&self.placed).remove(room) else {
            return Ok(());
        };
        self.leave(&address, &self.keys.channel(room)).await;
        Ok(())
    }

    /// `SUNSUBSCRIBE` of a channel on a link (if it is up), marked as
    /// asked for so that its confirmation is not taken for a move.
    async fn leave(&self, address: &str, channel: &str) {
        let link = lock(&self.links).get(address).cloned();
        let Some(link) = link else { return };
        let Some(mut connection) = lock(&link.connection).clone() else {
            return;
        };
        *lock(&link.leaving).entry(channel.to_owned()).or_default() += 1;
        if bounded(redis::cmd("SUNSUBSCRIBE").arg(channel).exec_async(&mut connection))
            .await
            .is_err()
        {
            // The link is failing; it restarts without the channel.
            let mut leaving = lock(&link.leaving);
            if let Some(count) = leaving.get_mut(channel) {
                *count = count.saturating_sub(1);
            }
        }
    }

    fn dispatch(&self, channel: &[u8], payload: &[u8]) {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return;
        };
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

    /// Rooms placed on a link.
    fn rooms_on(&self, address: &str) -> Vec<RoomName> {
        lock(&self.placed)
            .iter()
            .filter(|(_, placed)| placed.as_str() == address)
            .map(|(room, _)| room.clone())
            .collect()
    }

    /// Forgets where the rooms of a link are subscribed and wakes the
    /// placement task, which subscribes them where they now live and
    /// catches them up.
    fn unplace(&self, address: &str) {
        lock(&self.placed).retain(|_, placed| placed.as_str() != address);
        self.replace.notify_one();
    }

    /// One pass of placement: every wanted room subscribed on the primary
    /// that owns its slot now. Returns the rooms that moved (or had no
    /// place), which need a catch-up from their streams.
    async fn place(self: &Arc<Self>) -> Vec<RoomName> {
        let map = match self.shards.refresh().await {
            Ok(map) => map,
            Err(error) => {
                tracing::warn!(%error, "cannot read the Redis Cluster slot map");
                self.shards.map()
            }
        };
        // A link to every primary, so that a room's first subscribe finds
        // its link up.
        for primary in map.primaries() {
            self.link(&primary);
        }
        let wanted: Vec<RoomName> = lock(&self.wanted).iter().cloned().collect();
        let mut moved = Vec::new();
        for room in wanted {
            let owner = map.owner(&room).map(str::to_owned);
            let placed = lock(&self.placed).get(&room).cloned();
            if owner.is_some() && owner == placed {
                continue;
            }
            if !lock(&self.wanted).contains(&room) {
                continue;
            }
            match self.subscribe(&room).await {
                Ok(()) => moved.push(room),
                Err(error) => {
                    tracing::warn!(%room, %error, "cannot subscribe the room where it now lives; retrying");
                }
            }
        }
        // Links that carry nothing and serve no slot end.
        let primaries = map.primaries();
        let in_use: HashSet<String> = lock(&self.placed).values().cloned().collect();
        lock(&self.links).retain(|address, link| {
            let keep = in_use.contains(address) || primaries.contains(address);
            if !keep {
                link.retired.store(true, Ordering::Release);
            }
            keep
        });
        moved
    }
}

/// The placement task: see [`ShardedFeed::place`].
async fn place_rooms(feed: Weak<ShardedFeed>) {
    loop {
        let Some(live) = feed.upgrade() else { return };
        let moved = live.place().await;
        if !moved.is_empty() {
            tracing::info!(
                rooms = moved.len(),
                "rooms subscribed where they now live; catching them up from history"
            );
            if let Some(hub) = live.hub() {
                hub.resync_rooms(&moved);
            }
        }
        let retry_soon = lock(&live.wanted).len() > lock(&live.placed).len();
        let wait = if retry_soon {
            Duration::from_millis(250)
        } else {
            PLACEMENT_INTERVAL
        };
        let replace = live.replace.clone();
        drop(live);
        tokio::select! {
            () = replace.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A PING of a link in flight.
type Liveness = std::pin::Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// Keeps one primary's link up while the primary serves this node.
async fn run_link(feed: Weak<ShardedFeed>, link: Arc<ShardLink>) {
    let mut backoff = RECONNECT_MIN;
    let mut reconnected = false;
    loop {
        if link.retired.load(Ordering::Acquire) {
            return;
        }
        let Some(live) = feed.upgrade() else { return };
        let (pushes, mut stream) = mpsc::unbounded_channel::<PushInfo>();
        let connect = async {
            let client = live.shards.client(&link.address)?;
            let info = client.get_connection_info().clone();
            let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(resp3))
                .map_err(|error| BrokerError::Internal(error.to_string()))?;
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT))
                .set_push_sender(pushes);
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|error| BrokerError::Unavailable(error.to_string()))
        };
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT * 2, connect).await {
            Ok(Ok(connection)) => connection,
            failure => {
                let reason = match failure {
                    Ok(Err(error)) => error.to_string(),
                    _ => "connect timed out".to_owned(),
                };
                tracing::warn!(shard = %link.address, %reason, retry_in_ms = backoff.as_millis(), "cannot reach a Redis primary for the live feed");
                // It may be gone for good (a failover): place its rooms
                // where they now live.
                live.unplace(&link.address);
                drop(live);
                tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64())).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        // Subscribe what is placed here again (one channel per command).
        let rooms = live.rooms_on(&link.address);
        let subscribes = rooms.iter().map(|room| {
            let mut connection = connection.clone();
            let channel = live.keys.channel(room);
            async move { bounded(redis::cmd("SSUBSCRIBE").arg(channel).exec_async(&mut connection)).await }
        });
        if let Err(error) = futures_util::future::try_join_all(subscribes).await {
            tracing::warn!(shard = %link.address, %error, "resubscribing rooms on a Redis primary failed; placing them again");
            live.unplace(&link.address);
            drop(live);
            tokio::time::sleep(backoff).await;
            continue;
        }
        lock(&link.leaving).clear();
        *lock(&link.connection) = Some(connection.clone());
        link.up.send_replace(true);
        live.shards.metrics.mark_up(&link.address);
        backoff = RECONNECT_MIN;
        if reconnected && !rooms.is_empty() {
            tracing::info!(shard = %link.address, rooms = rooms.len(), "live feed from a Redis primary reconnected; catching rooms up from history");
            if let Some(hub) = live.hub() {
                hub.resync_rooms(&rooms);
            }
        }
        reconnected = true;
        drop(live);
        let mut liveness = tokio::time::interval_at(tokio::time::Instant::now() + LIVENESS_INTERVAL, LIVENESS_INTERVAL);
        let mut ping: Option<Liveness> = None;
        let reason = loop {
            tokio::select! {
                push = stream.recv() => {
                    let Some(push) = push else { break "the connection closed".to_owned() };
                    let Some(live) = feed.upgrade() else { return };
                    if let Some(reason) = live.on_push(&link, push) {
                        break reason;
                    }
                }
                _ = liveness.tick(), if ping.is_none() => {
                    if link.retired.load(Ordering::Acquire) {
                        return;
                    }
                    let mut pinger = connection.clone();
                    ping = Some(Box::pin(async move {
                        bounded(redis::cmd("PING").query_async::<Value>(&mut pinger)).await.map(drop)
                    }));
                }
                Some(answer) = async { Some(ping.as_mut()?.await) }, if ping.is_some() => {
                    ping = None;
                    if let Err(error) = answer {
                        break format!("the liveness check failed: {error}");
                    }
                }
            }
        };
        *lock(&link.connection) = None;
        link.up.send_replace(false);
        tracing::warn!(shard = %link.address, %reason, "live feed from a Redis primary lost; reconnecting");
        if let Some(live) = feed.upgrade() {
            let label = ShardMetrics::label(&link.address);
            live.shards.metrics.up.get_or_create(&label).set(0);
            live.shards.metrics.resyncs.get_or_create(&label).inc();
            live.unplace(&link.address);
        }
    }
}

impl ShardedFeed {
    /// Handles one push frame of a link; returns why the link must
    /// restart, if it must.
    fn on_push(&self, link: &ShardLink, push: PushInfo) -> Option<String> {
        match push.kind {
            PushKind::SMessage => {
                if let [Value::BulkString(channel), Value::BulkString(payload), ..] = push.data.as_slice() {
                    self.dispatch(channel, payload);
                }
                None
            }
            PushKind::SUnsubscribe => {
                let channel = match push.data.first() {
                    Some(Value::BulkString(channel)) => String::from_utf8_lossy(channel).into_owned(),
                    _ => String::new(),
                };
                let mut leaving = lock(&link.leaving);
                match leaving.get_mut(&channel) {
                    Some(count) if *count > 0 => {
                        *count -= 1;
                        None
                    }
                    _ => Some(format!(
                        "Redis unsubscribed {channel} (its slot moved or its primary failed over)"
                    )),
                }
            }
            PushKind::Disconnection => Some("the connection dropped".to_owned()),
            _ => None,
        }
    }
}
