//! A publish as every transport submits it: the frame tail built once
//! (sender, server time, `cmid`, body), handed to the broker in submission
//! order, timed and counted. Signals go out here too: the frame built once
//! and handed to the broker's live feed, never stored. Shared by the
//! WebSocket session and the HTTP endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Instrument;

use crate::broker::{Broker, BrokerError, PublishOutcome, PublishRequest};
use crate::protocol::{MessageFrameTail, RoomName, idempotency_key, server_frame};
use crate::telemetry::{Metrics, trace_context};

/// See the module docs.
pub struct Publisher {
    broker: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    last_ts_ms: AtomicU64,
}

impl Publisher {
    /// A publisher onto `broker`.
    #[must_use]
    pub fn new(broker: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Self {
        Self {
            broker,
            metrics,
            last_ts_ms: AtomicU64::new(0),
        }
    }

    /// Server time for a message's `ts`: wall-clock milliseconds, never
    /// going backwards on this node.
    fn message_ts_ms(&self) -> u64 {
        let now = crate::protocol::wall_clock_ms();
        let previous = self.last_ts_ms.fetch_max(now, Ordering::Relaxed);
        now.max(previous)
    }

    /// Submits a validated body to a room. The broker fixes the commit
    /// order at this call, so a connection's publishes are committed in the
    /// order it submits them.
    ///
    /// The future fails with [`BrokerError`] when the broker did not commit;
    /// its kind says whether the publish may yet be stored.
    /// `connection` is the submitting client connection's id (none over
    /// HTTP), which keeps its publishes to a room in order across a store
    /// failure (see [`PublishRequest::connection`]).
    pub fn publish(
        &self,
        room: RoomName,
        from: Option<&str>,
        cmid: Option<String>,
        body: &str,
        connection: Option<u64>,
    ) -> impl Future<Output = Result<PublishOutcome, BrokerError>> + Send + 'static {
        let started = std::time::Instant::now();
        let tail = MessageFrameTail::new(from, self.message_ts_ms(), cmid.as_deref(), body);
        // While traces are exported, the publish span is the parent of the
        // broker's spans and its context travels with the message.
        let span = trace_context::publish_span(&room);
        // A cmid dedupes the sender's own publishes only: another's
        // publish with the same cmid is stored (and not answered with theirs).
        let idempotency_key = cmid.as_deref().map(|cmid| idempotency_key(from, cmid));
        let pending = span.in_scope(|| {
            self.broker.publish(PublishRequest {
                room,
                idempotency_key,
                tail,
                connection,
            })
        });
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

    /// Sends a signal (validated compact JSON `body`) to the room's live
    /// subscribers on every node.
    ///
    /// # Errors
    /// The future fails with [`BrokerError`] when the broker could not
    /// take it; nothing is stored either way.
    pub fn signal(
        &self,
        room: RoomName,
        from: Option<&str>,
        body: &str,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        let frame = bytes::Bytes::from(server_frame::signal(&room, from, body));
        let broker = self.broker.clone();
        let metrics = self.metrics.clone();
        async move {
            broker.signal(&room, frame).await?;
            metrics.signals_sent.inc();
            Ok(())
        }
    }
}
