//! `relay-load presence`: what presence costs per change, in a large room
//! and a small one, on a deployment it starts itself (Redis and two relay
//! nodes on loopback).
//!
//! Every member subscribes with `presence: true` (so every member is also a
//! watcher), half on each node. Then churners join and leave (subscribe
//! with presence, unsubscribe) at a steady rate for a while, and the run
//! reads Redis's `INFO commandstats` and `INFO cpu` and the nodes' CPU time
//! before and after, and over as long a window without churn just before
//! (what they spend anyway: health checks, refreshes, pings), which is
//! subtracted. Reported per change: script calls, every Redis command
//! (those the script runs included), Redis CPU and node CPU; per watcher:
//! presence frames a second and the shortest gap between two of its frames.
//! At the end one watcher's count is checked against what it should be.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::systems::{Deployment, Locations, SystemKind};
use crate::wire;

#[derive(clap::Args)]
pub struct Options {
    /// Room sizes to measure (members, all of them watchers)
    #[arg(long, value_delimiter = ',', default_value = "10000,100")]
    members: Vec<usize>,
    /// Joins plus leaves per second
    #[arg(long, default_value_t = 100)]
    churn: u32,
    /// Seconds of churn measured
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Print one JSON line per room size instead of the table
    #[arg(long)]
    json: bool,
    /// Folder for the servers' logs
    #[arg(long, default_value = "loadtests/results/presence")]
    out: std::path::PathBuf,
    #[command(flatten)]
    locations: Locations,
}

