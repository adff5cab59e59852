//! OpenTelemetry traces for a backend (feature `otel`): a `handle` span per
//! forwarded request whose parent is the gateway's span, read from
//! `RequestContext.traceparent`/`tracestate`, exported over OTLP/gRPC.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//! let otel = service_sdk::otel::Otel::init("http://127.0.0.1:4317", "hello")?;
//! tracing_subscriber::registry().with(otel.layer()).init();
//! // ... serve ...
//! otel.shutdown();
//! # Ok(()) }
//! ```
//!
//! Without [`Otel::init`] no span is made.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Failure to set up the OTLP exporter.
pub type OtelError = opentelemetry_otlp::ExporterBuildError;

/// The OTLP exporter of the backend's spans; call [`Otel::shutdown`] before
/// the process ends to send what is still buffered.
#[derive(Debug)]
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// Exports to the OTLP/gRPC `endpoint` as `service_name`; must run
    /// inside a tokio runtime.
    pub fn init(endpoint: &str, service_name: &str) -> Result<Self, OtelError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Self { provider })
    }

    /// The `tracing` layer exporting the SDK's spans (target
    /// `service_sdk::otel`) and nothing else.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer("service-sdk");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("service_sdk::otel", tracing::Level::INFO))
    }

    /// Sends the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        let _ = self.provider.shutdown();
    }
}

struct Ctx<'a>(&'a str, &'a str);

impl Extractor for Ctx<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" if !self.0.is_empty() => Some(self.0),
            "tracestate" if !self.1.is_empty() => Some(self.1),
            _ => None,
        }
    }
    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The span of one handled request, child of the gateway's span; `None`
/// when tracing is off.
pub(crate) fn handle_span(
    method: &str,
    path: &str,
    service: &str,
    traceparent: &str,
    tracestate: &str,
) -> Option<tracing::Span> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    let span = tracing::info_span!(
        target: "service_sdk::otel",
        parent: None,
        "handle",
        otel.name = format!("{method} {path}"),
        otel.kind = "server",
        http.request.method = method,
        url.path = path,
        service = service,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&Ctx(traceparent, tracestate));
    let _ = span.set_parent(parent);
    Some(span)
}
