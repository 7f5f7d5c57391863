//! Client sessions: the room hub (fan-out, live-feed repair), the resume
//! algorithm, per-connection queues and backpressure, rate limits, and the
//! transport-independent handling of client frames.
//!
//! Uses `broker` and `protocol`; knows nothing of sockets beyond the frame
//! type the WebSocket writer sends.

mod admission;
mod client;
mod hub;
mod outbound;
mod rate_limit;
mod resume;

pub use admission::{Admission, ConnectionSlot, Refusal as AdmissionRefusal};
pub use client::{ClientSession, MAX_PUBLISHES_IN_FLIGHT, SessionVerdict, unavailable_publish_message};
pub use hub::{RoomHub, Subscription};
pub use outbound::{
    ConnectionClosed, ConnectionHandle, ConnectionQueues, ControlKind, LiveMessage, Outbound, ReplySender,
};
pub use rate_limit::{AddressRateLimiter, InvalidFrameBudget, PublishRateLimiter};
pub use resume::{HistoryDecision, ResumeError, ResumeTarget, Resumed, read_requested_history, subscribe_and_resume};