/// Frames counted by every watcher's reader.
#[derive(Default)]
struct FrameCounts {
    frames: AtomicU64,
    /// The shortest gap between two presence frames of one watcher, in µs.
    shortest_gap_us: AtomicU64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    if !options.json {
        println!(
            "| members (all watchers) | changes/s | script calls per change | Redis commands per change | Redis CPU per change (µs) | node CPU per change (µs) | node CPU per second (both nodes, s) | presence frames per watcher per second | shortest gap between a watcher's frames, as received (ms) |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    }
    for &members in &options.members {
        let row = measure(&options, members).await?;
        if options.json {
            println!("{row}");
        } else {
            println!(
                "| {} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.3} | {:.2} | {:.0} |",
                row["members"],
                row["changes_per_second"].as_f64().unwrap_or(0.0),
                row["script_calls_per_change"].as_f64().unwrap_or(0.0),
                row["redis_commands_per_change"].as_f64().unwrap_or(0.0),
                row["redis_cpu_us_per_change"].as_f64().unwrap_or(0.0),
                row["node_cpu_us_per_change"].as_f64().unwrap_or(0.0),
                row["node_cpu_seconds_per_second"].as_f64().unwrap_or(0.0),
                row["frames_per_watcher_per_second"].as_f64().unwrap_or(0.0),
                row["shortest_gap_ms"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

async fn measure(options: &Options, members: usize) -> anyhow::Result<Value> {
    let work = options.out.join(format!("members-{members}"));
    let deployment = Deployment::start(SystemKind::Relay, &options.locations, &work)?;
    let room = format!("presence-{members}");
    let urls: Vec<String> = deployment
        .endpoints
        .iter()
        .map(|endpoint| endpoint.ws_url("/v1/ws"))
        .collect();
    let counts = Arc::new(FrameCounts {
        frames: AtomicU64::new(0),
        shortest_gap_us: AtomicU64::new(u64::MAX),
    });
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let last_count = Arc::new(AtomicU64::new(0));
    eprintln!("presence: {members} members joining");
    let mut readers = Vec::new();
    for chunk in (0..members).collect::<Vec<_>>().chunks(200) {
        let joins = chunk.iter().map(|&n| {
            let url = format!("{}?user=member-{n:05}", urls[n % 2]);
            let room = room.clone();
            async move {
                let mut socket = wire::connect(&url).await?;
                wire::send(
                    &mut socket,
                    &json!({"type": "subscribe", "room": room, "presence": true}),
                )
                .await?;
                anyhow::Ok(socket)
            }
        });
        for socket in futures_util::future::try_join_all(joins).await? {
            let counts = counts.clone();
            let measuring = measuring.clone();
            let last_count = last_count.clone();
            readers.push(tokio::spawn(read_presence(socket, counts, measuring, last_count)));
        }
    }
    // Let the joins' batches pass before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let churners = usize::try_from(options.churn.max(2)).unwrap_or(100);
    let mut sinks = Vec::new();
    for n in 0..churners {
        let socket = wire::connect(&format!("{}?user=churner-{n:03}", urls[n % 2])).await?;
        let (sink, mut stream) = socket.split();
        tokio::spawn(async move { while stream.next().await.is_some() {} });
        sinks.push(sink);
    }
    // The same length of time without churn: what Redis and the nodes
    // spend anyway (health checks, refreshes, pings), subtracted below.
    let idle_redis = redis_stats(deployment.redis_port)?;
    let idle_node = deployment.nodes_cpu_seconds();
    tokio::time::sleep(Duration::from_secs(options.seconds) + Duration::from_millis(2500)).await;
    let redis_before = redis_stats(deployment.redis_port)?;
    let node_before = deployment.nodes_cpu_seconds();
    let idle_redis_cpu = redis_before.cpu_seconds - idle_redis.cpu_seconds;
    let idle_node_cpu = node_before - idle_node;
    let idle_commands = redis_before.commands - idle_redis.commands;
    measuring.store(true, Ordering::Release);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.churn.max(1))));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut joined = vec![false; churners];
    let mut changes = 0u64;
    let total = options.seconds * u64::from(options.churn);
    while changes < total {
        ticks.tick().await;
        let index = usize::try_from(changes).unwrap_or(0) % churners;
        let frame = if joined[index] {
            json!({"type": "unsubscribe", "room": room})
        } else {
            json!({"type": "subscribe", "room": room, "presence": true})
        };
        joined[index] = !joined[index];
        futures_util::SinkExt::send(&mut sinks[index], Message::text(frame.to_string())).await?;
        changes += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The last batch and its frames.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    measuring.store(false, Ordering::Release);
    let node_after = deployment.nodes_cpu_seconds();
    let redis_after = redis_stats(deployment.redis_port)?;
    // Kept for the record: where Redis's time went, command by command.
    std::fs::write(
        work.join("commandstats-after.txt"),
        redis_info(deployment.redis_port, "commandstats")?,
    )?;
    let expected = members + joined.iter().filter(|&&joined| joined).count();
    let seen = last_count.load(Ordering::Acquire);
    if seen != expected as u64 {
        bail!("a watcher's last count was {seen}, expected {expected}: presence lost a change");
    }
    for reader in &readers {
        reader.abort();
    }
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let per_change = |value: f64| value / changes as f64;
    let frames = counts.frames.load(Ordering::Acquire);
    #[allow(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let frames_per_watcher_per_second = frames as f64 / members as f64 / (elapsed + 2.5);
    let shortest_gap_us = counts.shortest_gap_us.load(Ordering::Acquire);
    #[allow(clippy::cast_precision_loss, reason = "microseconds far below 2^52")]
    let row = json!({
        "members": members,
        "changes": changes,
        "changes_per_second": changes as f64 / elapsed,
        "script_calls_per_change": per_change((redis_after.script_calls - redis_before.script_calls) as f64),
        "redis_commands_per_change": per_change((redis_after.commands - redis_before.commands).saturating_sub(idle_commands) as f64),
        "redis_cpu_us_per_change": per_change((redis_after.cpu_seconds - redis_before.cpu_seconds - idle_redis_cpu).max(0.0) * 1e6),
        "node_cpu_us_per_change": per_change((node_after - node_before - idle_node_cpu).max(0.0) * 1e6),
        "node_cpu_seconds_per_second": (node_after - node_before - idle_node_cpu).max(0.0) / (elapsed + 2.5),
        "idle_redis_cpu_seconds": idle_redis_cpu,
        "idle_node_cpu_seconds": idle_node_cpu,
        "frames_per_watcher_per_second": frames_per_watcher_per_second,
        "shortest_gap_ms": shortest_gap_us as f64 / 1000.0,
        "final_count": seen,
    });
    drop(sinks);
    drop(deployment);
    Ok(row)
}

/// Reads one watcher's frames; while measuring, counts presence frames and
/// the gaps between them; keeps the latest `count` it saw.
async fn read_presence(
    mut socket: wire::Socket,
    counts: Arc<FrameCounts>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
    last_count: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut previous: Option<Instant> = None;
    loop {
        let text = wire::next_text(&mut socket).await?;
        if !text.starts_with(r#"{"type":"presence""#) {
            continue;
        }
        let now = Instant::now();
        let frame: Value = serde_json::from_str(&text).context("presence frame is JSON")?;
        if let Some(count) = frame["count"].as_u64() {
            last_count.store(count, Ordering::Release);
        }
        if measuring.load(Ordering::Acquire) {
            counts.frames.fetch_add(1, Ordering::Relaxed);
            if let Some(previous) = previous {
                let gap = u64::try_from(now.duration_since(previous).as_micros()).unwrap_or(u64::MAX);
                counts.shortest_gap_us.fetch_min(gap, Ordering::Relaxed);
            }
            previous = Some(now);
        }
    }
}

struct RedisStats {
    script_calls: u64,
    commands: u64,
    cpu_seconds: f64,
}

/// `INFO commandstats` and `INFO cpu` over a plain RESP connection.
fn redis_stats(port: u16) -> anyhow::Result<RedisStats> {
    let info = redis_info(port, "commandstats")? + &redis_info(port, "cpu")?;
    let mut stats = RedisStats {
        script_calls: 0,
        commands: 0,
        cpu_seconds: 0.0,
    };
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let (name, fields) = rest.split_once(':').unwrap_or((rest, ""));
            if name == "info" {
                continue;
            }
            let calls: u64 = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))
                .and_then(|calls| calls.parse().ok())
                .unwrap_or(0);
            stats.commands += calls;
            if name == "evalsha" || name == "eval" {
                stats.script_calls += calls;
            }
        } else if let Some(value) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            stats.cpu_seconds += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    Ok(stats)
}

fn redis_info(port: u16, section: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).context("connect to Redis")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "INFO {section}\r\n")?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(header_end) = text.find("\r\n") {
            let length: usize = text[1..header_end].parse().context("INFO reply length")?;
            if reply.len() >= header_end + 2 + length {
                return Ok(text[header_end + 2..header_end + 2 + length].to_owned());
            }
        }
    }
    bail!("Redis closed the connection before answering INFO")
}
