//! Server memory per idle WebSocket connection: the node's resident set
//! (from /proc) before and after opening many connections that each
//! subscribe to a room and then stay quiet.

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use crate::wire;

#[derive(clap::Args)]
pub struct Options {
    /// WebSocket URL of the node
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    url: String,
    /// Process id of the node (its memory is read from /proc)
    #[arg(long)]
    pid: u32,
    /// Idle connections to open
    #[arg(long, default_value_t = 5000)]
    connections: usize,
    /// Distinct rooms the connections subscribe to
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Print one JSON line instead of the summary
    #[arg(long)]
    json: bool,
}

/// Resident set size of a process, in bytes.
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("read /proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")?;
    Ok(kib * 1024)
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    // Warm the node up (runtime, first allocations) before the baseline.
    let mut warm = Vec::new();
    for room in 0..options.rooms.min(10) {
        let mut socket = wire::connect(&options.url).await?;
        wire::subscribe(&mut socket, &format!("idle-{room}")).await?;
        warm.push(socket);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = resident_bytes(options.pid)?;
    let mut sockets = Vec::with_capacity(options.connections);
    for index in 0..options.connections {
        let mut socket = wire::connect(&options.url).await?;
        wire::subscribe(&mut socket, &format!("idle-{}", index % options.rooms.max(1))).await?;
        sockets.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = resident_bytes(options.pid)?;
    let per_connection = after.saturating_sub(before) / options.connections.max(1) as u64;
    if options.json {
        println!(
            "{}",
            json!({"scenario": "idle", "connections": options.connections, "rss_before": before, "rss_after": after, "bytes_per_connection": per_connection})
        );
    } else {
        println!(
            "idle: {} connections, node RSS {:.1} MiB -> {:.1} MiB, {:.2} KiB per connection (user space; the kernel adds its socket buffers)",
            options.connections,
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            per_connection as f64 / 1024.0
        );
    }
    drop(sockets);
    drop(warm);
    Ok(())
}
