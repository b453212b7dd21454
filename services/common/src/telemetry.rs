//! Logging and tracing.
//!
//! Every service starts a span per consumed message (`process {topic}`, kind CONSUMER) and
//! per produced message (`send {topic}`, kind PRODUCER), named and attributed after the
//! OpenTelemetry messaging semantic conventions for Kafka (semconv 1.30, "Development"
//! status). Trace context crosses Kafka in W3C `traceparent` headers, so one query is one
//! trace from the client to its result; the parity query and each reconstruction carry
//! span links to the member spans they came from. Spans are exported over OTLP/HTTP when
//! an endpoint is configured and cost next to nothing otherwise.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{global, Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use std::collections::HashMap;

/// The semantic-conventions version the span names and attributes follow.
pub const SEMCONV_VERSION: &str = "1.30.0";

/// Tracing settings, flattened into every service's flags.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TelemetryArgs {
    /// OTLP/HTTP endpoint to export spans to (e.g. http://127.0.0.1:4318/v1/traces); none: no export.
    #[arg(long, env = "PARM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Keeps the tracer provider alive; flushes spans when dropped.
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = p.shutdown();
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). Safe to call more than once.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Sets up span export for a process named `service`.
pub fn init_tracing(service: &str, args: &TelemetryArgs) -> anyhow::Result<TelemetryGuard> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let Some(endpoint) = &args.otlp_endpoint else { return Ok(TelemetryGuard(None)) };
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("setting up OTLP export to {endpoint}: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(format!("parm-{service}")).build())
        .build();
    global::set_tracer_provider(provider.clone());
    Ok(TelemetryGuard(Some(provider)))
}

/// A record's headers as the OpenTelemetry propagator reads them (`traceparent`).
struct HeaderExtractor<'a>(HashMap<&'a str, &'a str>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).copied()
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().copied().collect()
    }
}

/// Where the OpenTelemetry propagator writes a context, to become record headers.
#[derive(Default)]
struct MapInjector(HashMap<String, String>);

impl Injector for MapInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// The trace context carried by a message's headers (empty context if none or invalid).
pub fn extract(headers: Option<&BorrowedHeaders>) -> Context {
    let map = headers
        .map(|h| {
            h.iter()
                .filter_map(|h| Some((h.key, std::str::from_utf8(h.value?).ok()?)))
                .collect::<HashMap<_, _>>()
        })
        .unwrap_or_default();
    TraceContextPropagator::new().extract(&HeaderExtractor(map))
}

/// Headers carrying `cx` as W3C trace context.
pub fn inject(cx: &Context) -> OwnedHeaders {
    let mut inj = MapInjector::default();
    TraceContextPropagator::new().inject_context(cx, &mut inj);
    inj.0.iter().fold(OwnedHeaders::new(), |h, (k, v)| h.insert(Header { key: k, value: Some(v.as_str()) }))
}

/// `cx` as a `traceparent` string, if it holds a valid span.
pub fn traceparent(cx: &Context) -> Option<String> {
    let mut inj = MapInjector::default();
    TraceContextPropagator::new().inject_context(cx, &mut inj);
    inj.0.remove("traceparent")
}

/// The context a `traceparent` string describes.
pub fn from_traceparent(tp: &str) -> Context {
    let map = HashMap::from([("traceparent", tp)]);
    TraceContextPropagator::new().extract(&HeaderExtractor(map))
}

/// A link to the span of `cx`, if it has a valid one.
pub fn link_to(cx: &Context) -> Option<Link> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| Link::with_context(sc))
}

/// Where a consumed message came from, for span attributes.
pub struct Consumed<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub consumer_group: &'a str,
    pub key: Option<&'a str>,
}

/// Starts `process {topic}` for a consumed message, child of `parent`.
pub fn process_span(service: &str, m: &Consumed<'_>, parent: &Context, links: Vec<Link>) -> Context {
    let mut attrs = vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", m.topic.to_string()),
        KeyValue::new("messaging.destination.partition.id", m.partition.to_string()),
        KeyValue::new("messaging.consumer.group.name", m.consumer_group.to_string()),
        KeyValue::new("messaging.kafka.offset", m.offset),
        KeyValue::new("parm.service", service.to_string()),
    ];
    if let Some(k) = m.key {
        attrs.push(KeyValue::new("messaging.kafka.message.key", k.to_string()));
    }
    start(format!("process {}", m.topic), SpanKind::Consumer, attrs, parent, links)
}

/// Starts `send {topic}` for a produced message, child of `parent`; inject the returned
/// context into the message's headers.
pub fn send_span(service: &str, topic: &str, partition: Option<i32>, key: &str, parent: &Context, links: Vec<Link>) -> Context {
    let mut attrs = vec![
        KeyValue::new("messaging.system", "kafka"),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.operation.name", "send"),
        KeyValue::new("messaging.destination.name", topic.to_string()),
        KeyValue::new("messaging.kafka.message.key", key.to_string()),
        KeyValue::new("parm.service", service.to_string()),
    ];
    if let Some(p) = partition {
        attrs.push(KeyValue::new("messaging.destination.partition.id", p.to_string()));
    }
    start(format!("send {topic}"), SpanKind::Producer, attrs, parent, links)
}

/// Starts an internal span (e.g. `infer`, `reconstruct`), child of `parent`.
pub fn internal_span(name: &'static str, attrs: Vec<KeyValue>, parent: &Context, links: Vec<Link>) -> Context {
    start(name.to_string(), SpanKind::Internal, attrs, parent, links)
}

fn start(name: String, kind: SpanKind, attrs: Vec<KeyValue>, parent: &Context, links: Vec<Link>) -> Context {
    let tracer = global::tracer("parm");
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attrs)
        .with_links(links)
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::ToBytes;

    #[test]
    fn traceparent_round_trips_through_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = from_traceparent(tp);
        assert_eq!(traceparent(&cx).as_deref(), Some(tp));
        let headers = inject(&cx);
        let got = headers.iter().find(|h| h.key == "traceparent").and_then(|h| h.value).map(|v| v.to_bytes().to_vec());
        assert_eq!(got.as_deref(), Some(tp.as_bytes()));
        assert!(traceparent(&from_traceparent("garbage")).is_none());
    }
}
