//! Encoding of server-to-client frames.
//!
//! Control frames (`welcome`, `ack`, `error`, ...) are serialized with serde.
//! A `message` frame is composed once per message by concatenation around the
//! parts only the broker knows (`id`, `prev`), so that the Redis publish script
//! can build byte-for-byte the same frame; see [`MessageFrameTail`].

use serde::Serialize;
use serde_json::value::RawValue;

use super::{ErrorCode, MessageId, RequestTag, RoomName};

fn req_raw(req: Option<&RequestTag>) -> Option<&RawValue> {
    req.map(RequestTag::as_raw)
}

/// The limits announced in `welcome`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AnnouncedLimits {
    /// Largest serialized `body`.
    pub max_message_bytes: usize,
    /// Most messages replayed on one subscribe or history page.
    pub max_replay: usize,
    /// Publishes per second per connection.
    pub publish_rate: u32,
}

fn to_json<T: Serialize>(frame: &T) -> String {
    // Serializing these plain structs of strings and numbers cannot fail.
    serde_json::to_string(frame)
        .unwrap_or_else(|_| String::from(r#"{"type":"error","code":"internal","message":"frame encoding failed"}"#))
}

/// `welcome`: first frame after the upgrade.
#[must_use]
pub fn welcome(node: &str, user: Option<&str>, limits: AnnouncedLimits) -> String {
    #[derive(Serialize)]
    struct Welcome<'a> {
        r#type: &'static str,
        node: &'a str,
        user: Option<&'a str>,
        limits: AnnouncedLimits,
    }
    to_json(&Welcome {
        r#type: "welcome",
        node,
        user,
        limits,
    })
}

/// `subscribed`: `recovered` is present iff the subscribe had `since`.
#[must_use]
pub fn subscribed(req: Option<&RequestTag>, room: &RoomName, recovered: Option<bool>, replay: usize) -> String {
    #[derive(Serialize)]
    struct Subscribed<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a RawValue>,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        replay: usize,
    }
    to_json(&Subscribed {
        r#type: "subscribed",
        req: req_raw(req),
        room: room.as_str(),
        recovered,
        replay,
    })
}

/// `unsubscribed`.
#[must_use]
pub fn unsubscribed(req: Option<&RequestTag>, room: &RoomName) -> String {
    #[derive(Serialize)]
    struct Unsubscribed<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a RawValue>,
        room: &'a str,
    }
    to_json(&Unsubscribed {
        r#type: "unsubscribed",
        req: req_raw(req),
        room: room.as_str(),
    })
}

/// `ack` of a publish. Composed by hand: it is sent once per publish, and
/// every field but `req` is known not to need escaping.
#[must_use]
pub fn ack(req: Option<&RequestTag>, room: &RoomName, id: MessageId, prev: MessageId, duplicate: bool) -> String {
    use std::fmt::Write;
    let mut frame = String::with_capacity(96 + room.as_str().len());
    frame.push_str("{\"type\":\"ack\",");
    if let Some(req) = req {
        frame.push_str("\"req\":");
        frame.push_str(req.as_raw().get());
        frame.push(',');
    }
    // Writing into a String cannot fail.
    let _ = write!(
        frame,
        "\"room\":\"{room}\",\"id\":\"{id}\",\"prev\":\"{prev}\",\"duplicate\":{duplicate}}}"
    );
    frame
}

/// `pong`.
#[must_use]
pub fn pong(req: Option<&RequestTag>) -> String {
    #[derive(Serialize)]
    struct Pong<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a RawValue>,
    }
    to_json(&Pong {
        r#type: "pong",
        req: req_raw(req),
    })
}

/// `refreshed`.
#[must_use]
pub fn refreshed(req: Option<&RequestTag>, exp: u64) -> String {
    #[derive(Serialize)]
    struct Refreshed<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a RawValue>,
        exp: u64,
    }
    to_json(&Refreshed {
        r#type: "refreshed",
        req: req_raw(req),
        exp,
    })
}

/// The contents of an `error` frame.
#[derive(Debug, Clone)]
pub struct ErrorFrame<'a> {
    /// The `req` of the frame that failed.
    pub req: Option<&'a RequestTag>,
    /// Protocol error code.
    pub code: ErrorCode,
    /// For humans: what was wrong and what to do.
    pub message: &'a str,
    /// The room concerned.
    pub room: Option<&'a RoomName>,
    /// When to retry (`rate_limited`, `unavailable`).
    pub retry_after_ms: Option<u64>,
}

/// `error`.
#[must_use]
pub fn error(frame: &ErrorFrame<'_>) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a RawValue>,
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    }
    to_json(&Error {
        r#type: "error",
        req: req_raw(frame.req),
        code: frame.code.as_str(),
        message: frame.message,
        room: frame.room.map(RoomName::as_str),
        retry_after_ms: frame.retry_after_ms,
    })
}

/// `gap`: continuity broke after `after` and could not be repaired.
#[must_use]
pub fn gap(room: &RoomName, after: Option<MessageId>, next: Option<MessageId>) -> String {
    #[derive(Serialize)]
    struct Gap<'a> {
        r#type: &'static str,
        room: &'a str,
        after: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    }
    to_json(&Gap {
        r#type: "gap",
        room: room.as_str(),
        after: after.map(|id| id.to_string()),
        next: next.map(|id| id.to_string()),
    })
}

/// `reconnect`: sent before a 1012 close.
#[must_use]
pub fn reconnect(reason: &str, delay_ms: u64) -> String {
    #[derive(Serialize)]
    struct Reconnect<'a> {
        r#type: &'static str,
        reason: &'a str,
        delay_ms: u64,
    }
    to_json(&Reconnect {
        r#type: "reconnect",
        reason,
        delay_ms,
    })
}

