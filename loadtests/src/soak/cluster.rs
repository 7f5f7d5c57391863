//! The soak's deployment: one Redis (or, with `--redis cluster`, a Redis
//! Cluster of three primaries and three replicas) and three relay nodes on
//! fixed ports, each of which a fault may kill, freeze, drain or restart.
//! The nodes listen on loopback, or (with partition faults, on one Redis)
//! each in a network namespace of its own (`network`). Every incarnation
//! writes its own log in the run's folder.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Mutex;

use super::network::Namespaces;
use crate::systems::{ServerProcess, free_port};

/// What Redis keeps across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Persistence {
    /// AOF with `appendfsync always`: a restart loses nothing acked.
    Always,
    /// Nothing: a restart loses everything, and every loss must be told.
    None,
}

/// One Redis, or a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisKind {
    /// One Redis; the nodes in single mode.
    Single,
    /// Three primaries with a replica each (`cluster-node-timeout` 2 s);
    /// the nodes with `RELAY_REDIS_CLUSTER=true`.
    Cluster,
}

/// How the nodes run in the soak (and why, where it differs from the
/// defaults).
const NODE_SETTINGS: &[(&str, &str)] = &[
    ("RELAY_AUTH", "none"),
    ("RELAY_LOG_FORMAT", "json"),
    ("RUST_LOG", "warn"),
    ("RELAY_PUBLISH_RATE", "1000000"),
    ("RELAY_MAX_CONNECTIONS_PER_CLIENT", "0"),
    // The checker reads every message back: keep them all.
    ("RELAY_HISTORY_MAXLEN", "10000000"),
    // A subscriber away for a fault's length must resume in full (a
    // stalled one misses a burst of 300 messages of 40 KB: 12 MB).
    ("RELAY_MAX_REPLAY", "10000"),
    ("RELAY_MAX_REPLAY_BYTES", "67108864"),
    // Short enough that a stalled subscriber's queue fills in a second.
    ("RELAY_OUTBOUND_QUEUE", "64"),
    // Drains and restarts in seconds, as on Cloud Run.
    ("RELAY_DRAIN_SECS", "3"),
    ("RELAY_PING_SECS", "5"),
];

/// The Redis of a run, and what the nodes ask of it.
pub struct Store {
    pub persistence: Persistence,
    pub kind: RedisKind,
    /// The nodes' RELAY_REDIS_MIN_REPLICAS_ACKED.
    pub replicas_acked: u32,
}

pub struct Cluster {
    pub redis_kind: RedisKind,
    /// The single Redis's port, or the first cluster node's.
    pub redis_port: u16,
    /// Every cluster node's port and process (empty on one Redis).
    pub cluster_ports: Vec<u16>,
    pub cluster_servers: Vec<Mutex<Option<ServerProcess>>>,
    pub node_ports: Vec<u16>,
    /// Where clients reach each node.
    pub node_addresses: Vec<SocketAddr>,
    /// The nodes' namespaces, when the run has partition faults.
    pub network: Option<Namespaces>,
    pub persistence: Persistence,
    relay_binary: PathBuf,
    redis_server: String,
    work: PathBuf,
    /// Held by a fault for as long as it acts on its target.
    pub redis: Mutex<Option<ServerProcess>>,
    pub nodes: Vec<Mutex<Option<ServerProcess>>>,
    incarnations: AtomicU32,
    /// The nodes' RELAY_REDIS_MIN_REPLICAS_ACKED.
    replicas_acked: u32,
}

