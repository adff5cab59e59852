//! Selection: which instance takes a request, and passive health.
//!
//! Discovery and selection are separate. A background task turns every
//! registry [`Catalog`] into an immutable [`Snapshot`] (routes + endpoints)
//! and swaps it in with `ArcSwap`; the request path only loads the snapshot.
//! Endpoints (a [`Pool`] of HTTP/2 connections and counters per instance)
//! and each service's [`RetryBudget`] are kept across
//! snapshots, so connections are reused and in-flight counts, latency
//! estimates and ejections stay true.
//!
//! [`Balancer::select`] allocates nothing: it returns [`Candidates`], the
//! pick first and the fall-backs found only when a retry asks for them,
//! holding an `Arc` of the service's endpoint list (not the snapshot guard,
//! which must not be held across an await).
//!
//! **Selection** (`peak_ewma`, the default) is Finagle's and Linkerd's: two
//! random instances, the one with the lower cost wins, cost = peak-EWMA
//! latency x (in-flight + 1) / weight. The estimate jumps to a slower answer
//! at once and decays toward faster ones (and, while idle, toward zero, so
//! an instance that was slow is probed again) with the time constant
//! `balancer.latency_decay`. An instance without an answer yet costs
//! nothing while it has no request in flight and `balancer.default_latency`
//! per request while it has (Finagle's penalty): a new instance is probed at
//! once but not flooded before it has shown its speed. A failed call counts
//! like any other answer (its latency); fast failures are what
//! consecutive-failure ejection is for.
//!
//! **Ejection** has two causes, treated apart:
//! - *unreachable*: the instance refused a connection (or could not be
//!   reached). It is skipped for `ejection_time`, then dialled again; no
//!   backoff, since a refused dial costs a client nothing (the request falls
//!   back or is answered 503, as it would be anyway).
//! - *failing*: `consecutive_failures` calls in a row failed (non-OK gRPC
//!   status, timeout, invalid answer). Skipped for `ejection_time` x the
//!   number of such ejections in a row, at most `max_ejection_time`; a
//!   successful call readmits the instance and resets the count.
//!
//! **Panic mode** (Envoy's): when more than `max_ejection_percent` of a
//! service's instances are ejected, or none is left, ejections for failed
//! calls are ignored and every instance that accepts connections takes
//! traffic again: when most of a service looks broken the fault is as
//! likely ours, and a single instance answering errors must still be
//! served. Unreachable instances stay skipped even then (sending to them
//! cannot succeed); when every instance is unreachable the answer is 503 at
//! once and the registry is asked to re-read the service.

mod budget;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use proto::v1::forwarding_service_client::ForwardingServiceClient;
use rand::Rng;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use budget::RetryBudget;

use crate::config::{BalanceStrategy, BalancerConfig, RetryConfig, TimeoutConfig};
use crate::registry::{Catalog, Health, Registration, Registry, Visibility};
use crate::routing::{Route, RouteTable};
use crate::tls::{self, UpstreamTls, UpstreamTlsError};
pub use crate::upstream::{
    BoxIo, Connect, Io, Pool, PoolSettings, TcpConnector, Upstream, UpstreamError,
};

/// Why an instance is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    /// It refused a connection: no request can reach it.
    Unreachable,
    /// Its calls failed `consecutive_failures` times in a row.
    Failing,
}

const EJECTED_UNREACHABLE: u8 = 1;
const EJECTED_FAILING: u8 = 2;

/// How often an instance ejected for refusing connections is probed with a
/// connection (see [`Balancer::eject`]).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// What a registration says about an instance beyond how to reach it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// Free-form metadata.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// Free-form tags.
    pub tags: Box<[String]>,
}

/// One instance the gateway can send to.
#[derive(Debug)]
pub struct Endpoint {
    /// Service name.
    pub service: Arc<str>,
    /// Instance id.
    pub instance_id: Arc<str>,
    /// Address dialled.
    pub address: Arc<str>,
    /// Balancing weight.
    pub weight: u32,
    /// The instance implements `ForwardingService.Stream`.
    pub streaming: bool,
    /// Its registration's metadata and tags (a `[[canary]]` reads the
    /// instance's version there); a change makes a new endpoint.
    pub labels: Arc<Labels>,
    /// Its HTTP/2 connections, each dialled on first use: an instance that
    /// never gets a request costs no connection and no task (10,000
    /// registered instances cost 10,000 small structs, not sockets).
    pool: Arc<Pool>,
    /// What the registration said about TLS (`tls`, `tls_server_name`):
    /// a change needs new connections.
    tls: (bool, Option<String>),
    in_flight: AtomicU32,
    /// Milliseconds since the balancer's epoch until which the endpoint is
    /// skipped; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Why it is (or was last) ejected: `EJECTED_*`.
    ejected_for: AtomicU8,
    /// Ejections for failed calls since the last successful call: the
    /// multiplier of the next one.
    ejections: AtomicU32,
    /// Attempts sent (retries included).
    requests: AtomicU64,
    /// Connections refused.
    connect_failures: AtomicU64,
    /// Calls that reached the instance and failed.
    failures: AtomicU64,
    /// Failed calls in a row (reset by any success).
    streak: AtomicU32,
    /// Peak-EWMA latency estimate in nanoseconds (`f64` bits), as of
    /// `latency_at_ns`; meaningless until `has_latency`. Atomics rather
    /// than a lock: concurrent answers may lose one sample, which an
    /// estimate can afford.
    latency_ns: AtomicU64,
    has_latency: AtomicBool,
    /// A reconnection probe runs for this endpoint (see [`Balancer::eject`]).
    probing: AtomicBool,
    /// Nanoseconds since the balancer's epoch of the last update.
    latency_at_ns: AtomicU64,
    /// Milliseconds since the Unix epoch when this endpoint entered the
    /// routing (kept across snapshots like the endpoint itself): the end of
    /// `gateway_registration_propagation_seconds{origin="remote"}`. Wall
    /// clock, since the start it is compared with comes from another host.
    routable_since_ms: u64,
}

