//! STOMP 1.2 (and 1.1) as a third client transport, beside the JSON
//! WebSocket protocol and SSE (`stomp.md` is the contract).
//!
//! - [`frame`]: frames on the wire, read out of whatever pieces a
//!   WebSocket (or SockJS) delivers, and written with the header escaping
//!   of the negotiated version.
//! - [`destination`]: `/topic/...` destinations and application routes to
//!   rooms.
//! - [`session`]: a client's frames onto the session core (CONNECT,
//!   SUBSCRIBE with resume, SEND with `cmid`, receipts, transactions).
//! - [`outgoing`]: what the session says, as STOMP frames.
//!
//! No socket and no HTTP here: `http::stomp` serves it on WebSockets and
//! SockJS through the driver every WebSocket protocol shares.

pub mod destination;
pub mod frame;
pub mod outgoing;
pub mod session;

pub use destination::{AppRoutes, topic_room};
pub use frame::{Command, Decoded, Decoder, Frame, FrameError, Version, encode, escape, unescape};
pub use outgoing::{AckMode, Outgoing, OutgoingFrame, Shared};
pub use session::{MAX_PRE_CONNECT_FRAME_BYTES, StompContext, StompSession};
