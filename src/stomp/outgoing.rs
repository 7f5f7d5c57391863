//! What the session says, as STOMP frames: `CONNECTED` for the session's
//! welcome, `MESSAGE` for room messages and signals, `RECEIPT` for
//! subscribes, publishes and other frames that asked for one, and `ERROR`
//! (after which the connection closes) for every refusal.
//!
//! A `MESSAGE` is written in two parts: the subscription's part
//! (`destination`, `subscription`), built once when the client subscribes,
//! and the message's part (`message-id`, `prev`, `from`, `ts`, `cmid`,
//! `content-type`, `content-length`, the body), built once per message and
//! version for every STOMP subscriber of the node. Between them go the few
//! headers of one delivery (`ack` in the client ack modes, `gap-after` after
//! a hole).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use super::frame::{Command, Frame, Version, encode, escape};
use crate::protocol::{ErrorCode, MessageId, RoomName, close_code, message_frame};
use crate::session::{Encoding, Event, LiveMessage, RoomEvent, RoomEventKind};

/// How a subscription acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// `auto`: no ACK expected.
    Auto,
    /// `client`: cumulative ACKs.
    Client,
    /// `client-individual`: one ACK per message.
    ClientIndividual,
}

impl AckMode {
    /// Parses the `ack` header of a SUBSCRIBE.
    ///
    /// # Errors
    /// What the header may hold.
    pub fn parse(header: Option<&str>) -> Result<Self, String> {
        match header {
            None | Some("auto") => Ok(AckMode::Auto),
            Some("client") => Ok(AckMode::Client),
            Some("client-individual") => Ok(AckMode::ClientIndividual),
            Some(other) => Err(format!(
                "ack {other:?} is not an ack mode; use auto, client or client-individual"
            )),
        }
    }
}

/// One STOMP subscription, as the writer needs it.
#[derive(Debug)]
pub struct StompSubscription {
    /// The client's `id`.
    pub id: String,
    /// The destination as the client wrote it.
    pub destination: String,
    /// How it acknowledges.
    pub ack: AckMode,
    /// `MESSAGE`, `destination` and `subscription`, escaped.
    prefix: String,
    /// A hole was announced: the id after which messages are missing, for
    /// the next MESSAGE's `gap-after`.
    gap_after: Option<MessageId>,
}

/// What the connection's reading and writing sides share: the negotiated
/// version and heart-beat, and the subscriptions by room.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<SharedState>,
}

#[derive(Debug, Default)]
struct SharedState {
    version: Option<Version>,
    /// How often the server sends a heart-beat (negotiated).
    heartbeat_out: Option<Duration>,
    /// The `heart-beat` header of CONNECTED.
    heartbeat_header: String,
    /// The `session` header of CONNECTED.
    session_id: String,
    subscriptions: HashMap<RoomName, StompSubscription>,
    /// The room of each subscription id (the client names them by id).
    rooms_by_id: HashMap<String, RoomName>,
    signals_sent: u64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, SharedState> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records what CONNECT negotiated, before the welcome is queued.
    pub fn connected(
        &self,
        version: Version,
        heartbeat_out: Option<Duration>,
        heartbeat_header: String,
        session_id: String,
    ) {
        let mut state = self.state();
        state.version = Some(version);
        state.heartbeat_out = heartbeat_out;
        state.heartbeat_header = heartbeat_header;
        state.session_id = session_id;
    }

    /// The negotiated version (1.2 before CONNECT: an ERROR is escaped as 1.2 says).
    #[must_use]
    pub fn version(&self) -> Version {
        self.state().version.unwrap_or(Version::V1_2)
    }

    /// How often the server sends a heart-beat.
    #[must_use]
    pub fn heartbeat_out(&self) -> Option<Duration> {
        self.state().heartbeat_out
    }

