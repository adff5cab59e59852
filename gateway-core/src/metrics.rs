//! Prometheus metrics, served as OpenMetrics text on the admin listener at
//! `GET /metrics` (every metric is listed in README.md, "Metrics").
//!
//! Built on `prometheus-client` (the Prometheus project's own Rust client):
//! it is maintained, its label sets are typed structs (`EncodeLabelSet`)
//! rather than string slices, and it has no global registry - each
//! [`Metrics`] owns its own, so several gateways in one process (tests,
//! embedders) never mix their counts.
//!
//! The request path does no label formatting and no allocation: families
//! are created once here, and the handles a request needs are looked up
//! once and cached - per route ([`RouteMetrics`], lazily per listener x
//! method class x status class) and per service ([`ServiceMetrics`], kept
//! in the balancer's per-service state across snapshots). A request then
//! does atomic adds only (a histogram observation takes the histogram's
//! uncontended lock). Cardinality is bounded: labels are listeners, classes,
//! registered services and their route prefixes - never a raw path or a
//! client address.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::registry::RegistryStatus;
use crate::routing::Listener;

/// Latency buckets in seconds: 0.5 ms to 30 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Labels of `gateway_requests_total` and `gateway_request_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    listener: &'static str,
    service: String,
    route: String,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    service: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    service: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    provider: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

const LISTENERS: [&str; 3] = ["public", "internal", "admin"];
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "other"];
const STATUSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// `gateway_kafka_events_skipped_total` reasons and the sync counters
/// they are read from (registry::kafka's admin view).
const KAFKA_SKIPS: [(&str, &str); 6] = [
    ("own", "skipped_own"),
    ("duplicate", "skipped_duplicate"),
    ("invalid", "skipped_invalid"),
    ("contradicts_registry", "contradicted"),
    ("catch_up", "skipped_catch_up"),
    ("stale", "skipped_stale"),
];
const CELLS: usize = LISTENERS.len() * METHODS.len() * STATUSES.len();

fn listener_index(l: Listener) -> usize {
    match l {
        Listener::Public => 0,
        Listener::Internal => 1,
        Listener::Admin => 2,
    }
}

/// The method class of a request: GET, HEAD, POST, PUT, DELETE or other.
pub fn method_class(m: &http::Method) -> usize {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        _ => 5,
    }
}

