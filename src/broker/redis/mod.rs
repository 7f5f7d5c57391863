//! The Redis broker: any number of nodes share one set of rooms.
//!
//! Each room has a stream (its history) and a Pub/Sub channel (its live
//! feed), plus idempotency keys, all under the room's hash tag
//! ([`keys`]). A publish is one Lua script (`publish.lua`) run by the
//! [`publisher`] task, which pipelines publishes over one multiplexed,
//! self-reconnecting connection (`ConnectionManager`) in submission order.
//! History reads share that connection. The [`live_feed`] is one dedicated
//! Pub/Sub connection per node that heals itself. What Redis returns is
//! read in [`entries`].
//!
//! Why the `redis` crate: it is the maintained, widely used client, has a
//! multiplexed connection with automatic reconnect and response timeouts,
//! script caching with NOSCRIPT fallback, a split Pub/Sub connection whose
//! `subscribe` returns only once Redis confirmed it, and rustls TLS for
//! `rediss://`. `fred` is as capable but heavier and callback-oriented;
//! `deadpool-redis`/`bb8` pool connections, which would lose per-connection
//! ordering and pipelining.

mod entries;
mod keys;
mod live_feed;
mod presence;
mod publisher;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};

use super::{
    Broker, BrokerError, HistoryPage, LiveSink, PendingPublish, PresenceEntry, PresenceState, PublishRequest,
    RetentionSettings,
};
use crate::protocol::{MessageId, RoomName};
use crate::tasks::NodeTasks;
use entries::{newest_id, parse_entries};
use keys::KeyScheme;
use live_feed::LiveFeed;
use presence::RedisPresence;
use publisher::Publisher;

/// Longest wait for any single Redis command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Classifies a failed command. Only what certainly never ran is
/// [`BrokerError::Unavailable`]: a refused connection, or an error reply
/// (Redis refused the command: `LOADING`, `BUSY`, `OOM`, `READONLY`, or a
/// script error, which in `publish.lua` can only come before its first
/// write). Anything else after the command was handed to the connection (a
/// dropped connection, a timeout) may have reached Redis.
fn failure(error: &redis::RedisError) -> BrokerError {
    if error.is_connection_refusal() || error.code().is_some() {
        BrokerError::Unavailable(error.to_string())
    } else {
        BrokerError::NoAnswer(error.to_string())
    }
}

/// Runs one command (or pipeline) bounded by [`COMMAND_TIMEOUT`].
async fn bounded<T>(work: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BrokerError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(failure(&error)),
        Err(_) => Err(BrokerError::NoAnswer(format!(
            "no answer from Redis within {COMMAND_TIMEOUT:?}"
        ))),
    }
}

/// The Redis broker; see the module docs.
pub struct RedisBroker {
    keys: KeyScheme,
    commands: ConnectionManager,
    publisher: Publisher,
    presence: RedisPresence,
    live: Arc<LiveFeed>,
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
    /// `REDIS_URL` names a node of a Redis Cluster: a single-Redis broker
    /// would get `MOVED` for every room on another shard.
    #[error(
        "REDIS_URL ({address}) is a Redis Cluster node, and this build supports a single Redis only (RELAY_REDIS_CLUSTER is not available yet): point REDIS_URL at a Redis with cluster mode disabled"
    )]
    ClusterNode {
        /// Host and port (never the password).
        address: String,
    },
}

/// Whether the server is a Redis Cluster node (`INFO cluster` says
/// `cluster_enabled:1`). A server that refuses `INFO` (some managed
/// services rename it) is taken at its word as a single Redis.
async fn is_cluster_node(commands: &ConnectionManager) -> bool {
    let mut connection = commands.clone();
    let info: Result<String, BrokerError> =
        bounded(redis::cmd("INFO").arg("cluster").query_async(&mut connection)).await;
    info.is_ok_and(|info| info.lines().any(|line| line.trim() == "cluster_enabled:1"))
}

impl RedisBroker {
    /// Connects both connections (commands and live feed) and starts the
    /// publisher and live-feed tasks as tasks of `tasks`. `ca_pem` replaces the public web roots for
    /// `rediss://` servers signed by a private CA.
    ///
    /// # Errors
    /// [`RedisStartError`] when the URL is bad or Redis cannot be reached.
    pub async fn connect(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
        retention: RetentionSettings,
        tasks: &Arc<NodeTasks>,
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
        if is_cluster_node(&commands).await {
            return Err(RedisStartError::ClusterNode { address });
        }
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| unreachable("connect timed out".to_owned()))?
            .map_err(|error| unreachable(error.to_string()))?;
        let keys = KeyScheme::new(prefix);
        let live = Arc::new(LiveFeed::new(client, keys.clone()));
        let publisher = Publisher::start(commands.clone(), &retention, keys.clone(), "PUBLISH", tasks);
        let broker = Arc::new(Self {
            keys: keys.clone(),
            commands,
            publisher,
            presence: RedisPresence::new(keys.clone(), "PUBLISH"),
            live: live.clone(),
        });
        tasks.spawn("redis live feed", LiveFeed::run(Arc::downgrade(&live), pubsub));
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
        self.publisher.submit(request)
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

    async fn presence_join(
        &self,
        room: &RoomName,
        entry: &PresenceEntry,
        lifetime: Duration,
        list: usize,
    ) -> Result<PresenceState, BrokerError> {
        self.presence.join(self.connection(), room, entry, lifetime, list).await
    }

    async fn presence_refresh(
        &self,
        room: &RoomName,
        entries: &[PresenceEntry],
        lifetime: Duration,
    ) -> Result<(), BrokerError> {
        self.presence.refresh(self.connection(), room, entries, lifetime).await
    }

    async fn presence_leave(&self, room: &RoomName, entries: &[PresenceEntry]) -> Result<(), BrokerError> {
        self.presence.leave(self.connection(), room, entries).await
    }

    async fn presence_sweep(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.presence.sweep(self.connection(), room).await
    }

    async fn presence_members(
        &self,
        room: &RoomName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PresenceState, BrokerError> {
        self.presence.members(self.connection(), room, after, limit).await
    }

    async fn presence_changes_after(
        &self,
        room: &RoomName,
        after: u64,
    ) -> Result<Option<Vec<super::PresenceChange>>, BrokerError> {
        self.presence.changes_after(self.connection(), room, after).await
    }

    async fn signal(&self, room: &RoomName, frame: bytes::Bytes) -> Result<(), BrokerError> {
        self.presence.signal(self.connection(), room, &frame).await
    }
}
