//! Decoding of client-to-server WebSocket frames.
//!
//! Every failure becomes a [`FrameRejection`] with the protocol error code and
//! a sentence saying what was wrong and what to send instead. Nothing here can
//! panic on client input; fuzz and property tests feed it arbitrary bytes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::body::{BodyRefusal, MAX_BODY_DEPTH, check_depth, checked_body};
use super::{ErrorCode, MessageId, RoomName};

/// Longest `req`, in bytes (a string's text, or a number's digits).
pub const MAX_REQ_BYTES: usize = 64;
/// Longest `cmid`, in bytes.
pub const MAX_CMID_BYTES: usize = 64;
/// Largest serialized `body` of a signal, in bytes (presence.md).
pub const MAX_SIGNAL_BYTES: usize = 1024;

/// The limits a decoder checks that depend on configuration.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest serialized `body` of a publish.
    pub max_message_bytes: usize,
    /// Largest `last` of a subscribe.
    pub max_replay: usize,
}

/// The client's `req` tag, kept as raw JSON (a string or a number) so it is
/// echoed byte for byte.
#[derive(Debug, Clone)]
pub struct RequestTag(Box<RawValue>);

impl RequestTag {
    /// A tag holding `text` as a JSON string: how another framing's request
    /// names (a STOMP `receipt`) travel through the session.
    #[must_use]
    pub fn from_text(text: &str) -> Self {
        let json = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
        // A serialized string is always valid JSON.
        Self(RawValue::from_string(json).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// The tag's text when it is a JSON string (see [`Self::from_text`]).
    #[must_use]
    pub fn text(&self) -> Option<String> {
        serde_json::from_str(self.0.get()).ok()
    }

    /// The tag as raw JSON.
    #[must_use]
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

/// What a subscribe asks to be replayed before live messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRequest {
    /// Live messages only.
    None,
    /// Everything after this id (resume).
    Since(MessageId),
    /// The last N messages of the history.
    Last(usize),
}

/// A decoded, validated client frame.
#[derive(Debug, Clone)]
pub enum ClientRequest {
    /// `subscribe`.
    Subscribe {
        /// Room to join.
        room: RoomName,
        /// History to deliver first.
        replay: ReplayRequest,
        /// Join the room's presence and receive its changes.
        presence: bool,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// Room to leave.
        room: RoomName,
    },
    /// `publish`.
    Publish {
        /// Target room.
        room: RoomName,
        /// The body as compact JSON text (no whitespace outside strings).
        body: String,
        /// Client message id (idempotency key), 1 to 64 bytes.
        cmid: Option<String>,
    },
    /// `signal`: live only, never stored (presence.md).
    Signal {
        /// Target room.
        room: RoomName,
        /// The body as compact JSON text, at most [`MAX_SIGNAL_BYTES`].
        body: String,
    },
    /// `ping`.
    Ping,
    /// `refresh`.
    Refresh {
        /// The new token.
        token: String,
    },
}

/// A decoded frame with its `req` tag.
#[derive(Debug, Clone)]
pub struct ClientFrame {
    /// The `req` to echo in the reply.
    pub req: Option<RequestTag>,
    /// What the client asks for.
    pub request: ClientRequest,
}

/// Why a frame was refused; becomes an `error` frame.
#[derive(Debug, Clone)]
pub struct FrameRejection {
    /// The frame's `req`, when it had a valid one.
    pub req: Option<RequestTag>,
    /// Protocol error code.
    pub code: ErrorCode,
    /// What was wrong and what to do, for humans.
    pub message: String,
    /// The room the frame named, when it was a valid name.
    pub room: Option<RoomName>,
}

#[derive(Deserialize)]
struct WireFrame<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    req: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    last: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    cmid: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    presence: Option<&'a RawValue>,
}

/// A field that is present, even as `null`, is `Some`.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&RawValue as Deserialize>::deserialize(deserializer).map(Some)
}

struct Rejector {
    req: Option<RequestTag>,
    room: Option<RoomName>,
}

impl Rejector {
    fn reject(&self, code: ErrorCode, message: impl Into<String>) -> FrameRejection {
        FrameRejection {
            req: self.req.clone(),
            code,
            message: message.into(),
            room: self.room.clone(),
        }
    }

    fn bad_request(&self, message: impl Into<String>) -> FrameRejection {
        self.reject(ErrorCode::BadRequest, message)
    }
}

