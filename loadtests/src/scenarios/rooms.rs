//! Many rooms: rooms of 2 to 5 members, every member publishing slowly.
//! Members subscribe on either node; their publishes go through a pool of
//! publisher connections on both nodes (one connection per member would
//! double the sockets without changing the servers' work per message).

use std::time::{Duration, Instant};

use crate::client::{Publisher, Resume, Subscriber, payload_json};
use crate::ledger::SubscriberLedger;
use crate::scenarios::{Outcome, Readers, connect_many, merge_reports, progress_bar, warm_up};
use crate::systems::{CpuTimes, Deployment};

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub rooms: usize,
    /// Messages each member publishes.
    pub messages_per_member: u32,
    /// Seconds between two messages of one member.
    pub interval_s: f64,
}

pub const QUICK: Size = Size {
    rooms: 60,
    messages_per_member: 4,
    interval_s: 0.5,
};

pub const FULL: Size = Size {
    rooms: 5000,
    messages_per_member: 5,
    interval_s: 4.0,
};

const PUBLISHERS_PER_NODE: usize = 8;

/// How long members may still take after the last publish.
const GRACE: Duration = Duration::from_secs(30);

fn members_of(room: usize) -> usize {
    2 + room % 4
}

pub async fn run(deployment: &Deployment, size: Size) -> anyhow::Result<Outcome> {
    // Member ids are global; members[room] lists a room's members.
    let mut members: Vec<Vec<u32>> = Vec::with_capacity(size.rooms);
    let mut next_id = 0u32;
    for room in 0..size.rooms {
        members.push(
            (0..members_of(room))
                .map(|_| {
                    next_id += 1;
                    next_id - 1
                })
                .collect(),
        );
    }
    let room_of_member: Vec<usize> = members
        .iter()
        .enumerate()
        .flat_map(|(room, ids)| ids.iter().map(move |_| room))
        .collect();
    let total_members = room_of_member.len();
    let endpoints = deployment.endpoints.clone();
    let subscribers = connect_many(total_members, |member| {
        let endpoint = endpoints[member % endpoints.len()].clone();
        let room = format!("room{}", room_of_member[member]);
        async move { Subscriber::connect(&endpoint, &room, &Resume::Fresh, false).await }
    })
    .await?;
    let mut readers = Readers::new();
    for (member, subscriber) in subscribers.into_iter().enumerate() {
        let room = room_of_member[member];
        readers.spawn(
            subscriber,
            SubscriberLedger::expecting(members[room].iter().copied(), size.messages_per_member),
            format!("room{room}"),
            Resume::Fresh,
            None,
        );
    }
    let room_names: Vec<String> = (0..size.rooms).map(|room| format!("room{room}")).collect();
    let mut warmer = Publisher::connect(&deployment.endpoints[0]).await?;
    warm_up(&mut warmer, &room_names, readers.count(), &readers.progress).await?;
    drop(warmer);

    let progress = readers.progress.clone();
    let total: u64 =
        members.iter().map(|ids| (ids.len() * ids.len()) as u64).sum::<u64>() * u64::from(size.messages_per_member);
    let bar = progress_bar(
        &format!("many rooms {}", deployment.kind.label()),
        total,
        progress.clone(),
    );

    let cpu_before = deployment.nodes_cpu_times();
    let generator_before = CpuTimes::of_this_process();
    let started = Instant::now();
    let pool = PUBLISHERS_PER_NODE * deployment.endpoints.len();
    let mut tasks = Vec::new();
    for lane in 0..pool {
        let endpoint = deployment.endpoints[lane % deployment.endpoints.len()].clone();
        // This lane publishes for every pool-th member, spread over each interval.
        let mine: Vec<(u32, usize)> = (lane..total_members)
            .step_by(pool)
            .map(|member| (member as u32, room_of_member[member]))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut publisher = Publisher::connect(&endpoint).await?;
            if mine.is_empty() {
                return anyhow::Ok(0u64);
            }
            let gap = Duration::from_secs_f64(size.interval_s / mine.len() as f64);
            let mut ticks = tokio::time::interval(gap);
            let mut sent = 0;
            for seq in 0..size.messages_per_member {
                for (member, room) in &mine {
                    ticks.tick().await;
                    publisher
                        .publish(&format!("room{room}"), &payload_json(*member, seq))
                        .await?;
                    sent += 1;
                }
            }
            publisher.finish().await?;
            anyhow::Ok(sent)
        }));
    }
    let mut published = 0;
    for task in tasks {
        published += task.await??;
    }
    let reports = readers.finish(GRACE).await?;
    bar.abort();
    let cpu = deployment.nodes_cpu_times() - cpu_before;
    let generator = CpuTimes::of_this_process() - generator_before;

    let mut outcome = Outcome::new(deployment.kind, &deployment.version);
    outcome.connections = (total_members + pool) as u64;
    outcome.published = published;
    let latency = merge_reports(&mut outcome, reports);
    outcome.set_latency(&latency);
    outcome.seconds = started.elapsed().as_secs_f64();
    outcome.deliveries_per_second = outcome.deliveries as f64 / outcome.seconds;
    outcome.set_cpu(cpu, generator);
    Ok(outcome)
}
