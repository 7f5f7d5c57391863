//! Stopping a node: SIGTERM (or SIGINT) starts a drain — `/readyz` turns
//! 503, new upgrades and streams are refused, every client is told to
//! reconnect — then the process waits for its connections, at most the
//! drain window plus a margin. A second signal stops at once.

use std::time::Duration;

use crate::RunningNode;

/// Extra time after the drain window for the last close frames.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// What ended the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Drained and stopped.
    Drained,
    /// A second signal arrived during the drain.
    Forced,
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

/// Waits for a signal, drains, and stops the node.
pub async fn run_until_signal(running: RunningNode) -> Ending {
    next_signal().await;
    tracing::info!(
        drain_secs = running.node.settings.drain.as_secs(),
        "signal received: draining"
    );
    tokio::select! {
        () = running.drain() => Ending::Drained,
        () = next_signal() => {
            tracing::warn!("second signal: stopping at once");
            Ending::Forced
        }
    }
}
