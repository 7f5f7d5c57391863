//! What a session tells its client, before any transport's framing: the
//! control events of one connection ([`Event`]), those a room shares among
//! its subscribers ([`RoomEvent`]), and the cache in which each transport
//! keeps its encoding of a shared item ([`Encodings`]).
//!
//! The session decides *what* to say; `http::ws` and `http::sse` say it as
//! JSON text (written here once, since both use it) and `stomp` as STOMP
//! frames. A message or room event fanned out to many subscribers is
//! encoded once per transport and framing, by the first subscriber that
//! needs it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::protocol::server_frame::{self, AnnouncedLimits, PresenceSnapshot};
use crate::protocol::{ErrorCode, MessageId, PublishStored, RequestTag, RoomName};

/// The encodings a shared item may be cached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// One Server-Sent Event.
    Sse,
    /// What a STOMP 1.1 `MESSAGE` carries after its per-subscription headers.
    Stomp11,
    /// The same for STOMP 1.2 (whose header escaping differs).
    Stomp12,
    /// The JSON protocol's frame as one WebSocket text frame, header
    /// included (server frames are unmasked: the same bytes for everyone).
    WebSocketText,
}

impl Encoding {
    const COUNT: usize = 4;

    const fn slot(self) -> usize {
        match self {
            Encoding::Sse => 0,
            Encoding::Stomp11 => 1,
            Encoding::Stomp12 => 2,
            Encoding::WebSocketText => 3,
        }
    }
}

/// Each transport's encoding of one shared item, built on first use.
#[derive(Debug, Default)]
pub struct Encodings {
    slots: [OnceLock<Bytes>; Encoding::COUNT],
}

impl Encodings {
    /// The item in `encoding`, built by `build` the first time it is asked
    /// for, then shared.
    pub fn get_or_build(&self, encoding: Encoding, build: impl FnOnce() -> Bytes) -> Bytes {
        self.slots[encoding.slot()].get_or_init(build).clone()
    }
}

/// A control event of one connection.
#[derive(Debug)]
pub enum Event {
    /// The session is open.
    Welcome {
        /// The node's id.
        node_id: String,
        /// The token's subject.
        user: Option<String>,
        /// What the session enforces.
        limits: AnnouncedLimits,
    },
    /// A subscribe completed; its replay follows.
    Subscribed {
        /// The request's tag.
        req: Option<RequestTag>,
        /// The room.
        room: RoomName,
        /// Whether everything after `since` is replayed (present iff `since` was).
        recovered: Option<bool>,
        /// How many messages the replay holds.
        replay: usize,
        /// The id right before the first message delivered (protocol.md,
        /// "Positions").
        position: MessageId,
        /// Who is in the room, when presence was asked for.
        presence: Option<PresenceSnapshot>,
    },
    /// An unsubscribe completed.
    Unsubscribed {
        /// The request's tag.
        req: Option<RequestTag>,
        /// The room.
        room: RoomName,
    },
    /// A publish was committed.
    Ack {
        /// The request's tag.
        req: Option<RequestTag>,
        /// The room.
        room: RoomName,
        /// The message's id.
        id: MessageId,
        /// The id before it.
        prev: MessageId,
        /// Whether its `cmid` was committed before (nothing new was stored).
        duplicate: bool,
    },
    /// A request was refused or failed (boxed: rare, and the largest).
    Error(Box<ErrorEvent>),
    /// The answer to `ping`.
    Pong {
        /// The request's tag.
        req: Option<RequestTag>,
    },
    /// A refresh replaced the token.
    Refreshed {
        /// The request's tag.
        req: Option<RequestTag>,
        /// The new expiry (Unix seconds).
        exp: u64,
    },
    /// The node is going away: reconnect after about `delay_ms`.
    Reconnect {
        /// Why.
        reason: &'static str,
        /// Suggested delay.
        delay_ms: u64,
    },
    /// A request that asked to be told when it was processed was (STOMP's
    /// receipts); the JSON protocol has no such frame and skips it.
    Receipt {
        /// The request's tag.
        req: RequestTag,
    },
}

/// A refusal or failure, as [`Event::Error`] carries it.
#[derive(Debug)]
pub struct ErrorEvent {
    /// The request's tag.
    pub req: Option<RequestTag>,
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong and what to do, for humans.
    pub message: String,
    /// The room it concerns.
    pub room: Option<RoomName>,
    /// When to retry.
    pub retry_after_ms: Option<u64>,
    /// For a failed publish: whether it may yet be stored.
    pub stored: Option<PublishStored>,
}