/// Decodes one text frame.
///
/// # Errors
/// A [`FrameRejection`] for anything that is not a valid v1 client frame.
pub fn decode_client_frame(text: &str, limits: DecodeLimits) -> Result<ClientFrame, FrameRejection> {
    let mut rejector = Rejector { req: None, room: None };
    // serde would accept a JSON array as a struct's fields in order.
    if !text.trim_start().starts_with('{') {
        return Err(rejector.bad_request("frame must be a JSON object such as {\"type\":\"ping\"}"));
    }
    let wire: WireFrame<'_> = serde_json::from_str(text).map_err(|error| {
        // Too deep for the parser is too deep for a body: the frame
        // object is one level, its body's limit the rest.
        match check_depth(text) {
            Err(BodyRefusal::TooDeep { depth }) if depth - 1 > MAX_BODY_DEPTH => rejector.reject(
                ErrorCode::TooLarge,
                BodyRefusal::TooDeep { depth: depth - 1 }.to_string(),
            ),
            _ => rejector.bad_request(format!("frame is not valid JSON: {error}")),
        }
    })?;

    if let Some(raw) = wire.req {
        rejector.req = Some(decode_req(raw).map_err(|message| rejector.bad_request(message))?);
    }
    let kind = match wire.kind {
        None => {
            return Err(rejector.bad_request("frame has no `type`; e.g. \"subscribe\", \"publish\", \"ping\""));
        }
        Some(raw) => serde_json::from_str::<Cow<'_, str>>(raw.get())
            .map_err(|_| rejector.bad_request("`type` must be a string"))?,
    };

    let request = match kind.as_ref() {
        "subscribe" => {
            let room = required_room(&wire, &mut rejector)?;
            let since = wire
                .since
                .map(|raw| decode_since(raw).map_err(|message| rejector.bad_request(message)))
                .transpose()?;
            let last = wire
                .last
                .map(|raw| decode_last(raw, limits.max_replay).map_err(|message| rejector.bad_request(message)))
                .transpose()?;
            let replay = match (since, last) {
                (Some(_), Some(_)) => {
                    return Err(rejector.bad_request("`last` is only allowed without `since`; send one or the other"));
                }
                (Some(since), None) => ReplayRequest::Since(since),
                (None, Some(last)) => ReplayRequest::Last(last),
                (None, None) => ReplayRequest::None,
            };
            let presence = match wire.presence.map(RawValue::get) {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(rejector.bad_request("`presence` must be true or false")),
            };
            ClientRequest::Subscribe { room, replay, presence }
        }
        "unsubscribe" => ClientRequest::Unsubscribe {
            room: required_room(&wire, &mut rejector)?,
        },
        "publish" => {
            let room = required_room(&wire, &mut rejector)?;
            let cmid = wire
                .cmid
                .map(|raw| decode_cmid(raw).map_err(|message| rejector.bad_request(message)))
                .transpose()?;
            let raw_body = wire
                .body
                .ok_or_else(|| rejector.bad_request("publish needs a `body` (any JSON value)"))?;
            let body = checked_body(raw_body.get(), limits.max_message_bytes).map_err(|refusal| {
                let limit = match refusal {
                    BodyRefusal::TooLarge { .. } => " (max_message_bytes)",
                    BodyRefusal::TooDeep { .. } => "",
                };
                rejector.reject(ErrorCode::TooLarge, format!("{refusal}{limit}"))
            })?;
            ClientRequest::Publish {
                room,
                body: body.into_owned(),
                cmid,
            }
        }
        "signal" => {
            let room = required_room(&wire, &mut rejector)?;
            let raw_body = wire
                .body
                .ok_or_else(|| rejector.bad_request("signal needs a `body` (any JSON value of at most 1 KiB)"))?;
            let body = checked_body(raw_body.get(), MAX_SIGNAL_BYTES).map_err(|refusal| {
                rejector.reject(
                    ErrorCode::TooLarge,
                    format!("signal {refusal}: send a smaller body, or publish a message"),
                )
            })?;
            ClientRequest::Signal {
                room,
                body: body.into_owned(),
            }
        }
        "ping" => ClientRequest::Ping,
        "refresh" => {
            let token = wire
                .token
                .ok_or_else(|| rejector.bad_request("refresh needs a `token` (a JWT string)"))?;
            let token = serde_json::from_str::<String>(token.get())
                .map_err(|_| rejector.bad_request("`token` must be a string"))?;
            ClientRequest::Refresh { token }
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(rejector.bad_request(format!(
                "unknown frame type {shown:?}; expected subscribe, unsubscribe, publish, signal, ping or refresh"
            )));
        }
    };
    Ok(ClientFrame {
        req: rejector.req,
        request,
    })
}

fn decode_req(raw: &RawValue) -> Result<RequestTag, String> {
    let text = raw.get();
    let length = if text.starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(text)
            .map_err(|_| "`req` must be a string or a number".to_owned())?
            .len()
    } else if serde_json::from_str::<serde_json::Number>(text).is_ok() {
        text.len()
    } else {
        return Err("`req` must be a string or a number".to_owned());
    };
    if length > MAX_REQ_BYTES {
        return Err(format!("`req` is {length} bytes; the limit is {MAX_REQ_BYTES}"));
    }
    Ok(RequestTag(raw.to_owned()))
}

