//! Logs, metrics and traces: the `tracing` subscriber with its JSON log
//! format and optional OpenTelemetry export, the trace context carried in
//! messages, and the node's Prometheus metrics.

mod json_log;
mod metrics;
mod otel;
pub mod trace_context;

pub use metrics::{Metrics, OutcomeLabel, TransportLabel};
pub use trace_context::TraceParent;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::LogFormat;

/// Keeps the trace exporter alive; dropping it sends the spans still queued.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("chat-relay: trace export did not finish: {error}");
        }
    }
}

/// Libraries whose trace-level logs carry what clients send, tokens and
/// passwords included (frames, headers, commands). `RUST_LOG=trace` does
/// not reach them: they log at most at debug unless named in `RUST_LOG`
/// themselves (`RUST_LOG=trace,tungstenite=trace`), a choice made on
/// purpose.
const SECRET_BEARING_TARGETS: [&str; 5] = ["tungstenite", "tokio_tungstenite", "hyper", "h2", "redis"];

/// The log filter of `RUST_LOG` (default `info`), with the libraries of
/// [`SECRET_BEARING_TARGETS`] capped at debug unless it names them. The cap
/// is added only when the default level is trace: a cap under a quieter
/// default would raise those libraries to debug, and with them the `log`
/// crate's global level, so every `trace!` of the WebSocket library would
/// be formatted again.
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let text = rust_log.filter(|text| !text.trim().is_empty()).unwrap_or("info");
    let Ok(mut filter) = EnvFilter::try_new(text) else {
        return EnvFilter::new("info");
    };
    // The last directive naming no target sets the default level.
    let default_is_trace = text
        .rsplit(',')
        .find_map(|directive| directive.trim().parse::<tracing::level_filters::LevelFilter>().ok())
        .is_some_and(|level| level == tracing::level_filters::LevelFilter::TRACE);
    if !default_is_trace {
        return filter;
    }
    for target in SECRET_BEARING_TARGETS {
        let named = text
            .split(',')
            .any(|directive| directive.trim().split(['=', '[', ':']).next() == Some(target));
        if !named && let Ok(directive) = format!("{target}=debug").parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Installs the global subscriber: log lines (`pretty` on a terminal, else
/// JSON lines naming the node and trace, unless `format` says otherwise;
/// level from `RUST_LOG`, default `info`) and, when the `OTEL_*` variables
/// ask for it, span export over OTLP/HTTP.
///
/// # Errors
/// One line naming an `OTEL_*` variable that cannot be honoured.
pub fn init(format: Option<LogFormat>, node_id: &str) -> Result<TelemetryGuard, String> {
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let provider = otel::tracer_provider(node_id)?;
    let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let log_layer = match format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer().with_writer(std::io::stdout).boxed(),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false);
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stdout)
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .event_format(json_log::NodeJsonFormat::new(node_id, json))
                .boxed()
        }
    };
    // Only the relay's own spans are exported, whatever the log level.
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("chat-relay"))
            .with_filter(Targets::new().with_target("chat_relay", tracing::Level::INFO))
    });
    // A second initialisation (tests) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(json_log::TraceIdLayer)
        .with(log_layer.with_filter(filter))
        .with(otel_layer)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        trace_context::set_exporting();
    }
    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_does_not_reach_the_libraries_that_log_secrets_unless_they_are_named() {
        let directives = |rust_log: &str| -> Vec<String> {
            log_filter(Some(rust_log))
                .to_string()
                .split(',')
                .map(str::to_owned)
                .collect()
        };
        let capped = directives("trace");
        for target in SECRET_BEARING_TARGETS {
            assert!(capped.contains(&format!("{target}=debug")), "{capped:?}");
        }
        let named = directives("trace,tungstenite=trace");
        assert!(named.contains(&"tungstenite=trace".to_owned()), "{named:?}");
        assert!(!named.contains(&"tungstenite=debug".to_owned()), "{named:?}");
        assert!(named.contains(&"tokio_tungstenite=debug".to_owned()), "{named:?}");
        assert!(log_filter(None).to_string().contains("info"));
        // A quieter default is not raised to debug for those libraries.
        for quiet in ["warn", "info", "debug,chat_relay=trace", "trace,warn"] {
            let filter = log_filter(Some(quiet));
            assert!(!filter.to_string().contains("tungstenite=debug"), "{quiet}: {filter}");
        }
        assert_eq!(
            log_filter(Some("warn")).max_level_hint(),
            Some(tracing::level_filters::LevelFilter::WARN)
        );
    }
}
