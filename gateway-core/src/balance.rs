//! Selection: which instance takes a request.
//!
//! Discovery and selection are separate. A background task turns every
//! registry [`Catalog`] into an immutable [`Snapshot`] (routes + endpoints)
//! and swaps it in with `ArcSwap`; the request path only loads the snapshot.
//! Endpoints (an HTTP/2 channel and counters per instance) are kept across
//! snapshots, so connections are reused and in-flight counts stay true.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use proto::v1::forwarding_service_client::ForwardingServiceClient;
use rand::Rng;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};
use tracing::{info, warn};

use crate::config::{BalanceStrategy, BalancerConfig, TimeoutConfig};
use crate::registry::{Catalog, Health, Registration, Registry, Visibility};
use crate::routing::{Route, RouteTable};
use crate::tls::{self, UpstreamTls, UpstreamTlsError};

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
    /// Built on first use: an instance that never gets a request costs no
    /// channel (a tonic channel is a task plus buffers; 10,000 registered
    /// instances would otherwise cost ~100 MiB up front).
    client: OnceLock<ForwardingServiceClient<Channel>>,
    /// Validated at construction, so building the channel later cannot fail.
    target: TonicEndpoint,
    /// What the registration said about TLS (`tls`, `tls_server_name`):
    /// a change needs a new channel.
    tls: (bool, Option<String>),
    in_flight: AtomicU32,
    /// Milliseconds since the balancer's epoch until which the endpoint is
    /// skipped after refusing a connection; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Failed calls in a row (reset by any success).
    streak: AtomicU32,
}

impl Endpoint {
    /// A gRPC client for this instance (cheap clone of a shared channel,
    /// created on first use; must be called inside a Tokio runtime).
    pub fn client(&self) -> ForwardingServiceClient<Channel> {
        self.client
            .get_or_init(|| {
                ForwardingServiceClient::new(self.target.connect_lazy())
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX)
            })
            .clone()
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
}