/// The publisher-side part of a `message` frame: everything after `prev`.
///
/// A message frame is `{"type":"message","room":R,"id":I,"prev":P,` followed
/// by this tail: `"from":F,"ts":T[,"cmid":C],"body":B}`. The tail is built
/// once by the publishing node; the broker adds the head when it assigns the
/// id, in the same atomic step that stores the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFrameTail(String);

impl MessageFrameTail {
    /// Builds the tail. `body` must be compact JSON (see
    /// [`compact_json`](super::compact_json)).
    #[must_use]
    pub fn new(from: Option<&str>, ts_ms: u64, cmid: Option<&str>, body: &str) -> Self {
        let mut tail = String::with_capacity(body.len() + 96);
        tail.push_str("\"from\":");
        tail.push_str(&to_json(&from));
        tail.push_str(",\"ts\":");
        tail.push_str(&ts_ms.to_string());
        if let Some(cmid) = cmid {
            tail.push_str(",\"cmid\":");
            tail.push_str(&to_json(&cmid));
        }
        tail.push_str(",\"body\":");
        tail.push_str(body);
        tail.push('}');
        Self(tail)
    }

    /// The tail as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The `ts` of a `message` frame composed by [`message_frame`] (or the
/// script that mirrors it). The first `,"ts":` is the key: it follows
/// `from`, a JSON string or null in which a bare quote cannot occur.
#[must_use]
pub fn message_ts_ms(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b",\"ts\":";
    let start = frame.windows(KEY.len()).position(|window| window == KEY)? + KEY.len();
    let digits = frame[start..].iter().take_while(|byte| byte.is_ascii_digit()).count();
    std::str::from_utf8(&frame[start..start + digits]).ok()?.parse().ok()
}

/// Composes a whole `message` frame from the broker's parts and the tail.
#[must_use]
pub fn message_frame(room: &RoomName, id: MessageId, prev: MessageId, tail: &str) -> String {
    let mut frame = String::with_capacity(tail.len() + room.as_str().len() + 96);
    frame.push_str("{\"type\":\"message\",\"room\":\"");
    frame.push_str(room.as_str());
    frame.push_str("\",\"id\":\"");
    frame.push_str(&id.to_string());
    frame.push_str("\",\"prev\":\"");
    frame.push_str(&prev.to_string());
    frame.push_str("\",");
    frame.push_str(tail);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn ts_is_read_from_the_frame_even_when_from_or_body_mention_it() {
        let room = RoomName::parse("lobby").unwrap();
        let tail = MessageFrameTail::new(Some(r#"x","ts":1"#), 1_795_579_107_415, None, r#"{"ts":3}"#);
        let frame = message_frame(&room, MessageId::new(5, 1), MessageId::new(4, 0), tail.as_str());
        assert_eq!(message_ts_ms(frame.as_bytes()), Some(1_795_579_107_415));
        assert_eq!(message_ts_ms(b"{\"type\":\"message\"}"), None);
    }

    #[test]
    fn message_frame_is_valid_json_with_every_field() {
        let room = RoomName::parse("lobby").unwrap();
        let tail = MessageFrameTail::new(Some("ann\"e"), 17, Some("c-1"), r#"{"t":"hi"}"#);
        let frame = message_frame(&room, MessageId::new(5, 1), MessageId::new(4, 0), tail.as_str());
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            value,
            json!({"type":"message","room":"lobby","id":"5-1","prev":"4-0","from":"ann\"e","ts":17,"cmid":"c-1","body":{"t":"hi"}})
        );
        let anonymous = MessageFrameTail::new(None, 1, None, "3");
        let value: Value = serde_json::from_str(&message_frame(
            &room,
            MessageId::ZERO,
            MessageId::ZERO,
            anonymous.as_str(),
        ))
        .unwrap();
        assert_eq!(value["from"], Value::Null);
        assert!(value.get("cmid").is_none());
    }

    #[test]
    fn ack_is_valid_json_with_and_without_req() {
        let room = RoomName::parse("r").unwrap();
        let plain = ack(None, &room, MessageId::new(2, 0), MessageId::new(1, 5), false);
        assert_eq!(
            serde_json::from_str::<Value>(&plain).unwrap(),
            json!({"type":"ack","room":"r","id":"2-0","prev":"1-5","duplicate":false})
        );
        let tag: crate::protocol::ClientFrame = crate::protocol::decode_client_frame(
            r#"{"type":"ping","req":"a\"b"}"#,
            crate::protocol::DecodeLimits {
                max_message_bytes: 10,
                max_replay: 1,
            },
        )
        .unwrap();
        let tagged = ack(tag.req.as_ref(), &room, MessageId::new(2, 0), MessageId::ZERO, true);
        assert_eq!(serde_json::from_str::<Value>(&tagged).unwrap()["req"], "a\"b");
    }

    #[test]
    fn control_frames_omit_absent_optional_fields() {
        let room = RoomName::parse("r").unwrap();
        assert_eq!(
            subscribed(None, &room, None, 0),
            r#"{"type":"subscribed","room":"r","replay":0}"#
        );
        assert_eq!(pong(None), r#"{"type":"pong"}"#);
        let text = error(&ErrorFrame {
            req: None,
            code: ErrorCode::RateLimited,
            message: "slow down",
            room: Some(&room),
            retry_after_ms: Some(20),
        });
        assert_eq!(
            text,
            r#"{"type":"error","code":"rate_limited","message":"slow down","room":"r","retry_after_ms":20}"#
        );
    }
}