fn status_index(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Why an upstream attempt failed (`gateway_upstream_failures_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The connection was refused (or could not be opened).
    RefusedConnection = 0,
    /// The instance refused the stream before processing it.
    RefusedStream,
    /// The instance answered gRPC `UNAVAILABLE`.
    GrpcUnavailable,
    /// The instance answered another non-OK gRPC status.
    GrpcError,
    /// No answer within the route's budget.
    Timeout,
    /// The answer could not be converted to HTTP.
    InvalidAnswer,
}

const FAILURE_KINDS: [&str; 6] = [
    "refused_connection",
    "refused_stream",
    "grpc_unavailable",
    "grpc_error",
    "timeout",
    "invalid_answer",
];

/// Per-service upstream handles, created once per service and kept in the
/// balancer's per-service state: a request does atomic adds only.
#[derive(Debug)]
pub struct ServiceMetrics {
    /// `[metrics] enabled` when the handles were made: off, every method
    /// returns at once.
    enabled: bool,
    attempts: Counter,
    retries: Counter,
    failures: [Counter; FAILURE_KINDS.len()],
}

impl ServiceMetrics {
    /// Counts one attempt sent to an instance (retries included).
    pub fn attempt(&self) {
        if self.enabled {
            self.attempts.inc();
        }
    }

    /// Counts one attempt beyond the first (taken from the retry budget).
    pub fn retry(&self) {
        if self.enabled {
            self.retries.inc();
        }
    }

    /// Counts one failed attempt.
    pub fn failure(&self, kind: FailureKind) {
        if self.enabled {
            self.failures[kind as usize].inc();
        }
    }
}

/// Body bytes passing through a streamed exchange (`Stream`, SSE,
/// WebSocket): one relaxed atomic add per chunk, nothing when metrics are
/// off.
#[derive(Debug, Clone, Default)]
pub struct ByteCount(Option<Counter>);

impl ByteCount {
    /// Adds `n` bytes.
    #[inline]
    pub fn add(&self, n: usize) {
        if let Some(c) = &self.0 {
            c.inc_by(n as u64);
        }
    }
}

/// Per-route request handles, each found in its family on first use.
pub struct RouteMetrics {
    service: String,
    route: String,
    cells: [OnceLock<(Counter, Histogram)>; CELLS],
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("service", &self.service)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// Handles for requests on `service`'s route `route` ("" and "" for
    /// requests that matched no route).
    pub fn new(service: &str, route: &str) -> Self {
        Self {
            service: service.to_owned(),
            route: route.to_owned(),
            cells: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

/// Decrements the in-flight gauge when dropped (also on cancellation).
pub struct InFlightGuard<'a>(&'a Gauge);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric of one gateway, and the registry they are encoded from.
pub struct Metrics {
    /// `[metrics] enabled`: off, the request path skips all metric work
    /// (the families stay registered, at zero).
    enabled: AtomicBool,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
    unrouted: RouteMetrics,
    /// Request body bytes read (buffered and streamed).
    pub request_bytes: Counter,
    /// Response body bytes (known lengths, and streamed chunks as they pass).
    pub response_bytes: Counter,
    in_flight: Gauge,
    attempts: Family<ServiceLabel, Counter>,
    retries: Family<ServiceLabel, Counter>,
    failures: Family<FailureLabels, Counter>,
    ejections: [Counter; 2],
    connections: Gauge,
    registry_connected: Gauge,
    watch_wakeups: Counter,
    watch_errors: Counter,
    last_read_age: Gauge<f64, AtomicU64>,
    kafka_produced: Counter,
    kafka_consumed: Counter,
    kafka_skipped: [Counter; KAFKA_SKIPS.len()],
    kafka_queue: Gauge,
    /// Requests refused at the concurrency limit.
    pub shed: Counter,
    /// 413 answers (body over the limit).
    pub body_too_large: Counter,
    /// 431 answers (headers over the limit).
    pub headers_too_large: Counter,
    /// Connections refused over a connection limit (all listeners).
    pub connections_refused: Counter,
    /// 429 answers: a `[[rate_limits]]` policy refused the request.
    pub rate_limited: Counter,
    /// Requests a cluster rate limit let through unchecked because its
    /// Redis did not answer (fail open).
    pub rate_limit_store_errors: Counter,
    /// Connections closed for being slow (header/body/idle timers).
    pub slow_connections: Counter,
    /// Registration propagation and Kafka consumer lag (own section below).
    pub discovery: DiscoveryMetrics,
    /// Access log lines dropped because the writer fell behind.
    pub access_log_dropped: Counter,
    /// `gateway_cache_requests_total{service,result}` (`cache`).
    cache_requests: Family<CacheLabels, Counter>,
    /// `[[auth]]` decisions by provider and result.
    auth_decisions: Family<AuthLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered, all at zero.
    pub fn new() -> Self {
        Self::with_collector(None)
    }

    /// [`Metrics::new`], plus `collector`, encoded on each scrape (the
    /// balancer's per-instance in-flight gauge: read from the endpoints at
    /// scrape time, so it costs the request path nothing).
    pub fn with_collector(collector: Option<Box<dyn Collector>>) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        if let Some(c) = collector {
            registry.register_collector(c);
        }
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration =
            Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let (request_bytes, response_bytes) = (Counter::default(), Counter::default());
        let in_flight = Gauge::default();
        let attempts = Family::<ServiceLabel, Counter>::default();
        let retries = Family::<ServiceLabel, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let ejections_family = Family::<ReasonLabel, Counter>::default();
        // One handle at a time: `get_or_create` returns a read guard, and a
        // second call while the first's guard lives (two elements of one
        // array literal) waits for the write lock forever.
        let ejections = ["unreachable", "failing"].map(|reason| {
            ejections_family
                .get_or_create(&ReasonLabel { reason })
                .clone()
        });
        let connections = Gauge::default();
        let registry_connected = Gauge::default();
        let (watch_wakeups, watch_errors) = (Counter::default(), Counter::default());
        let last_read_age = Gauge::<f64, AtomicU64>::default();
        let (kafka_produced, kafka_consumed) = (Counter::default(), Counter::default());
        let kafka_skipped_family = Family::<ReasonLabel, Counter>::default();
        let kafka_skipped = KAFKA_SKIPS.map(|(reason, _)| {
            kafka_skipped_family
                .get_or_create(&ReasonLabel { reason })
                .clone()
        });
        let kafka_queue = Gauge::default();
        let protection = Family::<ReasonLabel, Counter>::default();
        let refusal = |reason| protection.get_or_create(&ReasonLabel { reason }).clone();
        let (shed, body_too_large, headers_too_large, connections_refused, slow_connections) = (
            refusal("overloaded"),
            refusal("body_too_large"),
            refusal("headers_too_large"),
            refusal("too_many_connections"),
            refusal("slow_connection"),
        );
        let rate_limited = refusal("rate_limited");
        let access_log_dropped = Counter::default();
        let rate_limit_store_errors = Counter::default();
        registry.register(
            "rate_limit_store_errors",
            "Requests let through unchecked by a cluster rate limit because its store did not answer",
            rate_limit_store_errors.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            access_log_dropped.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests answered by the forwarder",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from the request's arrival at the forwarder to its response head",
            request_duration.clone(),
        );
        registry.register(
            "request_body_bytes",
            "Request body bytes read (buffered, streamed and WebSocket)",
            request_bytes.clone(),
        );
        registry.register(
            "response_body_bytes",
            "Response body bytes (known lengths, streamed chunks, WebSocket messages)",
            response_bytes.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests in the forwarder",
            in_flight.clone(),
        );
        registry.register(
            "upstream_attempts",
            "Calls sent to an instance, retries included",
            attempts.clone(),
        );
        registry.register(
            "upstream_retries",
            "Calls beyond a request's first, taken from the retry budget",
            retries.clone(),
        );
        registry.register(
            "upstream_failures",
            "Failed calls to an instance, by kind",
            failures.clone(),
        );
        registry.register(
            "upstream_ejections",
            "Instances ejected from selection, by reason",
            ejections_family,
        );
        registry.register(
            "upstream_connections",
            "Open HTTP/2 connections to instances",
            connections.clone(),
        );
        registry.register(
            "registry_connected",
            "1 when the registry's backing store is reachable",
            registry_connected.clone(),
        );
        registry.register(
            "discovery_watch_wakeups",
            "Registry watch queries (Consul blocking queries) that returned",
            watch_wakeups.clone(),
        );
        registry.register(
            "discovery_watch_errors",
            "Registry watch queries that failed",
            watch_errors.clone(),
        );
        registry.register(
            "discovery_last_read_age_seconds",
            "Seconds since the registry's last successful read (-1 before the first)",
            last_read_age.clone(),
        );
        registry.register(
            "kafka_events_produced",
            "Registration events handed to the Kafka producer",
            kafka_produced.clone(),
        );
        registry.register(
            "kafka_events_consumed",
            "Registration events read from Kafka",
            kafka_consumed.clone(),
        );
        registry.register(
            "kafka_events_skipped",
            "Registration events read and not applied, by reason",
            kafka_skipped_family,
        );
        registry.register(
            "kafka_producer_queue",
            "Registration events queued in the producer, not yet delivered",
            kafka_queue.clone(),
        );
        registry.register(
            "refused",
            "Requests and connections refused to protect the gateway, by reason",
            protection,
        );
        let cache_requests = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Requests on routes with a [[cache]] policy, by what the cache did (HIT, MISS, STALE, REVALIDATED, BYPASS)",
            cache_requests.clone(),
        );
        let auth_decisions = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_decisions",
            "Authentication decisions of [[auth]] policies, by provider and result (allowed, unauthorized, forbidden, denied, unavailable)",
            auth_decisions.clone(),
        );
        let discovery = DiscoveryMetrics::register(&mut registry);
        Self {
            enabled: AtomicBool::new(true),
            registry,
            requests,
            request_duration,
            unrouted: RouteMetrics::new("", ""),
            request_bytes,
            response_bytes,
            in_flight,
            attempts,
            retries,
            failures,
            ejections,
            connections,
            registry_connected,
            watch_wakeups,
            watch_errors,
            last_read_age,
            kafka_produced,
            kafka_consumed,
            kafka_skipped,
            kafka_queue,
            shed,
            body_too_large,
            headers_too_large,
            connections_refused,
            rate_limited,
            rate_limit_store_errors,
            slow_connections,
            discovery,
            access_log_dropped,
            cache_requests,
            auth_decisions,
        }
    }

    /// `service`'s cache counters, one per result in `results`' order;
    /// `None` when metrics are off.
    pub fn cache_counters<const N: usize>(
        &self,
        service: &str,
        results: [&'static str; N],
    ) -> Option<[Counter; N]> {
        // One `get_or_create` guard at a time: two in one expression
        // deadlock on the family's lock.
        self.enabled().then(|| {
            results.map(|result| {
                let label = CacheLabels {
                    service: service.to_owned(),
                    result,
                };
                self.cache_requests.get_or_create(&label).clone()
            })
        })
    }

    /// The handle of `gateway_auth_decisions_total{provider,result}`, taken
    /// once at start-up so a decision is one atomic add.
    pub fn auth_decision(&self, provider: &str, result: &'static str) -> Counter {
        self.auth_decisions
            .get_or_create(&AuthLabels {
                provider: provider.to_owned(),
                result,
            })
            .clone()
    }

    /// Turns the request path's metric work on or off (`[metrics]
    /// enabled`). Set at start-up, before the first snapshot: per-service
    /// handles copy the setting when they are made.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether the request path records metrics.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A counter of streamed request body bytes (a no-op when off).
    pub fn request_byte_count(&self) -> ByteCount {
        ByteCount(self.enabled().then(|| self.request_bytes.clone()))
    }

    /// A counter of streamed response body bytes (a no-op when off).
    pub fn response_byte_count(&self) -> ByteCount {
        ByteCount(self.enabled().then(|| self.response_bytes.clone()))
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlightGuard<'_> {
        self.in_flight.inc();
        InFlightGuard(&self.in_flight)
    }

    /// Counts one answered request and its latency; `route` is `None` for
    /// requests that matched no route.
    pub fn request(
        &self,
        route: Option<&RouteMetrics>,
        listener: Listener,
        method: usize,
        status: u16,
        seconds: f64,
    ) {
        let route = route.unwrap_or(&self.unrouted);
        let (l, s) = (listener_index(listener), status_index(status));
        let i = (l * METHODS.len() + method) * STATUSES.len() + s;
        let (count, latency) = route.cells[i].get_or_init(|| {
            let labels = RequestLabels {
                listener: LISTENERS[l],
                service: route.service.clone(),
                route: route.route.clone(),
                method: METHODS[method],
                status: STATUSES[s],
            };
            (
                self.requests.get_or_create(&labels).clone(),
                self.request_duration.get_or_create(&labels).clone(),
            )
        });
        count.inc();
        latency.observe(seconds);
    }

    /// The upstream handles of one service (once per service: the balancer
    /// keeps them across snapshots).
    pub fn service(&self, service: &str) -> ServiceMetrics {
        let label = ServiceLabel {
            service: service.to_owned(),
        };
        ServiceMetrics {
            enabled: self.enabled(),
            attempts: self.attempts.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&label).clone(),
            failures: std::array::from_fn(|i| {
                self.failures
                    .get_or_create(&FailureLabels {
                        service: service.to_owned(),
                        kind: FAILURE_KINDS[i],
                    })
                    .clone()
            }),
        }
    }

    /// Counts an ejection (`unreachable`: refused connections; otherwise
    /// failed calls).
    pub fn ejected(&self, unreachable: bool) {
        if !self.enabled() {
            return;
        }
        self.ejections[usize::from(!unreachable)].inc();
    }

    /// The OpenMetrics text, with the gauges read at scrape time (open
    /// connections, registry state) brought up to date first.
    pub fn encode(&self, open_connections: i64, registry: &RegistryStatus) -> String {
        self.connections.set(open_connections);
        self.registry_connected.set(i64::from(registry.connected));
        // The registries count for their own admin view; their totals are
        // copied here at scrape time (nothing on their paths changes).
        let set = |c: &Counter, v: u64| c.inner().store(v, Ordering::Relaxed);
        let w = registry.watch.unwrap_or_default();
        set(&self.watch_wakeups, w.wakeups);
        set(&self.watch_errors, w.errors);
        self.last_read_age.set(w.since_last_read_s.unwrap_or(-1.0));
        if let Some(sync) = &registry.sync {
            let n = |k: &str| sync["counters"][k].as_u64().unwrap_or(0);
            set(&self.kafka_produced, n("published"));
            set(&self.kafka_consumed, n("received"));
            for (c, (_, key)) in self.kafka_skipped.iter().zip(KAFKA_SKIPS) {
                set(c, n(key));
            }
            self.kafka_queue
                .set(sync["in_flight"].as_i64().unwrap_or(0));
        }
        self.discovery.refresh(registry);
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

// ---------------------------------------------------------------------------
// Discovery and replica sync: how long a registration takes to become
// routable (here and on the other replicas), and how far this replica's
// Kafka consumer is behind the topic. Kept in its own section (own struct,
// own registration) so the request-side families above change apart.
// ---------------------------------------------------------------------------

/// Registration-to-routable buckets in seconds: 1 ms (one replica, memory
/// registry) to 60 s (a replica that was cut off from Kafka).
const PROPAGATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabel {
    origin: &'static str,
}

/// Where a registration was accepted, seen from the replica observing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This replica accepted the registration call.
    Local = 0,
    /// Another replica did; its `SyncEvent.origin_time_ms` is the start.
    Remote = 1,
}

/// `gateway_registration_propagation_seconds{origin}` and
/// `gateway_kafka_consumer_lag`.
#[derive(Debug)]
pub struct DiscoveryMetrics {
    propagation: [Histogram; 2],
    kafka_lag: Gauge,
}

impl DiscoveryMetrics {
    fn register(registry: &mut Registry) -> Self {
        let family =
            Family::<OriginLabel, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                Histogram::new(PROPAGATION_BUCKETS)
            });
        let propagation =
            ["local", "remote"].map(|origin| family.get_or_create(&OriginLabel { origin }).clone());
        let kafka_lag = Gauge::default();
        registry.register(
            "registration_propagation_seconds",
            "Time from a registration call's acceptance to the instance being routable: \
             on the replica that accepted it (origin=local) and on the others, from the \
             origin's clock (origin=remote)",
            family,
        );
        registry.register(
            "kafka_consumer_lag",
            "Registration events on the topic this replica has not read yet (sum over partitions; \
             -1 while unknown)",
            kafka_lag.clone(),
        );
        Self {
            propagation,
            kafka_lag,
        }
    }

    /// Records one registration-to-routable latency.
    pub fn propagated(&self, origin: Origin, seconds: f64) {
        self.propagation[origin as usize].observe(seconds.max(0.0));
    }

    /// Scrape-time copy of what the Kafka sync reports (`consumer_lag` in its
    /// admin status; 0 without Kafka).
    fn refresh(&self, registry: &RegistryStatus) {
        let lag = registry
            .sync
            .as_ref()
            .map_or(0, |sync| sync["consumer_lag"].as_i64().unwrap_or(-1));
        self.kafka_lag.set(lag);
    }
}

