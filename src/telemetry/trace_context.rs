//! The W3C trace context that travels inside a message, so that one trace
//! holds the publishing node's span, the script's round trip to Redis and
//! the delivery span of every node that fans the message out.
//!
//! Nothing here costs anything while no exporter is installed: every
//! function answers `None` or a disabled span.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::protocol::{MessageId, RoomName};

/// Set once an OTLP exporter is installed.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Marks trace export as installed (see [`super::init`]).
pub(super) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans are exported, so that context is worth carrying.
#[must_use]
pub fn is_exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A W3C `traceparent` value: `00-<trace id>-<parent span id>-<flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(Box<str>);

impl TraceParent {
    /// Length of a version-00 `traceparent`.
    pub const LEN: usize = 55;

    /// Accepts a version-00 `traceparent` with valid (non-zero) ids.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Self::span_context_of(text).map(|_| Self(text.into()))
    }

    /// The header value.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The context of an exported span, if it has a valid one.
    #[must_use]
    pub fn of_span(span: &Span) -> Option<Self> {
        if !is_exporting() || span.is_disabled() {
            return None;
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| {
            Self(
                format!(
                    "00-{}-{}-{:02x}",
                    span_context.trace_id(),
                    span_context.span_id(),
                    span_context.trace_flags().to_u8()
                )
                .into(),
            )
        })
    }

    fn span_context_of(text: &str) -> Option<SpanContext> {
        let mut parts = text.split('-');
        let (Some("00"), Some(trace), Some(span), Some(flags), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        let context = SpanContext::new(trace_id, span_id, TraceFlags::new(flags), true, TraceState::default());
        context.is_valid().then_some(context)
    }
}

/// Records the span's trace id in its `trace_id` field, which the JSON log
/// lines of events inside it carry.
pub fn record_trace_id(span: &Span) {
    if !is_exporting() || span.is_disabled() {
        return;
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The span of a publish on the node that accepted it.
#[must_use]
pub fn publish_span(room: &RoomName) -> Span {
    if !is_exporting() {
        return Span::none();
    }
    let span = tracing::info_span!("publish", "otel.kind" = "producer", room = %room, trace_id = tracing::field::Empty);
    record_trace_id(&span);
    span
}

/// The span of one node handing a live message to its local subscribers,
/// a child of the span that published it (on whichever node that was).
#[must_use]
pub fn delivery_span(room: &RoomName, id: MessageId, parent: Option<&TraceParent>) -> Span {
    let Some(parent) = parent.filter(|_| is_exporting()) else {
        return Span::none();
    };
    let Some(remote) = TraceParent::span_context_of(parent.as_str()) else {
        return Span::none();
    };
    let span = tracing::info_span!(
        "deliver",
        "otel.kind" = "consumer",
        room = %room,
        id = %id,
        trace_id = tracing::field::Empty
    );
    // Fails only when the span is not recorded; then there is nothing to link.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    record_trace_id(&span);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_with_valid_ids_parse() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceParent::parse(good).map(|parsed| parsed.as_str().len()),
            Some(TraceParent::LEN)
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn without_an_exporter_nothing_is_carried() {
        assert!(!is_exporting());
        assert!(publish_span(&RoomName::parse("lobby").unwrap()).is_disabled());
        assert_eq!(TraceParent::of_span(&Span::current()), None);
    }
}