    /// Adds a subscription to `room`, before the session subscribes, so
    /// that its first frames find it.
    pub fn subscribe(&self, room: RoomName, id: String, destination: String, ack: AckMode) {
        let mut state = self.state();
        let version = state.version.unwrap_or(Version::V1_2);
        let prefix = format!(
            "MESSAGE\ndestination:{}\nsubscription:{}\n",
            escape(&destination, version),
            escape(&id, version)
        );
        state.rooms_by_id.insert(id.clone(), room.clone());
        state.subscriptions.insert(
            room,
            StompSubscription {
                id,
                destination,
                ack,
                prefix,
                gap_after: None,
            },
        );
    }

    /// Removes the subscription `id`; its room, if it had one.
    pub fn unsubscribe(&self, id: &str) -> Option<RoomName> {
        let mut state = self.state();
        let room = state.rooms_by_id.remove(id)?;
        state.subscriptions.remove(&room);
        Some(room)
    }

    /// Whether a subscription has the id `id`, and the id of the
    /// subscription to `room`, if there is one. This map is the STOMP
    /// record of the session's subscriptions: entries are added before the
    /// session subscribes and removed when it leaves.
    #[must_use]
    pub fn find(&self, id: &str, room: &RoomName) -> (bool, Option<String>) {
        let state = self.state();
        let id_taken = state.rooms_by_id.contains_key(id);
        let room_taken = state
            .subscriptions
            .get(room)
            .map(|subscription| subscription.id.clone());
        (id_taken, room_taken)
    }
}

/// Turns the session's output into STOMP frames (the text of one frame
/// each, NUL included).
#[derive(Debug)]
pub struct Outgoing {
    shared: Arc<Shared>,
    node_id: String,
}

/// One frame to send, and whether the connection closes after it.
pub struct OutgoingFrame {
    /// The frame's text, NUL included.
    pub text: String,
    /// Close with this code after it (an `ERROR`).
    pub close: Option<(u16, &'static str)>,
}

impl OutgoingFrame {
    fn open(text: String) -> Self {
        Self { text, close: None }
    }
}

impl Outgoing {
    /// The writer of a connection whose state `shared` is.
    #[must_use]
    pub fn new(shared: Arc<Shared>, node_id: String) -> Self {
        Self { shared, node_id }
    }

    /// A room message, for the subscription of its room (none when the
    /// client unsubscribed meanwhile).
    #[must_use]
    pub fn message(&self, message: &LiveMessage) -> Option<OutgoingFrame> {
        let mut state = self.shared.state();
        let version = state.version.unwrap_or(Version::V1_2);
        let subscription = state.subscriptions.get_mut(&message.room)?;
        let encoding = match version {
            Version::V1_1 => Encoding::Stomp11,
            Version::V1_2 => Encoding::Stomp12,
        };
        let part = message.encoded(encoding, |message| message_part(message, version));
        let mut text = String::with_capacity(subscription.prefix.len() + part.len() + 64);
        text.push_str(&subscription.prefix);
        if subscription.ack != AckMode::Auto {
            let _ = writeln!(text, "ack:{}", message.id);
        }
        if let Some(after) = subscription.gap_after.take() {
            let _ = writeln!(text, "gap-after:{after}");
        }
        // The part was built from a UTF-8 frame and UTF-8 headers.
        text.push_str(std::str::from_utf8(&part).unwrap_or_default());
        Some(OutgoingFrame::open(text))
    }

    /// A room event: a gap marks the room's next MESSAGE; a signal is a
    /// MESSAGE with `signal:true`; presence is not carried over STOMP.
    #[must_use]
    pub fn room_event(&self, event: &RoomEvent) -> Option<OutgoingFrame> {
        let mut state = self.shared.state();
        let version = state.version.unwrap_or(Version::V1_2);
        match event.kind() {
            RoomEventKind::Gap { after, .. } => {
                let subscription = state.subscriptions.get_mut(event.room())?;
                // The earliest hole wins when two come before a message.
                if subscription.gap_after.is_none() {
                    subscription.gap_after = Some(after.unwrap_or(MessageId::ZERO));
                }
                None
            }
            RoomEventKind::Presence => None,
            RoomEventKind::Signal => {
                let encoding = match version {
                    Version::V1_1 => Encoding::Stomp11,
                    Version::V1_2 => Encoding::Stomp12,
                };
                let part = event.encoded(encoding, |event| signal_part(event.json(), version));
                state.signals_sent += 1;
                let counter = state.signals_sent;
                let subscription = state.subscriptions.get(event.room())?;
                let mut text = String::with_capacity(subscription.prefix.len() + part.len() + 32);
                text.push_str(&subscription.prefix);
                let _ = writeln!(text, "message-id:signal-{counter}");
                text.push_str(std::str::from_utf8(&part).unwrap_or_default());
                Some(OutgoingFrame::open(text))
            }
        }
    }

