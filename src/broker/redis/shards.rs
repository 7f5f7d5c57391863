//! The shards of a Redis Cluster: one command connection per primary, the
//! slot map, and running a room's command on the primary that serves it.
//!
//! Why the relay routes itself instead of using redis-rs's cluster client:
//! a publish pipeline must go to exactly one node and be answered command by
//! command, so that a `MOVED` for one publish is known never to have run and
//! can be sent again where the room now lives, and nothing else is resent.
//! The cluster client retries whole requests on its own (16 times, over a
//! second apart by default), and its sharded Pub/Sub resubscribes every
//! channel in one `SSUBSCRIBE` that Redis refuses once they span slots. So
//! the connections are redis-rs's single-node ones (a self-reconnecting
//! `ConnectionManager` per primary), and the slot map comes from
//! `CLUSTER SLOTS`, read again after any refusal and every two seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use redis::aio::ConnectionManager;
use redis::{Client, ConnectionAddr, ConnectionInfo};

use super::topology::SlotMap;
use super::{CONNECT_TIMEOUT, REFUSED, bounded, connection_config, lock};
use crate::broker::BrokerError;
use crate::protocol::RoomName;

/// Shortest time between two reads of the slot map (refusals come in
/// bursts: one read answers them all).
const REFRESH_COOLDOWN: Duration = Duration::from_millis(100);
/// How many times a room's command goes out when Redis refuses it (a
/// `MOVED`, `TRYAGAIN` or `CLUSTERDOWN` never ran).
const ATTEMPTS: u32 = 4;

/// Label of a shard: its primary's `host:port`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(super) struct ShardLabel {
    pub(super) shard: String,
}

/// Metrics per shard, registered with the node's registry.
pub(super) struct ShardMetrics {
    /// 1 while this node's live-feed link to the primary is up.
    pub(super) up: Family<ShardLabel, Gauge>,
    /// Times the rooms of a shard were caught up from their streams (the
    /// link dropped, went silent, or Redis moved a room away).
    pub(super) resyncs: Family<ShardLabel, Counter>,
    /// Time from a publish's submission to the primary's answer.
    pub(super) publish_seconds: Family<ShardLabel, Histogram, fn() -> Histogram>,
}

impl ShardMetrics {
    fn new() -> Self {
        Self {
            up: Family::default(),
            resyncs: Family::default(),
            publish_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
            }),
        }
    }

    pub(super) fn label(shard: &str) -> ShardLabel {
        ShardLabel {
            shard: shard.to_owned(),
        }
    }

    /// Marks a shard's live feed up; its counters and histogram start at
    /// zero then, so that a dashboard's `increase()` sees the first event.
    pub(super) fn mark_up(&self, shard: &str) {
        let label = Self::label(shard);
        self.up.get_or_create(&label).set(1);
        let _ = self.resyncs.get_or_create(&label);
        let _ = self.publish_seconds.get_or_create(&label);
    }

    pub(super) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "relay_redis_shard_up",
            "1 while this node's live feed from a Redis Cluster primary is up",
            self.up.clone(),
        );
        registry.register(
            "relay_redis_shard_resyncs",
            "Times the rooms of a Redis Cluster shard were caught up from their streams",
            self.resyncs.clone(),
        );
        registry.register(
            "relay_redis_shard_publish_duration_seconds",
            "Time from a publish's submission to the answer of its shard's primary",
            self.publish_seconds.clone(),
        );
    }
}

/// The cluster's primaries and how to reach them; see the module docs.
pub(super) struct Shards {
    /// Metrics per shard.
    pub(super) metrics: ShardMetrics,
    /// Credentials and TLS of `REDIS_URL`; each primary's address replaces
    /// its host and port.
    base: ConnectionInfo,
    /// `host:port` of the seeds in `REDIS_URL`.
    seeds: Vec<String>,
    map: RwLock<Arc<SlotMap>>,
    connections: Mutex<HashMap<String, ConnectionManager>>,
    /// One read of the slot map at a time, and when the last one ended.
    refreshing: tokio::sync::Mutex<Instant>,
}

/// `host:port` of a connection address.
pub(super) fn address_of(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
        other => other.to_string(),
    }
}

fn split_address(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    Some((host.trim_start_matches('[').trim_end_matches(']'), port.parse().ok()?))
}

impl Shards {
    /// Shards reached through the seeds; `first` is the seed client the
    /// broker connected with (its credentials and TLS are used for all).
    pub(super) fn new(first: &Client, seeds: Vec<String>) -> Self {
        Self {
            metrics: ShardMetrics::new(),
            base: first.get_connection_info().clone(),
            seeds,
            map: RwLock::new(Arc::new(SlotMap::default())),
            connections: Mutex::new(HashMap::new()),
            refreshing: tokio::sync::Mutex::new(
                Instant::now()
                    .checked_sub(REFRESH_COOLDOWN)
                    .unwrap_or_else(Instant::now),
            ),
        }
    }