impl Endpoint {
    /// An endpoint of weight 100 without `streaming` or latency data.
    fn new(service: Arc<str>, instance_id: &str, address: &str, pool: Arc<Pool>) -> Self {
        Endpoint {
            service,
            instance_id: instance_id.into(),
            address: address.into(),
            weight: 100,
            streaming: false,
            labels: Arc::default(),
            pool,
            tls: (false, None),
            in_flight: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejected_for: AtomicU8::new(0),
            ejections: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            latency_ns: AtomicU64::new(0),
            has_latency: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            latency_at_ns: AtomicU64::new(0),
            routable_since_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// A gRPC client for this instance over its connection pool (cheap: an
    /// `Arc` and tonic's settings; calls must run inside a Tokio runtime).
    pub fn client(&self) -> ForwardingServiceClient<Upstream> {
        ForwardingServiceClient::new(self.upstream())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX)
    }

    /// The instance as a `tower::Service` (a `tonic::client::GrpcService`)
    /// over its connection pool, for `tonic::client::Grpc` and custom codecs.
    pub fn upstream(&self) -> Upstream {
        self.pool.service()
    }

    /// Its connection pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Requests currently in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// The ejection in force at `now_ms`, if any.
    fn ejection(&self, now_ms: u64) -> Option<Ejection> {
        if self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms {
            return None;
        }
        match self.ejected_for.load(Ordering::Relaxed) {
            EJECTED_UNREACHABLE => Some(Ejection::Unreachable),
            _ => Some(Ejection::Failing),
        }
    }

    /// The latency estimate at `now_ns`: decayed toward zero since the last
    /// answer, so an idle (once slow) instance is eventually tried again.
    /// `None` before the first answer.
    fn latency_estimate(&self, now_ns: u64, decay_ns: f64) -> Option<f64> {
        if !self.has_latency.load(Ordering::Relaxed) {
            return None;
        }
        let est = f64::from_bits(self.latency_ns.load(Ordering::Relaxed));
        let at = self.latency_at_ns.load(Ordering::Relaxed);
        let idle = now_ns.saturating_sub(at) as f64;
        Some(est * (-idle / decay_ns).exp())
    }

    /// Takes one answer's latency into the peak EWMA: a slower answer than
    /// the estimate replaces it; a faster one pulls it down, weighted by how
    /// long ago the last answer was (tower's `PeakEwma`).
    fn observe_latency(&self, rtt_ns: f64, now_ns: u64, decay_ns: f64) {
        let est = f64::from_bits(self.latency_ns.load(Ordering::Relaxed));
        let at = self.latency_at_ns.load(Ordering::Relaxed);
        let next = if rtt_ns > est {
            rtt_ns
        } else {
            let w = (-(now_ns.saturating_sub(at) as f64) / decay_ns).exp();
            est * w + rtt_ns * (1.0 - w)
        };
        self.latency_ns.store(next.to_bits(), Ordering::Relaxed);
        self.latency_at_ns.store(now_ns, Ordering::Relaxed);
        self.has_latency.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
impl Endpoint {
    /// An endpoint nobody dials, for tests of what surrounds a call.
    pub(crate) fn for_tests() -> Arc<Self> {
        let pool = Pool::new(
            crate::tls::UpstreamTarget::plain("127.0.0.1:9").expect("address"),
            Arc::new(TcpConnector),
            PoolSettings::new(1, Duration::ZERO, Duration::from_secs(1)),
        );
        Arc::new(Endpoint {
            streaming: true,
            ..Endpoint::new("svc".into(), "svc-1", "127.0.0.1:9", pool)
        })
    }
}

/// Decrements the in-flight count when dropped (also on cancellation).
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `gateway_upstream_in_flight{service, instance}`, read from the
/// endpoints of the snapshot in force when Prometheus scrapes: the request
/// path already keeps the count (for least-loaded balancing), so the
/// gauge costs it nothing. One series per routable instance: cardinality is
/// the number of registered instances, and a deregistered one disappears
/// with its endpoint.
struct InstanceInFlight(std::sync::Weak<Balancer>);

impl std::fmt::Debug for InstanceInFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceInFlight")
    }
}

impl prometheus_client::collector::Collector for InstanceInFlight {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let Some(balancer) = self.0.upgrade() else {
            return Ok(());
        };
        let snapshot = balancer.snapshot();
        let mut family = encoder.encode_descriptor(
            "upstream_in_flight",
            "Requests in flight per instance (read at scrape time)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for e in snapshot.services.values().flat_map(|s| s.endpoints.iter()) {
            let labels = [("service", &*e.service), ("instance", &*e.instance_id)];
            family
                .encode_family(&labels)?
                .encode_gauge(&i64::from(e.in_flight()))?;
        }
        Ok(())
    }
}

