//! Fan-out: one room, one publisher on node 1, subscribers spread over both
//! nodes. Latency, deliveries per second and node CPU per delivery.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::client::{Publisher, Resume, Subscriber, now_us, payload_json};
use crate::ledger::SubscriberLedger;
use crate::scenarios::{Outcome, Progress, connect_many, merge_reports, progress_bar, read_subscriber};
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

pub const FULL: Size = Size {
    subscribers: 10_000,
    messages: 300,
    rate: 10,
};

pub async fn run(deployment: &Deployment, size: Size) -> anyhow::Result<Outcome> {
    let room = "fanout";
    let endpoints = deployment.endpoints.clone();
    let subscribers = connect_many(size.subscribers, |index| {
        let endpoint = endpoints[index % endpoints.len()].clone();
        async move { Subscriber::connect(&endpoint, room, &Resume::Fresh, false).await }
    })
    .await?;
    // Let every subscription settle (Nchan subscribes to Redis lazily).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let progress = Arc::new(Progress::default());
    let publish_time = Duration::from_secs_f64(f64::from(size.messages) / f64::from(size.rate));
    let deadline = tokio::time::Instant::now() + publish_time + Duration::from_secs(30);
    let total = size.subscribers as u64 * u64::from(size.messages);
    let bar = progress_bar(&format!("fan-out {}", deployment.kind.label()), total, progress.clone());
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|subscriber| {
            let ledger = SubscriberLedger::expecting([0], size.messages);
            tokio::spawn(read_subscriber(
                subscriber,
                ledger,
                room.to_owned(),
                Resume::Fresh,
                None,
                progress.clone(),
                deadline,
            ))
        })
        .collect();

    let cpu_before = deployment.nodes_cpu_seconds();
    let mut publisher = Publisher::connect(&deployment.endpoints[0]).await?;
    let started = Instant::now();
    let started_us = now_us();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(size.rate)));
    for seq in 0..size.messages {
        ticks.tick().await;
        publisher.publish(room, &payload_json(0, seq)).await?;
    }
    let mut reports = Vec::new();
    for reader in readers {
        reports.push(reader.await?);
    }
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
