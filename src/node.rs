//! What one relay node shares between its connections: settings, broker,
//! the session context (room hub, publisher, metrics, authenticator,
//! limits), connection caps, and the drain signal.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::config::Settings;
use crate::protocol::{DecodeLimits, server_frame::AnnouncedLimits};
use crate::session::{
    Admission, BufferLimit, ClientWriteLimiter, KeyedPublishRateLimiter, PresenceTiming, Publisher, ReplayMemory,
    RoomHub, SessionContext, SessionLimits,
};
use crate::tasks::NodeTasks;
use crate::telemetry::Metrics;

/// HTTP history reads one client may have under way at once.
pub const HISTORY_READS_PER_CLIENT: usize = 4;

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
    pub authenticator: Arc<Authenticator>,
    /// What every client session gets of the node.
    pub session: Arc<SessionContext>,
    /// HTTP publish limits per client (as a connection's own rate).
    pub http_publish_limiter: KeyedPublishRateLimiter,
    /// Connection caps per node and per client.
    pub admission: Arc<Admission>,
    /// HTTP history reads under way per client (what they hold is counted
    /// in the session's replay memory).
    pub history_reads: Arc<Admission>,
    /// Cancelled when the node starts draining.
    pub draining: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Every background task (broker, hub, sweepers), owned and watched.
    pub tasks: Arc<NodeTasks>,
    /// `RELAY_STOMP_APP_ROUTES`, shared by every STOMP connection.
    pub stomp_app_routes: Arc<crate::stomp::AppRoutes>,
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
        let mut metrics = Metrics::new(&settings.node_id, broker.kind());
        broker.register_metrics(metrics.registry_mut());
        metrics
            .connection_limit
            .set(i64::try_from(settings.max_connections).unwrap_or(i64::MAX));
        let metrics = Arc::new(metrics);
        let hub = RoomHub::new(
            broker.clone(),
            metrics.clone(),
            BufferLimit {
                messages: settings.outbound_queue,
                bytes: settings.outbound_queue_bytes,
            },
            tasks.clone(),
            PresenceTiming {
                ttl: settings.presence_ttl,
            },
        );
        let authenticator = Arc::new(authenticator);
        let session = Arc::new(SessionContext {
            node_id: settings.node_id.clone(),
            hub: hub.clone(),
            publisher: Publisher::new(broker.clone(), metrics.clone()),
            metrics: metrics.clone(),
            authenticator: authenticator.clone(),
            limits: SessionLimits {
                decode: DecodeLimits {
                    max_message_bytes: settings.max_message_bytes,
                    max_replay: settings.max_replay,
                },
                announced: AnnouncedLimits {
                    max_message_bytes: settings.max_message_bytes,
                    max_replay: settings.max_replay,
                    publish_rate: settings.publish_rate,
                    max_subscriptions: settings.max_subscriptions,
                },
                invalid_frame_limit: settings.invalid_frame_limit,
                client_publish_rate: settings.client_publish_rate,
                client_publish_bytes: settings.client_publish_bytes,
                max_replay_bytes: settings.max_replay_bytes,
            },
            client_writes: ClientWriteLimiter::new(settings.client_publish_rate, settings.client_publish_bytes),
            replay_memory: ReplayMemory::new(settings.replay_memory_bytes, settings.max_replay_bytes),
        });
        let http_publish_limiter = KeyedPublishRateLimiter::new(settings.publish_rate);
        let admission = Admission::new(settings.max_connections, settings.max_connections_per_client);
        let stomp_app_routes = Arc::new(settings.stomp_app_routes.clone());
        Arc::new(Self {
            settings,
            broker,
            hub,
            metrics,
            authenticator,
            session,
            http_publish_limiter,
            admission,
            history_reads: Admission::new(usize::MAX, HISTORY_READS_PER_CLIENT),
            draining: CancellationToken::new(),
            connections: TaskTracker::new(),
            tasks,
            stomp_app_routes,
        })
    }

    /// Whether the node is draining.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// How long a client told to reconnect by the drain waits first: its
    /// own moment in the drain window, so that the clients of a drained
    /// node do not all land on the others at once.
    #[must_use]
    pub fn reconnect_delay(&self) -> std::time::Duration {
        let window_ms = u64::try_from(self.settings.drain.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        std::time::Duration::from_millis(fastrand::u64(0..window_ms))
    }
}