    /// A control event of the session.
    #[must_use]
    pub fn event(&self, event: &Event) -> Option<OutgoingFrame> {
        let version = self.shared.version();
        let receipt =
            |req: &Option<crate::protocol::RequestTag>| req.as_ref().and_then(crate::protocol::RequestTag::text);
        let frame = match event {
            Event::Welcome { user, .. } => {
                let state = self.shared.state();
                let mut frame = Frame::new(Command::Connected)
                    .with_header("version", version.as_str())
                    .with_header("heart-beat", state.heartbeat_header.clone())
                    .with_header("server", format!("chat-relay/{}", env!("CARGO_PKG_VERSION")))
                    .with_header("session", state.session_id.clone())
                    .with_header("node", self.node_id.clone());
                if let Some(user) = user {
                    frame = frame.with_header("user-name", user.clone());
                }
                frame
            }
            Event::Subscribed {
                req,
                recovered,
                replay,
                position,
                ..
            } => {
                let mut frame = Frame::new(Command::Receipt).with_header("receipt-id", receipt(req)?);
                if let Some(recovered) = recovered {
                    frame = frame.with_header("recovered", recovered.to_string());
                }
                frame
                    .with_header("replay", replay.to_string())
                    .with_header("position", position.to_string())
            }
            Event::Ack {
                req,
                id,
                prev,
                duplicate,
                ..
            } => Frame::new(Command::Receipt)
                .with_header("receipt-id", receipt(req)?)
                .with_header("message-id", id.to_string())
                .with_header("prev", prev.to_string())
                .with_header("duplicate", duplicate.to_string()),
            Event::Receipt { req } => Frame::new(Command::Receipt).with_header("receipt-id", req.text()?),
            Event::Error(error) => {
                let mut frame = Frame::new(Command::Error)
                    .with_header("message", error.message.clone())
                    .with_header("code", error.code.as_str());
                if let Some(receipt) = receipt(&error.req) {
                    frame = frame.with_header("receipt-id", receipt);
                }
                if let Some(stored) = error.stored {
                    let stored = match stored {
                        crate::protocol::PublishStored::No => "false",
                        crate::protocol::PublishStored::Unknown => "unknown",
                    };
                    frame = frame.with_header("stored", stored);
                }
                let body = format!("{}\n", error.message);
                let frame = frame
                    .with_header("content-type", "text/plain;charset=utf-8")
                    .with_header("content-length", body.len().to_string())
                    .with_body(body);
                let (code, reason) = close_for(error.code);
                return Some(OutgoingFrame {
                    text: frame_text(&frame, version),
                    close: Some((code, reason)),
                });
            }
            // The JSON protocol's own replies, and the drain's notice (the
            // 1012 close that follows says it).
            Event::Unsubscribed { .. } | Event::Pong { .. } | Event::Refreshed { .. } | Event::Reconnect { .. } => {
                return None;
            }
        };
        Some(OutgoingFrame::open(frame_text(&frame, version)))
    }
}

/// The WebSocket close after an `ERROR` of this code.
#[must_use]
pub fn close_for(code: ErrorCode) -> (u16, &'static str) {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidRoom | ErrorCode::NotSubscribed | ErrorCode::TooManySubscriptions => {
            (1002, "STOMP protocol error: see the ERROR frame")
        }
        ErrorCode::TooLarge => (close_code::TOO_BIG, "frame or body over the limit: see the ERROR frame"),
        ErrorCode::Unauthorized => (close_code::TOKEN_EXPIRED, "not authenticated: see the ERROR frame"),
        ErrorCode::Unavailable => (
            close_code::INTERNAL,
            "the message store is unavailable: reconnect and resume",
        ),
        ErrorCode::Overloaded => (close_code::TRY_AGAIN_LATER, "node at capacity: reconnect later"),
        ErrorCode::Internal => (close_code::INTERNAL, "internal error"),
        ErrorCode::Forbidden | ErrorCode::RateLimited | ErrorCode::NotFound | ErrorCode::MethodNotAllowed => {
            (close_code::POLICY, "refused: see the ERROR frame")
        }
    }
}

