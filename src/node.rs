//! What one relay node shares between its connections: settings, broker,
//! room hub, metrics, authenticator, and the drain signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::{Broker, BrokerError, PublishOutcome, PublishRequest};
use crate::config::Settings;
use crate::protocol::{DecodeLimits, MessageFrameTail, RoomName, server_frame::AnnouncedLimits};
use crate::session::{AddressRateLimiter, Admission, RoomHub};
use crate::tasks::NodeTasks;
use crate::telemetry::{Metrics, trace_context};
use tracing::Instrument;

/// The shared state of a node.
pub struct Node {
    /// Validated settings.
    pub settings: Settings,
    /// The broker (memory or Redis).
    pub broker: Arc<dyn Broker>,
    /// Local rooms and fan-out.
    pub hub: Arc<RoomHub>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Credentials to identity.
    pub authenticator: Authenticator,
    /// HTTP publish limits per client address.
    pub http_publish_limiter: AddressRateLimiter,
    /// Connection caps per node and per client.
    pub admission: Arc<Admission>,
    /// Cancelled when the node starts draining.
    pub draining: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Every background task (broker, hub, sweepers), owned and watched.
    pub tasks: Arc<NodeTasks>,
    last_ts_ms: AtomicU64,
}

impl Node {
    /// Assembles a node around a broker whose tasks `tasks` owns.
    #[must_use]
    pub fn new(
        settings: Settings,
        broker: Arc<dyn Broker>,
        authenticator: Authenticator,
        tasks: Arc<NodeTasks>,
    ) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new(&settings.node_id, broker.kind()));
        let hub = RoomHub::new(broker.clone(), metrics.clone(), settings.outbound_queue, tasks.clone());
        let http_publish_limiter = AddressRateLimiter::new(settings.publish_rate);
        let admission = Admission::new(settings.max_connections, settings.max_connections_per_client);
        Arc::new(Self {
            settings,
            broker,
            hub,
            metrics,
            authenticator,
            http_publish_limiter,
            admission,
            draining: CancellationToken::new(),
            connections: TaskTracker::new(),
            tasks,
            last_ts_ms: AtomicU64::new(0),
        })
    }

    /// The limits a client decoder checks.
    #[must_use]
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_message_bytes: self.settings.max_message_bytes,
            max_replay: self.settings.max_replay,
        }
    }

    /// The limits announced in `welcome`.
    #[must_use]
    pub fn announced_limits(&self) -> AnnouncedLimits {
        AnnouncedLimits {
            max_message_bytes: self.settings.max_message_bytes,
            max_replay: self.settings.max_replay,
            publish_rate: self.settings.publish_rate,
        }
    }

    /// Whether the node is draining.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Server time for a message's `ts`: wall-clock milliseconds, never
    /// going backwards on this node.
    fn message_ts_ms(&self) -> u64 {
        let now = crate::protocol::wall_clock_ms();
        let previous = self.last_ts_ms.fetch_max(now, Ordering::Relaxed);
        now.max(previous)
    }

    /// Submits a validated body to a room through the broker, with the
    /// publish metrics. Shared by the WebSocket and HTTP endpoints. The
    /// broker fixes the commit order at this call, so a connection's
    /// publishes are committed in the order it submits them.
    ///
    /// The future fails with [`BrokerError`] when the broker did not commit.
    pub fn publish(
        &self,
        room: RoomName,
        from: Option<&str>,
        cmid: Option<String>,
        body: &str,
    ) -> impl Future<Output = Result<PublishOutcome, BrokerError>> + Send + 'static {
        let started = std::time::Instant::now();
        let tail = MessageFrameTail::new(from, self.message_ts_ms(), cmid.as_deref(), body);
        // While traces are exported, the publish span is the parent of the
        // broker's spans and its context travels with the message.
        let span = trace_context::publish_span(&room);
        let pending = span.in_scope(|| self.broker.publish(PublishRequest { room, cmid, tail }));
        let metrics = self.metrics.clone();
        let committed = async move {
            let outcome = pending.await?;
            metrics.publish_duration.observe(started.elapsed().as_secs_f64());
            if outcome.duplicate {
                &metrics.published_duplicate
            } else {
                &metrics.published_stored
            }
            .inc();
            Ok(outcome)
        };
        committed.instrument(span)
    }
}