impl Cluster {
    pub async fn start(
        relay_binary: PathBuf,
        redis_server: String,
        work: &Path,
        store: Store,
        nodes: usize,
        network: Option<Namespaces>,
    ) -> anyhow::Result<Self> {
        let Store {
            persistence,
            kind: redis_kind,
            replicas_acked,
        } = store;
        std::fs::create_dir_all(work.join("redis"))?;
        let cluster_ports: Vec<u16> = match redis_kind {
            RedisKind::Single => Vec::new(),
            RedisKind::Cluster => (0..6).map(|_| free_port()).collect::<Result<_, _>>()?,
        };
        let node_ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect::<Result<_, _>>()?;
        let node_addresses = node_ports
            .iter()
            .enumerate()
            .map(|(index, &port)| {
                let ip = network
                    .as_ref()
                    .map_or(Ipv4Addr::LOCALHOST, |network| network.node_address(index));
                SocketAddr::new(IpAddr::V4(ip), port)
            })
            .collect();
        let cluster = Self {
            redis_kind,
            redis_port: match cluster_ports.first() {
                Some(&port) => port,
                None => free_port()?,
            },
            cluster_servers: cluster_ports.iter().map(|_| Mutex::new(None)).collect(),
            cluster_ports,
            node_ports,
            node_addresses,
            network,
            persistence,
            relay_binary,
            redis_server,
            work: work.to_owned(),
            redis: Mutex::new(None),
            nodes: (0..nodes).map(|_| Mutex::new(None)).collect(),
            incarnations: AtomicU32::new(0),
            replicas_acked,
        };
        match redis_kind {
            RedisKind::Single => {
                let redis = cluster.start_redis().await?;
                *cluster.redis.lock().await = Some(redis);
            }
            RedisKind::Cluster => cluster.create_redis_cluster().await?,
        }
        for index in 0..nodes {
            let node = cluster.start_node(index).await?;
            *cluster.nodes[index].lock().await = Some(node);
        }
        Ok(cluster)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// Every Redis URL (the cluster's nodes, or the one Redis).
    pub fn redis_urls(&self) -> Vec<String> {
        if self.cluster_ports.is_empty() {
            return vec![self.redis_url()];
        }
        self.cluster_ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// Starts cluster node `index` (with the same data folder every time:
    /// a restarted node rejoins, as a replica if its shard failed over).
    pub async fn start_cluster_node(&self, index: usize) -> anyhow::Result<ServerProcess> {
        let port = self.cluster_ports[index];
        let dir = self.work.join("redis").join(port.to_string());
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new(&self.redis_server);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&dir)
            .args(["--maxclients", "20000"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            // Fail over within seconds, let any replica take over, and
            // keep the other shards serving while one has no primary.
            .args([
                "--cluster-node-timeout",
                "2000",
                "--cluster-replica-validity-factor",
                "0",
            ])
            .args(["--cluster-require-full-coverage", "no"])
            // A replica (a new one, or a killed primary back as one) syncs
            // at once, not after the default 5 s wait for more replicas: a
            // failover in those seconds would lose everything.
            .args(["--repl-diskless-sync-delay", "0"]);
        match self.persistence {
            Persistence::Always => command.args(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::None => command.args(["--appendonly", "no"]),
        };
        let log = self.log(&format!("redis-{port}"));
        tokio::task::spawn_blocking(move || ServerProcess::start("redis", command, port, &log)).await?
    }

    async fn create_redis_cluster(&self) -> anyhow::Result<()> {
        for index in 0..self.cluster_ports.len() {
            let server = self.start_cluster_node(index).await?;
            *self.cluster_servers[index].lock().await = Some(server);
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for port in &self.cluster_ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let output = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for &port in &self.cluster_ports {
            while !redis_cli(port, &["CLUSTER", "INFO"]).await.contains("cluster_state:ok") {
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "the cluster never became ok");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // The run starts with every replica holding its primary's data.
        for &port in &self.cluster_ports {
            loop {
                let replication = redis_cli(port, &["INFO", "replication"]).await;
                if replication.contains("role:master") || replication.contains("master_link_status:up") {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the replica on {port} never synced"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The cluster's primaries that serve slots, as (port, node id, slot
    /// ranges), asked of any node that answers; sorted by port.
    pub async fn primaries(&self) -> Vec<(u16, String, Vec<(u16, u16)>)> {
        for &port in &self.cluster_ports {
            let nodes = redis_cli(port, &["CLUSTER", "NODES"]).await;
            let mut primaries = Vec::new();
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let Some(node_port) = fields[1]
                    .split('@')
                    .next()
                    .and_then(|address| address.rsplit_once(':'))
                    .and_then(|(_, port)| port.parse().ok())
                else {
                    continue;
                };
                let ranges = fields[8..]
                    .iter()
                    .filter_map(|range| {
                        let (start, end) = range.split_once('-').unwrap_or((range, range));
                        Some((start.parse().ok()?, end.parse().ok()?))
                    })
                    .collect();
                primaries.push((node_port, fields[0].to_owned(), ranges));
            }
            if !primaries.is_empty() {
                primaries.sort();
                return primaries;
            }
        }
        Vec::new()
    }

    /// A cluster node that answers a PING.
    pub async fn redis_port_alive(&self) -> anyhow::Result<u16> {
        for &port in &self.cluster_ports {
            if redis_cli(port, &["PING"]).await.trim() == "PONG" {
                return Ok(port);
            }
        }
        anyhow::bail!("no cluster node answers")
    }

    /// Whether no node of the cluster is flagged as failing (or possibly
    /// failing), as a node that answers sees it.
    pub async fn settled(&self) -> bool {
        let Ok(port) = self.redis_port_alive().await else {
            return false;
        };
        let nodes = redis_cli(port, &["CLUSTER", "NODES"]).await;
        !nodes.is_empty()
            && !nodes
                .lines()
                .any(|line| line.split(' ').nth(2).is_some_and(|flags| flags.contains("fail")))
    }

    /// The port of the primary serving `slot` now.
    pub async fn primary_of_slot(&self, slot: u16) -> Option<u16> {
        self.primaries()
            .await
            .into_iter()
            .find(|(_, _, ranges)| ranges.iter().any(|&(start, end)| (start..=end).contains(&slot)))
            .map(|(port, _, _)| port)
    }

    fn log(&self, name: &str) -> PathBuf {
        let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed);
        self.work.join(format!("{name}.{incarnation}.log"))
    }

    /// Starts Redis on its port (with the same data folder every time).
    pub async fn start_redis(&self) -> anyhow::Result<ServerProcess> {
        let mut command = Command::new(&self.redis_server);
        command.args(["--port", &self.redis_port.to_string(), "--save", ""]);
        // Loopback, and the host's end of each node's veth (which only this
        // run's namespaces reach; so no password and no protected mode).
        command.arg("--bind").arg("127.0.0.1");
        if let Some(network) = &self.network {
            for index in 0..self.nodes.len() {
                command.arg(network.host_address(index).to_string());
            }
            command.args(["--protected-mode", "no"]);
        }
        command.arg("--dir").arg(self.work.join("redis"));
        command.args(["--maxclients", "20000"]);
        match self.persistence {
            Persistence::Always => command.args(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::None => command.args(["--appendonly", "no"]),
        };
        let log = self.log("redis");
        let port = self.redis_port;
        tokio::task::spawn_blocking(move || ServerProcess::start("redis", command, port, &log)).await?
    }

    /// Starts node `index` on its port.
    pub async fn start_node(&self, index: usize) -> anyhow::Result<ServerProcess> {
        let address = self.node_addresses[index];
        let (mut command, redis_host) = match &self.network {
            Some(network) => (network.command(index, &self.relay_binary), network.host_address(index)),
            None => (Command::new(&self.relay_binary), Ipv4Addr::LOCALHOST),
        };
        let redis_url = match self.redis_kind {
            RedisKind::Single => format!("redis://{redis_host}:{}", self.redis_port),
            RedisKind::Cluster => self.redis_urls().join(","),
        };
        command
            .env_clear()
            .env("REDIS_URL", redis_url)
            .env(
                "RELAY_REDIS_CLUSTER",
                (self.redis_kind == RedisKind::Cluster).to_string(),
            )
            .env("RELAY_LISTEN", address.to_string())
            .env("RELAY_NODE_ID", format!("soak-{index}"));
        for (name, value) in NODE_SETTINGS {
            command.env(name, value);
        }
        command.env("RELAY_REDIS_MIN_REPLICAS_ACKED", self.replicas_acked.to_string());
        let name = format!("relay-{index}");
        let log = self.log(&name);
        tokio::task::spawn_blocking(move || ServerProcess::start_at(&name, command, address, &log))
            .await?
            .with_context(|| format!("start node {index}"))
    }

    /// Waits up to `limit` for a process to exit by itself, then kills it.
    pub async fn wait_exit(process: &mut ServerProcess, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if process.exited() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        process.kill();
        false
    }
}

/// `redis-cli -p <port> <args>`: its standard output (empty when the node
/// does not answer).
pub async fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = tokio::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await;
    output.map_or_else(
        |_| String::new(),
        |output| String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}
