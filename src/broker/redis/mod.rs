//! The Redis broker: any number of nodes share one set of rooms, on one
//! Redis or on a Redis Cluster (`RELAY_REDIS_CLUSTER`).
//!
//! Each room has a stream (its history) and a Pub/Sub channel (its live
//! feed), plus idempotency keys, all under the room's hash tag
//! ([`keys`]), so that on a cluster they share one slot. A publish is one
//! Lua script (`publish.lua`) run by a [`publisher`] task, which pipelines
//! publishes over one multiplexed, self-reconnecting connection
//! (`ConnectionManager`) in submission order. What Redis returns is read in
//! [`entries`].
//!
//! On one Redis, one publisher and one command connection serve every
//! room, and the [`live_feed`] is one Pub/Sub connection. On a cluster,
//! [`shards`] keeps the slot map ([`topology`]) and a command connection per
//! primary, each primary has its own publisher
//! ([`publisher::ShardPublishers`]), and the [`sharded_feed`] subscribes
//! each room on the primary that owns its slot and follows the rooms when
//! slots move.
//!
//! Why the `redis` crate: it is the maintained, widely used client, has a
//! multiplexed connection with automatic reconnect and response timeouts,
//! script caching with NOSCRIPT fallback, a split Pub/Sub connection whose
//! `subscribe` returns only once Redis confirmed it, RESP3 push frames for
//! sharded Pub/Sub, and rustls TLS for `rediss://`. `fred` is as capable
//! but heavier and callback-oriented, and drops the server's
//! `sunsubscribe`; `deadpool-redis`/`bb8` pool connections, which would
//! lose per-connection ordering and pipelining. Its cluster client is not
//! used; [`shards`] says why.

mod entries;
mod keys;
mod live_feed;
mod presence;
mod publisher;
mod sharded_feed;
mod shards;
mod topology;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Value};

use super::{
    Broker, BrokerError, HistoryPage, LiveSink, PendingPublish, PresenceEntry, PresenceState, PublishRequest,
    RetentionSettings, ShardState,
};
use crate::protocol::{MessageId, RoomName};
use crate::tasks::NodeTasks;
use entries::{newest_id, parse_entries};
use keys::KeyScheme;
use live_feed::LiveFeed;
use presence::RedisPresence;
use publisher::{Publisher, ShardPublishers};
use sharded_feed::ShardedFeed;
use shards::{Shards, address_of};

/// Longest wait for any single Redis command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The start of the message of a failure that certainly never ran and may
/// succeed elsewhere or a moment later: see [`is_refusal`].
const REFUSED: &str = "refused, never ran: ";

/// Classifies a failed command. Only what certainly never ran is
/// [`BrokerError::Unavailable`]: a refused connection, or an error reply
/// (Redis refused the command: `LOADING`, `BUSY`, `OOM`, `READONLY`, a
/// cluster's `MOVED`, `ASK`, `TRYAGAIN` or `CLUSTERDOWN`, or a script
/// error, which in `publish.lua` can only come before its first write).
/// Anything else after the command was handed to the connection (a dropped
/// connection, a timeout) may have reached Redis.
fn failure(error: &redis::RedisError) -> BrokerError {
    let cluster = matches!(
        error.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "EXECABORT")
    );
    if error.is_connection_refusal() || cluster {
        BrokerError::Unavailable(format!("{REFUSED}{error}"))
    } else if error.code().is_some() {
        BrokerError::Unavailable(error.to_string())
    } else {
        BrokerError::NoAnswer(error.to_string())
    }
}

/// Whether a failure never ran and is worth sending again where the room
/// lives now: a cluster's redirection or refusal, or a primary that refused
/// the connection (it may be failing over).
fn is_refusal(error: &BrokerError) -> bool {
    matches!(error, BrokerError::Unavailable(message) if message.starts_with(REFUSED))
}

/// How every command connection connects, answers and reconnects.
fn connection_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
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
    presence: RedisPresence,
    backend: Backend,
}