    /// A client for the node at `address`, with `REDIS_URL`'s credentials
    /// and TLS.
    pub(super) fn client(&self, address: &str) -> Result<Client, BrokerError> {
        let (host, port) = split_address(address)
            .ok_or_else(|| BrokerError::Internal(format!("the cluster named a node without a port: {address}")))?;
        let addr = match self.base.addr() {
            ConnectionAddr::TcpTls {
                insecure, tls_params, ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        Client::open(self.base.clone().set_addr(addr)).map_err(|error| BrokerError::Internal(error.to_string()))
    }

    /// The command connection to the primary at `address` (opened the
    /// first time).
    pub(super) async fn connection(&self, address: &str) -> Result<ConnectionManager, BrokerError> {
        if let Some(connection) = lock(&self.connections).get(address) {
            return Ok(connection.clone());
        }
        let connection = self.new_connection(address).await?;
        Ok(lock(&self.connections)
            .entry(address.to_owned())
            .or_insert(connection)
            .clone())
    }

    /// A connection of its own to the primary at `address` (a publisher
    /// that blocks it with `WAIT`).
    pub(super) async fn new_connection(&self, address: &str) -> Result<ConnectionManager, BrokerError> {
        let client = self.client(address)?;
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, connection_config()),
        )
        .await
        .map_err(|_| BrokerError::Unavailable(format!("{REFUSED}connecting to the Redis primary {address} timed out")))?
        .map_err(|error| {
            BrokerError::Unavailable(format!("{REFUSED}cannot reach the Redis primary {address}: {error}"))
        })?;
        Ok(connection)
    }

    /// The slot map as last read.
    pub(super) fn map(&self) -> Arc<SlotMap> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the slot map again from any node that answers (known
    /// primaries first, then the seeds). Calls within a short cooldown of
    /// the last read share it.
    pub(super) async fn refresh(&self) -> Result<Arc<SlotMap>, BrokerError> {
        let mut last = self.refreshing.lock().await;
        if last.elapsed() < REFRESH_COOLDOWN && !self.map().is_empty() {
            return Ok(self.map());
        }
        let mut candidates = self.map().primaries();
        candidates.extend(self.seeds.iter().cloned());
        candidates.dedup();
        let mut failures = Vec::new();
        for address in candidates {
            let read = async {
                let mut connection = self.connection(&address).await?;
                bounded(
                    redis::cmd("CLUSTER")
                        .arg("SLOTS")
                        .query_async::<redis::Value>(&mut connection),
                )
                .await
            };
            match read.await {
                Ok(reply) => {
                    let host = split_address(&address).map_or("", |(host, _)| host);
                    let Some(map) = SlotMap::parse(&reply, host) else {
                        failures.push(format!("{address}: unreadable CLUSTER SLOTS reply"));
                        continue;
                    };
                    let map = Arc::new(map);
                    *self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner) = map.clone();
                    // Connections to nodes that serve no slot now go.
                    lock(&self.connections)
                        .retain(|known, _| map.primaries().contains(known) || self.seeds.contains(known));
                    *last = Instant::now();
                    return Ok(map);
                }
                Err(error) => failures.push(format!("{address}: {error}")),
            }
        }
        *last = Instant::now();
        Err(BrokerError::Unavailable(format!(
            "no Redis Cluster node answered CLUSTER SLOTS ({})",
            failures.join("; ")
        )))
    }

    /// The address of the primary serving `room`, reading the map again
    /// if it names none.
    pub(super) async fn owner(&self, room: &RoomName) -> Result<String, BrokerError> {
        if let Some(owner) = self.map().owner(room) {
            return Ok(owner.to_owned());
        }
        let map = self.refresh().await?;
        map.owner(room)
            .map(str::to_owned)
            .ok_or_else(|| BrokerError::Unavailable(format!("no Redis primary serves the slot of room {room}")))
    }

    /// Runs a room's command on the primary that serves the room. When
    /// Redis refuses it (it never ran: `MOVED` after a failover or a slot
    /// migration, `TRYAGAIN`, `CLUSTERDOWN`, or the primary is down; see
    /// [`super::is_refusal`]), the
    /// map is read again and the command goes where the room now lives, a
    /// few times over about a second.
    pub(super) async fn on_room<T, F, Fut>(&self, room: &RoomName, work: F) -> Result<T, BrokerError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, BrokerError>>,
    {
        let mut pause = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            let outcome = match self.owner(room).await {
                Ok(owner) => match self.connection(&owner).await {
                    Ok(connection) => work(connection).await,
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            };
            match outcome {
                Err(error) if attempt < ATTEMPTS && super::is_refusal(&error) => {
                    let _ = self.refresh().await;
                    tokio::time::sleep(pause).await;
                    pause *= 3;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(split_address("127.0.0.1:7000"), Some(("127.0.0.1", 7000)));
        assert_eq!(split_address("[::1]:7000"), Some(("::1", 7000)));
        assert_eq!(split_address("redis-host"), None);
    }
}
