//! The soak's faults: a schedule drawn from a seed (so a run can be
//! replayed: the same seed gives the same faults at the same offsets), and
//! how each one is inflicted on the deployment.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::cluster::{Cluster, Persistence, RedisKind, redis_cli};
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
    /// (`--redis cluster`) `kill -9` of a primary; its replica takes over,
    /// and 1-4 s later the old primary restarts and rejoins as a replica.
    /// Redis replicates asynchronously, so acked writes may be lost: each
    /// loss must be told.
    KillPrimary,
    /// (`--redis cluster`) The slot of a busy room moved to another primary
    /// under traffic (`SETSLOT` + `MIGRATE`): nothing may be lost.
    MigrateSlot,
}

impl FaultKind {
    /// Whether it needs the nodes in network namespaces.
    pub fn partitions(self) -> bool {
        matches!(self, FaultKind::PartitionRedis | FaultKind::PartitionClients)
    }

    /// Its name in `--faults`.
    pub fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map_or_else(|| format!("{self:?}"), |value| value.get_name().to_owned())
    }

    /// Whether it acts on a Redis Cluster only.
    pub fn cluster_only(self) -> bool {
        matches!(self, FaultKind::KillPrimary | FaultKind::MigrateSlot)
    }

    /// Whether it can run on a Redis Cluster (the nodes reach the cluster
    /// on loopback, so not in namespaces; a whole-Redis restart has no
    /// meaning there: `kill-primary` is its cluster form).
    pub fn on_cluster(self) -> bool {
        !self.partitions() && self != FaultKind::RestartRedis
    }
}

/// The default faults on a Redis Cluster.
pub const CLUSTER: &[FaultKind] = &[
    FaultKind::KillNode,
    FaultKind::DrainNode,
    FaultKind::KillPubsub,
    FaultKind::FreezeRedis,
    FaultKind::Storm,
    FaultKind::StallSubscriber,
    FaultKind::KillPrimary,
    FaultKind::MigrateSlot,
];

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
            FaultKind::KillPrimary => format!("kill -9 primary {} ({} ms down)", self.target, self.ms),
            FaultKind::MigrateSlot => format!("slot of room {} migrated", self.target),
        }
    }
}

/// The schedule: from 3 s after the start until 5 s before the end, a fault
/// every 1.5-5 s, the kinds in rounds of a shuffled order (so each kind
/// comes up once in every round).
///
/// Faults overlap, but a fault on a node goes to one that no other fault
/// holds at that moment (see [`Targets`]), so that each does what it is
/// for when the schedule says, instead of queueing behind another.
pub fn plan(seed: u64, seconds: f64, kinds: &[FaultKind], nodes: usize, subscribers: usize) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut targets = Targets::new(nodes);
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
            // The primary's rank by port, and its down time.
            FaultKind::KillPrimary => (rng.usize(..3), rng.u64(1000..4000)),
            // The room whose slot moves (taken modulo the rooms).
            FaultKind::MigrateSlot => (rng.usize(..1000), 0),
        };
        let (target, starts) = targets.take(kind, target, at, ms);
        // Unless waiting for its node pushed it past the end.
        if starts < seconds - 5.0 {
            planned.push(Planned {
                at: starts,
                kind,
                target,
                ms,
            });
        }
        at += 1.5 + rng.f64() * 3.5;
    }
    planned.sort_by(|a, b| a.at.total_cmp(&b.at));
    planned
}

/// Which node each fault on a node goes to. A node is taken from a fault's
/// start until its expected end (a kill's down time plus a restart, a
/// drain's window plus a restart, a partition's length). A drain also
/// skips a node whose clients were cut off in the last 20 s: they moved to
/// the other nodes, so it would have nobody to close with 1012. The drawn
/// node is kept when it is free, else the next free one; when none is, the
/// one that frees first, and the fault starts then.
struct Targets {
    taken_until: Vec<f64>,
    clients_back: Vec<f64>,
}

impl Targets {
    /// Seconds a restarted node takes to listen again (a margin).
    const RESTART: f64 = 1.5;
    /// Seconds until a node cut from its clients has clients again.
    const CLIENTS_RETURN: f64 = 20.0;