/// One Redis, or a cluster.
enum Backend {
    Single {
        commands: ConnectionManager,
        publisher: Publisher,
        live: Arc<LiveFeed>,
    },
    Cluster {
        shards: Arc<Shards>,
        publishers: Arc<ShardPublishers>,
        live: Arc<ShardedFeed>,
    },
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
    /// `REDIS_URL` names a node of a Redis Cluster and
    /// `RELAY_REDIS_CLUSTER` is off: a single-Redis broker would get
    /// `MOVED` for every room on another shard.
    #[error(
        "REDIS_URL ({address}) is a Redis Cluster node: set RELAY_REDIS_CLUSTER=true, or point REDIS_URL at a Redis with cluster mode disabled"
    )]
    ClusterNode {
        /// Host and port (never the password).
        address: String,
    },
    /// `RELAY_REDIS_MIN_REPLICAS_ACKED` is set and Redis refuses `WAIT`
    /// (a managed service may block it): every publish would fail.
    #[error(
        "RELAY_REDIS_MIN_REPLICAS_ACKED is {replicas} but the Redis at {address} refuses WAIT ({reason}): set RELAY_REDIS_MIN_REPLICAS_ACKED=0, or use a Redis that allows WAIT"
    )]
    NoWait {
        /// Host and port (never the password).
        address: String,
        /// What was asked.
        replicas: u32,
        /// Redis's refusal.
        reason: String,
    },
    /// `RELAY_REDIS_CLUSTER=true` and `REDIS_URL` names a Redis without
    /// cluster mode.
    #[error(
        "REDIS_URL ({address}) is not a Redis Cluster node (cluster mode disabled): unset RELAY_REDIS_CLUSTER, or point REDIS_URL at a node of a Redis Cluster"
    )]
    NotClusterNode {
        /// Host and port (never the password).
        address: String,
    },
}

/// The seed URLs of `REDIS_URL`: a comma-separated list whose first entry
/// is a full URL; a later entry may be a full URL or just `host:port`,
/// which takes the scheme and credentials of the first.
fn seed_urls(url: &str) -> Vec<String> {
    let mut parts = url.split(',').map(str::trim).filter(|part| !part.is_empty());
    let Some(first) = parts.next() else {
        return vec![url.to_owned()];
    };
    let scheme_end = first.find("://").map_or(0, |index| index + 3);
    let authority_start = first[scheme_end..]
        .find('@')
        .map_or(scheme_end, |index| scheme_end + index + 1);
    let prefix = &first[..authority_start];
    let mut seeds = vec![first.to_owned()];
    for part in parts {
        if part.contains("://") {
            seeds.push(part.to_owned());
        } else {
            seeds.push(format!("{prefix}{part}"));
        }
    }
    seeds
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

/// What a `WAIT 0 0` at start found.
enum WaitCheck {
    /// Redis answered it.
    Taken,
    /// Redis answered with an error reply: it refuses `WAIT`.
    Refused(String),
    /// No answer (the server went away or timed out): nothing learned.
    Unknown,
}

/// Asks `commands`' server for an immediate `WAIT 0 0`.
async fn try_wait(commands: &ConnectionManager) -> WaitCheck {
    let mut connection = commands.clone();
    let mut wait = redis::cmd("WAIT");
    wait.arg(0).arg(0);
    match tokio::time::timeout(COMMAND_TIMEOUT, wait.query_async::<i64>(&mut connection)).await {
        Ok(Ok(_)) => WaitCheck::Taken,
        Ok(Err(error)) if error.code().is_some() => WaitCheck::Refused(failure(&error).to_string()),
        Ok(Err(_)) | Err(_) => WaitCheck::Unknown,
    }
}

/// With `RELAY_REDIS_MIN_REPLICAS_ACKED` set, checks at start that Redis
/// takes `WAIT`: a refusal is an error naming the setting; no answer is
/// not (publishes will say what they meet).
async fn check_wait(commands: &ConnectionManager, address: &str, replicas: u32) -> Result<(), RedisStartError> {
    if replicas == 0 {
        return Ok(());
    }
    match try_wait(commands).await {
        WaitCheck::Refused(reason) => Err(RedisStartError::NoWait {
            address: address.to_owned(),
            replicas,
            reason,
        }),
        WaitCheck::Taken | WaitCheck::Unknown => Ok(()),
    }
}

/// [`check_wait`] on a cluster, asked of a primary: a replica refuses
/// `WAIT` whatever the service allows, and a seed may be a replica (a
/// former primary back after a failover). The first primary that answers
/// decides.
async fn check_wait_on_primaries(shards: &Shards, replicas: u32) -> Result<(), RedisStartError> {
    if replicas == 0 {
        return Ok(());
    }
    for primary in shards.map().primaries() {
        let Ok(commands) = shards.connection(&primary).await else {
            continue;
        };
        match try_wait(&commands).await {
            WaitCheck::Taken => return Ok(()),
            WaitCheck::Refused(reason) => {
                return Err(RedisStartError::NoWait {
                    address: primary,
                    replicas,
                    reason,
                });
            }
            WaitCheck::Unknown => {}
        }
    }
    Ok(())
}

/// A client for `url`, with the private CA if one is given.
fn client_for(url: &str, ca_pem: Option<&Vec<u8>>) -> Result<Client, RedisStartError> {
    match ca_pem {
        None => Client::open(url),
        Some(root_cert) => Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert.clone()),
            },
        ),
    }
    .map_err(|error| RedisStartError::BadUrl(error.to_string()))
}