/// Seconds from `origin_ms` to `routable_ms` (both ms since the Unix epoch,
/// from different hosts' clocks): `None` when the origin is unknown (0), and
/// 0 when clock skew would make it negative.
pub fn propagation_seconds(origin_ms: u64, routable_ms: u64) -> Option<f64> {
    (origin_ms > 0).then(|| routable_ms.saturating_sub(origin_ms) as f64 / 1000.0)
}

#[cfg(test)]
mod discovery_tests {
    use super::*;

    #[test]
    fn propagation_is_clamped_and_unknown_origins_are_not_observed() {
        assert_eq!(propagation_seconds(0, 5_000), None);
        assert_eq!(propagation_seconds(1_000, 1_250), Some(0.25));
        // The reader's clock is behind the origin's: 0, never negative.
        assert_eq!(propagation_seconds(2_000, 1_500), Some(0.0));
    }

    #[test]
    fn propagation_families_and_lag_are_exposed() {
        let m = Metrics::new();
        m.discovery.propagated(Origin::Local, 0.003);
        m.discovery.propagated(Origin::Remote, 0.2);
        m.discovery.propagated(Origin::Remote, -1.0);
        let status = RegistryStatus {
            kind: "test",
            connected: true,
            last_error: None,
            sync: Some(serde_json::json!({"consumer_lag": 7, "counters": {}})),
            watch: None,
        };
        let text = m.encode(0, &status);
        assert!(
            text.contains("gateway_registration_propagation_seconds_count{origin=\"local\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gateway_registration_propagation_seconds_count{origin=\"remote\"} 2"),
            "{text}"
        );
        assert!(text.contains("gateway_kafka_consumer_lag 7"), "{text}");
    }
}
