//! Idle: connections that only stay open (each subscribed to one of 100
//! rooms, answering keep-alives), spread over both nodes; the nodes' RSS
//! growth divided by the connections. Past one process's open-file limit
//! the connections are held by `relay-load hold` worker processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::client::{Resume, Subscriber};
use crate::scenarios::{Outcome, RssTrace, connect_many};
use crate::systems::{Deployment, Endpoint, SystemKind};

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub connections: usize,
}

pub const QUICK: Size = Size { connections: 1000 };

pub const FULL: Size = Size { connections: 20_000 };

/// How long after the last close the nodes' RSS is read again.
const CLOSED_SETTLE: Duration = Duration::from_secs(5);

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

/// Connections one worker process holds (under the 20,000 open files a
/// process may have here).
const PER_WORKER: usize = 5000;

/// Opens `count` idle connections numbered from `first`, alternating over
/// `endpoints`, and keeps them open (answering keep-alives) until dropped.
pub async fn open_idle(
    endpoints: &[Endpoint],
    first: usize,
    count: usize,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let subscribers = connect_many(count, |index| {
        let number = first + index;
        let endpoint = endpoints[number % endpoints.len()].clone();
        async move { Subscriber::connect(&endpoint, &format!("idle{}", number % 100), &Resume::Fresh, false).await }
    })
    .await?;
    Ok(subscribers
        .into_iter()
        .map(|subscriber| tokio::spawn(subscriber.hold()))
        .collect())
}

pub async fn run(deployment: &Deployment, size: Size) -> anyhow::Result<Outcome> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = deployment.nodes_rss_bytes();
    let mut workers = Vec::new();
    let mut held = Vec::new();
    let mut first = 0;
    while first < size.connections {
        let count = PER_WORKER.min(size.connections - first);
        if size.connections <= PER_WORKER {
            held = open_idle(&deployment.endpoints, first, count).await?;
        } else {
            workers.push(spawn_worker(deployment, first, count)?);
        }
        first += count;
    }
    // Let allocations settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = deployment.nodes_rss_bytes();
    for task in held {
        task.abort();
    }
    drop(workers);
    // What the nodes give back once every connection closed.
    tokio::time::sleep(CLOSED_SETTLE).await;
    let closed = deployment.nodes_rss_bytes();

    let mut outcome = Outcome::new(deployment.kind, &deployment.version);
    outcome.connections = size.connections as u64;
    outcome.rss_per_connection_kib = Some(after.saturating_sub(before) as f64 / 1024.0 / size.connections as f64);
    outcome.rss_mib = Some(RssTrace {
        before: mib(before),
        open: mib(after),
        closed: mib(closed),
    });
    Ok(outcome)
}

/// A worker holding connections; killed when dropped.
struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_worker(deployment: &Deployment, first: usize, count: usize) -> anyhow::Result<Worker> {
    let ports: Vec<String> = deployment
        .endpoints
        .iter()
        .map(|endpoint| endpoint.port.to_string())
        .collect();
    let system = match deployment.kind {
        SystemKind::Relay => "relay",
        SystemKind::SocketIo => "socketio",
        SystemKind::Nchan => "nchan",
        SystemKind::RelayStomp => "relay-stomp",
        SystemKind::RabbitMq => "rabbitmq",
    };
    let mut child = Command::new(std::env::current_exe()?)
        .args(["hold", "--system", system, "--ports", &ports.join(","), "--first"])
        .arg(first.to_string())
        .arg("--count")
        .arg(count.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("start a hold worker")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("hold worker failed: {line}");
    }
    Ok(Worker(child))
}