/// Opens a command connection to `client`'s server.
async fn open_commands(client: &Client) -> Result<ConnectionManager, RedisStartError> {
    let unreachable = |reason: String| RedisStartError::Unreachable {
        address: client.get_connection_info().addr().to_string(),
        reason,
    };
    tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        ConnectionManager::new_with_config(client.clone(), connection_config()),
    )
    .await
    .map_err(|_| unreachable("connect timed out".to_owned()))?
    .map_err(|error| unreachable(error.to_string()))
}

impl RedisBroker {
    /// Connects to one Redis, or (with `cluster`) to the cluster that
    /// `url`'s seeds belong to, and starts the publisher and live-feed
    /// tasks as tasks of `tasks`. `ca_pem` replaces the public web roots
    /// for `rediss://` servers signed by a private CA.
    ///
    /// # Errors
    /// [`RedisStartError`] when the URL is bad, Redis cannot be reached, or
    /// it is a cluster node and `cluster` is off (or the other way round).
    pub async fn connect(
        url: &str,
        ca_pem: Option<Vec<u8>>,
        prefix: &str,
        retention: RetentionSettings,
        cluster: bool,
        tasks: &Arc<NodeTasks>,
    ) -> Result<Arc<Self>, RedisStartError> {
        // Two rustls crypto back-ends are compiled in through dependencies;
        // pick one explicitly (a second install is a harmless no-op error).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if cluster {
            return Self::connect_cluster(url, ca_pem.as_ref(), prefix, retention, tasks).await;
        }
        if url.contains(',') {
            return Err(RedisStartError::BadUrl(
                "a list of seed nodes needs RELAY_REDIS_CLUSTER=true; for a single Redis give one URL".to_owned(),
            ));
        }
        let client = client_for(url, ca_pem.as_ref())?;
        let address = client.get_connection_info().addr().to_string();
        let commands = open_commands(&client).await?;
        if is_cluster_node(&commands).await {
            return Err(RedisStartError::ClusterNode { address });
        }
        check_wait(&commands, &address, retention.replicas_acked).await?;
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| RedisStartError::Unreachable {
                address: address.clone(),
                reason: "connect timed out".to_owned(),
            })?
            .map_err(|error| RedisStartError::Unreachable {
                address: address.clone(),
                reason: error.to_string(),
            })?;
        let keys = KeyScheme::new(prefix);
        // WAIT blocks the connection it is sent on: the publisher then has
        // one of its own, so reads never wait behind it.
        let publishing = if retention.replicas_acked > 0 {
            open_commands(&client).await?
        } else {
            commands.clone()
        };
        let live = Arc::new(LiveFeed::new(client, keys.clone()));
        let publisher = Publisher::start(
            publishing,
            &retention,
            keys.clone(),
            "PUBLISH",
            live.losses.clone(),
            publisher::SharedFences::default(),
            tasks,
        );
        let broker = Arc::new(Self {
            keys: keys.clone(),
            presence: RedisPresence::new(keys.clone(), "PUBLISH"),
            backend: Backend::Single {
                commands,
                publisher,
                live: live.clone(),
            },
        });
        tasks.spawn("redis live feed", LiveFeed::run(Arc::downgrade(&live), pubsub));
        // Ready once the live feed is up, so the first subscribe succeeds.
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        while !live.connected.load(Ordering::Acquire) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(broker)
    }

    async fn connect_cluster(
        url: &str,
        ca_pem: Option<&Vec<u8>>,
        prefix: &str,
        retention: RetentionSettings,
        tasks: &Arc<NodeTasks>,
    ) -> Result<Arc<Self>, RedisStartError> {
        let seeds = seed_urls(url);
        let mut clients = Vec::with_capacity(seeds.len());
        for seed in &seeds {
            clients.push(client_for(seed, ca_pem)?);
        }
        let addresses: Vec<String> = clients
            .iter()
            .map(|client| address_of(client.get_connection_info().addr()))
            .collect();
        // The first seed that answers tells whether this is a cluster.
        let mut last_failure = None;
        let mut reached = None;
        for client in &clients {
            match open_commands(client).await {
                Ok(commands) => {
                    reached = Some((client, commands));
                    break;
                }
                Err(error) => last_failure = Some(error),
            }
        }
        let Some((client, commands)) = reached else {
            return Err(last_failure.unwrap_or_else(|| RedisStartError::BadUrl("REDIS_URL names no seed".to_owned())));
        };
        let address = address_of(client.get_connection_info().addr());
        if !is_cluster_node(&commands).await {
            return Err(RedisStartError::NotClusterNode { address });
        }
        let shards = Arc::new(Shards::new(client, addresses));
        shards.refresh().await.map_err(|error| RedisStartError::Unreachable {
            address: address.clone(),
            reason: error.to_string(),
        })?;
        check_wait_on_primaries(&shards, retention.replicas_acked).await?;
        let keys = KeyScheme::new(prefix);
        let live = ShardedFeed::start(shards.clone(), keys.clone(), tasks);
        let publishers = ShardPublishers::new(shards.clone(), retention, keys.clone(), tasks);
        Ok(Arc::new(Self {
            keys: keys.clone(),
            presence: RedisPresence::new(keys, "SPUBLISH"),
            backend: Backend::Cluster {
                shards,
                publishers,
                live,
            },
        }))
    }

    /// Runs a room's command on the connection that serves the room: the
    /// one connection, or the room's primary (following the cluster when
    /// it refuses, see [`Shards::on_room`]).
    async fn on_room<T, F, Fut>(&self, room: &RoomName, work: F) -> Result<T, BrokerError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        match &self.backend {
            Backend::Single { commands, .. } => work(commands.clone()).await,
            Backend::Cluster { shards, .. } => shards.on_room(room, work).await,
        }
    }

    async fn read_with_newest(
        &self,
        room: &RoomName,
        range: redis::Cmd,
        reverse: bool,
    ) -> Result<HistoryPage, BrokerError> {
        let stream = self.keys.stream(room);
        let (entries, newest): (Value, Value) = self
            .on_room(room, |mut connection| {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .add_command(range.clone())
                    .cmd("XREVRANGE")
                    .arg(&stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
                async move { bounded(pipe.query_async(&mut connection)).await }
            })
            .await?;
        let mut messages = parse_entries(room, &entries)?;
        if reverse {
            messages.reverse();
        }
        Ok(HistoryPage {
            messages,
            last_id: newest_id(&newest),
        })
    }

    /// Each primary of the cluster and whether it answers (empty on one
    /// Redis).
    async fn shard_states(&self) -> Vec<ShardState> {
        let Backend::Cluster { shards, .. } = &self.backend else {
            return Vec::new();
        };
        let primaries = shards.map().primaries();
        let probes = primaries.into_iter().map(|address| async move {
            let up = match shards.connection(&address).await {
                Ok(mut connection) => matches!(
                    tokio::time::timeout(
                        Duration::from_secs(1),
                        redis::cmd("PING").query_async::<String>(&mut connection)
                    )
                    .await,
                    Ok(Ok(_))
                ),
                Err(_) => false,
            };
            ShardState { address, up }
        });
        futures_util::future::join_all(probes).await
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn set_live_sink(&self, sink: Weak<dyn LiveSink>) {
        match &self.backend {
            Backend::Single { live, .. } => *lock(&live.hub) = Some(sink),
            Backend::Cluster { live, .. } => *lock(&live.hub) = Some(sink),
        }
    }

    fn publish(&self, request: PublishRequest) -> PendingPublish {
        match &self.backend {
            Backend::Single { publisher, .. } => publisher.submit(request),
            Backend::Cluster { publishers, .. } => publishers.submit(request),
        }
    }

    async fn read_after(&self, room: &RoomName, after: MessageId, limit: usize) -> Result<HistoryPage, BrokerError> {
        let mut range = redis::cmd("XRANGE");
        range.arg(self.keys.stream(room));
        match after.successor() {
            // Inclusive from the next id: the same as exclusive after it.
            Some(start) => range.arg(start.to_string()).arg("+"),
            // Nothing can follow the largest id (and Redis refuses an
            // exclusive start there): a range of the never-stored 0-0 reads
            // nothing, and the page still says where the history ends.
            None => range.arg("0-0").arg("0-0"),
        };
        range.arg("COUNT").arg(limit.max(1));
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
        let live = match &self.backend {
            Backend::Single { live, .. } => live,
            Backend::Cluster { live, .. } => return live.subscribe(room).await,
        };
        lock(&live.wanted).insert(room.clone());
        let sink = lock(&live.sink).clone();
        let Some(mut sink) = sink else {
            return Err(BrokerError::Unavailable(
                "the live feed is reconnecting to Redis".to_owned(),
            ));
        };
        bounded(sink.subscribe(self.keys.channel(room))).await
    }

    async fn unsubscribe_live(&self, room: &RoomName) -> Result<(), BrokerError> {
        let live = match &self.backend {
            Backend::Single { live, .. } => live,
            Backend::Cluster { live, .. } => return live.unsubscribe(room).await,
        };
        lock(&live.wanted).remove(room);
        let sink = lock(&live.sink).clone();
        match sink {
            Some(mut sink) => bounded(sink.unsubscribe(self.keys.channel(room))).await,
            None => Ok(()),
        }
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Backend::Cluster { shards, .. } = &self.backend {
            shards.metrics.register(registry);
        }
    }

    async fn shards(&self) -> Vec<ShardState> {
        self.shard_states().await
    }

    async fn is_ready(&self) -> bool {
        let (live, mut connection) = match &self.backend {
            Backend::Single { live, commands, .. } => (live, commands.clone()),
            // Every node shares the shards: while any answers, a node
            // serves the rooms of the healthy ones (a 503 would take the
            // whole fleet out of the load balancer).
            Backend::Cluster { .. } => return self.shard_states().await.iter().any(|shard| shard.up),
        };
        if !live.connected.load(Ordering::Acquire) {
            return false;
        }
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
        self.on_room(room, |connection| {
            self.presence.join(connection, room, entry, lifetime, list)
        })
        .await
    }

    async fn presence_refresh(
        &self,
        room: &RoomName,
        entries: &[PresenceEntry],
        lifetime: Duration,
    ) -> Result<(), BrokerError> {
        self.on_room(room, |connection| {
            self.presence.refresh(connection, room, entries, lifetime)
        })
        .await
    }

    async fn presence_leave(&self, room: &RoomName, entries: &[PresenceEntry]) -> Result<(), BrokerError> {
        self.on_room(room, |connection| self.presence.leave(connection, room, entries))
            .await
    }

    async fn presence_sweep(&self, room: &RoomName) -> Result<(), BrokerError> {
        self.on_room(room, |connection| self.presence.sweep(connection, room))
            .await
    }

    async fn presence_members(
        &self,
        room: &RoomName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PresenceState, BrokerError> {
        self.on_room(room, |connection| self.presence.members(connection, room, after, limit))
            .await
    }

    async fn presence_changes_after(
        &self,
        room: &RoomName,
        after: u64,
    ) -> Result<Option<Vec<super::PresenceChange>>, BrokerError> {
        self.on_room(room, |connection| self.presence.changes_after(connection, room, after))
            .await
    }

    async fn signal(&self, room: &RoomName, frame: bytes::Bytes) -> Result<(), BrokerError> {
        self.on_room(room, |connection| self.presence.signal(connection, room, &frame))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_seeds_take_the_scheme_and_credentials_of_the_first() {
        assert_eq!(
            seed_urls("redis://:secret@10.0.0.1:7000,10.0.0.2:7001, rediss://other:7002"),
            vec![
                "redis://:secret@10.0.0.1:7000".to_owned(),
                "redis://:secret@10.0.0.2:7001".to_owned(),
                "rediss://other:7002".to_owned(),
            ]
        );
        assert_eq!(seed_urls("redis://h:1"), vec!["redis://h:1".to_owned()]);
    }

    #[test]
    fn cluster_refusals_never_ran_and_timeouts_may_have() {
        let moved = redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::Moved),
            "MOVED",
            "1 127.0.0.1:7001".to_owned(),
        ));
        assert!(is_refusal(&failure(&moved)), "{moved}");
        let timeout = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert!(matches!(failure(&timeout), BrokerError::NoAnswer(_)));
        assert!(!is_refusal(&BrokerError::Unavailable("LOADING".to_owned())));
    }
}
