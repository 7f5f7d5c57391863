//! Stopping a node. SIGTERM (or SIGINT) starts a drain: `/readyz` turns
//! 503, new upgrades and streams are refused, every client is told to
//! reconnect; then the process waits for its connections, at most the drain
//! window plus a margin, stops the HTTP server and ends every background
//! task. A second signal stops at once. A panicking node task (see
//! [`crate::tasks`]) drains the node the same way and ends the process
//! with 1. Owns [`RunningNode`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::node::Node;
use crate::session::HANDOVER_MARGIN;

/// Extra time after the drain window for the last close frames.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(1);
/// How long the HTTP server and the background tasks, together, get to end
/// after the connections are gone. With [`DRAIN_MARGIN`], a drained node
/// exits within the drain window plus 2 s whatever hangs (docs/deploy.md
/// counts on it: Cloud Run kills 10 s after SIGTERM, the window is 8 s).
const TASKS_GRACE: Duration = Duration::from_secs(1);

// The hand-over ends before the drain's deadline, leaving time to remove
// what is left.
const _: () = assert!(HANDOVER_MARGIN.as_millis() < DRAIN_MARGIN.as_millis());

/// A node that serves on its listener until drained.
pub struct RunningNode {
    /// The bound address (with the chosen port when 0 was asked for).
    pub local_addr: SocketAddr,
    /// The node's shared state.
    pub node: Arc<Node>,
    stop_server: CancellationToken,
    server: JoinHandle<()>,
}

impl RunningNode {
    pub(crate) fn new(
        local_addr: SocketAddr,
        node: Arc<Node>,
        stop_server: CancellationToken,
        server: JoinHandle<()>,
    ) -> Self {
        Self {
            local_addr,
            node,
            stop_server,
            server,
        }
    }

    /// Drains (clients told to reconnect, each one's presence handed over
    /// until it had time to join elsewhere: see `session::handover`), waits
    /// for connections and the hand-over at most the drain window plus
    /// [`DRAIN_MARGIN`], then stops the server and every background task
    /// within `TASKS_GRACE` (1 s): at most the window plus 2 s in all.
    pub async fn drain(self) {
        let started = tokio::time::Instant::now();
        self.node.draining.cancel();
        self.node.connections.close();
        // Presence is handed over while the connections go: each drained
        // client's entries leave once it had time to join elsewhere, and
        // all are gone by the window's end plus the hand-over margin (each
        // broker call is bounded; the deadline bounds them all).
        let deadline = started + self.node.settings.drain + DRAIN_MARGIN;
        let handover_ends = started.into_std() + self.node.settings.drain + HANDOVER_MARGIN;
        let presence = self.node.hub.hand_over_presence(handover_ends);
        let connections = async {
            if tokio::time::timeout_at(deadline, self.node.connections.wait())
                .await
                .is_err()
            {
                tracing::warn!("drain window over with connections still open; closing them");
            }
        };
        let _ = tokio::time::timeout_at(deadline, futures_util::future::join(presence, connections)).await;
        // The server and the tasks share one grace.
        let grace_over = tokio::time::Instant::now() + TASKS_GRACE;
        self.stop_server.cancel();
        let _ = tokio::time::timeout_at(grace_over, self.server).await;
        let left = self
            .node
            .tasks
            .stop(grace_over.saturating_duration_since(tokio::time::Instant::now()))
            .await;
        if left > 0 {
            tracing::warn!(tasks = left, "background tasks still running at exit");
        }
    }
}

/// What ended the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Drained and stopped.
    Drained,
    /// A second signal arrived during the drain.
    Forced,
    /// A node task panicked; the node drained and stopped.
    Failed(String),
}

async fn next_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the node");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits for a signal (or a failed task), drains, and stops the node.
pub async fn run_until_signal(running: RunningNode) -> Ending {
    run_until(running, next_signal).await
}

/// [`run_until_signal`] with the signal source given: `signal` is called
/// once for the first stop and once more for a forced one.
pub async fn run_until<F, S>(running: RunningNode, signal: S) -> Ending
where
    S: Fn() -> F,
    F: Future<Output = ()>,
{
    let tasks = running.node.tasks.clone();
    let failure = tokio::select! {
        () = signal() => None,
        () = tasks.failed() => tasks.failure(),
    };
    match &failure {
        None => tracing::info!(
            drain_secs = running.node.settings.drain.as_secs(),
            "signal received: draining"
        ),
        Some(reason) => tracing::error!(%reason, "a node task failed: draining, then exiting 1"),
    }
    tokio::select! {
        () = running.drain() => failure.map_or(Ending::Drained, Ending::Failed),
        () = signal() => {
            tracing::warn!("second signal: stopping at once");
            Ending::Forced
        }
    }
}
