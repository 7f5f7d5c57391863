//! Acked publishes per second through one node.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::wire;

#[derive(clap::Args)]
pub struct Options {
    /// WebSocket URL of the node
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    url: String,
    /// Publisher connections
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Publishes in all
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Outstanding (unacked) publishes per connection
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Rooms the publishes are spread over
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Body size in bytes
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Print one JSON line instead of the summary
    #[arg(long)]
    json: bool,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let per_connection = options.messages / options.connections.max(1);
    let body = "x".repeat(options.body_bytes);
    let mut sockets = Vec::new();
    for _ in 0..options.connections {
        sockets.push(wire::connect(&options.url).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, mut socket) in sockets.into_iter().enumerate() {
        let body = body.clone();
        let room = format!("bench-{}", index % options.rooms.max(1));
        let window = options.window.max(1);
        tasks.push(tokio::spawn(async move {
            let (mut sent, mut acked, mut refused) = (0usize, 0usize, 0usize);
            while acked + refused < per_connection {
                while sent < per_connection && sent - acked - refused < window {
                    // Built by hand: the generator should cost as little as
                    // redis-benchmark does on the other side of the ratio.
                    let frame = format!(r#"{{"type":"publish","room":"{room}","req":{sent},"body":"{body}"}}"#);
                    wire::send_text(&mut socket, frame).await?;
                    sent += 1;
                }
                let reply = wire::next_text(&mut socket).await?;
                if reply.starts_with(r#"{"type":"ack""#) {
                    acked += 1;
                } else if reply.starts_with(r#"{"type":"error""#) {
                    refused += 1;
                }
            }
            anyhow::Ok((acked, refused))
        }));
    }
    let (mut acked, mut refused) = (0, 0);
    for task in tasks {
        let (task_acked, task_refused) = task.await??;
        acked += task_acked;
        refused += task_refused;
    }
    let elapsed = started.elapsed();
    report(&options, acked, refused, elapsed);
    Ok(())
}

fn report(options: &Options, acked: usize, refused: usize, elapsed: Duration) {
    #[allow(clippy::cast_precision_loss, reason = "a rate for a report")]
    let rate = acked as f64 / elapsed.as_secs_f64();
    if options.json {
        println!(
            "{}",
            json!({"scenario": "throughput", "acked": acked, "refused": refused, "seconds": elapsed.as_secs_f64(), "publishes_per_second": rate, "connections": options.connections, "window": options.window})
        );
    } else {
        println!(
            "throughput: {acked} publishes acked ({refused} refused) in {:.2} s = {rate:.0}/s over {} connections",
            elapsed.as_secs_f64(),
            options.connections
        );
    }
}
