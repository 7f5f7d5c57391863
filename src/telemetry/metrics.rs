//! The node's Prometheus metrics, registered once and shared.
//!
//! Every metric is listed with its meaning in `docs/operations.md`. Counters
//! on the fan-out path are bumped once per message per room (by the number
//! of deliveries), not once per subscriber.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::protocol::{ErrorCode, PublishStored};

/// Label of a transport.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `ws` or `sse`.
    pub transport: &'static str,
}

/// Label of a publish outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `stored` or `duplicate`.
    pub outcome: &'static str,
}

/// Label of a failed publish: what it may have left in the store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoredLabel {
    /// `false` (never reached the store) or `unknown` (sent, no answer).
    pub stored: &'static str,
}

/// Label of an error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The protocol error code.
    pub code: &'static str,
}

/// Label of a close code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabel {
    /// The WebSocket close code, as text.
    pub code: &'static str,
}

/// Static facts about the node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    /// `RELAY_NODE_ID`.
    pub node: String,
    /// `memory` or `redis`.
    pub broker: &'static str,
    /// Crate version.
    pub version: &'static str,
}

/// All metrics of a node.
pub struct Metrics {
    registry: Registry,
    /// Open client connections.
    pub connections: Family<TransportLabel, Gauge>,
    /// Live room subscriptions on this node.
    pub subscriptions: Gauge,
    /// Rooms with at least one local subscriber.
    pub rooms: Gauge,
    /// Publishes committed, by outcome.
    pub messages_published: Family<OutcomeLabel, Counter>,
    /// `relay_messages_published_total{outcome="stored"}`, fetched once.
    pub published_stored: Counter,
    /// `relay_messages_published_total{outcome="duplicate"}`, fetched once.
    pub published_duplicate: Counter,
    /// Messages queued to subscribers (live fan-out and replay).
    pub messages_delivered: Counter,
    /// Time from receiving a publish to its commit by the broker.
    pub publish_duration: Histogram,
    /// Time from a message's `ts` (set by the publishing node) to its
    /// hand-over to this node's local subscribers.
    pub delivery_latency: Histogram,
    /// Connections closed because they did not read fast enough.
    pub slow_consumer_closes: Counter,
    /// Errors sent to clients, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Publishes answered `unavailable`, by what they may have stored.
    pub publish_failures: Family<StoredLabel, Counter>,
    /// Connections closed by the server, by close code.
    pub closes: Family<CloseLabel, Counter>,
    /// Times the live feed of a room was repaired from history.
    pub live_repairs: Counter,
    /// Times the broker's live feed connection came back after a loss and
    /// every room was caught up from history.
    pub live_feed_resyncs: Counter,
    /// `gap`s: live messages lost that history no longer held.
    pub gaps: Counter,
    /// Signals handed to the broker by this node's clients.
    pub signals_sent: Counter,
    /// `presence` frames queued to this node's watchers.
    pub presence_frames: Counter,
    /// `RELAY_MAX_CONNECTIONS`, for alerts on a fleet near its cap.
    pub connection_limit: Gauge,
    /// 1 while the node drains (set when `/metrics` is read).
    pub draining: Gauge,
    /// 1 while the broker answers (probed when `/metrics` is read).
    pub broker_up: Gauge,
}

/// The close codes `relay_closes_total` counts by name (the rest are
/// `other`).
const CLOSE_CODES: [&str; 11] = [
    "1000", "1002", "1003", "1007", "1008", "1009", "1011", "1012", "1013", "4000", "4001",
];

