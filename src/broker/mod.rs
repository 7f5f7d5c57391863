//! The broker seam: where a room's history and live feed live.
//!
//! A [`Broker`] stores each published message in the room's history and
//! hands it to the live feed in one atomic step, assigns ids and the `prev`
//! chain, remembers `cmid`s, and serves range reads. It knows nothing about
//! connections: the resume algorithm, fan-out and chain repair live above it
//! (`session`), once for every broker. Brokers never import axum.

mod memory;
mod presence;
mod redis;

use std::pin::Pin;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;

use crate::protocol::{MessageFrameTail, MessageId, PublishStored, RoomName};
use crate::telemetry::TraceParent;

pub use memory::MemoryBroker;
pub use presence::{PresenceChange, PresenceEntry, PresenceState};
pub use redis::{RedisBroker, RedisStartError};

/// History retention and idempotency settings shared by every broker.
#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// Messages kept per room (trimming may keep a few more).
    pub history_maxlen: u64,
    /// A room's history expires this long after its last message.
    pub history_ttl: std::time::Duration,
    /// How long a `cmid` is remembered per room.
    pub idempotency_ttl: std::time::Duration,
    /// Replicas that must confirm a publish's write before it is
    /// acknowledged (`RELAY_REDIS_MIN_REPLICAS_ACKED`, Redis `WAIT`); 0: the
    /// primary's answer is enough. The memory broker has no replicas.
    pub replicas_acked: u32,
}

/// One message as stored in a room's history and sent on its live feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its id in the room's history.
    pub id: MessageId,
    /// The id of the message before it in the room (`0-0` for the first).
    pub prev: MessageId,
    /// The complete `message` frame, UTF-8 JSON, ready to send.
    pub frame: Bytes,
    /// The publisher's trace context, on live messages while traces are
    /// exported; never part of the frame.
    pub trace: Option<TraceParent>,
}

/// A publish, as the broker receives it.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// Target room.
    pub room: RoomName,
    /// The idempotency key when the publisher gave a `cmid`: the `cmid`
    /// scoped to its sender ([`crate::protocol::idempotency_key`]), so that
    /// one sender's key never answers for another's publish.
    pub idempotency_key: Option<String>,
    /// The frame after `prev`; the broker composes the rest.
    pub tail: MessageFrameTail,
    /// The client connection that submitted it, if any: after one of its
    /// publishes to a room fails, the broker sends none of its later ones
    /// to that room until that one is sent again (see the Redis
    /// publisher), so that a retry keeps its place.
    pub connection: Option<u64>,
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    /// The message's id (the original's for a duplicate).
    pub id: MessageId,
    /// The id before it.
    pub prev: MessageId,
    /// The `cmid` was already committed: nothing was stored or sent.
    pub duplicate: bool,
}

/// A slice of a room's history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct HistoryPage {
    /// The messages read.
    pub messages: Vec<Arc<StoredMessage>>,
    /// The id of the newest message the history held when it was read;
    /// `None` when the room has no history at all.
    pub last_id: Option<MessageId>,
}

/// A submitted publish: resolves once the broker committed it (or refused).
pub type PendingPublish = Pin<Box<dyn Future<Output = Result<PublishOutcome, BrokerError>> + Send>>;

/// The state of one shard of a broker (a Redis Cluster primary), for
/// `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardState {
    /// `host:port` of the primary.
    pub address: String,
    /// Whether it answered a PING just now.
    pub up: bool,
}

/// A broker failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now, and the request never reached it
    /// (or it refused to run it); retrying later may succeed.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The request was sent and no answer came in time: it may still take
    /// effect when the broker recovers.
    #[error("no answer from the broker: {0}")]
    NoAnswer(String),
    /// The broker answered something this node does not understand.
    #[error("broker protocol error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// What a failed publish may have left in the store: nothing for sure
    /// only when the request never reached it. An answer this node could
    /// not read came from a script that ran, so it is `Unknown` too.
    #[must_use]
    pub fn publish_stored(&self) -> PublishStored {
        match self {
            BrokerError::Unavailable(_) => PublishStored::No,
            BrokerError::NoAnswer(_) | BrokerError::Internal(_) => PublishStored::Unknown,
        }
    }
}

/// Where a broker hands live messages: the node's room hub.
pub trait LiveSink: Send + Sync {
    /// A message arrived on the live feed of a room this node subscribed to.
    /// Called in feed order; must not block.
    fn deliver(&self, room: &RoomName, message: Arc<StoredMessage>);

    /// The live feed may have dropped messages (the connection to the broker
    /// was re-established): every room must be caught up from history.
    fn resync_all(&self);