/// A frame's text (server frames are UTF-8: headers and bodies alike).
fn frame_text(frame: &Frame, version: Version) -> String {
    String::from_utf8(encode(frame, version)).unwrap_or_default()
}

/// The fields of a `message` frame STOMP needs.
#[derive(serde::Deserialize)]
struct MessageFields<'a> {
    #[serde(borrow)]
    from: Option<std::borrow::Cow<'a, str>>,
    ts: Option<u64>,
    #[serde(borrow)]
    cmid: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    body: &'a serde_json::value::RawValue,
}

/// A body as STOMP carries it: a JSON string as its text, anything else
/// as its JSON, byte for byte as stored. A text holding a NUL goes as its
/// JSON instead (`"\u0000"`): readers that split frames on NUL would take
/// the rest for a frame of its own.
fn stomp_body(raw: &str) -> (String, &'static str) {
    if raw.starts_with('"')
        && let Ok(text) = serde_json::from_str::<String>(raw)
        && !text.contains('\0')
    {
        return (text, "text/plain;charset=utf-8");
    }
    (raw.to_owned(), "application/json")
}

/// The message's part of its MESSAGE frames (see the module docs).
fn message_part(message: &LiveMessage, version: Version) -> Bytes {
    let mut part = String::with_capacity(message.frame().len() + 128);
    let _ = writeln!(part, "message-id:{}", message.id);
    let _ = writeln!(part, "prev:{}", message.prev);
    let (body, content_type) = match serde_json::from_str::<MessageFields<'_>>(message.text()) {
        Ok(fields) => {
            if let Some(from) = &fields.from {
                let _ = writeln!(part, "from:{}", escape(from, version));
            }
            if let Some(ts) = fields.ts {
                let _ = writeln!(part, "ts:{ts}");
            }
            if let Some(cmid) = &fields.cmid {
                let _ = writeln!(part, "cmid:{}", escape(cmid, version));
            }
            // As stored: the parser's raw value would drop whitespace
            // around a STOMP sender's JSON.
            stomp_body(message_frame::body(message.text()).unwrap_or(fields.body.get()))
        }
        // Every stored frame has these fields; the whole frame is the
        // honest fallback.
        Err(_) => (message.text().to_owned(), "application/json"),
    };
    finish_part(part, content_type, &body)
}

/// A signal's part of its MESSAGE frames.
fn signal_part(json: &str, version: Version) -> Bytes {
    #[derive(serde::Deserialize)]
    struct SignalFields<'a> {
        #[serde(borrow)]
        from: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow)]
        body: &'a serde_json::value::RawValue,
    }
    let mut part = String::from("signal:true\n");
    let (body, content_type) = match serde_json::from_str::<SignalFields<'_>>(json) {
        Ok(fields) => {
            if let Some(from) = &fields.from {
                let _ = writeln!(part, "from:{}", escape(from, version));
            }
            stomp_body(fields.body.get())
        }
        Err(_) => (json.to_owned(), "application/json"),
    };
    finish_part(part, content_type, &body)
}