impl Metrics {
    /// Registers every metric.
    #[must_use]
    pub fn new(node: &str, broker: &'static str) -> Self {
        let mut registry = Registry::default();
        let connections = Family::<TransportLabel, Gauge>::default();
        registry.register(
            "relay_connections",
            "Open client connections, by transport",
            connections.clone(),
        );
        for transport in ["ws", "sse"] {
            let _ = connections.get_or_create(&TransportLabel { transport });
        }
        let subscriptions = Gauge::default();
        registry.register(
            "relay_subscriptions",
            "Room subscriptions held by clients of this node",
            subscriptions.clone(),
        );
        let rooms = Gauge::default();
        registry.register(
            "relay_rooms",
            "Rooms with at least one subscriber on this node",
            rooms.clone(),
        );
        let messages_published = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "relay_messages_published",
            "Publishes committed through this node, by outcome (stored or duplicate)",
            messages_published.clone(),
        );
        // Kept as handles so a publish does not look the family up.
        let published_stored = messages_published
            .get_or_create(&OutcomeLabel { outcome: "stored" })
            .clone();
        let published_duplicate = messages_published
            .get_or_create(&OutcomeLabel { outcome: "duplicate" })
            .clone();
        let messages_delivered = Counter::default();
        registry.register(
            "relay_messages_delivered",
            "Messages queued to subscribers of this node (live and replayed)",
            messages_delivered.clone(),
        );
        let publish_duration = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "relay_publish_duration_seconds",
            "Time from receiving a publish to its commit by the broker",
            publish_duration.clone(),
        );
        let delivery_latency = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "relay_delivery_latency_seconds",
            "Time from a message's publish (its ts, millisecond resolution, the publishing node's clock) to its hand-over to this node's live subscribers",
            delivery_latency.clone(),
        );
        let slow_consumer_closes = Counter::default();
        registry.register(
            "relay_slow_consumer_closes",
            "Connections closed because they did not read fast enough (close 4000)",
            slow_consumer_closes.clone(),
        );
        let errors = Family::<CodeLabel, Counter>::default();
        registry.register(
            "relay_errors",
            "Errors sent to clients, by protocol error code",
            errors.clone(),
        );
        for code in ErrorCode::ALL {
            let _ = errors.get_or_create(&CodeLabel { code: code.as_str() });
        }
        let publish_failures = Family::<StoredLabel, Counter>::default();
        registry.register(
            "relay_publish_failures",
            "Publishes answered unavailable, by what they may have stored: false (never reached the store) or unknown (sent, no answer in time)",
            publish_failures.clone(),
        );
        for stored in ["false", "unknown"] {
            let _ = publish_failures.get_or_create(&StoredLabel { stored });
        }
        let closes = Family::<CloseLabel, Counter>::default();
        registry.register(
            "relay_closes",
            "Connections closed by the server, by WebSocket close code",
            closes.clone(),
        );
        // Every code starts at zero, so that `increase()` sees the first close.
        for code in CLOSE_CODES {
            let _ = closes.get_or_create(&CloseLabel { code });
        }
        let live_repairs = Counter::default();
        registry.register(
            "relay_live_repairs",
            "Times a room's live feed was caught up from history",
            live_repairs.clone(),
        );
        let live_feed_resyncs = Counter::default();
        registry.register(
            "relay_live_feed_resyncs",
            "Times the live feed connection to the broker was lost and re-established, after which every room was caught up from history",
            live_feed_resyncs.clone(),
        );
        let gaps = Counter::default();
        registry.register(
            "relay_gaps",
            "Breaks in a room's live feed that history could not repair",
            gaps.clone(),
        );
        let signals_sent = Counter::default();
        registry.register(
            "relay_signals_sent",
            "Signals (typing, read markers) sent by clients of this node; live only, never stored",
            signals_sent.clone(),
        );
        let presence_frames = Counter::default();
        registry.register(
            "relay_presence_frames",
            "Presence frames queued to watchers on this node (at most one per room per watcher per second)",
            presence_frames.clone(),
        );
        let connection_limit = Gauge::default();
        registry.register(
            "relay_connection_limit",
            "RELAY_MAX_CONNECTIONS: the streaming connections this node admits",
            connection_limit.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "relay_draining",
            "1 while the node drains (SIGTERM), else 0",
            draining.clone(),
        );
        let broker_up = Gauge::default();
        registry.register(
            "relay_broker_up",
            "1 while the broker answers (on a cluster: any primary), probed at each scrape",
            broker_up.clone(),
        );
        let info = Family::<InfoLabels, Gauge>::default();
        registry.register(
            "relay_info",
            "Facts about this node; the value is always 1",
            info.clone(),
        );
        info.get_or_create(&InfoLabels {
            node: node.to_owned(),
            broker,
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        Self {
            registry,
            connections,
            subscriptions,
            rooms,
            messages_published,
            published_stored,
            published_duplicate,
            messages_delivered,
            publish_duration,
            delivery_latency,
            slow_consumer_closes,
            errors,
            publish_failures,
            closes,
            live_repairs,
            live_feed_resyncs,
            gaps,
            signals_sent,
            presence_frames,
            connection_limit,
            draining,
            broker_up,
        }
    }

    /// Counts a publish answered `unavailable` (WebSocket or HTTP).
    pub fn count_publish_failure(&self, stored: PublishStored) {
        let stored = match stored {
            PublishStored::No => "false",
            PublishStored::Unknown => "unknown",
        };
        self.publish_failures.get_or_create(&StoredLabel { stored }).inc();
    }

    /// Counts an error sent to a client.
    pub fn count_error(&self, code: ErrorCode) {
        self.errors.get_or_create(&CodeLabel { code: code.as_str() }).inc();
    }

    /// Counts a close initiated by the server.
    pub fn count_close(&self, code: u16) {
        let text = code.to_string();
        let code = CLOSE_CODES
            .iter()
            .copied()
            .find(|known| *known == text)
            .unwrap_or("other");
        self.closes.get_or_create(&CloseLabel { code }).inc();
    }

    /// The registry, for metrics owned elsewhere (the broker's).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
