//! Logs and traces: the `tracing` subscriber (text or JSON lines on stderr) and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry spans exported over OTLP (gRPC or HTTP)
//! (`opentelemetry-otlp`, which also reads the other standard `OTEL_*` variables) through
//! `tracing-opentelemetry`: every `tracing` span becomes an OpenTelemetry span.
//!
//! The W3C trace context travels on events as the CloudEvents distributed-tracing extension
//! (`traceparent`, `tracestate`): [`continue_from_event`] makes a span a child of an incoming
//! event's context, [`inject_into_event`] writes a span's context onto an outgoing event
//! (replies, dead letters). gRPC and REST requests continue a `traceparent` header the same way
//! ([`continue_from_headers`]). Without an endpoint nothing is exported, and an incoming
//! `traceparent` is still copied onto the reply unchanged (the dispatcher does that), so a
//! tracing system in front of or behind the daemon can join the ends.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use wm_shared::CloudEvent;

use crate::config::LogFormat;

/// The CloudEvents extension that carries the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// The CloudEvents extension that carries the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// Keeps the exporter; [`Telemetry::shutdown`] flushes what is buffered.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (call inside the Tokio runtime, before it ends).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "OpenTelemetry shutdown failed; the last spans may be lost");
        }
    }
}

/// Installs the global subscriber: `WORKMANAGER_LOG` (or `RUST_LOG`) filters, `format` shapes
/// the log lines, and `otlp_endpoint` (from `OTEL_EXPORTER_OTLP_ENDPOINT`) turns on span
/// export. Call it inside the Tokio runtime: the OTLP client's connection lives there.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Telemetry {
    use std::io::IsTerminal as _;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("WORKMANAGER_LOG")
            .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let mut error = None;
    let provider = otlp_endpoint.and_then(|endpoint| match provider(endpoint) {
        Ok(p) => Some(p),
        Err(e) => {
            error = Some(e);
            None
        }
    });
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("workmanager"))
            // Only the daemon's own spans (info and above) become trace spans; the log
            // filter below applies to log lines only.
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    use tracing_subscriber::Layer as _;
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .init();
    if let Some(e) = error {
        tracing::error!(error = %e, "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter could not be built; traces are not exported");
    } else if let Some(e) = otlp_endpoint {
        let protocol = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "grpc".to_owned());
        tracing::info!(endpoint = %e, %protocol, "exporting traces over OTLP");
    }
    Telemetry { provider }
}

/// The OTLP exporter the standard variables ask for: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, `grpc` (the default) or `http/protobuf`. When the endpoint
/// comes from the environment the exporter resolves it itself (so
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and the `/v1/traces` suffix of OTLP/HTTP work as
/// specified); from the config file it is passed on.
fn exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
    let from_env = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "grpc".to_owned());
    let built = match protocol.trim() {
        "grpc" => {
            let b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if from_env {
                b.build()
            } else {
                b.with_endpoint(endpoint).build()
            }
        }
        "http/protobuf" => {
            let b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if from_env {
                b.build()
            } else {
                b.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                    .build()
            }
        }
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL '{other}' is not supported: use grpc or http/protobuf"
            ));
        }
    };
    built.map_err(|e| e.to_string())
}

fn provider(endpoint: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    let exporter = exporter(endpoint)?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(
            std::env::var("OTEL_SERVICE_NAME")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "workmanager".to_owned()),
        )
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct EventExt<'a>(&'a CloudEvent);

impl Extractor for EventExt<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.extension(key)
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE]
            .into_iter()
            .filter(|k| self.0.extension(k).is_some())
            .collect()
    }
}

#[derive(Default)]
struct Carrier(Vec<(String, String)>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// Makes `span` a child of the W3C trace context in `headers` (`traceparent`), if any.
pub fn continue_from_headers(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if headers.contains_key(TRACEPARENT) {
        let cx = TraceContextPropagator::new().extract(&Headers(headers));
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of the trace context an event carries (`traceparent`), if any.
pub fn continue_from_event(span: &tracing::Span, event: &CloudEvent) {
    if event.extension(TRACEPARENT).is_some() {
        let cx = TraceContextPropagator::new().extract(&EventExt(event));
        let _ = span.set_parent(cx);
    }
}

/// Writes `span`'s trace context onto `event` as `traceparent` (and `tracestate`), when the
/// span is recorded (OTLP export on); returns whether it did. Otherwise the event keeps
/// whatever it carries.
pub fn inject_into_event(span: &tracing::Span, event: &mut CloudEvent) -> bool {
    let cx = span.context();
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let mut set = false;
    for (k, v) in carrier.0 {
        if (k == TRACEPARENT || k == TRACESTATE) && !v.is_empty() {
            set |= event.set_extension(k, v).is_ok();
        }
    }
    set
}

/// Copies `traceparent` and `tracestate` from `from` onto `to` where `to` has none (a reply
/// continues its input's trace even when no span is recorded).
pub fn copy_trace_context(from: &CloudEvent, to: &mut CloudEvent) {
    for k in [TRACEPARENT, TRACESTATE] {
        if let Some(v) = from.extension(k) {
            let _ = to.set_extension_if_absent(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_is_copied_onto_replies_without_overwriting() {
        let mut input = CloudEvent::new("1", "t", "s");
        input
            .set_extension(
                TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .unwrap();
        input.set_extension(TRACESTATE, "vendor=x").unwrap();
        let mut reply = CloudEvent::new("2", "t.reply", "s");
        copy_trace_context(&input, &mut reply);
        assert_eq!(reply.extension(TRACEPARENT), input.extension(TRACEPARENT));
        assert_eq!(reply.extension(TRACESTATE), Some("vendor=x"));
        let mut own = CloudEvent::new("3", "t.reply", "s");
        own.set_extension(
            TRACEPARENT,
            "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01",
        )
        .unwrap();
        copy_trace_context(&input, &mut own);
        assert!(own.extension(TRACEPARENT).unwrap().contains("aaaa"));
    }

    #[test]
    fn no_recorded_span_injects_nothing() {
        let mut ev = CloudEvent::new("1", "t", "s");
        assert!(!inject_into_event(&tracing::Span::none(), &mut ev));
        assert_eq!(ev.extension(TRACEPARENT), None);
    }
}
