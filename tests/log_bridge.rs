//! Records of the `log` crate (the WebSocket library writes a `trace!` per
//! frame) stop at `log`'s own level check unless a log line would be
//! written: the bridge into `tracing` is capped at the configured level,
//! not left at TRACE. nextest runs each test in its own process, so the
//! global subscriber here is this test's alone.

#![allow(clippy::disallowed_methods, reason = "tests and benchmarks own the tasks they start")]

use chat_relay::config::LogFormat;

#[test]
fn log_records_below_the_configured_level_are_not_dispatched() {
    // SAFETY: nothing else runs in this process yet (one test per process).
    unsafe { std::env::set_var("RUST_LOG", "warn") };
    let _guard = chat_relay::telemetry::init(Some(LogFormat::Json), "log-bridge").expect("telemetry starts");
    assert!(
        log::max_level() <= log::LevelFilter::Info,
        "log's max level is {}: every trace! of the WebSocket library would be formatted and dispatched",
        log::max_level()
    );
    assert!(!log::log_enabled!(target: "tungstenite::protocol", log::Level::Trace));
}
