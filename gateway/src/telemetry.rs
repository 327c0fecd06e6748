//! Telemetry: structured logs, OpenTelemetry traces and metrics, in one place.
//!
//! - **Logs**: `tracing` events, as JSON lines (or human-readable), each carrying the
//!   `trace_id` and `span_id` of the span it happened in.
//! - **Traces**: every `tracing` span the `telemetry.trace_filter` selects becomes an
//!   OpenTelemetry span (through `tracing-opentelemetry`): one server span per HTTP request
//!   ([`HttpRequest`], a child of the caller's W3C `traceparent`), `db.*` spans for database
//!   calls and `chain.*` spans for chain calls beneath it. Exported over OTLP/HTTP (protobuf)
//!   when an endpoint is configured; otherwise made (for the trace ids) and dropped.
//! - **Metrics**: the instruments of [`Metrics`], exported over OTLP when an endpoint is
//!   configured, and served in the Prometheus text format at `GET /metrics` when
//!   `telemetry.prometheus` is on.
//!
//! Architecture invariant: nothing here names a patient. Span and metric attributes are route
//! patterns, interaction names, status codes and outcomes, never a path, query, id or body;
//! `tests/api/telemetry.rs` loads patients and looks for them in everything exported.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use anyhow::Context as _;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, MeterProvider as _};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{KeyValue, global};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{Config, LogConfig, TelemetryConfig};

/// The instrumentation scope of the gateway's spans and metrics.
pub const SCOPE: &str = "fhir-gateway";

/// HTTP server requests: their count (rate) and duration, by interaction (seconds).
pub const HTTP_SERVER_DURATION: &str = "http.server.request.duration";
/// Consent decisions of consent-gated reads, by outcome.
pub const CONSENT_DECISIONS: &str = "fhir.consent.decisions";
/// Blocks between the chain head and the last block the consent index has read.
pub const CONSENT_CHAIN_LAG: &str = "fhir.consent.chain_lag";
/// Log leaves written but not yet in a sealed batch (waiting to be anchored).
pub const LOG_UNSEALED_LEAVES: &str = "fhir.log.leaves.unsealed";
/// Sealed batches not yet confirmed on chain, by state (`sealed`, `submitted`).
pub const LOG_WAITING_BATCHES: &str = "fhir.log.batches.waiting";
/// Age of the oldest sealed batch not yet submitted to the chain (seconds).
pub const LOG_OLDEST_BATCH_AGE: &str = "fhir.log.batch.oldest_age";
/// Leaves per sealed batch.
pub const LOG_BATCH_SIZE: &str = "fhir.log.batch.size";
/// HL7 v2 messages by acknowledgment code (`AA`, `AE`, `AR`) and transport.
pub const HL7V2_MESSAGES: &str = "fhir.hl7v2.messages";
/// Resources an import run has read, by outcome (`accepted`, `rejected`).
pub const IMPORT_RESOURCES: &str = "fhir.import.resources";
/// Lines in the files of the running import (the total that `fhir.import.resources` grows to).
pub const IMPORT_LINES_TOTAL: &str = "fhir.import.lines.total";

/// The gateway's metric instruments (see the constants above for what each measures).
#[derive(Debug)]
pub struct Metrics {
    pub http_server_duration: Histogram<f64>,
    pub consent_decisions: Counter<u64>,
    pub consent_chain_lag: Gauge<u64>,
    pub log_unsealed_leaves: Gauge<u64>,
    pub log_waiting_batches: Gauge<u64>,
    pub log_oldest_batch_age: Gauge<u64>,
    pub log_batch_size: Histogram<u64>,
    pub hl7v2_messages: Counter<u64>,
    pub import_resources: Counter<u64>,
    pub import_lines_total: Gauge<u64>,
}