    fn new(nodes: usize) -> Targets {
        Targets {
            taken_until: vec![f64::NEG_INFINITY; nodes],
            clients_back: vec![f64::NEG_INFINITY; nodes],
        }
    }

    #[allow(clippy::cast_precision_loss, reason = "fault lengths are a few thousand ms")]
    fn take(&mut self, kind: FaultKind, drawn: usize, at: f64, ms: u64) -> (usize, f64) {
        let seconds = ms as f64 / 1000.0;
        let length = match kind {
            FaultKind::KillNode => seconds + Self::RESTART,
            // The node's drain window (3 s in the soak) and a restart.
            FaultKind::DrainNode => 3.0 + Self::RESTART,
            FaultKind::PartitionRedis | FaultKind::PartitionClients => seconds,
            _ => return (drawn, at),
        };
        let nodes = self.taken_until.len();
        let free_at = |node: usize| {
            if kind == FaultKind::DrainNode {
                self.taken_until[node].max(self.clients_back[node])
            } else {
                self.taken_until[node]
            }
        };
        // The drawn node if it is free, else the next free one, else the
        // one that frees first (and the fault waits for it).
        let target = (0..nodes)
            .map(|step| (drawn + step) % nodes)
            .find(|&node| free_at(node) <= at)
            .unwrap_or_else(|| {
                (0..nodes)
                    .min_by(|&a, &b| free_at(a).total_cmp(&free_at(b)))
                    .expect("the soak has nodes")
            });
        let at = at.max(free_at(target));
        self.taken_until[target] = at + length;
        if kind == FaultKind::PartitionClients {
            self.clients_back[target] = at + seconds + Self::CLIENTS_RETURN;
        }
        (target, at)
    }
}

/// What inflicting a fault did, in seconds after the start.
#[derive(Debug, Clone, Serialize)]
pub struct Inflicted {
    pub fault: Planned,
    pub started: f64,
    pub ended: f64,
    /// When the store lost data: a restart without persistence, or a
    /// failover's two moments (the primary stopped, and it came back to
    /// serve writes it would drop before it learned it was demoted).
    pub data_losses: Vec<f64>,
    /// Anything that went wrong inflicting it (not a finding: the fault
    /// itself misbehaved).
    pub trouble: Option<String>,
    /// The burst's acks (a stall), for the checker.
    #[serde(skip)]
    pub acked: Vec<super::checker::Acked>,
}

/// The node a drain planned for `planned` should take: `planned` when it
/// holds clients now, else the free node (no fault acting on it) that
/// holds the most; `None` when no node answers. Asks each node's
/// `/metrics` for its open WebSockets.
async fn node_to_drain(cluster: &Cluster, planned: usize) -> Option<usize> {
    let mut counts = Vec::new();
    for (index, address) in cluster.node_addresses.iter().enumerate() {
        let free = index == planned || cluster.nodes[index].try_lock().is_ok();
        counts.push((index, if free { open_websockets(*address).await } else { None }));
    }
    if counts
        .get(planned)
        .and_then(|(_, count)| *count)
        .is_some_and(|count| count > 0)
    {
        return Some(planned);
    }
    counts
        .into_iter()
        .filter_map(|(index, count)| Some((index, count?)))
        .filter(|(_, count)| *count > 0)
        .max_by_key(|(_, count)| *count)
        .map(|(index, _)| index)
}

/// The node's `relay_connections{transport="ws"}`, if it answers.
async fn open_websockets(address: std::net::SocketAddr) -> Option<u64> {
    let metrics = tokio::time::timeout(Duration::from_secs(2), async {
        reqwest::get(format!("http://{address}/metrics")).await?.text().await
    })
    .await
    .ok()?
    .ok()?;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("relay_connections{transport=\"ws\"} "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value.max(0.0) as u64)
}

