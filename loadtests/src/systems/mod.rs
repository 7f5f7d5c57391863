//! The systems under test, each deployed the same way: one Redis server and
//! two nodes on loopback, started here and stopped when dropped.
//!
//! - `relay`: two chat-relay processes (the release binary).
//! - `socketio`: two Node.js processes running `peers/socketio/server.js`
//!   (Socket.IO 4, `@socket.io/redis-streams-adapter`, connection state
//!   recovery).
//! - `nchan`: two nginx instances with Nchan and Redis storage
//!   (`peers/nchan/nginx.conf.template`).
//! - `relay-stomp`: the `relay` deployment, measured through its STOMP
//!   endpoint (`/v1/stomp`) instead of the JSON protocol.
//! - `rabbitmq`: one RabbitMQ node (Debian's `rabbitmq-server`) with its
//!   Web-STOMP plugin, the STOMP-over-WebSocket broker Spring teams put
//!   behind their front ends; one node, since a RabbitMQ cluster shares
//!   queues through Erlang distribution rather than a Redis.

mod process;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub use process::{CpuTimes, ServerProcess, free_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemKind {
    Relay,
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
    Nchan,
    #[value(name = "relay-stomp")]
    #[serde(rename = "relay-stomp")]
    RelayStomp,
    #[value(name = "rabbitmq")]
    #[serde(rename = "rabbitmq")]
    RabbitMq,
}

impl SystemKind {
    pub fn label(self) -> &'static str {
        match self {
            SystemKind::Relay => "chat-relay",
            SystemKind::SocketIo => "Socket.IO",
            SystemKind::Nchan => "Nchan",
            SystemKind::RelayStomp => "chat-relay (STOMP)",
            SystemKind::RabbitMq => "RabbitMQ Web-STOMP",
        }
    }

    /// Whether it is chat-relay (whichever protocol measures it).
    pub fn is_relay(self) -> bool {
        matches!(self, SystemKind::Relay | SystemKind::RelayStomp)
    }
}

/// One node's address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub kind: SystemKind,
    pub port: u16,
}

impl Endpoint {
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The STOMP-over-WebSocket URL of a STOMP system.
    pub fn stomp_url(&self) -> String {
        match self.kind {
            SystemKind::RabbitMq => self.ws_url("/ws"),
            _ => self.ws_url("/v1/stomp"),
        }
    }
}

/// Where the load generator finds what it runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Locations {
    /// The chat-relay binary [default: next to relay-load]
    #[arg(long)]
    pub relay_binary: Option<PathBuf>,
    /// The peers' set-up folder (with socketio/ and nchan/)
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peers"))]
    pub peers_dir: PathBuf,
    /// redis-server binary
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// nginx binary (with the Nchan module installed)
    #[arg(long, default_value = "/usr/sbin/nginx")]
    pub nginx: String,
}

impl Locations {
    pub fn relay_binary(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.relay_binary {
            return Ok(path.clone());
        }
        let beside = std::env::current_exe()?
            .parent()
            .context("relay-load has no folder")?
            .join("chat-relay");
        if !beside.exists() {
            bail!(
                "{} not found: build it (cargo build --release -p chat-relay) or pass --relay-binary",
                beside.display()
            );
        }
        Ok(beside)
    }
}

/// A running deployment: Redis and two nodes.
pub struct Deployment {
    pub kind: SystemKind,
    pub endpoints: Vec<Endpoint>,
    pub nodes: Vec<ServerProcess>,
    /// Runs until the deployment is dropped.
    redis: ServerProcess,
    /// The shared Redis, on 127.0.0.1.
    pub redis_port: u16,
    pub version: String,
}