fn required_room(wire: &WireFrame<'_>, rejector: &mut Rejector) -> Result<RoomName, FrameRejection> {
    let raw = wire
        .room
        .ok_or_else(|| rejector.bad_request("frame needs a `room` (a room name string)"))?;
    let text =
        serde_json::from_str::<Cow<'_, str>>(raw.get()).map_err(|_| rejector.bad_request("`room` must be a string"))?;
    let room = RoomName::parse(&text).map_err(|error| rejector.reject(ErrorCode::InvalidRoom, error.to_string()))?;
    rejector.room = Some(room.clone());
    Ok(room)
}

fn decode_since(raw: &RawValue) -> Result<MessageId, String> {
    let text = serde_json::from_str::<Cow<'_, str>>(raw.get())
        .map_err(|_| "`since` must be a message id string such as \"1732400000123-0\"".to_owned())?;
    text.parse::<MessageId>().map_err(|error| format!("`since`: {error}"))
}

fn decode_last(raw: &RawValue, max_replay: usize) -> Result<usize, String> {
    let explain = || format!("`last` must be an integer from 0 to {max_replay} (max_replay)");
    let number = serde_json::from_str::<serde_json::Number>(raw.get()).map_err(|_| explain())?;
    let last = number.as_u64().ok_or_else(explain)?;
    usize::try_from(last)
        .ok()
        .filter(|last| *last <= max_replay)
        .ok_or_else(explain)
}

fn decode_cmid(raw: &RawValue) -> Result<String, String> {
    let cmid =
        serde_json::from_str::<String>(raw.get()).map_err(|_| "`cmid` must be a string of 1 to 64 bytes".to_owned())?;
    check_cmid(&cmid).map_err(|reason| format!("`cmid` {reason}"))?;
    Ok(cmid)
}

/// The key a `cmid` dedupes under within its room: the `cmid` scoped to its
/// sender (the token's `sub`, or the `user` of an unauthenticated client),
/// so that one sender's `cmid` never makes another's publish a
/// "duplicate" answered with the first one's id. Publishers without a
/// name share one scope: their retries after a reconnect must still find
/// their first attempt, and nothing tells them apart across connections.
/// The sender's length comes first, so no pair of sender and `cmid` reads
/// as another.
#[must_use]
pub fn idempotency_key(from: Option<&str>, cmid: &str) -> String {
    match from {
        Some(from) => format!("u{}:{from}:{cmid}", from.len()),
        None => format!("a:{cmid}"),
    }
}

