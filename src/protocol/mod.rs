//! The v1 wire protocol: ids, room names, client frame decoding, the message
//! frame, server frame encoding and error codes.
//!
//! Pure data and text: no I/O, no tokio, no axum. Everything a client sends is
//! validated here before any other module sees it.

pub mod body;
mod client_frame;
pub mod message_frame;
mod message_id;
mod room;
pub mod server_frame;

pub use body::{BodyRefusal, MAX_BODY_DEPTH, checked_body, compact_json};
pub use client_frame::{
    ClientFrame, ClientRequest, DecodeLimits, FrameRejection, MAX_CMID_BYTES, MAX_REQ_BYTES, MAX_SIGNAL_BYTES,
    ReplayRequest, RequestTag, check_cmid, decode_client_frame, idempotency_key,
};
pub use message_frame::MessageFrameTail;
pub use message_id::{InvalidMessageId, MessageId, wall_clock_ms};
pub use room::{InvalidRoomName, MAX_ROOM_NAME_BYTES, RoomName};
pub use server_frame::PublishStored;

/// The `code` of an `error` frame or an HTTP error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, not an object, unknown `type`, missing or mistyped field.
    BadRequest,
    /// The room name breaks the naming rule.
    InvalidRoom,
    /// `body` over `max_message_bytes`.
    TooLarge,
    /// The token does not allow this room or action.
    Forbidden,
    /// Publish rate over the limit.
    RateLimited,
    /// The broker is unreachable.
    Unavailable,
    /// Unsubscribe of a room not subscribed.
    NotSubscribed,
    /// A subscribe past `max_subscriptions` per connection.
    TooManySubscriptions,
    /// Missing or invalid credentials (HTTP only).
    Unauthorized,
    /// No such endpoint (HTTP only).
    NotFound,
    /// Wrong method for an endpoint (HTTP only).
    MethodNotAllowed,
    /// The node is draining or at capacity (HTTP only).
    Overloaded,
    /// A bug; logged with a trace id.
    Internal,
}

impl ErrorCode {
    /// Every code, for metrics that list them all from the start.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadRequest,
        ErrorCode::InvalidRoom,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::NotSubscribed,
        ErrorCode::TooManySubscriptions,
        ErrorCode::Unauthorized,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Overloaded,
        ErrorCode::Internal,
    ];

    /// The wire form.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether a client sending this counts against its invalid-frame
    /// budget: every refusal of a frame the client should not have sent.
    /// (`rate_limited` has a budget of its own; `unavailable` and
    /// `internal` are the node's fault.)
    #[must_use]
    pub const fn is_client_fault(self) -> bool {
        matches!(
            self,
            ErrorCode::BadRequest
                | ErrorCode::InvalidRoom
                | ErrorCode::TooLarge
                | ErrorCode::Forbidden
                | ErrorCode::NotSubscribed
                | ErrorCode::TooManySubscriptions
                | ErrorCode::Unauthorized
        )
    }
}

/// WebSocket close codes of the protocol.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// Binary frame received.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Too many invalid frames.
    pub const POLICY: u16 = 1008;
    /// Frame over the hard limit.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Node restarting or draining: reconnect and resume.
    pub const RESTARTING: u16 = 1012;
    /// Node overloaded: reconnect elsewhere later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Slow consumer: reconnect and resume.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// Token expired or revoked.
    pub const TOKEN_EXPIRED: u16 = 4001;
}