/// The instances of one service that may receive traffic.
#[derive(Debug)]
pub struct ServiceEndpoints {
    /// Routable endpoints (health not failing); [`Candidates`] hold an
    /// `Arc` of the list.
    pub endpoints: Arc<[Arc<Endpoint>]>,
    /// Registered instances including failing ones (for messages).
    pub registered: usize,
    /// The service's retry budget (kept across snapshots).
    pub budget: Arc<RetryBudget>,
    /// The service's upstream metric handles (kept across snapshots).
    pub metrics: Arc<crate::metrics::ServiceMetrics>,
    /// When the registry was last told the service is unreachable
    /// (milliseconds since the balancer's epoch; kept across snapshots).
    unreachable_told_ms: Arc<AtomicU64>,
    rr: AtomicUsize,
    /// Changes whenever the service's registrations do (an instance joins,
    /// leaves or registers anew with other settings), not on health
    /// changes: the response cache drops what it stored under an older one.
    pub generation: u64,
    /// The registrations `generation` stands for (catalogue order).
    registrations: Vec<Arc<crate::registry::Registration>>,
}

/// Everything the request path needs, immutable.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Routes of every registered service.
    pub routes: RouteTable,
    /// Endpoints by service.
    pub services: HashMap<Arc<str>, ServiceEndpoints>,
    /// Catalogue version this was built from.
    pub version: u64,
}

/// How often a service whose instances are all unreachable is reported to
/// the registry (see [`Balancer::report_unreachable`]).
pub const UNREACHABLE_REPORT_INTERVAL: Duration = Duration::from_millis(500);

/// Why no endpoint was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// Nothing registered or everything failing health checks.
    NoneHealthy,
    /// Every routable instance refused a connection recently.
    AllEjected,
}

/// The ejection state of a service as selection sees it (admin view).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Instances skipped because they refused a connection.
    pub unreachable: usize,
    /// Instances ejected for failed calls.
    pub failing: usize,
    /// Ejections for failed calls are ignored (too many ejected).
    pub panic: bool,
}

/// Picks instances and tracks passive health.
pub struct Balancer {
    snapshot: ArcSwap<Snapshot>,
    /// Catalogue version of the snapshot in force, for waiters.
    applied: tokio::sync::watch::Sender<u64>,
    config: BalancerConfig,
    retry: RetryConfig,
    timeouts: TimeoutConfig,
    /// TLS towards instances (`[upstream_tls]`).
    upstream_tls: Option<UpstreamTls>,
    /// How connections to instances are opened.
    connector: Arc<dyn Connect>,
    epoch: Instant,
    /// This gateway's metrics (the balancer is what every part of the
    /// request path holds).
    metrics: Arc<crate::metrics::Metrics>,
    /// The last [`ServiceEndpoints::generation`] handed out.
    generations: AtomicU64,
}

impl Balancer {
    /// A balancer with an empty snapshot.
    pub fn new(config: BalancerConfig, retry: RetryConfig, timeouts: TimeoutConfig) -> Arc<Self> {
        Self::with_upstream_tls(config, retry, timeouts, None)
    }

    /// A balancer that dials instances over TLS as `upstream_tls` and their
    /// registrations say.
    pub fn with_upstream_tls(
        config: BalancerConfig,
        retry: RetryConfig,
        timeouts: TimeoutConfig,
        upstream_tls: Option<UpstreamTls>,
    ) -> Arc<Self> {
        Self::with_connector(
            config,
            retry,
            timeouts,
            upstream_tls,
            Arc::new(TcpConnector),
        )
    }

