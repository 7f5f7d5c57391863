//! Publish-to-delivery latency across nodes, with an exhaustive order check.

use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::wire;

#[derive(clap::Args)]
pub struct Options {
    /// Node the publisher uses
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    publish_url: String,
    /// Node the subscribers use
    #[arg(long, default_value = "ws://127.0.0.1:8081/v1/ws")]
    subscribe_url: String,
    /// Subscribers
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Messages to publish
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Publishes per second
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Print one JSON line instead of the summary
    #[arg(long)]
    json: bool,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let room = format!("latency-{}", std::process::id());
    let epoch = Instant::now();
    let mut readers = Vec::new();
    for _ in 0..options.subscribers {
        let mut socket = wire::connect(&options.subscribe_url).await?;
        wire::subscribe(&mut socket, &room).await?;
        let expected = options.messages;
        readers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut next = 0u64;
            let mut previous_id = None::<String>;
            while next < expected as u64 {
                let frame = wire::next_json(&mut socket).await?;
                if frame["type"] != "message" {
                    continue;
                }
                let n = frame["body"]["n"].as_u64().unwrap_or(u64::MAX);
                if n != next {
                    bail!("expected message {next}, got {n}: lost, doubled or out of order");
                }
                if let Some(previous) = &previous_id
                    && frame["prev"] != previous.as_str()
                {
                    bail!("prev chain broken at message {n}");
                }
                previous_id = frame["id"].as_str().map(str::to_owned);
                let sent_us = frame["body"]["t"].as_u64().unwrap_or(0);
                let now_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
                histogram.saturating_record(now_us.saturating_sub(sent_us).max(1));
                next += 1;
            }
            anyhow::Ok(histogram)
        }));
    }
    let publisher = wire::connect(&options.publish_url).await?;
    let (mut sink, mut acks) = futures_util::StreamExt::split(publisher);
    // Read the publisher's acks so its replies never back up.
    let drain = tokio::spawn(async move { while futures_util::StreamExt::next(&mut acks).await.is_some() {} });
    let interval = Duration::from_secs_f64(1.0 / options.rate.max(1) as f64);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for n in 0..options.messages {
        ticks.tick().await;
        let sent_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let frame = json!({"type": "publish", "room": room, "body": {"n": n, "t": sent_us}});
        futures_util::SinkExt::send(
            &mut sink,
            tokio_tungstenite::tungstenite::Message::text(frame.to_string()),
        )
        .await?;
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for reader in readers {
        total.add(reader.await??)?;
    }
    drain.abort();
    let elapsed = started.elapsed();
    let ms = |quantile: f64| total.value_at_quantile(quantile) as f64 / 1000.0;
    if options.json {
        println!(
            "{}",
            json!({"scenario": "latency", "deliveries": total.len(), "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "p999_ms": ms(0.999), "max_ms": total.max() as f64 / 1000.0, "seconds": elapsed.as_secs_f64(), "lost_or_doubled": 0})
        );
    } else {
        println!(
            "latency: {} deliveries, p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; every subscriber got every message once, in order",
            total.len(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            total.max() as f64 / 1000.0
        );
    }
    Ok(())
}
