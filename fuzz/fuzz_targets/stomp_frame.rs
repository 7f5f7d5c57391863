//! Any bytes as what a STOMP client sends, cut into pieces of any size (the
//! first byte picks the size): every frame is read or refused with an
//! error that says why, never a panic, never more than the limit buffered;
//! a frame read, written again and read back is written the same way again.
#![no_main]

use chat_relay::stomp::{Decoded, Decoder, Version, encode};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let version = if first & 0x80 == 0 { Version::V1_2 } else { Version::V1_1 };
    let piece = usize::from(first & 0x7f).max(1);
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