    /// The live feed of these rooms may have dropped messages (on a
    /// cluster: their shard's connection was re-established, or their slot
    /// moved): each must be caught up from history.
    fn resync_rooms(&self, rooms: &[RoomName]);

    /// A room's presence changed (one user joined or left, in the room's
    /// version order). Called in feed order; must not block.
    fn presence(&self, room: &RoomName, change: PresenceChange);

    /// A signal frame (complete JSON) for a room's live subscribers.
    fn signal(&self, room: &RoomName, frame: Bytes);
}

/// The contract every broker implements; see the module docs.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// A short name for logs and `/metrics`: `memory` or `redis`.
    fn kind(&self) -> &'static str;

    /// Connects the live feed to the node's hub. Called once at start.
    fn set_live_sink(&self, sink: Weak<dyn LiveSink>);

    /// Submits one message to be stored and published atomically (or, for a
    /// `cmid` already committed in the idempotency window, answered with the
    /// original). Not `async` on purpose: the broker fixes the commit order
    /// when this is called, so publishes submitted one after the other are
    /// committed in that order even while several are in flight.
    ///
    /// The returned future fails with [`BrokerError::Unavailable`] only when
    /// the publish never reached the store (nothing was committed for
    /// sure), and with [`BrokerError::NoAnswer`] when it was sent and no
    /// answer came in time (it may yet be committed).
    fn publish(&self, request: PublishRequest) -> PendingPublish;

    /// Up to `limit` messages with ids strictly after `after`, oldest first.
    ///
    /// # Errors
    /// [`BrokerError`] when the history cannot be read.
    async fn read_after(&self, room: &RoomName, after: MessageId, limit: usize) -> Result<HistoryPage, BrokerError>;

    /// The newest `limit` messages with ids strictly before `before` (or the
    /// newest of all when `None`), returned oldest first.
    ///
    /// # Errors
    /// [`BrokerError`] when the history cannot be read.
    async fn read_before(
        &self,
        room: &RoomName,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError>;

    /// Starts the live feed of a room; returns once the broker confirmed it,
    /// so that every message published afterwards reaches the sink.
    ///
    /// # Errors
    /// [`BrokerError`] when the subscription could not be confirmed.
    async fn subscribe_live(&self, room: &RoomName) -> Result<(), BrokerError>;

    /// Stops the live feed of a room.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be told.
    async fn unsubscribe_live(&self, room: &RoomName) -> Result<(), BrokerError>;

    /// Whether the broker is reachable now.
    async fn is_ready(&self) -> bool;

    /// Registers the broker's own metrics (per shard, on a cluster) with
    /// the node's registry.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// Each shard (a Redis Cluster primary) and whether it answers now;
    /// empty for a broker without shards.
    async fn shards(&self) -> Vec<ShardState> {
        Vec::new()
    }

    /// Adds a connection to a room's presence, living `lifetime` unless
    /// refreshed, and returns the room's state after it (first `list`
    /// members). Expired entries are swept first. A change is published on
    /// the room's live feed when the entry's user was not present before.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be reached.
    async fn presence_join(
        &self,
        room: &RoomName,
        entry: &PresenceEntry,
        lifetime: std::time::Duration,
        list: usize,
    ) -> Result<PresenceState, BrokerError>;

    /// Extends the life of entries (re-adding any that expired meanwhile).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be reached.
    async fn presence_refresh(
        &self,
        room: &RoomName,
        entries: &[PresenceEntry],
        lifetime: std::time::Duration,
    ) -> Result<(), BrokerError>;

    /// Removes entries; a change is published for each user left with none.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be reached.
    async fn presence_leave(&self, room: &RoomName, entries: &[PresenceEntry]) -> Result<(), BrokerError>;

    /// Removes the room's expired entries (those of nodes that died).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be reached.
    async fn presence_sweep(&self, room: &RoomName) -> Result<(), BrokerError>;

    /// The room's count and up to `limit` members sorted after `after`
    /// (from the first when `None`), expired entries swept first.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be reached.
    async fn presence_members(
        &self,
        room: &RoomName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<PresenceState, BrokerError>;

    /// The room's presence changes after version `after`, oldest first, for
    /// a node whose live feed may have dropped some; `None` when the
    /// broker no longer holds them all (it keeps about the newest 1,000).
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be reached.
    async fn presence_changes_after(
        &self,
        room: &RoomName,
        after: u64,
    ) -> Result<Option<Vec<PresenceChange>>, BrokerError>;

    /// Hands a signal frame to every node's live subscribers of the room;
    /// nothing is stored.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker could not be reached.
    async fn signal(&self, room: &RoomName, frame: Bytes) -> Result<(), BrokerError>;
}
