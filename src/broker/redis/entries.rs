//! Reading what Redis hands back: stream entries (`XRANGE`/`XREVRANGE`
//! replies) into messages, and live payloads into the publisher's trace
//! context and the frame. The frame's layout is `protocol::message_frame`'s.
//!
//! A stream entry stores `p` (prev) and `t` (the frame tail); the frame head
//! is rebuilt on read, so history and live frames are byte-identical.

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;

use crate::broker::{BrokerError, StoredMessage};
use crate::protocol::{MessageId, RoomName, message_frame};
use crate::telemetry::TraceParent;

/// Splits a live payload into the publisher's trace context, which the
/// script puts before the frame as `<traceparent>\n` while traces are
/// exported, and the frame itself (which always starts with `{`).
pub(super) fn split_trace_prefix(payload: &[u8]) -> (Option<TraceParent>, &[u8]) {
    if payload.first() == Some(&b'{') {
        return (None, payload);
    }
    let Some(newline) = payload.iter().position(|&byte| byte == b'\n') else {
        return (None, payload);
    };
    let trace = std::str::from_utf8(&payload[..newline])
        .ok()
        .and_then(TraceParent::parse);
    (trace, &payload[newline + 1..])
}

/// A live payload of `room` as a message; `None` when it is not a frame the
/// script composed.
pub(super) fn live_message(room: &RoomName, payload: &[u8]) -> Option<StoredMessage> {
    let (trace, frame) = split_trace_prefix(payload);
    let (id, prev) = message_frame::parse_ids(room, frame)?;
    Some(StoredMessage {
        id,
        prev,
        frame: Bytes::copy_from_slice(frame),
        trace,
    })
}

fn bulk_text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Parses an `XRANGE`/`XREVRANGE` reply into messages, in reply order.
pub(super) fn parse_entries(room: &RoomName, reply: &Value) -> Result<Vec<Arc<StoredMessage>>, BrokerError> {
    let malformed = || BrokerError::Internal("unexpected stream entry shape from Redis".to_owned());
    let Value::Array(entries) = reply else {
        return if matches!(reply, Value::Nil) {
            Ok(Vec::new())
        } else {
            Err(malformed())
        };
    };
    let mut messages = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(malformed());
        };
        let [id, Value::Array(fields)] = parts.as_slice() else {
            return Err(malformed());
        };
        let id: MessageId = bulk_text(id).and_then(|id| id.parse().ok()).ok_or_else(malformed)?;
        let (mut prev, mut tail) = (None, None);
        for pair in fields.chunks(2) {
            if let [name, value] = pair {
                match bulk_text(name) {
                    Some("p") => prev = bulk_text(value).and_then(|prev| prev.parse::<MessageId>().ok()),
                    Some("t") => tail = bulk_text(value),
                    _ => {}
                }
            }
        }
        let (Some(prev), Some(tail)) = (prev, tail) else {
            return Err(malformed());
        };
        let frame = message_frame::compose(room, id, prev, tail);
        messages.push(Arc::new(StoredMessage {
            id,
            prev,
            frame: Bytes::from(frame),
            trace: None,
        }));
    }
    Ok(messages)
}

/// The id of the one entry of an `XREVRANGE ... COUNT 1` reply.
pub(super) fn newest_id(reply: &Value) -> Option<MessageId> {
    let Value::Array(entries) = reply else { return None };
    let Value::Array(parts) = entries.first()? else {
        return None;
    };
    bulk_text(parts.first()?)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MessageFrameTail;

    #[test]
    fn a_live_payload_is_split_into_trace_and_frame() {
        let room = RoomName::parse("r").unwrap();
        let tail = MessageFrameTail::new(None, 1, None, "1");
        let frame = message_frame::compose(&room, MessageId::new(5, 2), MessageId::new(4, 9), tail.as_str());
        let plain = live_message(&room, frame.as_bytes()).unwrap();
        assert_eq!(
            (plain.id, plain.prev, plain.trace),
            (MessageId::new(5, 2), MessageId::new(4, 9), None)
        );
        let traced = format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\n{frame}");
        let message = live_message(&room, traced.as_bytes()).unwrap();
        assert!(message.trace.is_some());
        assert_eq!(&message.frame[..], frame.as_bytes());
        assert!(live_message(&room, b"{\"type\":\"gap\"}").is_none());
    }
}