impl Event {
    /// The event as a JSON protocol frame; `None` for what that protocol
    /// does not say ([`Event::Receipt`]).
    #[must_use]
    pub fn to_json(&self) -> Option<String> {
        Some(match self {
            Event::Welcome { node_id, user, limits } => server_frame::welcome(node_id, user.as_deref(), *limits),
            Event::Subscribed {
                req,
                room,
                recovered,
                replay,
                position,
                presence,
            } => server_frame::subscribed(req.as_ref(), room, *recovered, *replay, *position, presence.as_ref()),
            Event::Unsubscribed { req, room } => server_frame::unsubscribed(req.as_ref(), room),
            Event::Ack {
                req,
                room,
                id,
                prev,
                duplicate,
            } => server_frame::ack(req.as_ref(), room, *id, *prev, *duplicate),
            Event::Error(error) => server_frame::error(&server_frame::ErrorFrame {
                req: error.req.as_ref(),
                code: error.code,
                message: &error.message,
                room: error.room.as_ref(),
                retry_after_ms: error.retry_after_ms,
                stored: error.stored,
            }),
            Event::Pong { req } => server_frame::pong(req.as_ref()),
            Event::Refreshed { req, exp } => server_frame::refreshed(req.as_ref(), *exp),
            Event::Reconnect { reason, delay_ms } => server_frame::reconnect(reason, *delay_ms),
            Event::Receipt { .. } => return None,
        })
    }

    /// The event's name on an SSE stream.
    #[must_use]
    pub const fn sse_name(&self) -> &'static str {
        match self {
            Event::Welcome { .. } => "welcome",
            Event::Subscribed { .. } => "subscribed",
            Event::Reconnect { .. } => "reconnect",
            Event::Error(_) => "error",
            _ => "reply",
        }
    }
}

/// What a [`RoomEvent`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomEventKind {
    /// Messages are missing between `after` and `next` and history no
    /// longer holds them.
    Gap {
        /// The last id before the hole, when known.
        after: Option<MessageId>,
        /// The first id after it, when known.
        next: Option<MessageId>,
    },
    /// Members joined or left.
    Presence,
    /// A signal (typing, read marks): live only, never stored.
    Signal,
}

/// A control event about a room, shared by the subscribers it goes to.
#[derive(Debug)]
pub struct RoomEvent {
    room: RoomName,
    kind: RoomEventKind,
    /// The JSON protocol frame; valid UTF-8.
    json: Bytes,
    encodings: Encodings,
}

impl RoomEvent {
    fn new(room: RoomName, kind: RoomEventKind, json: String) -> Arc<Self> {
        Arc::new(Self {
            room,
            kind,
            json: Bytes::from(json),
            encodings: Encodings::default(),
        })
    }

    /// A gap between `after` and `next`.
    #[must_use]
    pub fn gap(room: &RoomName, after: Option<MessageId>, next: Option<MessageId>) -> Arc<Self> {
        let json = server_frame::gap(room, after, next);
        Self::new(room.clone(), RoomEventKind::Gap { after, next }, json)
    }

    /// A presence frame (JSON, built by the hub).
    #[must_use]
    pub fn presence(room: &RoomName, json: String) -> Arc<Self> {
        Self::new(room.clone(), RoomEventKind::Presence, json)
    }

    /// A signal frame as the broker carried it (JSON, checked UTF-8).
    #[must_use]
    pub fn signal(room: &RoomName, json: String) -> Arc<Self> {
        Self::new(room.clone(), RoomEventKind::Signal, json)
    }

    /// The room.
    #[must_use]
    pub fn room(&self) -> &RoomName {
        &self.room
    }

    /// What it is.
    #[must_use]
    pub fn kind(&self) -> RoomEventKind {
        self.kind
    }

    /// The JSON protocol frame.
    #[must_use]
    pub fn json(&self) -> &str {
        // Made from a `String`; the fallback is never taken.
        std::str::from_utf8(&self.json).unwrap_or_default()
    }

    /// The JSON protocol frame as shared bytes (valid UTF-8).
    #[must_use]
    pub fn json_bytes(&self) -> &Bytes {
        &self.json
    }

    /// The event's name on an SSE stream.
    #[must_use]
    pub const fn sse_name(&self) -> &'static str {
        match self.kind {
            RoomEventKind::Gap { .. } => "gap",
            RoomEventKind::Presence => "presence",
            RoomEventKind::Signal => "signal",
        }
    }

    /// The event in `encoding`, built once for all its subscribers.
    pub fn encoded(&self, encoding: Encoding, build: impl FnOnce(&Self) -> Bytes) -> Bytes {
        self.encodings.get_or_build(encoding, || build(self))
    }
}
