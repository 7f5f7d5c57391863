//! Encoding of server-to-client frames.
//!
//! Control frames (`welcome`, `ack`, `error`, ...) are serialized with serde
//! (or, for `ack`, composed by hand). The `message` frame has its own owner,
//! [`super::message_frame`].

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
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
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

/// The room's presence as a `subscribed` reply carries it (presence.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PresenceSnapshot {
    /// Distinct users in the room (anonymous connections count one each).
    pub count: u64,
    /// The first members in sorted order, at most [`PRESENCE_SNAPSHOT_MEMBERS`].
    pub members: Vec<String>,
}

/// Most members a `subscribed` reply lists; the member endpoint pages the rest.
pub const PRESENCE_SNAPSHOT_MEMBERS: usize = 100;

/// `subscribed`: `recovered` is present iff the subscribe had `since`;
/// `presence` iff it asked for presence.
#[must_use]
pub fn subscribed(
    req: Option<&RequestTag>,
    room: &RoomName,
    recovered: Option<bool>,
    replay: usize,
    position: MessageId,
    presence: Option<&PresenceSnapshot>,
) -> String {
    #[derive(Serialize)]
    struct Subscribed<'a> {
        r#type: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        req: Option<&'a RawValue>,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        replay: usize,
        position: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        presence: Option<&'a PresenceSnapshot>,
    }
    to_json(&Subscribed {
        r#type: "subscribed",
        req: req_raw(req),
        room: room.as_str(),
        recovered,
        replay,
        position: position.to_string(),
        presence,
    })
}

/// `presence`: one batch of changes of a room's members.
#[must_use]
pub fn presence(room: &RoomName, joined: &[&str], left: &[&str], count: u64) -> String {
    #[derive(Serialize)]
    struct Presence<'a> {
        r#type: &'static str,
        room: &'a str,
        joined: &'a [&'a str],
        left: &'a [&'a str],
        count: u64,
    }
    to_json(&Presence {
        r#type: "presence",
        room: room.as_str(),
        joined,
        left,
        count,
    })
}

/// `signal`: `body` is compact JSON text, copied as it is.
#[must_use]
pub fn signal(room: &RoomName, from: Option<&str>, body: &str) -> String {
    #[derive(Serialize)]
    struct Signal<'a> {
        r#type: &'static str,
        room: &'a str,
        from: Option<&'a str>,
        body: Option<&'a RawValue>,
    }
    // Bodies are validated JSON before they get here; anything else is null.
    let body = serde_json::from_str::<&RawValue>(body).ok();
    to_json(&Signal {
        r#type: "signal",
        room: room.as_str(),
        from,
        body,
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
    /// For a publish answered `unavailable`: whether it may have been stored.
    pub stored: Option<PublishStored>,
}

/// What a publish answered `unavailable` did to the store: the `stored`
/// field of the `error` frame and of the HTTP 503 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStored {
    /// `false`: the publish never reached the store; nothing was stored.
    No,
    /// `"unknown"`: it was sent and no answer came in time; it may yet be
    /// committed. A retry with the same `cmid` tells (its `ack` then has
    /// `duplicate: true` and the id).
    Unknown,
}

impl PublishStored {
    /// The wire value: `false` or `"unknown"`.
    #[must_use]
    pub fn to_json(self) -> serde_json::Value {
        match self {
            PublishStored::No => serde_json::Value::Bool(false),
            PublishStored::Unknown => serde_json::Value::from("unknown"),
        }
    }
}

impl Serialize for PublishStored {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PublishStored::No => serializer.serialize_bool(false),
            PublishStored::Unknown => serializer.serialize_str("unknown"),
        }
    }
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
        #[serde(skip_serializing_if = "Option::is_none")]
        stored: Option<PublishStored>,
    }
    to_json(&Error {
        r#type: "error",
        req: req_raw(frame.req),
        code: frame.code.as_str(),
        message: frame.message,
        room: frame.room.map(RoomName::as_str),
        retry_after_ms: frame.retry_after_ms,
        stored: frame.stored,
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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
            subscribed(None, &room, None, 0, MessageId::ZERO, None),
            r#"{"type":"subscribed","room":"r","replay":0,"position":"0-0"}"#
        );
        assert_eq!(pong(None), r#"{"type":"pong"}"#);
        let text = error(&ErrorFrame {
            req: None,
            code: ErrorCode::RateLimited,
            message: "slow down",
            room: Some(&room),
            retry_after_ms: Some(20),
            stored: None,
        });
        assert_eq!(
            text,
            r#"{"type":"error","code":"rate_limited","message":"slow down","room":"r","retry_after_ms":20}"#
        );
        for (stored, wire) in [(PublishStored::No, "false"), (PublishStored::Unknown, "\"unknown\"")] {
            let text = error(&ErrorFrame {
                req: None,
                code: ErrorCode::Unavailable,
                message: "m",
                room: None,
                retry_after_ms: None,
                stored: Some(stored),
            });
            assert_eq!(
                text,
                format!(r#"{{"type":"error","code":"unavailable","message":"m","stored":{wire}}}"#)
            );
            assert_eq!(stored.to_json().to_string(), wire);
        }
    }
}
