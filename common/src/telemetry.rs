//! Logging, metrics and traces for every binary: `RUST_LOG`-style filtering, plain or JSON
//! log lines, an OpenTelemetry meter behind a Prometheus `/metrics` endpoint, and OTLP export
//! of metrics and traces when an endpoint is configured (off by default).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::global;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global log subscriber once; later calls are ignored (tests start many
/// farms). `default_directive` applies when `RUST_LOG` is unset, e.g. `info` for servers,
/// `warn` for the interactive CLI whose progress bars would be broken up by log lines.
pub fn init(default_directive: &str, json: bool) {
    let _already_installed = subscriber(default_directive, json).try_init();
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn subscriber(default_directive: &str, json: bool) -> impl tracing::Subscriber + Send + Sync {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_directive));
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Log lines about a sequence carry its `trace_id` field (see `trace_context`).
    let format: BoxedLayer = if json {
        Box::new(format.json().with_current_span(true).with_span_list(false))
    } else {
        Box::new(format)
    };
    tracing_subscriber::registry().with(format).with(filter)
}

/// How a long-running process reports on itself.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySettings {
    /// `reelfarm-scheduler` or `reelfarm-worker`: the OpenTelemetry service name.
    pub service_name: String,
    pub log_json: bool,
    /// An OTLP/gRPC collector (`http://otel-collector:4317`): metrics every 15 s and every
    /// span go there too. `None`: no export.
    pub otlp_endpoint: Option<String>,
}

/// The installed meter (and tracer) providers; dropping it does not stop them, `shutdown`
/// flushes what is buffered.
pub struct Telemetry {
    registry: prometheus::Registry,
    meters: SdkMeterProvider,
    tracer: SdkTracerProvider,
}

impl Telemetry {
    /// Installs logs, the global meter provider and, with an OTLP endpoint, the tracer.
    /// Call it first thing: instruments made before it record nowhere.
    pub fn install(settings: &TelemetrySettings) -> Result<Arc<Self>, String> {
        let resource = Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build();
        let registry = prometheus::Registry::new();
        let prometheus_reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            // Names carry their unit and `_total` already (`reelfarm_stitch_seconds`).
            .without_units()
            .without_counter_suffixes()
            .scope_info_enabled(false)
            .build()
            .map_err(|error| format!("metrics: {error}"))?;
        let mut meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(prometheus_reader);
        // Spans are always made (their ids go into logs); they leave the process only with
        // an OTLP endpoint.
        let mut tracer = SdkTracerProvider::builder().with_resource(resource.clone());
        if let Some(endpoint) = &settings.otlp_endpoint {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|error| format!("--otlp-endpoint {endpoint}: {error}"))?;
            meters = meters.with_reader(
                PeriodicReader::builder(exporter)
                    .with_interval(Duration::from_secs(15))
                    .build(),
            );
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()
                .map_err(|error| format!("--otlp-endpoint {endpoint}: {error}"))?;
            tracer = tracer.with_batch_exporter(spans);
        }
        let tracer = tracer.build();
        let meters = meters.build();
        global::set_meter_provider(meters.clone());
        global::set_text_map_propagator(TraceContextPropagator::new());
        global::set_tracer_provider(tracer.clone());
        let _already_installed = subscriber("info", settings.log_json).try_init();
        Ok(Arc::new(Telemetry {
            registry,
            meters,
            tracer,
        }))
    }

    /// The Prometheus text exposition of every metric.
    pub fn prometheus_text(&self) -> String {
        use prometheus::Encoder;
        let mut buffer = Vec::new();
        let families = self.registry.gather();
        if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut buffer) {
            tracing::warn!(%error, "metrics could not be encoded");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Flushes buffered metrics and spans to the OTLP collector, if any.
    pub fn shutdown(&self) {
        let _ = self.tracer.shutdown();
        let _ = self.meters.shutdown();
    }
}

/// Serves `GET /metrics` (Prometheus text format) until the process ends. A tiny HTTP/1.1
/// responder: one request per connection, which is all a scraper sends.
pub async fn serve_metrics(listener: TcpListener, telemetry: Arc<Telemetry>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let mut request = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let line = String::from_utf8_lossy(&request);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, kind, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    telemetry.prometheus_text(),
                )
            } else {
                (
                    "404 Not Found",
                    "text/plain; charset=utf-8",
                    "metrics are at /metrics\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
