//! Fan-out: one room, one publisher on node 1, subscribers spread over both
//! nodes (or all on node 2). Latency, deliveries per second and node CPU
//! per delivery, user and system apart.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::client::{Publisher, Resume, Subscriber, now_us, payload_json};
use crate::scenarios::{Outcome, Readers, connect_many, merge_reports, progress_bar, warm_up};
use crate::systems::{CpuTimes, Deployment};

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub subscribers: usize,
    pub messages: u32,
    /// Messages per second.
    pub rate: f64,
    pub placement: Placement,
    /// Subscribers read live (spread evenly); the rest are read only after
    /// the last publish. `None`: all live.
    pub live_sample: Option<usize>,
}

/// Where the subscribers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Alternately on each node.
    Spread,
    /// All on node 2, away from the publisher's node 1: one node's fan-out
    /// cost, with the publish on the other.
    SecondNode,
}

pub const QUICK: Size = Size {
    subscribers: 200,
    messages: 200,
    rate: 100.0,
    placement: Placement::Spread,
    live_sample: None,
};

/// 40,000 deliveries a second: a load every system here sustains on two
/// cores shared with the load generator, so latency measures delivery and
/// not a queue growing without end (10 messages a second saturates them
/// all: see loadtests/RESULTS.md).
pub const FULL: Size = Size {
    subscribers: 10_000,
    messages: 120,
    rate: 4.0,
    placement: Placement::Spread,
    live_sample: None,
};

/// How long subscribers may still take after the last publish.
const GRACE: Duration = Duration::from_secs(30);

pub async fn run(deployment: &Deployment, size: Size) -> anyhow::Result<Outcome> {
    run_in(deployment, size, "fanout").await
}

/// [`run`] in the room `room` (a sweep runs each step in a room of its own).
pub async fn run_in(deployment: &Deployment, size: Size, room: &str) -> anyhow::Result<Outcome> {
    let endpoints = deployment.endpoints.clone();
    let subscribers = connect_many(size.subscribers, |index| {
        let endpoint = match size.placement {
            Placement::Spread => endpoints[index % endpoints.len()].clone(),
            Placement::SecondNode => endpoints[1 % endpoints.len()].clone(),
        };
        async move { Subscriber::connect(&endpoint, room, &Resume::Fresh, false).await }
    })
    .await?;
    let readers =
        Readers::of_one_room_sampled(subscribers, room, size.messages, &Resume::Fresh, None, size.live_sample);
    let mut publisher = Publisher::connect(&deployment.endpoints[0]).await?;
    warm_up(&mut publisher, &[room.to_owned()], readers.count(), &readers.progress).await?;

    let progress = readers.progress.clone();
    let total = size.subscribers as u64 * u64::from(size.messages);
    let bar = progress_bar(&format!("fan-out {}", deployment.kind.label()), total, progress.clone());
    let cpu_before = deployment.nodes_cpu_times();
    let each_before = deployment.each_node_cpu_times();
    let redis_before = deployment.redis_cpu_times();
    let generator_before = CpuTimes::of_this_process();
    let started = Instant::now();
    let started_us = now_us();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / size.rate));
    for seq in 0..size.messages {
        ticks.tick().await;
        publisher.publish(room, &payload_json(0, seq)).await?;
    }
    let last_publish_us = now_us();
    publisher.finish().await?;
    let reports = readers.finish(GRACE).await?;
    bar.abort();
    let cpu = deployment.nodes_cpu_times() - cpu_before;
    let each_node_cpu = deployment
        .each_node_cpu_times()
        .into_iter()
        .zip(each_before)
        .map(|(after, before)| after - before)
        .collect();
    let redis_cpu = deployment.redis_cpu_times() - redis_before;
    let generator = CpuTimes::of_this_process() - generator_before;

    let mut outcome = Outcome::new(deployment.kind, &deployment.version);
    outcome.connections = size.subscribers as u64 + 1;
    outcome.published = u64::from(size.messages);
    let latency = merge_reports(&mut outcome, reports);
    outcome.set_latency(&latency);
    let last = progress.last_delivery_us.load(Ordering::Relaxed).max(started_us + 1);
    let seconds = (last - started_us) as f64 / 1e6;
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome.deliveries_per_second = outcome.deliveries as f64 / seconds;
    outcome.offered_deliveries_per_second = size.rate * size.subscribers as f64;
    outcome.window_seconds = seconds;
    outcome.trail_ms = Some(last.saturating_sub(last_publish_us) as f64 / 1000.0);
    outcome.each_node_cpu = each_node_cpu;
    outcome.redis_cpu = redis_cpu;
    outcome.set_cpu(cpu, generator);
    Ok(outcome)
}
