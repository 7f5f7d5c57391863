//! JSON log lines that name the node and, inside a traced span, the trace
//! id: `{"node":"…","trace_id":"…","timestamp":…,"level":…,…}`.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The trace id a span recorded in its `trace_id` field.
struct SpanTraceId(String);

/// Keeps each span's `trace_id` field where the log format can find it.
pub struct TraceIdLayer;

struct TraceIdVisitor(Option<String>);

impl Visit for TraceIdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "trace_id" {
            self.0 = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "trace_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for TraceIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    /// The traced spans are all at INFO. Without a hint this layer would
    /// count as wanting TRACE, which lifts the `log` bridge to TRACE and
    /// sends every `log::trace!` of the WebSocket library through the
    /// subscriber: a measurable cost per frame.
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::INFO)
    }

    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let mut visitor = TraceIdVisitor(None);
        attributes.record(&mut visitor);
        if let (Some(trace_id), Some(span)) = (visitor.0, context.span(id)) {
            span.extensions_mut().replace(SpanTraceId(trace_id));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        let mut visitor = TraceIdVisitor(None);
        values.record(&mut visitor);
        if let (Some(trace_id), Some(span)) = (visitor.0, context.span(id)) {
            span.extensions_mut().replace(SpanTraceId(trace_id));
        }
    }
}

/// Wraps a JSON event format and puts `node` and `trace_id` first.
pub struct NodeJsonFormat<F> {
    /// The node id as a JSON string literal, quotes included.
    node: String,
    inner: F,
}

impl<F> NodeJsonFormat<F> {
    /// Wraps `inner`, a format writing one JSON object per event.
    pub fn new(node_id: &str, inner: F) -> Self {
        let node = serde_json::to_string(node_id).unwrap_or_else(|_| "null".to_owned());
        Self { node, inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for NodeJsonFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, context: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::with_capacity(256);
        self.inner.format_event(context, Writer::new(&mut line), event)?;
        let Some(rest) = line.strip_prefix('{') else {
            return writer.write_str(&line);
        };
        write!(writer, "{{\"node\":{}", self.node)?;
        let trace_id = context.event_scope().and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<SpanTraceId>().map(|found| found.0.clone()))
        });
        if let Some(trace_id) = trace_id {
            write!(writer, ",\"trace_id\":\"{trace_id}\"")?;
        }
        if !rest.starts_with('}') {
            writer.write_char(',')?;
        }
        writer.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn lines_name_the_node_and_inside_a_traced_span_the_trace() {
        let captured = Captured::default();
        let json = tracing_subscriber::fmt::format()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false);
        let subscriber = tracing_subscriber::registry().with(TraceIdLayer).with(
            tracing_subscriber::fmt::layer()
                .with_writer(captured.clone())
                .fmt_fields(JsonFields::new())
                .event_format(NodeJsonFormat::new("node \"7\"", json)),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(room = "lobby", "outside");
            let span = tracing::info_span!("publish", trace_id = tracing::field::Empty);
            span.record("trace_id", tracing::field::display("4bf92f3577b34da6a3ce929d0e0e4736"));
            span.in_scope(|| {
                let inner = tracing::info_span!("inner");
                inner.in_scope(|| tracing::warn!("inside"));
            });
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["node"], "node \"7\"");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["room"], "lobby");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["node"], "node \"7\"");
        assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(lines[1]["level"], "WARN");
    }
}
