//! OpenTelemetry traces, behind the `otel` cargo feature and off until
//! `Otel::init` (with the feature) is called (the `gateway` binary calls it when
//! `[tracing] otlp_endpoint` is set).
//!
//! When on, every forwarded request gets a `request` span (a root of the
//! gateway's own, whose parent is the client's W3C `traceparent` if it sent
//! one) and every upstream attempt a child `attempt` span, with the service,
//! instance, route and outcome as attributes. The `request` span is the
//! parent the gateway sends on in `RequestContext.traceparent`, so a
//! backend's span joins the same trace.
//!
//! When off - the feature not compiled, or compiled but not initialised -
//! no span is created on the request path: the hooks below are empty
//! functions, or one relaxed atomic load.

use std::future::Future;

#[cfg(feature = "otel")]
pub use on::{Otel, OtelError};

/// The `traceparent`/`tracestate` the gateway sends in
/// `RequestContext` instead of the client's: its own span, when tracing is
/// on. Kept in the request's extensions.
#[derive(Debug, Clone)]
pub struct OutgoingTrace {
    /// W3C `traceparent` of the gateway's `request` span.
    pub traceparent: String,
    /// W3C `tracestate` carried on (empty when none).
    pub tracestate: String,
}

/// Whether spans are made: the feature is compiled in and `Otel::init`
/// ran.
#[inline]
pub fn enabled() -> bool {
    #[cfg(feature = "otel")]
    {
        on::ENABLED.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(feature = "otel"))]
    {
        false
    }
}

/// Records the route a request took on the current `request` span (its
/// name stays the method: tracing-opentelemetry names a span when it
/// starts, before the route is known).
#[inline]
pub(crate) fn record_route(_service: &str, _prefix: &str) {
    #[cfg(feature = "otel")]
    if enabled() {
        let span = tracing::Span::current();
        span.record("service", _service);
        span.record("route", _prefix);
    }
}

/// The span of one upstream attempt (nothing when tracing is off).
pub(crate) struct Attempt {
    #[cfg(feature = "otel")]
    span: Option<tracing::Span>,
}

impl Attempt {
    /// Starts the span of an attempt on `instance` of `service` with `rpc`
    /// (`Send` or `Stream`), a child of the current `request` span.
    #[inline]
    pub(crate) fn start(_service: &str, _instance: &str, _rpc: &'static str) -> Self {
        #[cfg(feature = "otel")]
        {
            let span = enabled().then(|| {
                tracing::info_span!(
                    target: "gateway_core::otel",
                    "attempt",
                    otel.name = format!("forwarding.v1.ForwardingService/{_rpc}"),
                    otel.kind = "client",
                    rpc.system = "grpc",
                    rpc.method = _rpc,
                    service = _service,
                    instance = _instance,
                    outcome = tracing::field::Empty,
                )
            });
            Attempt { span }
        }
        #[cfg(not(feature = "otel"))]
        Attempt {}
    }

    /// `f` inside the attempt's span (a disabled span when tracing is off).
    ///
    /// Not an `async fn`: one would keep `f` as its argument *and* as the
    /// awaited value in its state, doubling the size of the unary request's
    /// future (~8 KiB, copied into its box on every request).
    #[cfg(feature = "otel")]
    #[inline]
    pub(crate) fn run<F: Future>(&self, f: F) -> tracing::instrument::Instrumented<F> {
        use tracing::Instrument;
        f.instrument(self.span.clone().unwrap_or_else(tracing::Span::none))
    }

    /// `f` itself: without the `otel` feature there is no span.
    #[cfg(not(feature = "otel"))]
    #[inline]
    pub(crate) fn run<F: Future>(&self, f: F) -> F {
        f
    }

    /// Records how the attempt ended (`ok`, `timeout`, a gRPC code...).
    #[inline]
    pub(crate) fn outcome(&self, _outcome: &dyn std::fmt::Display) {
        #[cfg(feature = "otel")]
        if let Some(span) = &self.span {
            span.record("outcome", tracing::field::display(_outcome));
        }
    }
}

