//! The `message` frame: its one owner. Composed, read back and split here
//! and nowhere else; the Redis publish script gets its separators from
//! these constants when it is loaded.
//!
//! A frame is `{"type":"message","room":R,"id":I,"prev":P,` followed by the
//! [`MessageFrameTail`]: `"from":F,"ts":T[,"cmid":C],"body":B}`. The tail is
//! built once by the publishing node; the broker adds the head when it
//! assigns the id, in the same atomic step that stores the message. Every
//! transport and every subscriber gets these same bytes.

use super::{MessageId, RoomName};

/// What follows the id in a frame, up to `prev`'s value.
pub const AFTER_ID: &str = "\",\"prev\":\"";
/// What follows `prev`'s value, up to the tail.
pub const AFTER_PREV: &str = "\",";

/// The publisher-side part of a `message` frame: everything after `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFrameTail(String);

impl MessageFrameTail {
    /// Builds the tail. `body` must be valid JSON, checked by
    /// [`checked_body`](super::checked_body) (compact), or a STOMP
    /// sender's JSON as sent.
    #[must_use]
    pub fn new(from: Option<&str>, ts_ms: u64, cmid: Option<&str>, body: &str) -> Self {
        let mut tail = String::with_capacity(body.len() + 96);
        tail.push_str("\"from\":");
        push_json_string_or_null(&mut tail, from);
        tail.push_str(",\"ts\":");
        tail.push_str(&ts_ms.to_string());
        if let Some(cmid) = cmid {
            tail.push_str(",\"cmid\":");
            push_json_string_or_null(&mut tail, Some(cmid));
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

fn push_json_string_or_null(out: &mut String, text: Option<&str>) {
    // Serializing a string or null cannot fail.
    out.push_str(&serde_json::to_string(&text).unwrap_or_else(|_| "null".to_owned()));
}

/// The head of a room's frames, up to the id's value.
#[must_use]
pub fn head(room: &RoomName) -> String {
    format!("{{\"type\":\"message\",\"room\":\"{room}\",\"id\":\"")
}

/// Composes a whole frame from the broker's parts and the tail.
#[must_use]
pub fn compose(room: &RoomName, id: MessageId, prev: MessageId, tail: &str) -> String {
    let mut frame = String::with_capacity(tail.len() + room.as_str().len() + 96);
    frame.push_str("{\"type\":\"message\",\"room\":\"");
    frame.push_str(room.as_str());
    frame.push_str("\",\"id\":\"");
    frame.push_str(&id.to_string());
    frame.push_str(AFTER_ID);
    frame.push_str(&prev.to_string());
    frame.push_str(AFTER_PREV);
    frame.push_str(tail);
    frame
}

/// Reads `id` and `prev` back out of a frame of `room` composed as above
/// (by [`compose`] or the publish script); `None` for anything else.
#[must_use]
pub fn parse_ids(room: &RoomName, frame: &[u8]) -> Option<(MessageId, MessageId)> {
    let text = std::str::from_utf8(frame).ok()?;
    let rest = text.strip_prefix(head(room).as_str())?;
    let (id, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(&AFTER_ID[1..])?;
    let (prev, _) = rest.split_once('"')?;
    Some((id.parse().ok()?, prev.parse().ok()?))
}

/// The `ts` of a composed frame. The first `,"ts":` is the key: it follows
/// `from`, a JSON string or null in which a bare quote cannot occur.
#[must_use]
pub fn ts_ms(frame: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b",\"ts\":";
    let start = frame.windows(KEY.len()).position(|window| window == KEY)? + KEY.len();
    let digits = frame[start..].iter().take_while(|byte| byte.is_ascii_digit()).count();
    std::str::from_utf8(&frame[start..start + digits]).ok()?.parse().ok()
}

/// The body of a composed frame, byte for byte as stored (a STOMP sender's
/// JSON keeps its whitespace). The first `,"body":` is the key: it follows
/// `from`, `ts` and `cmid`, in whose JSON strings a bare quote cannot
/// occur; the body runs to the frame's closing brace.
#[must_use]
pub fn body(frame: &str) -> Option<&str> {
    const KEY: &str = ",\"body\":";
    let start = frame.find(KEY)? + KEY.len();
    frame.get(start..frame.len().checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn ts_is_read_from_the_frame_even_when_from_or_body_mention_it() {
        let room = RoomName::parse("lobby").unwrap();
        let tail = MessageFrameTail::new(Some(r#"x","ts":1"#), 1_795_579_107_415, None, r#"{"ts":3}"#);
        let frame = compose(&room, MessageId::new(5, 1), MessageId::new(4, 0), tail.as_str());
        assert_eq!(ts_ms(frame.as_bytes()), Some(1_795_579_107_415));
        assert_eq!(ts_ms(b"{\"type\":\"message\"}"), None);
    }

    #[test]
    fn the_body_is_read_back_as_stored_even_when_from_or_cmid_mention_it() {
        let room = RoomName::parse("lobby").unwrap();
        let body = "{\n  \"a\": [1, 2]\n}\n";
        let tail = MessageFrameTail::new(Some(r#"x,"body":1"#), 3, Some(r#","body":2"#), body);
        let frame = compose(&room, MessageId::new(5, 1), MessageId::new(4, 0), tail.as_str());
        assert_eq!(super::body(&frame), Some(body));
        assert_eq!(super::body("{}"), None);
    }

    #[test]
    fn a_frame_is_valid_json_with_every_field() {
        let room = RoomName::parse("lobby").unwrap();
        let tail = MessageFrameTail::new(Some("ann\"e"), 17, Some("c-1"), r#"{"t":"hi"}"#);
        let frame = compose(&room, MessageId::new(5, 1), MessageId::new(4, 0), tail.as_str());
        let value: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            value,
            json!({"type":"message","room":"lobby","id":"5-1","prev":"4-0","from":"ann\"e","ts":17,"cmid":"c-1","body":{"t":"hi"}})
        );
        let anonymous = MessageFrameTail::new(None, 1, None, "3");
        let value: Value =
            serde_json::from_str(&compose(&room, MessageId::ZERO, MessageId::ZERO, anonymous.as_str())).unwrap();
        assert_eq!(value["from"], Value::Null);
        assert!(value.get("cmid").is_none());
    }

    #[test]
    fn ids_are_read_back_from_a_composed_frame_of_the_same_room() {
        let room = RoomName::parse("r").unwrap();
        let tail = MessageFrameTail::new(Some("a\",\"prev\":\"9-9"), 1, None, "1");
        let frame = compose(&room, MessageId::new(5, 2), MessageId::new(4, 9), tail.as_str());
        assert_eq!(
            parse_ids(&room, frame.as_bytes()),
            Some((MessageId::new(5, 2), MessageId::new(4, 9)))
        );
        assert_eq!(parse_ids(&room, b"{\"type\":\"gap\"}"), None);
        let other = RoomName::parse("s").unwrap();
        assert_eq!(parse_ids(&other, frame.as_bytes()), None);
    }
}
