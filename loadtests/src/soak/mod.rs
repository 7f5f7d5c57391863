//! `relay-load soak`: Redis and three nodes on loopback, a steady chat
//! workload, and a seeded schedule of faults on top of it; then an
//! independent check of what every client was told against what Redis
//! holds (see `checker`). Exits 1 unless, with a persistent Redis, nothing
//! was lost, doubled or reordered and no loss was even told; or, without
//! persistence, every loss was told and has a data loss behind it.

mod checker;
mod cluster;
mod faults;
mod network;
mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use checker::{Evidence, Findings, StoredEntry, StreamId, Window};
use cluster::{Cluster, Persistence, RedisKind, Store};
use faults::{FaultKind, Inflicted};
use workload::Shared;

use crate::systems::Locations;

#[derive(clap::Args)]
pub struct Options {
    /// How long the workload and the faults run
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the fault schedule and of the clients' choices [default: from the clock]
    #[arg(long)]
    seed: Option<u64>,
    /// What Redis keeps across its restarts
    #[arg(long, value_enum, default_value = "always")]
    persistence: Persistence,
    /// One Redis, or a Redis Cluster (3 primaries, 3 replicas)
    #[arg(long, value_enum, default_value = "single")]
    redis: RedisKind,
    /// The kinds of fault to inflict [default: every kind the Redis allows:
    /// on one Redis all but kill-primary and migrate-slot; on a cluster no
    /// partitions and no restart-redis]
    #[arg(long, value_delimiter = ',', value_enum)]
    faults: Option<Vec<FaultKind>>,
    #[arg(long, default_value_t = 8)]
    rooms: usize,
    #[arg(long, default_value_t = 2)]
    publishers_per_room: usize,
    #[arg(long, default_value_t = 4)]
    subscribers_per_room: usize,
    /// Publishes a second per publisher
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Subscribers resume without `since` (a broken client): the checker
    /// must report the loss
    #[arg(long)]
    broken_resume: bool,
    /// The nodes' RELAY_REDIS_MIN_REPLICAS_ACKED: with 1 or more, no acked
    /// message may be lost, even by a failover
    #[arg(long, default_value_t = 0)]
    min_replicas_acked: u32,
    /// Folder for the nodes' and Redis's logs and soak.json
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    #[command(flatten)]
    locations: Locations,
}

const NODES: usize = 3;

#[derive(Serialize)]
struct Report {
    seed: u64,
    seconds: u64,
    persistence: Persistence,
    redis: RedisKind,
    broken_resume: bool,
    min_replicas_acked: u32,
    rooms: usize,
    publishers: usize,
    subscribers: usize,
    acked_per_second: f64,
    fault_counts: BTreeMap<String, usize>,
    /// Close codes subscribers received (`none`: the connection just ended).
    closes: BTreeMap<String, u64>,
    refused_publishes: Vec<String>,
    unfinished_publishers: usize,
    fault_trouble: Vec<String>,
    findings: Findings,
    faults: Vec<Inflicted>,
    passed: bool,
}

/// Runs the soak. Ctrl-C or SIGTERM ends it early: Redis and the nodes are
/// stopped and the namespaces removed, as at a normal end.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = soak(options) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("soak: interrupted; stopped Redis and the nodes"),
        _ = terminate.recv() => anyhow::bail!("soak: terminated; stopped Redis and the nodes"),
    }
}