fn finish_part(mut part: String, content_type: &str, body: &str) -> Bytes {
    let _ = writeln!(part, "content-type:{content_type}");
    let _ = writeln!(part, "content-length:{}", body.len());
    part.push('\n');
    part.push_str(body);
    part.push('\0');
    Bytes::from(part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::StoredMessage;
    use crate::protocol::MessageFrameTail;

    fn live(room: &RoomName, id: MessageId, body: &str, cmid: Option<&str>) -> Arc<LiveMessage> {
        let tail = MessageFrameTail::new(Some("ann:1"), 1_700_000_000_000, cmid, body);
        let frame = message_frame::compose(room, id, MessageId::ZERO, tail.as_str());
        LiveMessage::from_stored(
            room,
            &StoredMessage {
                id,
                prev: MessageId::ZERO,
                frame: Bytes::from(frame),
                trace: None,
            },
        )
        .unwrap()
    }

    fn connected(version: Version) -> (Arc<Shared>, Outgoing) {
        let shared = Arc::new(Shared::default());
        shared.connected(version, None, "0,0".to_owned(), "s-1".to_owned());
        (shared.clone(), Outgoing::new(shared, "node-1".to_owned()))
    }

    #[test]
    fn a_message_carries_its_subscription_its_ids_and_the_body_as_sent() {
        let (shared, outgoing) = connected(Version::V1_2);
        let room = RoomName::parse("chat.room.42").unwrap();
        shared.subscribe(
            room.clone(),
            "sub-0".to_owned(),
            "/topic/chat/room/42".to_owned(),
            AckMode::Client,
        );
        let id = MessageId::new(5, 0);
        let json = live(&room, id, r#"{"text":"hi"}"#, Some("c:1"));
        let frame = outgoing.message(&json).unwrap();
        assert_eq!(
            frame.text,
            "MESSAGE\ndestination:/topic/chat/room/42\nsubscription:sub-0\nack:5-0\nmessage-id:5-0\nprev:0-0\nfrom:ann\\c1\nts:1700000000000\ncmid:c\\c1\ncontent-type:application/json\ncontent-length:13\n\n{\"text\":\"hi\"}\0"
        );
        let text = live(&room, MessageId::new(6, 0), r#""hello\nworld""#, None);
        let frame = outgoing.message(&text).unwrap();
        assert!(
            frame
                .text
                .ends_with("content-type:text/plain;charset=utf-8\ncontent-length:11\n\nhello\nworld\0"),
            "{}",
            frame.text
        );
        let other = live(&RoomName::parse("elsewhere").unwrap(), MessageId::new(7, 0), "1", None);
        assert!(outgoing.message(&other).is_none(), "no subscription, no frame");
    }

    #[test]
    fn a_gap_marks_the_next_message_of_its_room_once() {
        let (shared, outgoing) = connected(Version::V1_1);
        let room = RoomName::parse("lobby").unwrap();
        shared.subscribe(room.clone(), "s".to_owned(), "/topic/lobby".to_owned(), AckMode::Auto);
        let gap = RoomEvent::gap(&room, Some(MessageId::new(3, 0)), Some(MessageId::new(9, 0)));
        assert!(outgoing.room_event(&gap).is_none());
        let first = outgoing.message(&live(&room, MessageId::new(9, 0), "1", None)).unwrap();
        assert!(first.text.contains("\ngap-after:3-0\n"), "{}", first.text);
        let second = outgoing
            .message(&live(&room, MessageId::new(10, 0), "2", None))
            .unwrap();
        assert!(!second.text.contains("gap-after"));
    }

    #[test]
    fn an_error_closes_and_says_why_with_the_receipt() {
        let (_shared, outgoing) = connected(Version::V1_2);
        let event = Event::Error(Box::new(crate::session::ErrorEvent {
            req: Some(crate::protocol::RequestTag::from_text("r-7")),
            code: ErrorCode::Forbidden,
            message: "your token does not allow publishing to x".to_owned(),
            room: None,
            retry_after_ms: None,
            stored: None,
        }));
        let frame = outgoing.event(&event).unwrap();
        assert!(
            frame.text.starts_with(
                "ERROR\nmessage:your token does not allow publishing to x\ncode:forbidden\nreceipt-id:r-7\n"
            ),
            "{}",
            frame.text
        );
        assert_eq!(frame.close.map(|(code, _)| code), Some(close_code::POLICY));
    }
}