impl Deployment {
    pub fn start(kind: SystemKind, locations: &Locations, work: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work)?;
        let redis_port = free_port()?;
        let mut redis = Command::new(&locations.redis_server);
        redis.args([
            "--port",
            &redis_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxclients",
            "20000",
        ]);
        let redis = ServerProcess::start("redis", redis, redis_port, &work.join("redis.log"))?;
        let redis_url = format!("redis://127.0.0.1:{redis_port}");
        let mut nodes = Vec::new();
        let mut endpoints = Vec::new();
        // RabbitMQ runs one node (see the module docs).
        let node_count = if kind == SystemKind::RabbitMq { 1 } else { 2 };
        for index in 0..node_count {
            let port = free_port()?;
            let (name, command) = match kind {
                SystemKind::RabbitMq => rabbitmq_command(work, port)?,
                SystemKind::Relay | SystemKind::RelayStomp => {
                    let mut command = Command::new(locations.relay_binary()?);
                    command
                        .env_clear()
                        .env("REDIS_URL", &redis_url)
                        .env("RELAY_AUTH", "none")
                        .env("RELAY_LISTEN", format!("127.0.0.1:{port}"))
                        .env("RELAY_NODE_ID", format!("relay-{index}"))
                        .env("RELAY_LOG_FORMAT", "json")
                        .env("RUST_LOG", "warn")
                        .env("RELAY_PUBLISH_RATE", "1000000")
                        .env("RELAY_MAX_CONNECTIONS", "50000")
                        .env("RELAY_MAX_CONNECTIONS_PER_CLIENT", "0");
                    (format!("relay-{index}"), command)
                }
                SystemKind::SocketIo => {
                    let folder = locations.peers_dir.join("socketio");
                    if !folder.join("node_modules/socket.io").exists() {
                        bail!("Socket.IO is not installed: run {}/setup.sh", folder.display());
                    }
                    let mut command = Command::new("node");
                    command
                        .arg(folder.join("server.js"))
                        .env("PORT", port.to_string())
                        .env("REDIS_URL", &redis_url);
                    (format!("socketio-{index}"), command)
                }
                SystemKind::Nchan => {
                    let prefix = work.join(format!("nginx-{index}"));
                    std::fs::create_dir_all(prefix.join("logs"))?;
                    let template = std::fs::read_to_string(locations.peers_dir.join("nchan/nginx.conf.template"))
                        .context("read peers/nchan/nginx.conf.template")?;
                    let config = template
                        .replace("@PORT@", &port.to_string())
                        .replace("@REDIS_PORT@", &redis_port.to_string())
                        .replace("@PREFIX@", &prefix.display().to_string());
                    let config_path = prefix.join("nginx.conf");
                    std::fs::write(&config_path, config)?;
                    let mut command = Command::new(&locations.nginx);
                    command.arg("-p").arg(&prefix).arg("-c").arg(&config_path);
                    (format!("nchan-{index}"), command)
                }
            };
            nodes.push(ServerProcess::start(
                &name,
                command,
                port,
                &work.join(format!("{name}.log")),
            )?);
            endpoints.push(Endpoint { kind, port });
        }
        let version = version_of(kind, locations);
        Ok(Self {
            kind,
            endpoints,
            nodes,
            redis,
            redis_port,
            version,
        })
    }

    /// RSS of the nodes (not Redis, which every system shares alike).
    pub fn nodes_rss_bytes(&self) -> u64 {
        self.nodes.iter().map(ServerProcess::rss_bytes).sum()
    }

    /// CPU seconds of the nodes so far.
    pub fn nodes_cpu_seconds(&self) -> f64 {
        self.nodes_cpu_times().total()
    }

    /// CPU time of each node so far.
    pub fn each_node_cpu_times(&self) -> Vec<CpuTimes> {
        self.nodes.iter().map(ServerProcess::cpu_times).collect()
    }

    /// CPU time of the shared Redis so far.
    pub fn redis_cpu_times(&self) -> CpuTimes {
        self.redis.cpu_times()
    }

    /// CPU time of the nodes so far, user and system apart.
    pub fn nodes_cpu_times(&self) -> CpuTimes {
        self.nodes.iter().map(ServerProcess::cpu_times).sum()
    }
}

fn version_of(kind: SystemKind, locations: &Locations) -> String {
    let read = |command: &mut Command| {
        command
            .output()
            .ok()
            .map(|output| {
                let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&output.stderr));
                text.trim().to_owned()
            })
            .unwrap_or_default()
    };
    match kind {
        SystemKind::Relay | SystemKind::RelayStomp => format!("chat-relay {}", env!("CARGO_PKG_VERSION")),
        SystemKind::RabbitMq => format!(
            "rabbitmq-server {} (rabbitmq_web_stomp)",
            read(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "rabbitmq-server"]))
        ),
        SystemKind::SocketIo => {
            let package = |name: &str| {
                let path = locations
                    .peers_dir
                    .join("socketio/node_modules")
                    .join(name)
                    .join("package.json");
                std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                    .and_then(|json| json["version"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "?".to_owned())
            };
            format!(
                "socket.io {}, @socket.io/redis-streams-adapter {}, node {}",
                package("socket.io"),
                package("@socket.io/redis-streams-adapter"),
                read(Command::new("node").arg("--version"))
            )
        }
        SystemKind::Nchan => {
            let nginx = read(Command::new(&locations.nginx).arg("-v"));
            let nchan = read(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "libnginx-mod-nchan"]));
            format!(
                "{}, libnginx-mod-nchan {nchan}",
                nginx.trim_start_matches("nginx version: ")
            )
        }
    }
}

/// One RabbitMQ node with Web-STOMP on `port`, everything of it (data,
/// logs, cookie, config) under `work`, every listener on 127.0.0.1.
fn rabbitmq_command(work: &Path, port: u16) -> anyhow::Result<(String, Command)> {
    let server = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    if !server.exists() {
        bail!("RabbitMQ is not installed: apt-get install rabbitmq-server");
    }
    let home = work.join("rabbitmq");
    std::fs::create_dir_all(&home)?;
    let (amqp, stomp, distribution) = (free_port()?, free_port()?, free_port()?);
    std::fs::write(
        home.join("rabbitmq.conf"),
        format!(
            "listeners.tcp.default = 127.0.0.1:{amqp}\nweb_stomp.tcp.port = {port}\nweb_stomp.tcp.ip = 127.0.0.1\nstomp.listeners.tcp.1 = 127.0.0.1:{stomp}\nloopback_users = none\n"
        ),
    )?;
    std::fs::write(home.join("enabled_plugins"), "[rabbitmq_web_stomp].\n")?;
    let mut command = Command::new(server);
    command
        .env("HOME", &home)
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODENAME", format!("relay-load-{port}@localhost"))
        .env("RABBITMQ_MNESIA_BASE", home.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", home.join("log"))
        .env("RABBITMQ_CONFIG_FILE", home.join("rabbitmq.conf"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", home.join("enabled_plugins"))
        .env("RABBITMQ_DIST_PORT", distribution.to_string());
    Ok(("rabbitmq".to_owned(), command))
}