/// The rule of a `cmid` (an idempotency key), on every transport: 1 to
/// [`MAX_CMID_BYTES`] bytes without control characters (a NUL or a line
/// break would let it forge frames of line- or NUL-delimited protocols).
///
/// # Errors
/// What is wrong, to follow the field's name.
pub fn check_cmid(cmid: &str) -> Result<(), String> {
    if cmid.is_empty() || cmid.len() > MAX_CMID_BYTES {
        return Err(format!("is {} bytes; it must be 1 to {MAX_CMID_BYTES}", cmid.len()));
    }
    if cmid.chars().any(char::is_control) {
        return Err("holds a control character; use printable text such as a UUID".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_message_bytes: 64,
        max_replay: 100,
    };

    fn rejection(text: &str) -> FrameRejection {
        decode_client_frame(text, LIMITS).expect_err(text)
    }

    #[test]
    fn decodes_each_frame_type() {
        let frame = decode_client_frame(r#"{"type":"subscribe","room":"a","since":"5-1","req":7}"#, LIMITS).unwrap();
        assert_eq!(frame.req.unwrap().as_raw().get(), "7");
        assert!(
            matches!(frame.request, ClientRequest::Subscribe { replay: ReplayRequest::Since(id), .. } if id == MessageId::new(5, 1))
        );
        let frame = decode_client_frame(r#"{"type":"subscribe","room":"a","last":3}"#, LIMITS).unwrap();
        assert!(matches!(
            frame.request,
            ClientRequest::Subscribe {
                replay: ReplayRequest::Last(3),
                ..
            }
        ));
        let frame = decode_client_frame(
            r#"{"type":"publish","room":"a","body":{ "x" : [1, 2] },"cmid":"c1"}"#,
            LIMITS,
        )
        .unwrap();
        match frame.request {
            ClientRequest::Publish { body, cmid, .. } => {
                assert_eq!(body, r#"{"x":[1,2]}"#);
                assert_eq!(cmid.as_deref(), Some("c1"));
            }
            other => panic!("{other:?}"),
        }
        let frame = decode_client_frame(r#"{"type":"publish","room":"a","body":null}"#, LIMITS).unwrap();
        assert!(matches!(frame.request, ClientRequest::Publish { ref body, .. } if body == "null"));
        assert!(matches!(
            decode_client_frame(r#"{"type":"ping","extra":1}"#, LIMITS)
                .unwrap()
                .request,
            ClientRequest::Ping
        ));
    }

    #[test]
    fn refuses_bad_frames_with_the_right_code() {
        for text in [
            "nope",
            "[1,2]",
            "3",
            "{}",
            r#"{"type":1}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","room":5}"#,
            r#"{"type":"subscribe","room":"a","since":"x"}"#,
            r#"{"type":"subscribe","room":"a","since":5}"#,
            r#"{"type":"subscribe","room":"a","last":-1}"#,
            r#"{"type":"subscribe","room":"a","last":101}"#,
            r#"{"type":"subscribe","room":"a","last":1e99}"#,
            r#"{"type":"subscribe","room":"a","last":1.5}"#,
            r#"{"type":"subscribe","room":"a","last":1,"since":"1-0"}"#,
            r#"{"type":"publish","room":"a"}"#,
            r#"{"type":"publish","room":"a","body":1,"cmid":""}"#,
            r#"{"type":"publish","room":"a","body":1,"cmid":7}"#,
            r#"{"type":"publish","room":"a","body":1,"cmid":"a\u0000b"}"#,
            r#"{"type":"publish","room":"a","body":1,"cmid":"a\nb"}"#,
            r#"{"type":"ping","req":{"a":1}}"#,
            r#"{"type":"ping","req":true}"#,
            r#"{"type":"refresh"}"#,
            r#"{"type":"ping","type":"ping"}"#,
        ] {
            assert_eq!(rejection(text).code, ErrorCode::BadRequest, "{text}");
        }
        let long_req = format!(r#"{{"type":"ping","req":"{}"}}"#, "r".repeat(65));
        let rejected = rejection(&long_req);
        assert_eq!(rejected.code, ErrorCode::BadRequest);
        assert!(rejected.req.is_none(), "an invalid req is not echoed");
        assert_eq!(
            rejection(r#"{"type":"subscribe","room":"a b","req":"r"}"#).code,
            ErrorCode::InvalidRoom
        );
        let too_large = rejection(&format!(
            r#"{{"type":"publish","room":"a","body":"{}"}}"#,
            "x".repeat(63)
        ));
        assert_eq!(too_large.code, ErrorCode::TooLarge);
        assert_eq!(too_large.room.unwrap().as_str(), "a");
    }

    #[test]
    fn echoes_req_exactly() {
        let rejected = rejection(r#"{"type":"nope","req":"abc\u0041"}"#);
        assert_eq!(rejected.req.unwrap().as_raw().get(), r#""abc\u0041""#);
    }

    #[test]
    fn bodies_nested_past_32_are_too_large_however_deep() {
        let frame = |kind: &str, depth: usize| {
            format!(
                r#"{{"type":"{kind}","room":"a","body":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        let limits = DecodeLimits {
            max_message_bytes: 100_000,
            max_replay: 100,
        };
        for kind in ["publish", "signal"] {
            assert!(decode_client_frame(&frame(kind, 32), limits).is_ok(), "{kind} 32 deep");
            for depth in [33, 127, 32_000] {
                let refused = decode_client_frame(&frame(kind, depth), limits).expect_err("too deep");
                assert_eq!(
                    refused.code,
                    ErrorCode::TooLarge,
                    "{kind} {depth} deep: {}",
                    refused.message
                );
                assert!(refused.message.contains("the limit is 32"), "{}", refused.message);
            }
        }
        // Not JSON at all stays a bad request, however many brackets.
        let broken = format!(r#"{{"type":"publish","body":{}"#, "[".repeat(40));
        assert_eq!(rejection(&broken).code, ErrorCode::TooLarge);
        assert_eq!(rejection(r#"{"type":"publish","#).code, ErrorCode::BadRequest);
    }

    proptest! {
        #[test]
        fn arbitrary_text_is_decoded_or_refused_never_a_panic(text in "\\PC{0,200}") {
            let _ = decode_client_frame(&text, LIMITS);
        }

        #[test]
        fn arbitrary_json_objects_are_decoded_or_refused(
            kind in prop_oneof![Just("subscribe".to_owned()), Just("publish".to_owned()), Just("unsubscribe".to_owned()), Just("ping".to_owned()), Just("refresh".to_owned()), "[a-z]{0,8}"],
            room in "\\PC{0,10}", value in any::<i64>(), text in "\\PC{0,20}",
        ) {
            let frame = serde_json::json!({"type": kind, "room": room, "since": text, "last": value, "body": {"t": text}, "cmid": text, "req": value, "token": text});
            let _ = decode_client_frame(&frame.to_string(), LIMITS);
        }

    }
}
