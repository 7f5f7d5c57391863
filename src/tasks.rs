//! Every background task of a node, owned: spawned through [`NodeTasks`],
//! which tracks it (the node's stop waits for it), ends it when the node
//! stops (the task's future is dropped at its next await), and watches it
//! for panics.
//!
//! A panic in a node task (the publisher, the live feed, a repair, a
//! sweeper) is logged with the task's name and makes the node fail: the
//! stop reason is recorded, [`NodeTasks::failed`] completes, and the process
//! drains and exits 1 (see `shutdown`). A node that lost its publisher or
//! its live feed must not stay in the load balancer half-alive; clients
//! resume on another node, and the orchestrator starts a new one.
//!
//! Connection tasks are not here: they are tracked by the node's connection
//! tracker, which the drain waits for.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// The owner of a node's background tasks; see the module docs.
#[derive(Debug, Default)]
pub struct NodeTasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    failed: CancellationToken,
    failure: Mutex<Option<String>>,
}

impl NodeTasks {
    /// An owner with no tasks yet.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Spawns `work` as the task `name` on the current runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    #[allow(
        clippy::disallowed_methods,
        reason = "the one place tasks are spawned: tracked, stoppable, watched"
    )]
    pub fn spawn<F>(self: &Arc<Self>, name: &'static str, work: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        let owner = Arc::downgrade(self);
        self.tracker.spawn(async move {
            let outcome = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                outcome = AssertUnwindSafe(work).catch_unwind() => outcome,
            };
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                tracing::error!(task = name, panic = %message, "a node task panicked; the node drains and exits 1 rather than serve half-alive");
                if let Some(owner) = owner.upgrade() {
                    owner.fail(format!("the {name} task panicked: {message}"));
                }
            }
        })
    }

    /// Spawns `work` if a tokio runtime is current (a subscription dropped
    /// outside one, at the very end, has nothing left to release).
    pub fn spawn_if_running<F>(self: &Arc<Self>, name: &'static str, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.spawn(name, work);
        }
    }

    fn fail(&self, reason: String) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.get_or_insert(reason);
        drop(failure);
        self.failed.cancel();
    }

    /// Completes when a task panicked.
    pub fn failed(&self) -> WaitForCancellationFuture<'_> {
        self.failed.cancelled()
    }

    /// Why the node failed, once a task panicked.
    #[must_use]
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether the node is stopping: tasks should not start new work.
    #[must_use]
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Ends every task and waits for them, at most `deadline`; returns how
    /// many were still running then.
    pub async fn stop(&self, deadline: Duration) -> usize {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_err() {
            return self.tracker.len();
        }
        0
    }

    /// Tasks running now.
    #[must_use]
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_fails_the_node_with_its_name() {
        let tasks = NodeTasks::new();
        let steady = tasks.spawn("steady", std::future::pending());
        tasks.spawn("doomed", async { panic!("it broke") });
        tokio::time::timeout(Duration::from_secs(5), tasks.failed())
            .await
            .expect("the failure is signalled");
        assert_eq!(tasks.failure().as_deref(), Some("the doomed task panicked: it broke"));
        assert!(!steady.is_finished(), "the others run until the node stops");
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0, "stop ends every task");
        assert!(steady.is_finished());
    }

    #[tokio::test]
    async fn stop_ends_tasks_at_their_next_await_and_refuses_none_later() {
        let tasks = NodeTasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("waiting", async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        assert_eq!(tasks.running(), 1);
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, 0);
        assert!(rx.await.is_err(), "the task's future was dropped");
        assert!(tasks.is_stopping());
        let late = tasks.spawn("late", async { panic!("never runs") });
        late.await.expect("a task spawned after the stop returns at once");
        assert_eq!(tasks.failure(), None);
    }
}