impl Metrics {
    fn new(meter: &Meter) -> Metrics {
        Metrics {
            http_server_duration: meter
                .f64_histogram(HTTP_SERVER_DURATION)
                .with_unit("s")
                .with_description("Duration of HTTP server requests, by FHIR interaction")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .build(),
            consent_decisions: meter
                .u64_counter(CONSENT_DECISIONS)
                .with_description("Consent decisions of consent-gated reads, by outcome")
                .build(),
            consent_chain_lag: meter
                .u64_gauge(CONSENT_CHAIN_LAG)
                .with_unit("{block}")
                .with_description("Blocks the consent index is behind the chain head")
                .build(),
            log_unsealed_leaves: meter
                .u64_gauge(LOG_UNSEALED_LEAVES)
                .with_unit("{leaf}")
                .with_description("Log leaves waiting for a batch")
                .build(),
            log_waiting_batches: meter
                .u64_gauge(LOG_WAITING_BATCHES)
                .with_unit("{batch}")
                .with_description("Sealed batches not yet confirmed on chain, by state")
                .build(),
            log_oldest_batch_age: meter
                .u64_gauge(LOG_OLDEST_BATCH_AGE)
                .with_unit("s")
                .with_description("Age of the oldest sealed batch waiting to be submitted")
                .build(),
            log_batch_size: meter
                .u64_histogram(LOG_BATCH_SIZE)
                .with_unit("{leaf}")
                .with_description("Leaves per sealed batch")
                .with_boundaries(vec![
                    1.0,
                    10.0,
                    100.0,
                    1_000.0,
                    10_000.0,
                    100_000.0,
                    1_000_000.0,
                ])
                .build(),
            hl7v2_messages: meter
                .u64_counter(HL7V2_MESSAGES)
                .with_description("HL7 v2 messages, by acknowledgment code and transport")
                .build(),
            import_resources: meter
                .u64_counter(IMPORT_RESOURCES)
                .with_description("Resources read by imports, by outcome")
                .build(),
            import_lines_total: meter
                .u64_gauge(IMPORT_LINES_TOTAL)
                .with_description("Lines in the files of the running import")
                .build(),
        }
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static PROMETHEUS: OnceLock<prometheus::Registry> = OnceLock::new();
/// The installed subscriber, for the log formatter to read spans' OpenTelemetry contexts.
static LOG_DISPATCH: OnceLock<tracing::Dispatch> = OnceLock::new();

/// The metric instruments. Before [`init`] ran (or in a process that never runs it) they
/// record nowhere.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(&global::meter(SCOPE)))
}

/// What installing telemetry started: the providers, flushed and shut down when dropped.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Telemetry {
    /// Exports what is buffered now (spans and metrics), waiting for the receiver.
    pub fn flush(&self) {
        let _ = self.tracer_provider.force_flush();
        let _ = self.meter_provider.force_flush();
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.tracer_provider.shutdown();
        let _ = self.meter_provider.shutdown();
    }
}

/// Installs logs, traces and metrics, logs to standard output (the server).
pub fn init(config: &Config) -> anyhow::Result<Telemetry> {
    install(&config.log, &config.telemetry, std::io::stdout)
}

/// As [`init`], logs to standard error, for commands whose standard output is their answer.
pub fn init_stderr(config: &Config) -> anyhow::Result<Telemetry> {
    install(&config.log, &config.telemetry, std::io::stderr)
}

/// Installs the global `tracing` subscriber (logs to `writer`, spans to OpenTelemetry) and the
/// OpenTelemetry providers, exporting over OTLP when an endpoint is configured. A second call
/// in one process leaves the first subscriber and instruments in place.
pub fn install<W>(
    log: &LogConfig,
    telemetry: &TelemetryConfig,
    writer: W,
) -> anyhow::Result<Telemetry>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let resource = Resource::builder()
        .with_service_name(telemetry.service_name.clone())
        .build();
    let endpoint = telemetry.otlp_endpoint();
    if endpoint.is_some() {
        // the OTLP client (reqwest with rustls but no provider of its own, as the workspace
        // builds it) refuses to start without a process-wide provider: ring, as elsewhere
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    let mut tracer_provider = SdkTracerProvider::builder().with_resource(resource.clone());
    if let Some(endpoint) = &endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/traces"))
            .build()
            .context("the OTLP span exporter")?;
        tracer_provider = tracer_provider.with_batch_exporter(exporter);
    }
    let tracer_provider = tracer_provider.build();

    let mut meter_provider = SdkMeterProvider::builder().with_resource(resource);
    if let Some(endpoint) = &endpoint {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(format!("{endpoint}/v1/metrics"))
            .build()
            .context("the OTLP metric exporter")?;
        meter_provider = meter_provider.with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(Duration::from_millis(telemetry.metrics_export_interval_ms))
                .build(),
        );
    }
    if telemetry.prometheus && PROMETHEUS.get().is_none() {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .context("the Prometheus exporter")?;
        meter_provider = meter_provider.with_reader(exporter);
        let _ = PROMETHEUS.set(registry);
    }
    let meter_provider = meter_provider.build();
    if METRICS.get().is_none() {
        global::set_meter_provider(meter_provider.clone());
        let _ = METRICS.set(Metrics::new(&meter_provider.meter(SCOPE)));
    }

    let log_filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let trace_filter =
        EnvFilter::try_new(&telemetry.trace_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer_provider.tracer(SCOPE))
        .with_location(false)
        .with_threads(false)
        .with_filter(trace_filter);
    let registry = tracing_subscriber::registry().with(otel_layer);
    let installed = if log.format == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonWithTrace)
                    .with_writer(writer)
                    .with_filter(log_filter),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_filter(log_filter),
            )
            .try_init()
    };
    if installed.is_ok() {
        tracing::dispatcher::get_default(|dispatch| {
            let _ = LOG_DISPATCH.set(dispatch.clone());
        });
    }
    Ok(Telemetry {
        tracer_provider,
        meter_provider,
    })
}