#[cfg(feature = "otel")]
mod on {
    use std::sync::atomic::AtomicBool;

    use axum::body::Body;
    use http::{HeaderMap, Request, Response};
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::registry::LookupSpan;

    use super::OutgoingTrace;
    use crate::error::ForwardError;

    pub(super) static ENABLED: AtomicBool = AtomicBool::new(false);

    /// Failure to set up the OTLP exporter.
    pub type OtelError = opentelemetry_otlp::ExporterBuildError;

    /// The OTLP exporter of the gateway's spans. Keep it for the life of the
    /// process and call [`Otel::shutdown`] at the end, which sends what is
    /// still buffered.
    #[derive(Debug)]
    pub struct Otel {
        provider: SdkTracerProvider,
    }

    impl Otel {
        /// Exports spans to the OTLP/gRPC `endpoint` as `service_name`, and
        /// turns spans on the request path on. Must run inside a tokio
        /// runtime (the gRPC channel lives on it).
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
            ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(Self { provider })
        }

        /// The `tracing` layer that turns the gateway's spans into
        /// OpenTelemetry spans; it sees nothing else (its own filter), so
        /// the log filter (`RUST_LOG`) and the export are independent.
        pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
        where
            S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
        {
            let tracer = self.provider.tracer("forwarding-gateway");
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target("gateway_core::otel", tracing::Level::INFO))
        }

        /// Sends the spans still buffered and stops the exporter.
        pub fn shutdown(self) {
            ENABLED.store(false, std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = self.provider.shutdown() {
                tracing::warn!(error = %e, "OpenTelemetry exporter did not shut down cleanly.");
            }
        }
    }

    struct Headers<'a>(&'a HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }

    #[derive(Default)]
    struct Fields {
        traceparent: String,
        tracestate: String,
    }

    impl Injector for Fields {
        fn set(&mut self, key: &str, value: String) {
            match key {
                "traceparent" => self.traceparent = value,
                "tracestate" => self.tracestate = value,
                _ => {}
            }
        }
    }

    /// Runs `forward` inside the request's span: the client's trace
    /// context is its parent, the span itself the parent sent on.
    pub(crate) async fn request<B, F, Fut>(
        mut req: Request<B>,
        forward: F,
    ) -> Result<Response<Body>, ForwardError>
    where
        F: FnOnce(Request<B>) -> Fut,
        Fut: Future<Output = Result<Response<Body>, ForwardError>>,
    {
        let propagator = TraceContextPropagator::new();
        let parent = propagator.extract(&Headers(req.headers()));
        let span = tracing::info_span!(
            target: "gateway_core::otel",
            parent: None,
            "request",
            otel.name = req.method().as_str(),
            otel.kind = "server",
            http.request.method = req.method().as_str(),
            url.path = req.uri().path(),
            // Read by the admin UI's log pane (`admin::LogFeed`).
            request_id = req
                .extensions()
                .get::<crate::request_id::RequestId>()
                .map(crate::request_id::RequestId::as_str),
            service = tracing::field::Empty,
            route = tracing::field::Empty,
            outcome = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let _ = span.set_parent(parent);
        let mut out = Fields::default();
        propagator.inject_context(&span.context(), &mut out);
        if !out.traceparent.is_empty() {
            req.extensions_mut().insert(OutgoingTrace {
                traceparent: out.traceparent,
                tracestate: out.tracestate,
            });
        }
        let result = forward(req).instrument(span.clone()).await;
        match &result {
            Ok(r) => {
                span.record("outcome", "ok");
                span.record("http.response.status_code", r.status().as_u16());
                if r.status().is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
            }
            Err(e) => {
                span.record("outcome", e.kind.code());
                span.record("http.response.status_code", e.kind.status().as_u16());
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }
}

#[cfg(feature = "otel")]
pub(crate) use on::request;
