//! Any bytes as what a STOMP client sends, cut into pieces of any size (the
//! first byte picks the size): every frame is read or refused with an
//! error that says why, never a panic, never more than the limit buffered;
//! a frame read, written again and read back is written the same way again.
//!
//! The same bytes, as text, also become the `from`, `cmid` and text body of
//! a MESSAGE the node writes (as if the edge had let anything through):
//! that frame must read back as exactly one MESSAGE, with exactly one NUL,
//! its last byte, so that no reader that splits frames on NUL sees a frame
//! of the sender's making.
#![no_main]

use std::sync::Arc;

use chat_relay::broker::StoredMessage;
use chat_relay::protocol::{MessageFrameTail, MessageId, RoomName, message_frame};
use chat_relay::session::LiveMessage;
use chat_relay::stomp::{AckMode, Command, Decoded, Decoder, Outgoing, Shared, Version, encode};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let version = if first & 0x80 == 0 { Version::V1_2 } else { Version::V1_1 };
    let piece = usize::from(first & 0x7f).max(1);
    server_message_reads_back_as_one_frame(rest, version);
    let mut decoder = Decoder::new(LIMIT);
    decoder.set_version(version);
    for chunk in rest.chunks(piece) {
        if let Err(error) = decoder.push(chunk) {
            assert!(!error.to_string().is_empty());
            return;
        }
        loop {
            match decoder.next_frame() {
                Ok(Decoded::Frame(frame)) => {
                    let again = read_one(&encode(&frame, version), version);
                    assert_eq!(read_one(&encode(&again, version), version), again);
                }
                Ok(Decoded::Incomplete) => break,
                Err(error) => {
                    assert!(!error.to_string().is_empty());
                    return;
                }
            }
        }
    }
});

fn read_one(bytes: &[u8], version: Version) -> chat_relay::stomp::Frame {
    let mut decoder = Decoder::new(usize::MAX);
    decoder.set_version(version);
    decoder.push(bytes).expect("no limit");
    match decoder.next_frame() {
        Ok(Decoded::Frame(frame)) => frame,
        other => panic!("a written frame does not read back: {other:?}"),
    }
}

fn server_message_reads_back_as_one_frame(data: &[u8], version: Version) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '|');
    let (from, cmid, body) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let room = RoomName::parse("fuzz.room").expect("a valid room");
    let body_json = serde_json::to_string(body).expect("a string serializes");
    let tail = MessageFrameTail::new(from, 1, cmid, &body_json);
    let id = MessageId::new(2, 0);
    let frame = message_frame::compose(&room, id, MessageId::ZERO, tail.as_str());
    let stored = StoredMessage {
        id,
        prev: MessageId::ZERO,
        frame: frame.into_bytes().into(),
        trace: None,
    };
    let Some(live) = LiveMessage::from_stored(&room, &stored) else { return };
    let shared = Arc::new(Shared::default());
    shared.connected(version, None, "0,0".to_owned(), "s".to_owned());
    shared.subscribe(room, "sub".to_owned(), "/topic/fuzz/room".to_owned(), AckMode::Client);
    let outgoing = Outgoing::new(shared, "node".to_owned());
    let written = outgoing.message(&live).expect("a subscribed room's message").text;
    let bytes = written.as_bytes();
    assert_eq!(
        bytes.iter().filter(|&&byte| byte == 0).count(),
        1,
        "one NUL, the frame's end: {written:?}"
    );
    assert_eq!(bytes.last(), Some(&0));
    let mut decoder = Decoder::new(usize::MAX);
    decoder.set_version(version);
    decoder.push(bytes).expect("no limit");
    match decoder.next_frame() {
        Ok(Decoded::Frame(frame)) => assert_eq!(frame.command, Command::Message),
        other => panic!("a written MESSAGE does not read back: {other:?}"),
    }
    assert!(matches!(decoder.next_frame(), Ok(Decoded::Incomplete)), "nothing after it");
}
