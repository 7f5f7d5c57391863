//! The soak's deployment: one Redis and three relay nodes on fixed ports,
//! each of which a fault may kill, freeze, drain or restart. The nodes
//! listen on loopback, or (with partition faults) each in a network
//! namespace of its own (`network`). Every incarnation writes its own log
//! in the run's folder.

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
    // A subscriber away for a fault's length must resume in full.
    ("RELAY_MAX_REPLAY", "10000"),
    // Short enough that a stalled subscriber's queue fills in a second.
    ("RELAY_OUTBOUND_QUEUE", "64"),
    // Drains and restarts in seconds, as on Cloud Run.
    ("RELAY_DRAIN_SECS", "3"),
    ("RELAY_PING_SECS", "5"),
];

pub struct Cluster {
    pub redis_port: u16,
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
}

impl Cluster {
    pub async fn start(
        relay_binary: PathBuf,
        redis_server: String,
        work: &Path,
        persistence: Persistence,
        nodes: usize,
        network: Option<Namespaces>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work.join("redis"))?;
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
            redis_port: free_port()?,
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
        };
        let redis = cluster.start_redis().await?;
        *cluster.redis.lock().await = Some(redis);
        for index in 0..nodes {
            let node = cluster.start_node(index).await?;
            *cluster.nodes[index].lock().await = Some(node);
        }
        Ok(cluster)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
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
        command
            .env_clear()
            .env("REDIS_URL", format!("redis://{redis_host}:{}", self.redis_port))
            .env("RELAY_LISTEN", address.to_string())
            .env("RELAY_NODE_ID", format!("soak-{index}"));
        for (name, value) in NODE_SETTINGS {
            command.env(name, value);
        }
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