#[cfg(test)]
impl Endpoint {
    /// An endpoint nobody dials, for tests of what surrounds a call.
    pub(crate) fn for_tests() -> Arc<Self> {
        Arc::new(Endpoint {
            service: "svc".into(),
            instance_id: "svc-1".into(),
            address: "127.0.0.1:9".into(),
            weight: 100,
            streaming: true,
            client: OnceLock::new(),
            target: TonicEndpoint::from_static("http://127.0.0.1:9"),
            tls: (false, None),
            in_flight: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            streak: AtomicU32::new(0),
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

/// The instances of one service that may receive traffic.
#[derive(Debug, Default)]
pub struct ServiceEndpoints {
    /// Routable endpoints (health not failing).
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Registered instances including failing ones (for messages).
    pub registered: usize,
    rr: AtomicUsize,
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

/// Why no endpoint was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoEndpoint {
    /// Nothing registered or everything failing health checks.
    NoneHealthy,
    /// Every routable instance refused connections recently.
    AllEjected,
}

/// Picks instances and tracks passive health.
pub struct Balancer {
    snapshot: ArcSwap<Snapshot>,
    /// Catalogue version of the snapshot in force, for waiters.
    applied: tokio::sync::watch::Sender<u64>,
    config: BalancerConfig,
    timeouts: TimeoutConfig,
    /// TLS towards instances (`[upstream_tls]`).
    upstream_tls: Option<UpstreamTls>,
    epoch: Instant,
}

impl Balancer {
    /// A balancer with an empty snapshot.
    pub fn new(config: BalancerConfig, timeouts: TimeoutConfig) -> Arc<Self> {
        Self::with_upstream_tls(config, timeouts, None)
    }

    /// A balancer that dials instances over TLS as `upstream_tls` and their
    /// registrations say.
    pub fn with_upstream_tls(
        config: BalancerConfig,
        timeouts: TimeoutConfig,
        upstream_tls: Option<UpstreamTls>,
    ) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            applied: tokio::sync::watch::channel(0).0,
            config,
            timeouts,
            upstream_tls,
            epoch: Instant::now(),
        })
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
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
            for e in &s.endpoints {
                existing.insert((&e.service, &e.instance_id, &e.address), e);
            }
        }
        let mut services: HashMap<Arc<str>, ServiceEndpoints> = HashMap::new();
        // (service, prefix, sorted hosts) -> timeout: instances of one
        // service registering the same route share one entry.
        type RouteKey = (Arc<str>, String, Vec<String>);
        // Value: (timeout, stream, max duration); `stream` if any instance asks.
        let mut routes: HashMap<RouteKey, (Option<Duration>, bool, Option<Duration>)> =
            HashMap::new();
        let mut visibility: HashMap<Arc<str>, Visibility> = HashMap::new();
        for inst in &catalog.instances {
            let r = &inst.registration;
            let service: Arc<str> = services
                .get_key_value(r.service.as_str())
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| r.service.as_str().into());
            let entry = services.entry(service.clone()).or_default();
            entry.registered += 1;
            // The most restrictive visibility any instance asks for wins: a
            // half-deployed "make it internal" must not stay public.
            let v = visibility.entry(service.clone()).or_insert(r.visibility);
            *v = (*v).max(r.visibility);
            for rt in &r.routes {
                let mut hosts = rt.hosts.clone();
                hosts.sort();
                let e = routes
                    .entry((service.clone(), rt.path_prefix.clone(), hosts))
                    .or_insert((rt.timeout, false, rt.max_duration));
                e.1 |= rt.stream;
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
                    e.weight == r.weight
                        && e.streaming == r.streaming
                        && e.tls.0 == r.tls
                        && e.tls.1 == r.tls_server_name
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
            entry.endpoints.push(ep);
        }
        let route_list =
            routes.into_iter().filter_map(
                |((svc, prefix, hosts), (timeout, stream, max_duration))| {
                    let vis = visibility.get(&svc).copied().unwrap_or(Visibility::Public);
                    Route::new(svc.clone(), &prefix, &hosts, timeout, vis)
                .map_err(|e| warn!(service = %svc, prefix = %prefix, error = %e, "Route skipped."))
                .ok()
                .map(|mut r| {
                    r.stream = stream;
                    r.max_duration = max_duration;
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

    fn endpoint(
        &self,
        service: Arc<str>,
        r: &Registration,
    ) -> Result<Arc<Endpoint>, UpstreamTlsError> {
        let target = tls::backend_endpoint(
            &r.address,
            r.tls,
            r.tls_server_name.as_deref(),
            self.upstream_tls.as_ref(),
        )?
        .connect_timeout(self.timeouts.connect)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
        Ok(Arc::new(Endpoint {
            service,
            instance_id: r.instance_id.as_str().into(),
            address: r.address.as_str().into(),
            weight: r.weight.max(1),
            streaming: r.streaming,
            client: OnceLock::new(),
            target,
            tls: (r.tls, r.tls_server_name.clone()),
            in_flight: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            streak: AtomicU32::new(0),
        }))
    }

    /// Candidates for one request, best first: the pick, then the others a
    /// never-sent request may fall back to.
    pub fn select(&self, service: &ServiceEndpoints) -> Result<Vec<Arc<Endpoint>>, NoEndpoint> {
        let all = &service.endpoints;
        if all.is_empty() {
            return Err(NoEndpoint::NoneHealthy);
        }
        let now = self.now_ms();
        let is_live = |e: &Endpoint| e.ejected_until_ms.load(Ordering::Relaxed) <= now;
        let live_count = all.iter().filter(|e| is_live(e)).count();
        if live_count == 0 {
            return Err(NoEndpoint::AllEjected);
        }
        // Cap ejection: when too many look bad, the fault is more likely on
        // our side of the network; spread over everyone (Envoy's panic mode).
        let ejected_pct = (all.len() - live_count) * 100 / all.len();
        let panic = ejected_pct > self.config.max_ejection_percent as usize;
        // The common case (nobody ejected, or panic mode) picks straight from
        // the snapshot's slice: no allocation on the request path.
        let filtered: Vec<Arc<Endpoint>>;
        let pool: &[Arc<Endpoint>] = if panic || live_count == all.len() {
            all
        } else {
            filtered = all.iter().filter(|e| is_live(e)).cloned().collect();
            &filtered
        };
        let n = pool.len();
        let want = (1 + self.config.connect_retries).min(n);
        let first = match self.config.strategy {
            BalanceStrategy::RoundRobin => service.rr.fetch_add(1, Ordering::Relaxed) % n,
            BalanceStrategy::PowerOfTwo if n == 1 => 0,
            BalanceStrategy::PowerOfTwo => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                // Lower load per unit of weight wins: (in_flight+1)/weight,
                // compared without division.
                let load = |e: &Endpoint| (e.in_flight() as u64 + 1) * 1000 / e.weight as u64;
                if load(&pool[b]) < load(&pool[a]) {
                    b
                } else {
                    a
                }
            }
        };
        Ok((0..want).map(|i| pool[(first + i) % n].clone()).collect())
    }

    /// The endpoint refused a connection: skip it for the ejection time.
    pub fn eject(&self, ep: &Endpoint) {
        ep.failures.fetch_add(1, Ordering::Relaxed);
        self.eject_for(ep, "a refused connection");
    }

    fn eject_for(&self, ep: &Endpoint, why: &str) {
        let until = self.now_ms() + self.config.ejection_time.as_millis() as u64;
        if ep.ejected_until_ms.swap(until, Ordering::Relaxed) <= self.now_ms() {
            warn!(service = %ep.service, instance = %ep.instance_id, address = %ep.address, reason = why, "Instance ejected.");
        }
    }

    /// Records the outcome of a call that reached the endpoint: a success
    /// resets the failure streak; `consecutive_failures` failures in a row
    /// eject it (subject to the same ejection cap as refused connections).
    pub fn record(&self, ep: &Endpoint, ok: bool) {
        if ok {
            if ep.streak.load(Ordering::Relaxed) != 0 {
                ep.streak.store(0, Ordering::Relaxed);
            }
            return;
        }
        ep.failures.fetch_add(1, Ordering::Relaxed);
        let threshold = self.config.consecutive_failures;
        if threshold > 0 && ep.streak.fetch_add(1, Ordering::Relaxed) + 1 >= threshold {
            ep.streak.store(0, Ordering::Relaxed);
            self.eject_for(ep, "consecutive failed calls");
        }
    }

    /// Whether an endpoint is currently ejected.
    pub fn is_ejected(&self, ep: &Endpoint) -> bool {
        ep.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Counters of an endpoint for the admin view: (requests, failures).
    pub fn counters(ep: &Endpoint) -> (u64, u64) {
        (
            ep.requests.load(Ordering::Relaxed),
            ep.failures.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests;
