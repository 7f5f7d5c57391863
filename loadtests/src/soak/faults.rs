//! The soak's faults: a schedule drawn from a seed (so a run can be
//! replayed: the same seed gives the same faults at the same offsets), and
//! how each one is inflicted on the deployment.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::cluster::{Cluster, Persistence};
use super::network::Cut;
use super::workload::{self, Order, Shared};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of a node, restarted 0.5-3 s later.
    KillNode,
    /// SIGTERM (the drain), and a restart once it has exited.
    DrainNode,
    /// `CLIENT KILL TYPE pubsub`: every node's live feed is cut.
    KillPubsub,
    /// Redis stopped (SIGSTOP) for 1-5 s, then resumed.
    FreezeRedis,
    /// Redis killed (`kill -9`) and restarted: with `--persistence
    /// always` it keeps every acked message; with `none` it loses them all.
    RestartRedis,
    /// Every client of one node drops its connection and reconnects at once.
    Storm,
    /// A subscriber stops reading while a burst fills its queue (4000),
    /// and 0.5-2 s after the burst reads again and resumes.
    StallSubscriber,
    /// Packets between a node and Redis dropped (iptables DROP in the
    /// node's namespace) for 3-8 s: no reset, only silence.
    PartitionRedis,
    /// Packets between every client and a node dropped for 3-8 s.
    PartitionClients,
}

impl FaultKind {
    /// Whether it needs the nodes in network namespaces.
    pub fn partitions(self) -> bool {
        matches!(self, FaultKind::PartitionRedis | FaultKind::PartitionClients)
    }
}

pub const ALL: &[FaultKind] = &[
    FaultKind::KillNode,
    FaultKind::DrainNode,
    FaultKind::KillPubsub,
    FaultKind::FreezeRedis,
    FaultKind::RestartRedis,
    FaultKind::Storm,
    FaultKind::StallSubscriber,
    FaultKind::PartitionRedis,
    FaultKind::PartitionClients,
];

/// One fault of the schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    /// Seconds after the start.
    pub at: f64,
    pub kind: FaultKind,
    /// The node (kill, drain, storm) or the subscriber (stall).
    pub target: usize,
    /// How long it lasts (down time, freeze, stall), in ms.
    pub ms: u64,
}

impl Planned {
    pub fn label(&self) -> String {
        match self.kind {
            FaultKind::KillNode => format!("kill -9 node {} ({} ms down)", self.target, self.ms),
            FaultKind::DrainNode => format!("drain node {}", self.target),
            FaultKind::KillPubsub => "CLIENT KILL TYPE pubsub".to_owned(),
            FaultKind::FreezeRedis => format!("Redis frozen {} ms", self.ms),
            FaultKind::RestartRedis => "Redis killed and restarted".to_owned(),
            FaultKind::Storm => format!("reconnect storm on node {}", self.target),
            FaultKind::StallSubscriber => format!(
                "subscriber {} stalls through a burst and {} ms more",
                self.target, self.ms
            ),
            FaultKind::PartitionRedis => format!("node {} cut from Redis (DROP) {} ms", self.target, self.ms),
            FaultKind::PartitionClients => format!("node {} cut from its clients (DROP) {} ms", self.target, self.ms),
        }
    }
}

/// The schedule: from 3 s after the start until 5 s before the end, a fault
/// every 1.5-5 s, the kinds in rounds of a shuffled order (so each kind
/// comes up once in every round).
pub fn plan(seed: u64, seconds: f64, kinds: &[FaultKind], nodes: usize, subscribers: usize) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut planned = Vec::new();
    let mut round: Vec<FaultKind> = Vec::new();
    let mut at = 3.0;
    while at < seconds - 5.0 && !kinds.is_empty() {
        if round.is_empty() {
            round = kinds.to_vec();
            rng.shuffle(&mut round);
        }
        let kind = round.pop().expect("a round is never empty here");
        let (target, ms) = match kind {
            FaultKind::KillNode => (rng.usize(..nodes), rng.u64(500..3000)),
            FaultKind::DrainNode | FaultKind::Storm => (rng.usize(..nodes), 0),
            FaultKind::KillPubsub | FaultKind::RestartRedis => (0, 0),
            FaultKind::FreezeRedis => (0, rng.u64(1000..5000)),
            FaultKind::StallSubscriber => (rng.usize(..subscribers), rng.u64(500..2000)),
            FaultKind::PartitionRedis | FaultKind::PartitionClients => (rng.usize(..nodes), rng.u64(3000..8000)),
        };
        planned.push(Planned { at, kind, target, ms });
        at += 1.5 + rng.f64() * 3.5;
    }
    planned
}