    /// A balancer that opens connections to instances with `connector`
    /// (TCP/TLS by default; an in-memory one in tests, see
    /// [`Connect`]).
    pub fn with_connector(
        config: BalancerConfig,
        retry: RetryConfig,
        timeouts: TimeoutConfig,
        upstream_tls: Option<UpstreamTls>,
        connector: Arc<dyn Connect>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            applied: tokio::sync::watch::channel(0).0,
            config,
            retry,
            timeouts,
            upstream_tls,
            connector,
            epoch: Instant::now(),
            metrics: Arc::new(crate::metrics::Metrics::with_collector(Some(Box::new(
                InstanceInFlight(me.clone()),
            )))),
            generations: AtomicU64::new(0),
        })
    }

    /// This gateway's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Open HTTP/2 connections to every instance of the current snapshot.
    pub fn open_connections(&self) -> usize {
        let snap = self.snapshot();
        snap.services
            .values()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| e.pool().open_connections())
            .sum()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn decay_ns(&self) -> f64 {
        self.config.latency_decay.as_nanos().max(1) as f64
    }

    /// Follows the registry: rebuilds the snapshot on every catalogue change
    /// until the registry's channel closes. Returns once the first catalogue
    /// is applied, with the task that keeps following.
    pub fn follow(self: &Arc<Self>, registry: &dyn Registry) -> tokio::task::JoinHandle<()> {
        let mut rx = registry.watch();
        let first = rx.borrow_and_update().clone();
        self.apply(&first);
        let this = self.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let catalog = rx.borrow_and_update().clone();
                this.apply(&catalog);
            }
        })
    }

    /// Builds and swaps in the snapshot for a catalogue.
    pub fn apply(&self, catalog: &Catalog) {
        let old = self.snapshot.load();
        let mut existing: HashMap<(&str, &str, &str), &Arc<Endpoint>> = HashMap::new();
        for s in old.services.values() {
            for e in s.endpoints.iter() {
                existing.insert((&e.service, &e.instance_id, &e.address), e);
            }
        }
        // Endpoint lists are collected, then frozen into `Arc<[_]>`.
        let mut services: HashMap<Arc<str>, (ServiceEndpoints, Vec<Arc<Endpoint>>)> =
            HashMap::new();
        // (service, prefix, sorted hosts) -> timeout: instances of one
        // service registering the same route share one entry.
        type RouteKey = (Arc<str>, String, Vec<String>);
        // Value: (timeout, stream, max duration, strip_prefix); `stream` and
        // `strip_prefix` if any instance asks.
        let mut routes: HashMap<RouteKey, (Option<Duration>, bool, Option<Duration>, bool)> =
            HashMap::new();
        let mut visibility: HashMap<Arc<str>, Visibility> = HashMap::new();
        for inst in &catalog.instances {
            let r = &inst.registration;
            let service: Arc<str> = services
                .get_key_value(r.service.as_str())
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| r.service.as_str().into());
            let (entry, list) = services.entry(service.clone()).or_insert_with(|| {
                let s = ServiceEndpoints {
                    endpoints: Arc::new([]),
                    registered: 0,
                    // A service keeps its budget across snapshots: a
                    // catalogue change must not refill a spent one.
                    budget: old
                        .services
                        .get(r.service.as_str())
                        .map(|s| s.budget.clone())
                        .unwrap_or_else(|| Arc::new(RetryBudget::new(&self.retry))),
                    unreachable_told_ms: old
                        .services
                        .get(r.service.as_str())
                        .map(|s| s.unreachable_told_ms.clone())
                        .unwrap_or_default(),
                    metrics: old
                        .services
                        .get(r.service.as_str())
                        .map(|s| s.metrics.clone())
                        .unwrap_or_else(|| Arc::new(self.metrics.service(&r.service))),
                    rr: AtomicUsize::new(0),
                    generation: 0,
                    registrations: Vec::new(),
                };
                (s, Vec::new())
            });
            entry.registered += 1;
            entry.registrations.push(r.clone());
            // The most restrictive visibility any instance asks for wins: a
            // half-deployed "make it internal" must not stay public.
            let v = visibility.entry(service.clone()).or_insert(r.visibility);
            *v = (*v).max(r.visibility);
            for rt in &r.routes {
                let mut hosts = rt.hosts.clone();
                hosts.sort();
                let e = routes
                    .entry((service.clone(), rt.path_prefix.clone(), hosts))
                    .or_insert((rt.timeout, false, rt.max_duration, false));
                e.1 |= rt.stream;
                // As `stream`: one instance asking is enough (a rolling
                // upgrade that adds it switches the route when it starts).
                e.3 |= rt.strip_prefix;
            }
            if inst.health == Health::Failing {
                continue;
            }
            let reused = existing
                .get(&(
                    r.service.as_str(),
                    r.instance_id.as_str(),
                    r.address.as_str(),
                ))
                .filter(|e| {
                    e.weight == r.weight.max(1)
                        && e.streaming == r.streaming
                        && e.tls.0 == r.tls
                        && e.tls.1 == r.tls_server_name
                        && e.labels.metadata == r.metadata
                        && *e.labels.tags == *r.tags
                })
                .map(|e| (*e).clone());
            let ep = match reused {
                Some(e) => e,
                None => match self.endpoint(service.clone(), r) {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(service = %r.service, address = %r.address, error = %e, "Instance address cannot be dialled; skipped.");
                        continue;
                    }
                },
            };
            list.push(ep);
        }
        let services: HashMap<Arc<str>, ServiceEndpoints> = services
            .into_iter()
            .map(|(name, (mut s, list))| {
                s.endpoints = list.into();
                s.generation = match old.services.get(&name) {
                    Some(o) if same_registrations(&o.registrations, &s.registrations) => {
                        o.generation
                    }
                    _ => self.generations.fetch_add(1, Ordering::Relaxed) + 1,
                };
                (name, s)
            })
            .collect();
        let route_list =
            routes.into_iter().filter_map(
                |((svc, prefix, hosts), (timeout, stream, max_duration, strip_prefix))| {
                    let vis = visibility.get(&svc).copied().unwrap_or(Visibility::Public);
                    Route::new(svc.clone(), &prefix, &hosts, timeout, vis)
                .map_err(|e| warn!(service = %svc, prefix = %prefix, error = %e, "Route skipped."))
                .ok()
                .map(|mut r| {
                    r.stream = stream;
                    r.max_duration = max_duration;
                    r.strip_prefix = strip_prefix;
                    r
                })
                },
            );
        let (table, conflicts) = RouteTable::new(route_list);
        for c in conflicts {
            warn!(conflict = %c, "Route conflict.");
        }
        info!(
            version = catalog.version,
            services = services.len(),
            routes = table.len(),
            "Routing snapshot updated."
        );
        self.snapshot.store(Arc::new(Snapshot {
            routes: table,
            services,
            version: catalog.version,
        }));
        self.applied.send_replace(catalog.version);
    }

    /// Resolves once a snapshot built from catalogue `version` (or later) is
    /// in force.
    pub async fn wait_applied(&self, version: u64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|v| *v >= version).await;
    }

    /// When `service`'s instance `instance_id` entered the routing of the
    /// snapshot in force (ms since the Unix epoch); `None` when it is not
    /// routable there.
    pub fn routable_since(&self, service: &str, instance_id: &str) -> Option<u64> {
        self.snapshot()
            .services
            .get(service)?
            .endpoints
            .iter()
            .find(|e| &*e.instance_id == instance_id)
            .map(|e| e.routable_since_ms)
    }

    /// Waits (at most `timeout`) until the instance is routable, then says
    /// since when, as [`Balancer::routable_since`]: the registration
    /// propagation metric of the replicas that learn of a registration from
    /// another one.
    pub async fn wait_routable(
        &self,
        service: &str,
        instance_id: &str,
        timeout: Duration,
    ) -> Option<u64> {
        // Subscribed before the first look, so no snapshot is missed.
        let mut rx = self.applied.subscribe();
        let wait = async {
            loop {
                if let Some(since) = self.routable_since(service, instance_id) {
                    return Some(since);
                }
                rx.changed().await.ok()?;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    fn endpoint(
        &self,
        service: Arc<str>,
        r: &Registration,
    ) -> Result<Arc<Endpoint>, UpstreamTlsError> {
        let target = tls::upstream_target(
            &r.address,
            r.tls,
            r.tls_server_name.as_deref(),
            self.upstream_tls.as_ref(),
        )?;
        let pool = Pool::new(
            target,
            self.connector.clone(),
            PoolSettings {
                // The listeners' HTTP/2 keep-alive settings hold for the
                // connections to instances too (README: the connections run
                // h2 and its PINGs every `timeouts.http2_keep_alive_interval`).
                keep_alive_interval: self.timeouts.http2_keep_alive_interval,
                keep_alive_timeout: self.timeouts.http2_keep_alive_timeout,
                ..PoolSettings::new(
                    self.config.connections_per_instance,
                    self.config.max_connection_age,
                    self.timeouts.connect,
                )
            },
        );
        Ok(Arc::new(Endpoint {
            weight: r.weight.max(1),
            streaming: r.streaming,
            labels: Arc::new(Labels {
                metadata: r.metadata.clone(),
                tags: r.tags.clone().into(),
            }),
            tls: (r.tls, r.tls_server_name.clone()),
            ..Endpoint::new(service, r.instance_id.as_str(), r.address.as_str(), pool)
        }))
    }

    /// The ejection state of a service at this moment.
    pub fn health(&self, service: &ServiceEndpoints) -> ServiceHealth {
        self.health_at(service, self.now_ms())
    }

    fn health_at(&self, service: &ServiceEndpoints, now: u64) -> ServiceHealth {
        self.health_of(&service.endpoints, now)
    }

    /// [`Balancer::health_at`] of a list of endpoints (a service's, or the
    /// part of it a `[[canary]]` chose).
    fn health_of(&self, all: &[Arc<Endpoint>], now: u64) -> ServiceHealth {
        let (mut unreachable, mut failing) = (0, 0);
        for e in all {
            match e.ejection(now) {
                Some(Ejection::Unreachable) => unreachable += 1,
                Some(Ejection::Failing) => failing += 1,
                None => {}
            }
        }
        let n = all.len();
        let ejected = unreachable + failing;
        let panic = n > 0
            && ejected > 0
            && (ejected == n || ejected * 100 > self.config.max_ejection_percent as usize * n);
        ServiceHealth {
            unreachable,
            failing,
            panic,
        }
    }

    /// Whether a service can take a request at `now`, and the filter
    /// selection applies: the one decision [`Balancer::select`] and
    /// [`Balancer::explain`] share, so an explanation cannot drift from
    /// what requests get.
    fn gate(&self, service: &ServiceEndpoints, now: u64) -> Result<Gate, NoEndpoint> {
        self.gate_of(&service.endpoints, now)
    }

    /// [`Balancer::gate`] of a list of endpoints.
    fn gate_of(&self, all: &[Arc<Endpoint>], now: u64) -> Result<Gate, NoEndpoint> {
        if all.is_empty() {
            return Err(NoEndpoint::NoneHealthy);
        }
        let health = self.health_of(all, now);
        if health.unreachable == all.len() {
            return Err(NoEndpoint::AllEjected);
        }
        // In panic mode only the unreachable stay out (see module docs).
        let skipped = health.unreachable + if health.panic { 0 } else { health.failing };
        Ok(Gate {
            health,
            filter: (skipped > 0).then_some((now, health.panic)),
            usable_count: all.len() - skipped,
        })
    }

    /// What [`Balancer::select`] would do with `service` now, without
    /// selecting (no budget deposit, no pick): the service's state and, per
    /// routable endpoint, whether it may be a candidate and its stats.
    pub fn explain(&self, service: &ServiceEndpoints) -> SelectionExplained {
        let now = self.now_ms();
        let gate = self.gate(service, now);
        let health = match &gate {
            Ok(g) => g.health,
            Err(_) => self.health_at(service, now),
        };
        let filter = gate.as_ref().ok().and_then(|g| g.filter);
        let endpoints = service
            .endpoints
            .iter()
            .map(|e| {
                let stats = self.stats(e);
                let candidate = gate.is_ok() && usable(e, filter);
                (e.clone(), candidate, stats)
            })
            .collect();
        SelectionExplained {
            outcome: gate.map(|_| ()),
            health,
            endpoints,
        }
    }

    /// How many instances one request may be offered: the pick plus the
    /// fall-backs retries may use.
    fn candidates_wanted(&self) -> usize {
        1 + self
            .config
            .connect_retries
            .max(self.retry.max_attempts.saturating_sub(1))
    }

    /// Candidates for one request, best first: the pick, then the others a
    /// retry may fall back to, found as the retry asks (see [`Candidates`]).
    /// Counts the request in the service's retry budget. Allocates nothing.
    pub fn select(&self, service: &ServiceEndpoints) -> Result<Candidates, NoEndpoint> {
        self.select_in(service, &service.endpoints)
    }

    /// [`Balancer::select`] among `all`, a part of `service`'s endpoints
    /// (a `[[canary]]` version's instances): ejections, panic mode and the
    /// strategy apply to that part alone; the retry budget and the
    /// round-robin counter are the service's.
    pub fn select_in(
        &self,
        service: &ServiceEndpoints,
        all: &Arc<[Arc<Endpoint>]>,
    ) -> Result<Candidates, NoEndpoint> {
        let Gate {
            filter,
            usable_count,
            ..
        } = self.gate_of(all, self.now_ms())?;
        service.budget.deposit();
        let n = all.len();
        let usable = |i: usize| usable(&all[i], filter);
        let first = match self.config.strategy {
            BalanceStrategy::RoundRobin => {
                next_usable(n, service.rr.fetch_add(1, Ordering::Relaxed) % n, usable)
            }
            _ if usable_count == 1 => next_usable(n, 0, usable),
            BalanceStrategy::PowerOfTwo => {
                // Lower load per unit of weight wins: (in_flight+1)/weight,
                // compared without division.
                let load = |e: &Endpoint| (e.in_flight() as u64 + 1) * 1000 / e.weight as u64;
                p2c(n, filter.is_some(), usable, |a, b| {
                    load(&all[b]) < load(&all[a])
                })
            }
            BalanceStrategy::PeakEwma => {
                let (now_ns, decay) = (self.now_ns(), self.decay_ns());
                let penalty = self.config.default_latency.as_nanos() as f64;
                let cost = |e: &Endpoint| {
                    let in_flight = e.in_flight() as f64;
                    let latency = match e.latency_estimate(now_ns, decay) {
                        Some(l) => l,
                        None if in_flight == 0.0 => 0.0,
                        None => penalty,
                    };
                    latency * (in_flight + 1.0) / e.weight as f64
                };
                p2c(n, filter.is_some(), usable, |a, b| {
                    cost(&all[b]) < cost(&all[a])
                })
            }
        };
        Ok(Candidates {
            endpoints: all.clone(),
            first,
            offset: 0,
            left: self.candidates_wanted().min(usable_count),
            filter,
            generation: service.generation,
        })
    }

    /// Candidates that start with `all[index]` (a sticky session's
    /// instance), then fall back as [`Balancer::select_in`]'s would; `None`
    /// when that instance may not take traffic now (ejected, or its part
    /// cannot take any), so the caller picks anew.
    pub fn pinned(
        &self,
        service: &ServiceEndpoints,
        all: &Arc<[Arc<Endpoint>]>,
        index: usize,
    ) -> Option<Candidates> {
        let Gate {
            filter,
            usable_count,
            ..
        } = self.gate_of(all, self.now_ms()).ok()?;
        if !all.get(index).is_some_and(|e| usable(e, filter)) {
            return None;
        }
        service.budget.deposit();
        Some(Candidates {
            endpoints: all.clone(),
            first: index,
            offset: 0,
            left: self.candidates_wanted().min(usable_count),
            filter,
            generation: service.generation,
        })
    }

    /// The endpoint refused a connection: skip it for `ejection_time`.
    ///
    /// While it is ejected, a probe tries a connection to it (the
    /// connector alone: TCP, and TLS if dialled so) every
    /// [`PROBE_INTERVAL`] and readmits it at the first that succeeds: an
    /// instance that was restarted (or a network that healed) is routed
    /// again within a fraction of a second, not after `ejection_time`,
    /// without spending a client request on the test.
    pub fn eject(&self, ep: &Arc<Endpoint>) {
        ep.connect_failures.fetch_add(1, Ordering::Relaxed);
        ep.streak.store(0, Ordering::Relaxed);
        self.eject_for(ep, Ejection::Unreachable, self.config.ejection_time);
        if ep.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            ep.probing.store(false, Ordering::Release);
            return;
        };
        let (weak, epoch) = (Arc::downgrade(ep), self.epoch);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(ep) = weak.upgrade() else { return };
                let now = epoch.elapsed().as_millis() as u64;
                if ep.ejection(now) != Some(Ejection::Unreachable) {
                    ep.probing.store(false, Ordering::Release);
                    return;
                }
                let pool = ep.pool.clone();
                drop(ep);
                let up = pool.probe().await;
                drop(pool);
                let Some(ep) = weak.upgrade() else { return };
                if up {
                    let now = epoch.elapsed().as_millis() as u64;
                    if ep.ejection(now) == Some(Ejection::Unreachable) {
                        ep.ejected_until_ms.store(0, Ordering::Relaxed);
                        info!(service = %ep.service, instance = %ep.instance_id, address = %ep.address, "Instance accepts connections again; readmitted.");
                    }
                    ep.probing.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    fn eject_for(&self, ep: &Endpoint, why: Ejection, time: Duration) {
        let now = self.now_ms();
        let code = match why {
            Ejection::Unreachable => EJECTED_UNREACHABLE,
            Ejection::Failing => EJECTED_FAILING,
        };
        ep.ejected_for.store(code, Ordering::Relaxed);
        let until = now + time.as_millis() as u64;
        if ep.ejected_until_ms.swap(until, Ordering::Relaxed) <= now {
            self.metrics.ejected(why == Ejection::Unreachable);
            warn!(service = %ep.service, instance = %ep.instance_id, address = %ep.address, reason = ?why, for_ms = time.as_millis() as u64, "Instance ejected.");
        }
    }

    /// Records the outcome of a call that reached the endpoint. A success
    /// resets the failure streak and the ejection backoff, and readmits an
    /// ejected endpoint (it answered, in panic mode or after its time);
    /// `consecutive_failures` failures in a row eject it for
    /// `ejection_time` x (failed-call ejections in a row), at most
    /// `max_ejection_time`.
    pub fn record(&self, ep: &Endpoint, ok: bool) {
        if ok {
            if ep.streak.load(Ordering::Relaxed) != 0 {
                ep.streak.store(0, Ordering::Relaxed);
            }
            if ep.ejections.load(Ordering::Relaxed) != 0 {
                ep.ejections.store(0, Ordering::Relaxed);
            }
            if ep.ejected_until_ms.load(Ordering::Relaxed) != 0 {
                ep.ejected_until_ms.store(0, Ordering::Relaxed);
            }
            return;
        }
        ep.failures.fetch_add(1, Ordering::Relaxed);
        let threshold = self.config.consecutive_failures;
        if threshold > 0 && ep.streak.fetch_add(1, Ordering::Relaxed) + 1 >= threshold {
            ep.streak.store(0, Ordering::Relaxed);
            let n = ep
                .ejections
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            let time = self
                .config
                .ejection_time
                .saturating_mul(n)
                .min(self.config.max_ejection_time);
            self.eject_for(ep, Ejection::Failing, time);
        }
    }

    /// How many other instances a request never processed may be tried on.
    pub fn connect_retries(&self) -> usize {
        self.config.connect_retries
    }

    /// Most attempts that reach an instance for one idempotent request.
    pub fn max_attempts(&self) -> usize {
        self.retry.max_attempts
    }

    /// Whether the registry should be told now that every instance of
    /// `service` is unreachable: at most once per
    /// [`UNREACHABLE_REPORT_INTERVAL`] per service, decided with one atomic,
    /// so a service that is down costs its requests no registry lock, no
    /// task and no Kafka send (the registry re-reads its source of truth
    /// and tells the other replicas on the first of them).
    pub fn report_unreachable(&self, service: &str) -> bool {
        // Shifted by 1 so that 0 means "never told".
        let now = self.now_ms() + 1;
        let interval = UNREACHABLE_REPORT_INTERVAL.as_millis() as u64;
        self.snapshot.load().services.get(service).is_some_and(|s| {
            let last = s.unreachable_told_ms.load(Ordering::Relaxed);
            (last == 0 || now.saturating_sub(last) >= interval)
                && s.unreachable_told_ms
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Takes one retry from `service`'s budget; false when it is spent (or
    /// the service is gone).
    pub fn withdraw_retry(&self, service: &str) -> bool {
        let granted = self
            .snapshot
            .load()
            .services
            .get(service)
            .is_some_and(|s| s.budget.withdraw());
        if !granted {
            debug!(service = %service, "Retry budget spent; not retrying.");
        }
        granted
    }

    /// Takes the latency of an answer (successful or not) into the
    /// endpoint's estimate.
    pub fn observe(&self, ep: &Endpoint, latency: Duration) {
        ep.observe_latency(latency.as_nanos() as f64, self.now_ns(), self.decay_ns());
    }

    /// Whether an endpoint is currently ejected.
    pub fn is_ejected(&self, ep: &Endpoint) -> bool {
        ep.ejection(self.now_ms()).is_some()
    }

    /// Whether a failed call of `ep` (already recorded) should be logged at
    /// WARN: the 1st, 2nd, 4th, 8th... of the instance, so a failing
    /// instance is visible without a log line per request (`/admin/services`
    /// counts them all).
    pub fn log_failure(&self, ep: &Endpoint) -> bool {
        ep.failures.load(Ordering::Relaxed).is_power_of_two()
    }

    /// The admin view of one endpoint.
    pub fn stats(&self, ep: &Endpoint) -> EndpointStats {
        let now = self.now_ms();
        let ejection = ep.ejection(now);
        EndpointStats {
            requests: ep.requests.load(Ordering::Relaxed),
            connect_failures: ep.connect_failures.load(Ordering::Relaxed),
            failures: ep.failures.load(Ordering::Relaxed),
            ejection,
            ejected_for_ms: ejection
                .map(|_| {
                    ep.ejected_until_ms
                        .load(Ordering::Relaxed)
                        .saturating_sub(now)
                })
                .unwrap_or(0),
            latency_ms: ep
                .latency_estimate(self.now_ns(), self.decay_ns())
                .map(|ns| ns / 1e6),
        }
    }
}

/// The outcome of [`Balancer::gate`].
struct Gate {
    health: ServiceHealth,
    /// When something is ejected: the time (ms) and panic mode.
    filter: Option<(u64, bool)>,
    usable_count: usize,
}

/// [`Balancer::explain`]'s answer.
#[derive(Debug)]
pub struct SelectionExplained {
    /// `Err` when selection would refuse the service (503).
    pub outcome: Result<(), NoEndpoint>,
    /// Ejections and panic mode.
    pub health: ServiceHealth,
    /// Every routable endpoint: whether selection may offer it, and its
    /// stats (an ejection and its remaining time say why it is not).
    pub endpoints: Vec<(Arc<Endpoint>, bool, EndpointStats)>,
}

/// Counters and state of one endpoint, for the admin view.
#[derive(Debug, Clone, Copy)]
pub struct EndpointStats {
    /// Attempts sent, retries included.
    pub requests: u64,
    /// Connections refused.
    pub connect_failures: u64,
    /// Calls that reached the instance and failed.
    pub failures: u64,
    /// The ejection in force.
    pub ejection: Option<Ejection>,
    /// Milliseconds left of it.
    pub ejected_for_ms: u64,
    /// The peak-EWMA latency estimate now, in milliseconds (none before
    /// the first answer).
    pub latency_ms: Option<f64>,
}

/// The instances one request may be sent to, best first: the balancer's
/// pick, then - only when a retry asks for the next - the usable instances
/// after it in the service's list. Holds an `Arc` of that list (no
/// snapshot guard), so it may live across awaits.
#[derive(Debug)]
pub struct Candidates {
    endpoints: Arc<[Arc<Endpoint>]>,
    /// Index of the pick.
    first: usize,
    /// Next index to look at, from `first`.
    offset: usize,
    /// Candidates still to yield (the pick plus the fall-backs wanted).
    left: usize,
    /// When something is ejected: the time of selection (ms) and panic mode.
    filter: Option<(u64, bool)>,
    /// The service's [`ServiceEndpoints::generation`].
    generation: u64,
}

impl Candidates {
    /// The balancer's pick (the first candidate yielded).
    pub fn first(&self) -> &Arc<Endpoint> {
        &self.endpoints[self.first]
    }

    /// The service's registration generation when these were selected
    /// (see [`ServiceEndpoints::generation`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Iterator for Candidates {
    type Item = Arc<Endpoint>;

    fn next(&mut self) -> Option<Arc<Endpoint>> {
        let n = self.endpoints.len();
        while self.left > 0 && self.offset < n {
            let e = &self.endpoints[(self.first + self.offset) % n];
            self.offset += 1;
            if usable(e, self.filter) {
                self.left -= 1;
                return Some(e.clone());
            }
        }
        None
    }
}

/// Whether two catalogues hold the same registrations of a service (the
/// same `Arc`s, or equal ones: Consul's are rebuilt on every read).
fn same_registrations(
    a: &[Arc<crate::registry::Registration>],
    b: &[Arc<crate::registry::Registration>],
) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(x, y) || x == y)
}

/// Whether `e` may take traffic: everything when nothing is ejected, else
/// what is not ejected, plus (in panic mode) what is ejected for failing.
fn usable(e: &Endpoint, filter: Option<(u64, bool)>) -> bool {
    let Some((now, panic)) = filter else {
        return true;
    };
    match e.ejection(now) {
        None => true,
        Some(Ejection::Failing) => panic,
        Some(Ejection::Unreachable) => false,
    }
}

/// The first usable index from `from` on (cyclic); `from` if none is.
fn next_usable(n: usize, from: usize, usable: impl Fn(usize) -> bool) -> usize {
    (0..n)
        .map(|i| (from + i) % n)
        .find(|&i| usable(i))
        .unwrap_or(from)
}

/// Power of two random choices among `n >= 2` indices, of which at least
/// two are usable: `better(a, b)` says whether `b` beats `a`. When some are
/// not usable (`filtered`), draws again a few times, then takes the next
/// usable one: no list of the usable is built.
fn p2c(
    n: usize,
    filtered: bool,
    usable: impl Fn(usize) -> bool,
    better: impl Fn(usize, usize) -> bool,
) -> usize {
    let mut rng = rand::rng();
    if !filtered {
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n - 1);
        if b >= a {
            b += 1;
        }
        return if better(a, b) { b } else { a };
    }
    let mut draw = |not: Option<usize>| {
        for _ in 0..4 {
            let i = rng.random_range(0..n);
            if usable(i) && Some(i) != not {
                return i;
            }
        }
        let start = rng.random_range(0..n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| usable(i) && Some(i) != not)
            .unwrap_or(start)
    };
    let a = draw(None);
    let b = draw(Some(a));
    if b != a && better(a, b) { b } else { a }
}

#[cfg(test)]
mod tests;
