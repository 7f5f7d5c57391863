//! STOMP 1.2 (and 1.1) as a third client transport, beside the JSON
//! WebSocket protocol and SSE (`stomp.md` is the contract).
//!
//! Only the frame layer exists so far: [`frame`] reads frames out of the
//! bytes a WebSocket (or SockJS) delivers, however they are split, and
//! writes them, with the header escaping of the negotiated version. The
//! mapping onto the session core (destinations, resume, receipts) comes on
//! top of it.

pub mod frame;

pub use frame::{Command, Decoded, Decoder, Frame, FrameError, Version, encode, escape, unescape};