/// What inflicting a fault did, in seconds after the start.
#[derive(Debug, Clone, Serialize)]
pub struct Inflicted {
    pub fault: Planned,
    pub started: f64,
    pub ended: f64,
    /// When the store lost data (a restart without persistence).
    pub data_loss: Option<f64>,
    /// Anything that went wrong inflicting it (not a finding: the fault
    /// itself misbehaved).
    pub trouble: Option<String>,
    /// The burst's acks (a stall), for the checker.
    #[serde(skip)]
    pub acked: Vec<super::checker::Acked>,
}

/// Waits for the fault's time and inflicts it. Faults on one target wait
/// for each other (each holds its target's lock while it acts).
pub async fn inflict(
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    fault: Planned,
    burst_publisher: u32,
    room: usize,
) -> Inflicted {
    let start = shared.started + Duration::from_secs_f64(fault.at);
    tokio::time::sleep_until(start.into()).await;
    let started = shared.now();
    let mut data_loss = None;
    let mut acked = Vec::new();
    let outcome: anyhow::Result<()> = async {
        match fault.kind {
            FaultKind::KillNode => {
                let mut node = cluster.nodes[fault.target].lock().await;
                if let Some(mut process) = node.take() {
                    process.kill();
                }
                tokio::time::sleep(Duration::from_millis(fault.ms)).await;
                *node = Some(cluster.start_node(fault.target).await?);
            }
            FaultKind::DrainNode => {
                let mut node = cluster.nodes[fault.target].lock().await;
                if let Some(mut process) = node.take() {
                    process.signal(libc::SIGTERM);
                    if !Cluster::wait_exit(&mut process, Duration::from_secs(6)).await {
                        anyhow::bail!("node {} did not exit within 6 s of SIGTERM", fault.target);
                    }
                }
                *node = Some(cluster.start_node(fault.target).await?);
            }
            FaultKind::KillPubsub => {
                let _redis = cluster.redis.lock().await;
                let url = cluster.redis_url();
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    let mut connection =
                        redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
                    let _: redis::Value = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("TYPE")
                        .arg("pubsub")
                        .query(&mut connection)?;
                    Ok(())
                })
                .await??;
            }
            FaultKind::FreezeRedis => {
                let redis = cluster.redis.lock().await;
                let process = redis.as_ref().context("Redis is not running")?;
                process.signal(libc::SIGSTOP);
                tokio::time::sleep(Duration::from_millis(fault.ms)).await;
                process.signal(libc::SIGCONT);
            }
            FaultKind::RestartRedis => {
                let mut redis = cluster.redis.lock().await;
                if let Some(mut process) = redis.take() {
                    process.kill();
                }
                if cluster.persistence == Persistence::None {
                    data_loss = Some(shared.now());
                }
                *redis = Some(cluster.start_redis().await?);
            }
            FaultKind::Storm => {
                let _ = shared.orders.send(Order::Storm { node: fault.target });
            }
            FaultKind::StallSubscriber => {
                let _ = shared.orders.send(Order::Stall {
                    subscriber: fault.target,
                });
                // 300 messages of 40 KB: more than the kernel's buffers and
                // the node's queue hold for a subscriber that does not read.
                let burst = workload::publisher(
                    shared.clone(),
                    burst_publisher,
                    room,
                    2000.0,
                    Some(300),
                    40_000,
                    u64::from(burst_publisher),
                )
                .await;
                // The queue overflowed during the burst; the node waits 5 s
                // for its 4000 to be read: read again well inside that.
                tokio::time::sleep(Duration::from_millis(fault.ms)).await;
                let _ = shared.orders.send(Order::Unstall {
                    subscriber: fault.target,
                });
                acked = burst.acked;
                if !burst.refused.is_empty() || burst.unfinished {
                    anyhow::bail!("the burst did not finish: {:?}", burst.refused.first());
                }
            }
            FaultKind::PartitionRedis | FaultKind::PartitionClients => {
                let network = cluster
                    .network
                    .as_ref()
                    .context("partitions need the nodes in namespaces")?;
                // Held so that the node is not restarted meanwhile.
                let _node = cluster.nodes[fault.target].lock().await;
                let cut = if fault.kind == FaultKind::PartitionRedis {
                    Cut::Redis {
                        port: cluster.redis_port,
                    }
                } else {
                    Cut::Clients {
                        port: cluster.node_ports[fault.target],
                    }
                };
                network.partition(fault.target, cut, true)?;
                tokio::time::sleep(Duration::from_millis(fault.ms)).await;
                network.partition(fault.target, cut, false)?;
            }
        }
        Ok(())
    }
    .await;
    Inflicted {
        fault,
        started,
        ended: shared.now(),
        data_loss,
        trouble: outcome.err().map(|error| format!("{error:#}")),
        acked,
    }
}
