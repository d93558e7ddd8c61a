//! One trace per sequence across processes: W3C `traceparent` strings carried in gRPC
//! metadata and in the messages that outlive a call (a sequence's record, an assignment),
//! and spans made with explicit times from what the farm already records. With no tracer
//! installed every function here does nothing and returns empty strings.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::global::{self, BoxedSpan};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The gRPC metadata key and the field name in messages.
pub const TRACEPARENT: &str = "traceparent";

/// The context a `traceparent` value names (the empty context for "" or garbage).
pub fn context_of(traceparent: &str) -> Context {
    let mut carrier = HashMap::new();
    if !traceparent.is_empty() {
        carrier.insert(TRACEPARENT.to_string(), traceparent.to_string());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The `traceparent` value of a span ("" when it is not sampled or not recording).
pub fn traceparent_of(span: &BoxedSpan) -> String {
    let context = Context::new().with_remote_span_context(span.span_context().clone());
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT).unwrap_or_default()
}

/// The 32-hex trace id in a `traceparent` value, for log lines ("" when none).
pub fn trace_id(traceparent: &str) -> &str {
    traceparent.split('-').nth(1).unwrap_or("")
}

pub fn unix_time(seconds: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(seconds.max(0.0))
}

/// Starts a span under `parent` (a `traceparent`; "" starts a new trace), at `start` or now.
pub fn start_span(
    name: impl Into<String>,
    parent: &str,
    start_unix_s: Option<f64>,
    attributes: Vec<KeyValue>,
) -> BoxedSpan {
    let tracer = global::tracer("reelfarm");
    let mut builder = tracer.span_builder(name.into()).with_attributes(attributes);
    if let Some(start) = start_unix_s {
        builder = builder.with_start_time(unix_time(start));
    }
    tracer.build_with_context(builder, &context_of(parent))
}

/// A finished span with known times; returns its `traceparent`.
pub fn record_span(
    name: impl Into<String>,
    parent: &str,
    start_unix_s: f64,
    end_unix_s: f64,
    attributes: Vec<KeyValue>,
) -> String {
    let mut span = start_span(name, parent, Some(start_unix_s), attributes);
    let traceparent = traceparent_of(&span);
    span.end_with_timestamp(unix_time(end_unix_s.max(start_unix_s)));
    traceparent
}

/// Ends a span, marked as an error when `error` says why.
pub fn end_span(mut span: BoxedSpan, error: Option<&str>, end_unix_s: Option<f64>) {
    if let Some(error) = error {
        span.set_status(Status::error(error.to_string()));
    }
    match end_unix_s {
        Some(end) => span.end_with_timestamp(unix_time(end)),
        None => span.end(),
    }
}

/// `traceparent` from gRPC request metadata ("" when absent).
pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Adds `traceparent` to a request's metadata (nothing for "").
pub fn to_metadata<T>(request: &mut tonic::Request<T>, traceparent: &str) {
    if !traceparent.is_empty()
        && let Ok(value) = traceparent.parse()
    {
        request.metadata_mut().insert(TRACEPARENT, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_through_a_context() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = context_of(traceparent);
        let span_context = context.span().span_context().clone();
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(trace_id(traceparent), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!context_of("").span().span_context().is_valid());
        assert!(
            !context_of("not a traceparent")
                .span()
                .span_context()
                .is_valid()
        );
    }
}
