//! Fan-out: one room, one publisher on node 1, subscribers spread over both
//! nodes. Latency, deliveries per second and node CPU per delivery.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::client::{Publisher, Resume, Subscriber, now_us, payload_json};
use crate::scenarios::{Outcome, Readers, connect_many, merge_reports, progress_bar, warm_up};
use crate::systems::Deployment;

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub subscribers: usize,
    pub messages: u32,
    pub rate: u32,
}

pub const QUICK: Size = Size {
    subscribers: 200,
    messages: 200,
    rate: 100,
};

/// 40,000 deliveries a second: a load every system here sustains on two
/// cores shared with the load generator, so latency measures delivery and
/// not a queue growing without end (10 messages a second saturates them
/// all: see loadtests/RESULTS.md).
pub const FULL: Size = Size {
    subscribers: 10_000,
    messages: 120,
    rate: 4,
};

/// How long subscribers may still take after the last publish.
const GRACE: Duration = Duration::from_secs(30);

pub async fn run(deployment: &Deployment, size: Size) -> anyhow::Result<Outcome> {
    let room = "fanout";
    let endpoints = deployment.endpoints.clone();
    let subscribers = connect_many(size.subscribers, |index| {
        let endpoint = endpoints[index % endpoints.len()].clone();
        async move { Subscriber::connect(&endpoint, room, &Resume::Fresh, false).await }
    })
    .await?;
    let readers = Readers::of_one_room(subscribers, room, size.messages, &Resume::Fresh, None);
    let mut publisher = Publisher::connect(&deployment.endpoints[0]).await?;
    warm_up(&mut publisher, &[room.to_owned()], readers.count(), &readers.progress).await?;

    let progress = readers.progress.clone();
    let total = size.subscribers as u64 * u64::from(size.messages);
    let bar = progress_bar(&format!("fan-out {}", deployment.kind.label()), total, progress.clone());
    let cpu_before = deployment.nodes_cpu_seconds();
    let started = Instant::now();
    let started_us = now_us();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(size.rate)));
    for seq in 0..size.messages {
        ticks.tick().await;
        publisher.publish(room, &payload_json(0, seq)).await?;
    }
    publisher.finish().await?;
    let reports = readers.finish(GRACE).await?;
    bar.abort();
    let cpu = deployment.nodes_cpu_seconds() - cpu_before;

    let mut outcome = Outcome::new(deployment.kind, &deployment.version);
    outcome.connections = size.subscribers as u64 + 1;
    outcome.published = u64::from(size.messages);
    let latency = merge_reports(&mut outcome, reports);
    outcome.set_latency(&latency);
    let last = progress.last_delivery_us.load(Ordering::Relaxed).max(started_us + 1);
    let seconds = (last - started_us) as f64 / 1e6;
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome.deliveries_per_second = outcome.deliveries as f64 / seconds;
    outcome.node_cpu_seconds = cpu;
    if outcome.deliveries > 0 {
        outcome.cpu_seconds_per_million_deliveries = Some(cpu * 1e6 / outcome.deliveries as f64);
    }
    Ok(outcome)
}