/// `GET /metrics`: the metrics in the Prometheus text format, when this process collects them.
pub fn prometheus_text() -> Option<String> {
    use prometheus::Encoder as _;
    let registry = PROMETHEUS.get()?;
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .ok()?;
    String::from_utf8(text).ok()
}

/// One JSON object per event: time, level, target, message and fields, the current span's
/// name, and the OpenTelemetry `trace_id` and `span_id` of the innermost span that has them.
#[derive(Debug, Clone, Copy)]
struct JsonWithTrace;

impl<S, N> FormatEvent<S, N> for JsonWithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let metadata = event.metadata();
        let mut line = serde_json::Map::new();
        let timestamp = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("target".into(), metadata.target().into());
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        line.insert("fields".into(), serde_json::Value::Object(fields.0));
        if let Some(scope) = ctx.event_scope() {
            // the subscriber itself: `get_default` answers "none" inside an event's dispatch
            let dispatch = LOG_DISPATCH.get();
            let mut named = false;
            for span in scope {
                if !named {
                    line.insert("span".into(), span.name().into());
                    named = true;
                }
                let Some(context) = dispatch.and_then(|dispatch| {
                    tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
                }) else {
                    continue;
                };
                let span_context = context.span().span_context().clone();
                if span_context.is_valid() {
                    line.insert(
                        "trace_id".into(),
                        span_context.trace_id().to_string().into(),
                    );
                    line.insert("span_id".into(), span_context.span_id().to_string().into());
                    break;
                }
            }
        }
        let text = serde_json::to_string(&line).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// The fields of an event, as JSON values.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
}

/// The headers of a request, as the W3C Trace Context propagator reads them.
struct RequestHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The FHIR interaction a request to `route` (its pattern below the FHIR base path) is:
/// a fixed, small set of names, never an id.
pub fn interaction(method: &actix_web::http::Method, route: &str) -> &'static str {
    use actix_web::http::Method;
    if let Some(operation) = route.split('/').find(|s| s.starts_with('$')) {
        return match operation {
            "$everything" => "$everything",
            "$validate" => "$validate",
            "$proof" => "$proof",
            "$export" => "$export",
            "$export-status" => "$export-status",
            "$export-file" => "$export-file",
            "$hl7v2" => "$hl7v2",
            _ => "operation",
        };
    }
    match (method, route) {
        (_, "/metadata") => "capabilities",
        (&Method::POST, "" | "/") => "transaction-batch",
        (_, "" | "/" | "/_search") => "search-system",
        (_, "/_history") => "history-system",
        (&Method::GET, "/{type}") | (_, "/{type}/_search") => "search-type",
        (&Method::POST, "/{type}") => "create",
        (&Method::PUT, "/{type}" | "/{type}/{id}") => "update",
        (&Method::DELETE, "/{type}" | "/{type}/{id}") => "delete",
        (&Method::PATCH, "/{type}" | "/{type}/{id}") => "patch",
        (_, "/{type}/_history") => "history-type",
        (&Method::GET, "/{type}/{id}") => "read",
        (_, "/{type}/{id}/_history") => "history-instance",
        (_, "/{type}/{id}/_history/{vid}") => "vread",
        (_, "/{type}/{id}/{compartment_type}") => "search-compartment",
        _ => "other",
    }
}

