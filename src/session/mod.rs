//! Client sessions: the room hub (fan-out, live-feed repair), the resume
//! algorithm, per-connection queues and backpressure, rate limits, and the
//! transport-independent handling of client frames.
//!
//! Uses `broker` and `protocol`, and gets what it needs of the node as a
//! [`SessionContext`]; it never imports the node, axum or a WebSocket
//! crate. What it says to a client is an [`Event`], a [`RoomEvent`] or a
//! [`LiveMessage`]; each transport encodes them in its own framing.

mod admission;
mod client;
mod context;
mod event;
mod handover;
mod history;
mod hub;
mod outbound;
mod presence;
mod publisher;
mod rate_limit;
mod resume;

pub use admission::{Admission, ConnectionSlot, Refusal as AdmissionRefusal};
pub use client::{
    ClientSession, MAX_PRESENCE_SUBSCRIPTIONS, MAX_PUBLISHES_IN_FLIGHT, SessionVerdict, WriteRefusal,
    unavailable_publish_message,
};
pub use context::{SessionContext, SessionLimits};
pub use event::{Encoding, Encodings, ErrorEvent, Event, RoomEvent, RoomEventKind};
pub use handover::HANDOVER_MARGIN;
pub use history::{
    BoundedPage, HistoryBudget, ReplayMemory, ReplayMemoryBusy, ReplayReservation, read_backward, read_forward,
};
pub use hub::{BufferLimit, RoomHub, Subscription};
pub use outbound::{
    ConnectionClosed, ConnectionHandle, ConnectionQueues, Direct, DirectWrite, LiveMessage, Outbound, ReplySender,
};
pub use presence::{PRESENCE_BATCH, PresenceTiming};
pub use publisher::Publisher;
pub use rate_limit::{ClientWriteLimiter, InvalidFrameBudget, KeyedPublishRateLimiter, PublishRateLimiter};
pub use resume::{
    HistoryDecision, REPLAY_MEMORY_WAIT, ResumeError, ResumeTarget, Resumed, read_requested_history,
    subscribe_and_resume,
};