/// Waits for the fault's time and inflicts it. Faults on one target wait
/// for each other (each holds its target's lock while it acts).
pub async fn inflict(
    cluster: Arc<Cluster>,
    shared: Arc<Shared>,
    mut fault: Planned,
    burst_publisher: u32,
    room: usize,
) -> Inflicted {
    let start = shared.started + Duration::from_secs_f64(fault.at);
    tokio::time::sleep_until(start.into()).await;
    let started = shared.now();
    let mut data_losses = Vec::new();
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
                // A drain is for clients: when the planned node holds none
                // now (a storm or a partition moved them), drain one that
                // does and is not held by another fault.
                if let Some(instead) = node_to_drain(&cluster, fault.target).await
                    && instead != fault.target
                {
                    println!(
                        "soak: at {:6.1} s: node {} holds no clients; draining node {instead} instead",
                        fault.at, fault.target
                    );
                    fault.target = instead;
                }
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
                for url in cluster.redis_urls() {
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
            }
            FaultKind::FreezeRedis if cluster.redis_kind == RedisKind::Cluster => {
                // A primary frozen: past the node timeout its replica takes
                // over. Resumed, the old primary runs the writes waiting in
                // its sockets (and publishes them) before it learns it was
                // demoted and drops its data: the loss happens at the
                // resume, and acked writes not yet replicated go with it.
                let _redis = cluster.redis.lock().await;
                let primaries = cluster.primaries().await;
                let (port, _, _) = primaries.first().context("the cluster has no primary")?;
                let index = cluster
                    .cluster_ports
                    .iter()
                    .position(|known| known == port)
                    .context("unknown primary")?;
                let server = cluster.cluster_servers[index].lock().await;
                let process = server.as_ref().context("the primary is not running")?;
                process.signal(libc::SIGSTOP);
                data_losses.push(shared.now());
                tokio::time::sleep(Duration::from_millis(fault.ms)).await;
                process.signal(libc::SIGCONT);
                data_losses.push(shared.now());
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
                    data_losses.push(shared.now());
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
            FaultKind::KillPrimary => {
                let _redis = cluster.redis.lock().await;
                let primaries = cluster.primaries().await;
                let (port, _, ranges) = primaries
                    .get(fault.target % primaries.len().max(1))
                    .cloned()
                    .context("the cluster has no primary")?;
                let index = cluster
                    .cluster_ports
                    .iter()
                    .position(|&known| known == port)
                    .context("unknown primary")?;
                let mut server = cluster.cluster_servers[index].lock().await;
                if let Some(mut process) = server.take() {
                    process.kill();
                }
                data_losses.push(shared.now());
                // Wait (at most 20 s) for a replica to serve its slots.
                let slot = ranges.first().map_or(0, |&(start, _)| start);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while cluster.primary_of_slot(slot).await.is_none_or(|owner| owner == port) {
                    anyhow::ensure!(
                        tokio::time::Instant::now() < deadline,
                        "no replica took over from {port}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(fault.ms)).await;
                *server = Some(cluster.start_cluster_node(index).await?);
                // Restarted, it serves its old slots to clients whose map
                // is stale until it hears of the new epoch.
                data_losses.push(shared.now());
            }
            FaultKind::MigrateSlot => {
                let _redis = cluster.redis.lock().await;
                let room_name = workload::room_name(fault.target);
                let slot: u16 =
                    super::cluster::redis_cli(cluster.redis_port_alive().await?, &["CLUSTER", "KEYSLOT", &room_name])
                        .await
                        .trim()
                        .parse()
                        .context("CLUSTER KEYSLOT")?;
                // A resharding tool moves slots of a settled cluster: wait
                // (at most 20 s) for a failover that an earlier fault set
                // off to end, so that the slot has a primary to move from.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                let (from, to) = loop {
                    let primaries = cluster.primaries().await;
                    let from = primaries
                        .iter()
                        .find(|(_, _, ranges)| ranges.iter().any(|&(start, end)| (start..=end).contains(&slot)));
                    let to = from.and_then(|from| primaries.iter().find(|(port, _, _)| *port != from.0));
                    if let (Some(from), Some(to)) = (from, to)
                        && cluster.settled().await
                    {
                        break (from.clone(), to.clone());
                    }
                    anyhow::ensure!(
                        tokio::time::Instant::now() < deadline,
                        "for 20 s no settled primary served the room's slot {slot} with another primary to move it to"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                migrate_slot(slot, &from, &to, &cluster.cluster_ports).await?;
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
        data_losses,
        trouble: outcome.err().map(|error| format!("{error:#}")),
        acked,
    }
}

/// Moves `slot` from one primary to another as an operator resharding
/// does: `SETSLOT IMPORTING` and `MIGRATING`, `MIGRATE` of its keys until
/// none is left, then `SETSLOT NODE` on the destination, the source and
/// the other nodes.
async fn migrate_slot(
    slot: u16,
    from: &(u16, String, Vec<(u16, u16)>),
    to: &(u16, String, Vec<(u16, u16)>),
    ports: &[u16],
) -> anyhow::Result<()> {
    let slot = slot.to_string();
    let ok = |answer: String, what: &str| {
        anyhow::ensure!(matches!(answer.trim(), "OK" | "NOKEY"), "{what}: {}", answer.trim());
        Ok(())
    };
    ok(
        redis_cli(to.0, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from.1]).await,
        "SETSLOT IMPORTING",
    )?;
    ok(
        redis_cli(from.0, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to.1]).await,
        "SETSLOT MIGRATING",
    )?;
    loop {
        let keys = redis_cli(from.0, &["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]).await;
        let keys: Vec<&str> = keys.lines().filter(|key| !key.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let port = to.0.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
        args.extend(keys);
        ok(redis_cli(from.0, &args).await, "MIGRATE")?;
    }
    ok(
        redis_cli(to.0, &["CLUSTER", "SETSLOT", &slot, "NODE", &to.1]).await,
        "SETSLOT NODE (destination)",
    )?;
    ok(
        redis_cli(from.0, &["CLUSTER", "SETSLOT", &slot, "NODE", &to.1]).await,
        "SETSLOT NODE (source)",
    )?;
    for &port in ports {
        if port != from.0 && port != to.0 {
            let _ = redis_cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to.1]).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When each node fault holds its node, per the planner's own margins.
    fn held(fault: &Planned) -> Option<(f64, f64)> {
        #[allow(clippy::cast_precision_loss, reason = "a few thousand ms")]
        let seconds = fault.ms as f64 / 1000.0;
        match fault.kind {
            FaultKind::KillNode => Some((fault.at, fault.at + seconds + 1.5)),
            FaultKind::DrainNode => Some((fault.at, fault.at + 4.5)),
            FaultKind::PartitionRedis | FaultKind::PartitionClients => Some((fault.at, fault.at + seconds)),
            _ => None,
        }
    }

    #[test]
    fn node_faults_never_queue_behind_each_other_and_drains_find_clients() {
        for seed in 0..300 {
            let plan = plan(seed, 60.0, ALL, 3, 32);
            for (index, fault) in plan.iter().enumerate() {
                let Some((start, _)) = held(fault) else { continue };
                for earlier in &plan[..index] {
                    let Some((_, end)) = held(earlier) else { continue };
                    if earlier.target != fault.target {
                        continue;
                    }
                    assert!(
                        end <= start,
                        "seed {seed}: {fault:?} starts while {earlier:?} holds its node"
                    );
                    if fault.kind == FaultKind::DrainNode && earlier.kind == FaultKind::PartitionClients {
                        assert!(
                            end + 20.0 <= start,
                            "seed {seed}: {fault:?} drains a node whose clients left at {end}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let first = plan(521_597_520, 60.0, ALL, 3, 32);
        let second = plan(521_597_520, 60.0, ALL, 3, 32);
        assert_eq!(format!("{first:?}"), format!("{second:?}"));
        // This seed once drained node 1 just after its clients were cut
        // off, and the drain found nobody to close with 1012.
        let drain = first.iter().find(|fault| fault.kind == FaultKind::DrainNode).unwrap();
        let cut = first
            .iter()
            .find(|fault| fault.kind == FaultKind::PartitionClients && fault.at < drain.at)
            .unwrap();
        assert_ne!(drain.target, cut.target, "{first:?}");
    }
}
