//! The `chat-relay` binary: settings, logging, serve, drain on SIGTERM.
//! Exit codes: 0 after a drain, 1 when the node cannot start, a second
//! signal cut the drain short or a node task panicked, 2 for a bad setting.

use std::process::ExitCode;

use chat_relay::config::{SettingsFailure, settings_from};
use chat_relay::shutdown::{Ending, run_until_signal};

fn main() -> ExitCode {
    let settings = match settings_from(std::env::args_os()) {
        Ok(settings) => settings,
        Err(SettingsFailure::Display(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(SettingsFailure::Invalid(line)) => {
            eprintln!("chat-relay: {line}");
            return ExitCode::from(2);
        }
    };
    // Dropped last, after the runtime: sends the spans still queued.
    let _telemetry = match chat_relay::telemetry::init(settings.log_format, &settings.node_id) {
        Ok(guard) => guard,
        Err(line) => {
            eprintln!("chat-relay: {line}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chat-relay: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match chat_relay::start(settings).await {
            Ok(running) => running,
            Err(error) => {
                eprintln!("chat-relay: {error}");
                return ExitCode::FAILURE;
            }
        };
        match run_until_signal(running).await {
            Ending::Drained => ExitCode::SUCCESS,
            Ending::Forced => ExitCode::FAILURE,
            Ending::Failed(reason) => {
                eprintln!("chat-relay: {reason}; drained and stopped");
                ExitCode::FAILURE
            }
        }
    })
}