async fn soak(options: Options) -> anyhow::Result<()> {
    let seed = options.seed.unwrap_or_else(|| {
        u64::try_from(
            std::time::SystemTime::UNIX_EPOCH
                .elapsed()
                .map_or(0, |elapsed| elapsed.as_nanos() % 1_000_000_007),
        )
        .unwrap_or(1)
    });
    println!("soak: seed {seed} (replay with --seed {seed})");
    let work = options.out.join(format!("soak-{seed}"));
    let _ = std::fs::remove_dir_all(&work);
    let kinds: Vec<FaultKind> = match (&options.faults, options.redis) {
        (Some(kinds), _) => kinds.clone(),
        (None, RedisKind::Single) => faults::ALL.to_vec(),
        (None, RedisKind::Cluster) => faults::CLUSTER.to_vec(),
    };
    for kind in &kinds {
        match options.redis {
            RedisKind::Single if kind.cluster_only() => {
                anyhow::bail!("--faults {} needs --redis cluster", kind.name())
            }
            RedisKind::Cluster if !kind.on_cluster() => {
                anyhow::bail!(
                    "--faults {} runs on one Redis only (drop it, or use --redis single)",
                    kind.name()
                )
            }
            _ => {}
        }
    }
    let network = if kinds.iter().any(|kind| kind.partitions()) {
        Some(network::Namespaces::create(NODES)?)
    } else {
        None
    };
    let cluster = Arc::new(
        Cluster::start(
            options.locations.relay_binary()?,
            options.locations.redis_server.clone(),
            &work,
            Store {
                persistence: options.persistence,
                kind: options.redis,
                replicas_acked: options.min_replicas_acked,
            },
            NODES,
            network,
        )
        .await?,
    );
    println!(
        "soak: clients start at {} (offsets below count from it)",
        chrono::Utc::now().format("%H:%M:%S%.3f UTC")
    );
    let (stop_publishing_tx, stop_publishing) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let (orders, _) = broadcast::channel(256);
    let shared = Arc::new(Shared {
        nodes: cluster.node_addresses.clone(),
        started: Instant::now(),
        orders,
        stop_publishing,
        stop,
        broken_resume: options.broken_resume,
        acked: AtomicU64::new(0),
    });
    let subscribers = options.rooms * options.subscribers_per_room;
    let seconds = options.seconds as f64;
    let mut plan = faults::plan(seed, seconds, &kinds, NODES, subscribers);
    // A slot move's target is drawn wide; it names a room of this run.
    for fault in &mut plan {
        if fault.kind == faults::FaultKind::MigrateSlot {
            fault.target %= options.rooms.max(1);
        }
    }
    for fault in &plan {
        println!("soak: at {:>6.1} s: {}", fault.at, fault.label());
    }

    // Subscriber i reads room i % rooms, from its first message.
    let mut progress = Vec::new();
    let mut subscriber_tasks = Vec::new();
    for index in 0..subscribers {
        let room = index % options.rooms;
        let mark = Arc::new(Mutex::new(StreamId::default()));
        progress.push((room, mark.clone()));
        subscriber_tasks.push(tokio::spawn(workload::subscriber(
            shared.clone(),
            index,
            room,
            seed ^ (index as u64 + 1) << 20,
            mark,
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut publisher_tasks = Vec::new();
    for room in 0..options.rooms {
        for slot in 0..options.publishers_per_room {
            let publisher = u32::try_from(room * options.publishers_per_room + slot)?;
            publisher_tasks.push(tokio::spawn(workload::publisher(
                shared.clone(),
                publisher,
                room,
                options.rate,
                None,
                0,
                seed ^ u64::from(publisher + 1) << 40,
            )));
        }
    }
    let fault_tasks: Vec<_> = plan
        .into_iter()
        .enumerate()
        .map(|(index, fault)| {
            let room = fault.target % options.rooms;
            let burst_publisher = 1000 + u32::try_from(index).unwrap_or(0);
            tokio::spawn(faults::inflict(
                cluster.clone(),
                shared.clone(),
                fault,
                burst_publisher,
                room,
            ))
        })
        .collect();

    let end = tokio::time::Instant::from(shared.started + Duration::from_secs(options.seconds));
    let mut minute = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(60),
        Duration::from_secs(60),
    );
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(end) => break,
            _ = minute.tick() => println!(
                "soak: {:.0} s: {} acked",
                shared.now(),
                shared.acked.load(Ordering::Relaxed)
            ),
        }
    }
    let _ = stop_publishing_tx.send(true);
    let mut inflicted = Vec::new();
    for task in fault_tasks {
        inflicted.push(task.await?);
    }
    let mut published = Vec::new();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    for task in publisher_tasks {
        let task = tokio::time::timeout_at(give_up, task);
        if let Ok(result) = task.await {
            published.push(result?);
        } else {
            // Past the bound: stop everyone; the checker counts what is missing.
            let _ = stop_tx.send(true);
        }
    }
    quiesce(&cluster, &progress, options.rooms).await?;
    let _ = stop_tx.send(true);
    let mut logs = Vec::new();
    for task in subscriber_tasks {
        logs.push(task.await?);
    }
    let finished_at = shared.now();

    let urls = cluster.redis_urls();
    let rooms = options.rooms;
    let histories = tokio::task::spawn_blocking(move || read_histories(&urls, rooms)).await??;
    let mut acked: Vec<_> = published
        .iter()
        .flat_map(|published| published.acked.iter().cloned())
        .collect();
    acked.extend(inflicted.iter().flat_map(|fault| fault.acked.iter().cloned()));
    let windows: Vec<Window> = inflicted
        .iter()
        .map(|fault| Window {
            label: format!("{:.1} s: {}", fault.started, fault.fault.label()),
            start: fault.started,
            // A fault explains what clients notice up to 5 s after it ends.
            end: fault.ended + 5.0,
        })
        .collect();
    let data_losses: Vec<f64> = inflicted
        .iter()
        .flat_map(|fault| fault.data_losses.iter().copied())
        .collect();
    let findings = checker::check(&Evidence {
        histories: &histories,
        acked: &acked,
        subscribers: &logs,
        data_losses: &data_losses,
        windows: &windows,
    });

    let mut fault_counts = BTreeMap::new();
    for fault in &inflicted {
        *fault_counts
            .entry(
                serde_json::to_value(fault.fault.kind)?
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            )
            .or_insert(0) += 1;
    }
    let mut closes = BTreeMap::new();
    for log in &logs {
        for (_, seen) in &log.events {
            if let checker::Seen::Closed { code } = seen {
                *closes
                    .entry(code.map_or("none".to_owned(), |code| code.to_string()))
                    .or_insert(0) += 1;
            }
        }
    }
    let refused_publishes: Vec<String> = published
        .iter()
        .flat_map(|published| published.refused.clone())
        .collect();
    let unfinished_publishers = published.iter().filter(|published| published.unfinished).count()
        + (options.rooms * options.publishers_per_room - published.len());
    let fault_trouble: Vec<String> = inflicted
        .iter()
        .filter_map(|fault| {
            fault
                .trouble
                .as_ref()
                .map(|trouble| format!("{}: {trouble}", fault.fault.label()))
        })
        .collect();
    // A cluster's failovers may lose acked writes (Redis replicates
    // asynchronously): there too, every loss must be told and explained.
    // With replicas confirming every acked write, a failover loses none.
    let sound = match (options.persistence, options.redis) {
        (Persistence::Always, RedisKind::Single) => findings.totals.is_clean(),
        _ if options.min_replicas_acked > 0 => {
            findings.totals.every_loss_surfaced() && findings.totals.acked_missing == 0
        }
        _ => findings.totals.every_loss_surfaced(),
    };
    let passed = sound
        && findings.acked > 0
        && refused_publishes.is_empty()
        && unfinished_publishers == 0
        && fault_trouble.is_empty();
    let report = Report {
        seed,
        seconds: options.seconds,
        persistence: options.persistence,
        redis: options.redis,
        broken_resume: options.broken_resume,
        min_replicas_acked: options.min_replicas_acked,
        rooms: options.rooms,
        publishers: options.rooms * options.publishers_per_room,
        subscribers,
        acked_per_second: findings.acked as f64 / finished_at,
        fault_counts,
        closes,
        refused_publishes,
        unfinished_publishers,
        fault_trouble,
        findings,
        faults: inflicted,
        passed,
    };
    print_report(&report);
    std::fs::create_dir_all(&options.out)?;
    let path = options.out.join("soak.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("soak: report in {}, logs in {}", path.display(), work.display());
    if !passed {
        anyhow::bail!("the soak found faults in the relay (or could not run them); seed {seed}");
    }
    Ok(())
}

/// Waits (at most 30 s) until every subscriber has received its room's
/// newest message.
async fn quiesce(cluster: &Cluster, progress: &[(usize, Arc<Mutex<StreamId>>)], rooms: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let urls = cluster.redis_urls();
    while tokio::time::Instant::now() < deadline {
        let urls = urls.clone();
        let newest = tokio::task::spawn_blocking(move || newest_ids(&urls, rooms)).await?;
        if let Ok(newest) = newest
            && progress
                .iter()
                .all(|(room, mark)| *mark.lock().expect("progress lock") >= newest[*room])
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("soak: not every subscriber caught up within 30 s of the end");
    Ok(())
}

fn stream_key(room: usize) -> String {
    format!("relay:{{{}}}:s", workload::room_name(room))
}

/// A connection to the one Redis, or to the cluster through redis-rs's
/// cluster client (which follows `MOVED`): the checker reads the store
/// with no code of the relay's.
fn connect_redis(urls: &[String]) -> anyhow::Result<Box<dyn redis::ConnectionLike>> {
    if let [url] = urls {
        let connection = redis::Client::open(url.as_str())?.get_connection_with_timeout(Duration::from_secs(2))?;
        // A cluster of one node is not a soak deployment.
        return Ok(Box::new(connection));
    }
    let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(Duration::from_secs(2))
        .build()?;
    Ok(Box::new(client.get_connection()?))
}

fn newest_ids(urls: &[String], rooms: usize) -> anyhow::Result<Vec<StreamId>> {
    let mut connection = connect_redis(urls)?;
    (0..rooms)
        .map(|room| {
            let reply: redis::Value = redis::cmd("XREVRANGE")
                .arg(stream_key(room))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query(connection.as_mut())?;
            Ok(parse_entries(&reply)?
                .first()
                .map_or_else(StreamId::default, |entry| entry.id))
        })
        .collect()
}

/// Every room's stream, read with `XRANGE` page by page.
fn read_histories(urls: &[String], rooms: usize) -> anyhow::Result<Vec<Vec<StoredEntry>>> {
    let mut connection = connect_redis(urls)?;
    let mut histories = Vec::new();
    for room in 0..rooms {
        let mut entries: Vec<StoredEntry> = Vec::new();
        loop {
            let start = entries.last().map_or("-".to_owned(), |entry| format!("({}", entry.id));
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(stream_key(room))
                .arg(start)
                .arg("+")
                .arg("COUNT")
                .arg(10_000)
                .query(connection.as_mut())?;
            let page = parse_entries(&reply)?;
            if page.is_empty() {
                break;
            }
            entries.extend(page);
        }
        histories.push(entries);
    }
    Ok(histories)
}

/// Stream entries from a raw `XRANGE` reply: `[[id, [field, value, ...]], ...]`,
/// with the message frame's tail in field `t`.
fn parse_entries(reply: &redis::Value) -> anyhow::Result<Vec<StoredEntry>> {
    let text = |value: &redis::Value| match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    let redis::Value::Array(entries) = reply else {
        anyhow::bail!("XRANGE answered {reply:?}");
    };
    entries
        .iter()
        .map(|entry| {
            let redis::Value::Array(parts) = entry else {
                anyhow::bail!("a stream entry is {entry:?}");
            };
            let id = parts.first().and_then(text).and_then(|id| StreamId::parse(&id));
            let Some(id) = id else {
                anyhow::bail!("a stream entry without an id: {entry:?}");
            };
            let fields = match parts.get(1) {
                Some(redis::Value::Array(fields)) => fields.as_slice(),
                _ => &[],
            };
            let tail = fields
                .chunks(2)
                .find(|pair| pair.first().and_then(text).as_deref() == Some("t"))
                .and_then(|pair| pair.get(1).and_then(text));
            Ok(StoredEntry {
                id,
                cmid: tail.as_deref().and_then(checker::cmid_of_tail),
            })
        })
        .collect()
}

fn print_report(report: &Report) {
    let findings = &report.findings;
    println!(
        "soak: {} s, seed {}, Redis persistence {:?}{}: {} faults {:?}",
        report.seconds,
        report.seed,
        report.persistence,
        if report.broken_resume {
            ", BROKEN resume (no since)"
        } else {
            ""
        },
        report.faults.len(),
        report.fault_counts
    );
    println!(
        "soak: {} acked ({:.0}/s), {} stored, {} delivered to {} subscribers; closes seen {:?}",
        findings.acked, report.acked_per_second, findings.stored, findings.delivered, report.subscribers, report.closes
    );
    println!("soak: findings: {}", findings.totals);
    for window in &findings.windows {
        if !window.counts.is_clean() {
            println!("soak:   in window {}: {}", window.window.label, window.counts);
        }
    }
    if !findings.outside_windows.is_clean() {
        println!("soak:   outside every fault window: {}", findings.outside_windows);
    }
    for example in &findings.examples {
        println!("soak:   {example}");
    }
    for trouble in &report.fault_trouble {
        println!("soak: a fault misbehaved: {trouble}");
    }
    for refused in report.refused_publishes.iter().take(5) {
        println!("soak: a publish was refused: {refused}");
    }
    println!("soak: {}", if report.passed { "PASSED" } else { "FAILED" });
}