/// The server span and measurements of one HTTP request, from its arrival to its response.
#[derive(Debug)]
pub struct HttpRequest {
    pub span: tracing::Span,
    started: Instant,
    method: String,
    route: String,
    interaction: &'static str,
}

impl HttpRequest {
    /// Opens the request's server span, a child of the caller's `traceparent` when it sent
    /// one. `base_path` is where the FHIR API is mounted.
    pub fn start(req: &ServiceRequest, base_path: &str) -> HttpRequest {
        let method = req.method().to_string();
        // the pattern, never the path: paths and queries can carry patient data
        let route = req
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let interaction = match route.strip_prefix(base_path) {
            Some(below) if route != "unmatched" => interaction(req.method(), below),
            _ => "other",
        };
        let span = tracing::info_span!(
            "http.request",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
            fhir.interaction = interaction,
        );
        let parent = TraceContextPropagator::new().extract(&RequestHeaders(req.headers()));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        HttpRequest {
            span,
            started: Instant::now(),
            method,
            route,
            interaction,
        }
    }

    /// Records the response (status, duration, the request log line) and names the trace in
    /// a `traceresponse` header (W3C Trace Context Level 2).
    pub fn finish<B>(self, response: &mut ServiceResponse<B>) {
        let status = response.status().as_u16();
        self.record(status);
        let context = self.span.context();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid()
            && let Ok(value) = HeaderValue::from_str(&format!(
                "00-{}-{}-{:02x}",
                span_context.trace_id(),
                span_context.span_id(),
                span_context.trace_flags().to_u8()
            ))
        {
            response
                .headers_mut()
                .insert(HeaderName::from_static("traceresponse"), value);
        }
    }

    /// Records a request that ended in an error the framework turns into its response.
    pub fn fail(self, status: u16) {
        self.record(status);
    }

    fn record(&self, status: u16) {
        let elapsed = self.started.elapsed();
        self.span.record("http.response.status_code", status);
        if status >= 500 {
            self.span.record("otel.status_code", "error");
        }
        metrics().http_server_duration.record(
            elapsed.as_secs_f64(),
            &[
                KeyValue::new("http.request.method", self.method.clone()),
                KeyValue::new("http.route", self.route.clone()),
                KeyValue::new("http.response.status_code", i64::from(status)),
                KeyValue::new("fhir.interaction", self.interaction),
            ],
        );
        // method, route pattern, status and time only
        self.span.in_scope(|| {
            tracing::info!(
                http.method = %self.method,
                http.route = %self.route,
                http.status = status,
                fhir.interaction = self.interaction,
                elapsed_us = elapsed.as_micros() as u64,
                "request"
            );
        });
    }
}

/// Counts a consent decision (`outcome` from a fixed set: `filtered`, `denied`,
/// `refused-stale`, `break-the-glass`, `not-gated`).
pub fn consent_decision(outcome: &'static str) {
    metrics()
        .consent_decisions
        .add(1, &[KeyValue::new("outcome", outcome)]);
}

#[cfg(test)]
mod tests {
    use actix_web::http::Method;

    use super::interaction;

    #[test]
    fn interactions_are_named_from_the_method_and_the_route_pattern() {
        let cases = [
            (Method::GET, "/{type}/{id}", "read"),
            (Method::GET, "/{type}/{id}/_history/{vid}", "vread"),
            (Method::GET, "/{type}", "search-type"),
            (Method::POST, "/{type}/_search", "search-type"),
            (Method::POST, "/{type}", "create"),
            (Method::PUT, "/{type}/{id}", "update"),
            (Method::PUT, "/{type}", "update"),
            (Method::PATCH, "/{type}/{id}", "patch"),
            (Method::DELETE, "/{type}/{id}", "delete"),
            (Method::GET, "/{type}/{id}/_history", "history-instance"),
            (Method::GET, "/{type}/_history", "history-type"),
            (Method::GET, "/_history", "history-system"),
            (Method::POST, "", "transaction-batch"),
            (Method::POST, "/", "transaction-batch"),
            (Method::GET, "/Patient/{id}/$everything", "$everything"),
            (Method::POST, "/$hl7v2", "$hl7v2"),
            (Method::GET, "/{type}/{id}/_history/{vid}/$proof", "$proof"),
            (Method::GET, "/metadata", "capabilities"),
        ];
        for (method, route, expected) in cases {
            assert_eq!(
                interaction(&method, route),
                expected,
                "{method} {route} should be {expected}"
            );
        }
    }
}
