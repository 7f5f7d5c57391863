//! What a client session needs of its node, and nothing more: the room hub,
//! the publisher, metrics, the authenticator (for `refresh`) and the limits
//! it enforces. Every transport's session gets the same context; nothing in
//! `session` reaches up into the node that assembles it.

use std::sync::Arc;

use super::history::ReplayMemory;
use super::hub::RoomHub;
use super::publisher::Publisher;
use super::rate_limit::ClientWriteLimiter;
use crate::auth::Authenticator;
use crate::protocol::DecodeLimits;
use crate::protocol::server_frame::AnnouncedLimits;
use crate::telemetry::Metrics;

/// The limits a session enforces and announces.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// What the client frame decoder checks.
    pub decode: DecodeLimits,
    /// What `welcome` announces.
    pub announced: AnnouncedLimits,
    /// Invalid frames a connection may send per minute before it is closed.
    pub invalid_frame_limit: u32,
    /// Publishes and signals per second per client, across connections.
    pub client_publish_rate: u32,
    /// Bytes of bodies per second per client, across connections.
    pub client_publish_bytes: u32,
    /// Most bytes of messages on one resume.
    pub max_replay_bytes: usize,
}

/// See the module docs.
pub struct SessionContext {
    /// Shown in `welcome`.
    pub node_id: String,
    /// Local rooms and fan-out.
    pub hub: Arc<RoomHub>,
    /// Where publishes go.
    pub publisher: Publisher,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Credentials to identity, for `refresh`.
    pub authenticator: Arc<Authenticator>,
    /// What the session enforces.
    pub limits: SessionLimits,
    /// What each client may write across all its connections and HTTP.
    pub client_writes: ClientWriteLimiter,
    /// What history reads may hold of the node's memory at once.
    pub replay_memory: ReplayMemory,
}
