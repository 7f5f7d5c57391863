//! Reconnect storm: every subscriber sits on node 1; messages flow from a
//! publisher on node 2; node 1 is killed (SIGKILL) a third of the way in.
//! Subscribers reconnect to node 2 and resume from what they last saw
//! (relay: `since`; Socket.IO: connection state recovery; Nchan:
//! EventSource `Last-Event-ID`). Time until all resumed, and what was lost
//! or doubled.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{Publisher, Resume, Subscriber, payload_json};
use crate::scenarios::{Failover, Outcome, Readers, connect_many, merge_reports, progress_bar, warm_up};
use crate::systems::{Deployment, SystemKind};

#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub subscribers: usize,
    pub messages: u32,
    pub rate: u32,
}

pub const QUICK: Size = Size {
    subscribers: 200,
    messages: 300,
    rate: 100,
};

pub const FULL: Size = Size {
    subscribers: 5000,
    messages: 600,
    rate: 20,
};

/// How long subscribers may still take after the last publish.
const GRACE: Duration = Duration::from_secs(20);

pub async fn run(deployment: &mut Deployment, size: Size) -> anyhow::Result<Outcome> {
    let room = "storm";
    let doomed = deployment.endpoints[0].clone();
    let survivor = deployment.endpoints[1].clone();
    // The relay resumes from the start of the room when nothing arrived yet.
    let first_resume = if deployment.kind == SystemKind::Relay {
        Resume::Relay("0-0".to_owned())
    } else {
        Resume::Fresh
    };
    let subscribers = connect_many(size.subscribers, |_| {
        let endpoint = doomed.clone();
        let resume = first_resume.clone();
        async move { Subscriber::connect(&endpoint, room, &resume, true).await }
    })
    .await?;
    let killed_at = Arc::new(std::sync::OnceLock::new());
    let failover = Failover {
        endpoint: survivor.clone(),
        killed_at: killed_at.clone(),
    };
    let readers = Readers::of_one_room(subscribers, room, size.messages, &first_resume, Some(&failover));
    let mut publisher = Publisher::connect(&survivor).await?;
    warm_up(&mut publisher, &[room.to_owned()], readers.count(), &readers.progress).await?;

    let total = size.subscribers as u64 * u64::from(size.messages);
    let bar = progress_bar(
        &format!("storm {}", deployment.kind.label()),
        total,
        readers.progress.clone(),
    );
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(size.rate)));
    for seq in 0..size.messages {
        ticks.tick().await;
        if seq == size.messages / 3 {
            deployment.nodes[0].kill();
            let _ = killed_at.set(Instant::now());
        }
        publisher.publish(room, &payload_json(0, seq)).await?;
    }
    publisher.finish().await?;
    let reports = readers.finish(GRACE).await?;
    bar.abort();

    let mut outcome = Outcome::new(deployment.kind, &deployment.version);
    outcome.connections = size.subscribers as u64 + 1;
    outcome.published = u64::from(size.messages);
    merge_reports(&mut outcome, reports);
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}
