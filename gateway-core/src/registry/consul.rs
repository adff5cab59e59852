//! Consul as the source of truth.
//!
//! * **Writes** go through the agent API with a check Consul runs itself
//!   (`grpc.health.v1` by default, HTTP or TTL) and
//!   `DeregisterCriticalServiceAfter`, so Consul - not one gateway's view -
//!   decides what is dead. Routes, visibility and weight live in the
//!   service's metadata (`gw-*` keys): any replica rebuilds its whole routing
//!   table from Consul alone.
//! * **Reads** are two blocking queries whatever the number of services:
//!   one on the service list, one on every check of the datacenter
//!   (`/v1/health/state/any`), following Consul's rules (a return is not a
//!   change; the index resets when it goes backwards and is clamped to at
//!   least 1; the loop is rate-limited, errors back off with jitter; the
//!   client timeout exceeds the wait). When the check state moves, a
//!   fingerprint per service (check ids, status, `ModifyIndex`, node checks)
//!   tells which services changed, and only those are read again
//!   (`/v1/health/service/<name>`, non-blocking, two at a time, on the same
//!   small keep-alive pool: at most ~4 connections to the agent). Every
//!   gateway write stamps the check's notes with its `gw-write`, so a
//!   metadata-only re-registration moves the check too; a change no check
//!   explains (another tool's metadata edit) re-reads every service, at
//!   most every 5 s. Only instances whose checks all pass are routed.
//! * **Consul unreachable**: the last known state keeps serving; the admin
//!   view and logs say so; registrations are refused with a retryable error
//!   (gRPC UNAVAILABLE / HTTP 503 `registry_unavailable`) rather than queued,
//!   so a caller never believes a registration is stored when it is not - the
//!   SDK retries on its own. When Consul answers again (or its index goes
//!   backwards: a restarted dev agent), every registration this gateway
//!   accepted and the agent lost is written again before the new state is
//!   applied. For `consul.restart_grace` after that, instances missing from
//!   Consul's view stay routed: the other replicas may not have written
//!   theirs back yet, and a replica must not shrink its routing table
//!   because Consul came back with less than it had. Additions and failing
//!   checks apply at once; when the window closes every watch reads afresh
//!   and Consul's view applies in full.
//! * **Read-your-writes**: a registration the agent accepted is routed by
//!   this gateway before it is acknowledged, as passing (like the new
//!   check), until a health answer carrying that write (`gw-write`) shows
//!   Consul's own view of it.
//! * **Re-registration** replaces: a registration Consul holds as critical
//!   or warning is removed before the new one is written, so it starts
//!   passing like a fresh one (Consul would keep the old check status).
//! * **Leases**: only a TTL check enforces one (the TTL); with gRPC/HTTP
//!   checks Consul's check decides and listings show no lease (0). The
//!   check timings in force are stored in `gw-timing`, so every replica
//!   lists them.
//! * **All instances unreachable** from this gateway: its health of that
//!   service is re-read at once; nothing is ever deregistered on one
//!   gateway's view.

pub(crate) mod client;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::{
    Catalog, CheckKind, Health, HealthCheck, InstanceView, RegisterOutcome, Registration, Registry,
    RegistryError, RegistryStatus, RouteSpec, Visibility,
};
use crate::config::ConsulConfig;
use crate::registry::consul::client::{
    AgentCheck, AgentServiceRegistration, ConsulClient, ConsulError, ServiceEntry, StateCheck,
    Weights, next_index,
};

const META_INSTANCE: &str = "gw-instance";
const META_VISIBILITY: &str = "gw-visibility";
const META_WEIGHT: &str = "gw-weight";
const META_ROUTE: &str = "gw-route-";
const META_CHECK: &str = "gw-check";
const META_STREAMING: &str = "gw-streaming";
/// The instance serves TLS; the value is its `tls_server_name` (may be empty).
const META_TLS: &str = "gw-tls";
/// The check timings in force (`MetaTiming`), so every replica lists them.
const META_TIMING: &str = "gw-timing";
/// A fresh value on every write: tells this gateway when Consul's view
/// includes that write (see [`Pending`]).
const META_WRITE: &str = "gw-write";
/// Longest a locally accepted registration is routed before Consul's view
/// shows it; after that, Consul's view wins.
const PENDING_MAX: Duration = Duration::from_secs(10);
/// Consul rejects metadata values longer than this.
const META_VALUE_MAX: usize = 512;

/// Consul service id of an instance. Service names cannot contain ':', so
/// the first ':' splits it unambiguously.
pub fn consul_id(service: &str, instance_id: &str) -> String {
    format!("{service}:{instance_id}")
}

/// A route as stored in one `gw-route-N` metadata value (short keys: Consul
/// caps a value at 512 bytes).
#[derive(Debug, Serialize, Deserialize)]
struct MetaRoute {
    p: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    h: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<u64>,
    /// `stream = true`
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    s: bool,
    /// max duration, ms
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m: Option<u64>,
    /// `strip_prefix = true`
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    x: bool,
}

/// Check timings as stored in `gw-timing`, in ms.
#[derive(Debug, Serialize, Deserialize)]
struct MetaTiming {
    /// interval
    i: u64,
    /// timeout
    t: u64,
    /// DeregisterCriticalServiceAfter in force
    d: u64,
    /// TTL of a TTL check (the lease in force); absent for gRPC/HTTP checks
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<u64>,
    /// gRPC service name / HTTP path checked
    #[serde(default, skip_serializing_if = "String::is_empty")]
    c: String,
}

/// Consul never removes a critical service sooner than this.
const DEREGISTER_MIN: Duration = Duration::from_secs(60);

/// What Consul enforces for `reg` - what listings show: the
/// `DeregisterCriticalServiceAfter` in force, and a lease only for TTL
/// checks (the TTL). With a gRPC or HTTP check no lease is kept: Consul's
/// check decides, an instance that stops renewing stays while it passes,
/// and `lease` is zero ("none").
pub fn in_force(reg: &Registration, config: &ConsulConfig) -> Registration {
    let mut r = reg.clone();
    r.health.deregister_critical_after = Some(deregister_after(reg, config));
    if r.health.kind != CheckKind::Ttl {
        r.lease = Duration::ZERO;
    }
    r
}

fn deregister_after(reg: &Registration, config: &ConsulConfig) -> Duration {
    reg.health
        .deregister_critical_after
        .unwrap_or(config.deregister_critical_after)
        .max(DEREGISTER_MIN)
}

fn split_host_port(address: &str) -> Option<(String, u16)> {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    let (h, p) = address.rsplit_once(':')?;
    Some((h.to_owned(), p.parse().ok()?))
}

fn join_host_port(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The agent registration for a gateway registration.
pub fn to_agent_registration(
    reg: &Registration,
    config: &ConsulConfig,
) -> Result<AgentServiceRegistration, RegistryError> {
    let rejected = |m: String| RegistryError::Rejected(m);
    let (host, port) = split_host_port(&reg.address)
        .ok_or_else(|| rejected(format!("address {:?} is not host:port", reg.address)))?;
    let id = consul_id(&reg.service, &reg.instance_id);
    let mut meta: HashMap<String, String> = reg
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    meta.insert(META_INSTANCE.into(), reg.instance_id.clone());
    let vis = match reg.visibility {
        Visibility::Public => "public",
        Visibility::Internal => "internal",
        Visibility::Admin => "admin",
    };
    meta.insert(META_VISIBILITY.into(), vis.into());
    meta.insert(META_WEIGHT.into(), reg.weight.to_string());
    if reg.streaming {
        meta.insert(META_STREAMING.into(), "1".into());
    }
    if reg.tls {
        meta.insert(
            META_TLS.into(),
            reg.tls_server_name.clone().unwrap_or_default(),
        );
    }
    for (i, r) in reg.routes.iter().enumerate() {
        let v = serde_json::to_string(&MetaRoute {
            p: r.path_prefix.clone(),
            h: r.hosts.clone(),
            t: r.timeout.map(|t| t.as_millis() as u64),
            s: r.stream,
            m: r.max_duration.map(|t| t.as_millis() as u64),
            x: r.strip_prefix,
        })
        .map_err(|e| rejected(e.to_string()))?;
        meta.insert(format!("{META_ROUTE}{i}"), v);
    }
    let kind = match &reg.health.kind {
        CheckKind::Grpc { .. } => "grpc",
        CheckKind::Http { .. } => "http",
        CheckKind::Ttl => "ttl",
    };
    meta.insert(META_CHECK.into(), kind.into());
    let deregister_after = deregister_after(reg, config);
    let ms = |d: Duration| d.as_millis() as u64;
    meta.insert(
        META_TIMING.into(),
        serde_json::to_string(&MetaTiming {
            i: ms(reg.health.interval),
            t: ms(reg.health.timeout),
            d: ms(deregister_after),
            l: (reg.health.kind == CheckKind::Ttl).then(|| ms(reg.lease)),
            c: match &reg.health.kind {
                CheckKind::Grpc { service } => service.clone(),
                CheckKind::Http { path } => path.clone(),
                CheckKind::Ttl => String::new(),
            },
        })
        .map_err(|e| rejected(e.to_string()))?,
    );
    if meta.len() > 64 {
        return Err(rejected(format!(
            "{} metadata entries (routes included); Consul allows 64",
            meta.len()
        )));
    }
    if let Some((k, _)) = meta
        .iter()
        .find(|(k, v)| v.len() > META_VALUE_MAX || k.len() > 128)
    {
        return Err(rejected(format!(
            "metadata {k:?} is too long for Consul (keys 128, values {META_VALUE_MAX} bytes)"
        )));
    }
    let mut check = AgentCheck {
        check_id: format!("service:{id}"),
        name: format!("{} health ({kind})", reg.service),
        deregister_critical_service_after: go_duration(deregister_after),
        // Routed optimistically from the start, like the embedded registry
        // treats an unchecked instance; a dead one fails its first check,
        // and refused connections fall through to other instances meanwhile.
        status: Some("passing".into()),
        ..Default::default()
    };
    match &reg.health.kind {
        CheckKind::Grpc { service } => {
            check.grpc = Some(if service.is_empty() {
                reg.address.clone()
            } else {
                format!("{}/{service}", reg.address)
            });
            // Consul's agent verifies with its own CA configuration.
            check.grpc_use_tls = Some(reg.tls);
            check.tls_server_name = reg.tls_server_name.clone().filter(|_| reg.tls);
            check.interval = Some(go_duration(reg.health.interval));
            check.timeout = Some(go_duration(reg.health.timeout));
        }
        CheckKind::Http { path } => {
            let scheme = if reg.tls { "https" } else { "http" };
            check.http = Some(format!("{scheme}://{}{path}", reg.address));
            check.tls_server_name = reg.tls_server_name.clone().filter(|_| reg.tls);
            check.interval = Some(go_duration(reg.health.interval));
            check.timeout = Some(go_duration(reg.health.timeout));
        }
        CheckKind::Ttl => check.ttl = Some(go_duration(reg.lease)),
    }
    Ok(AgentServiceRegistration {
        id,
        name: reg.service.clone(),
        tags: reg.tags.clone(),
        address: host,
        port,
        meta,
        weights: Weights {
            passing: reg.weight,
            warning: 1,
        },
        check,
    })
}

/// The agent registration for one write of `reg`, stamped with `write`
/// (a fresh value per accepted registration).
fn to_agent_write(
    reg: &Registration,
    config: &ConsulConfig,
    write: &str,
) -> Result<AgentServiceRegistration, RegistryError> {
    let mut a = to_agent_registration(reg, config)?;
    a.meta.insert(META_WRITE.into(), write.to_owned());
    // A write that only changes metadata would leave the check as it was,
    // and the health-state watch could not tell which service changed:
    // stamping the write on the check changes its ModifyIndex.
    a.check.notes = Some(format!("{META_WRITE} {write}"));
    Ok(a)
}

fn new_write_id() -> String {
    format!("{:016x}", rand::rng().random::<u64>())
}

/// Rebuilds an instance from a health entry. Instances registered with
/// Consul's own tools (no `gw-*` metadata) get the defaults: route
/// `/<service>`, public, weight 100. Malformed `gw-*` values are skipped
/// with a warning, never fatal.
pub fn entry_to_view(e: &ServiceEntry) -> InstanceView {
    let s = &e.service;
    let meta = s.meta.clone().unwrap_or_default();
    let host = if s.address.is_empty() {
        &e.node.address
    } else {
        &s.address
    };
    let mut routes = Vec::new();
    let mut keys: Vec<&String> = meta.keys().filter(|k| k.starts_with(META_ROUTE)).collect();
    // In the order registered: by index, as `gw-route-10` sorts before
    // `gw-route-2` as text (a key another tool wrote without one, last).
    keys.sort_by_key(|k| {
        (
            k[META_ROUTE.len()..]
                .parse::<usize>()
                .ok()
                .unwrap_or(usize::MAX),
            *k,
        )
    });
    for k in keys {
        match serde_json::from_str::<MetaRoute>(&meta[k]) {
            Ok(r) if r.p.starts_with('/') => routes.push(RouteSpec {
                path_prefix: r.p,
                hosts: r.h,
                timeout: r.t.filter(|t| *t > 0).map(Duration::from_millis),
                stream: r.s,
                max_duration: r.m.filter(|t| *t > 0).map(Duration::from_millis),
                strip_prefix: r.x,
            }),
            _ => {
                warn!(service = %s.service, id = %s.id, key = %k, "Malformed route metadata skipped.")
            }
        }
    }
    if routes.is_empty() {
        routes.push(RouteSpec {
            path_prefix: format!("/{}", s.service),
            hosts: vec![],
            timeout: None,
            stream: false,
            max_duration: None,
            strip_prefix: false,
        });
    }
    let visibility = match meta.get(META_VISIBILITY).map(String::as_str) {
        Some("internal") => Visibility::Internal,
        Some("admin") => Visibility::Admin,
        _ => Visibility::Public,
    };
    let weight = meta
        .get(META_WEIGHT)
        .and_then(|w| w.parse().ok())
        .filter(|w| (1..=1000).contains(w))
        .unwrap_or(100);
    let streaming = meta.get(META_STREAMING).is_some_and(|v| v == "1");
    let tls = meta.get(META_TLS);
    let tls_server_name = tls
        .filter(|n| !n.is_empty() && rustls_pki_types::ServerName::try_from(n.as_str()).is_ok())
        .cloned();
    let tls = tls.is_some();
    let kind = match meta.get(META_CHECK).map(String::as_str) {
        Some("ttl") => CheckKind::Ttl,
        Some("http") => CheckKind::Http { path: "/".into() },
        _ => CheckKind::Grpc {
            service: String::new(),
        },
    };
    // Registered by a gateway: the timings it wrote; by Consul's own
    // tools: unknown, shown as the gateway defaults, with no lease.
    let timing = meta
        .get(META_TIMING)
        .and_then(|t| serde_json::from_str::<MetaTiming>(t).ok());
    let kind = match (kind, &timing) {
        (CheckKind::Grpc { .. }, Some(t)) => CheckKind::Grpc {
            service: t.c.clone(),
        },
        (CheckKind::Http { .. }, Some(t)) if t.c.starts_with('/') => {
            CheckKind::Http { path: t.c.clone() }
        }
        (k, _) => k,
    };
    let ms = Duration::from_millis;
    let (interval, timeout, deregister_critical_after, lease) = match &timing {
        Some(t) => (
            ms(t.i),
            ms(t.t),
            Some(ms(t.d)),
            match kind {
                CheckKind::Ttl => t.l.map(ms).unwrap_or_default(),
                _ => Duration::ZERO,
            },
        ),
        None => (
            Duration::from_secs(5),
            Duration::from_secs(1),
            None,
            Duration::ZERO,
        ),
    };
    let critical: Vec<&str> = e
        .checks
        .iter()
        .filter(|c| c.status != "passing")
        .map(|c| c.check_id.as_str())
        .collect();
    let (health, detail) = if critical.is_empty() {
        (Health::Passing, "consul: all checks passing".to_owned())
    } else {
        let outputs: Vec<&str> = e
            .checks
            .iter()
            .filter(|c| c.status != "passing")
            .map(|c| c.output.as_str())
            .collect();
        (
            Health::Failing,
            format!(
                "consul: not passing: {} {}",
                critical.join(","),
                outputs.join(" | ")
            )
            .chars()
            .take(300)
            .collect(),
        )
    };
    InstanceView {
        registration: Arc::new(Registration {
            service: s.service.clone(),
            instance_id: meta
                .get(META_INSTANCE)
                .cloned()
                .unwrap_or_else(|| s.id.clone()),
            address: join_host_port(host, s.port),
            routes,
            visibility,
            tags: s.tags.clone().unwrap_or_default(),
            metadata: meta
                .into_iter()
                .filter(|(k, _)| !k.starts_with("gw-"))
                .collect(),
            weight,
            health: HealthCheck {
                kind,
                interval,
                timeout,
                deregister_critical_after,
            },
            lease,
            streaming,
            tls,
            tls_server_name,
        }),
        health,
        detail: detail.into(),
        lease_deadline: None,
    }
}

fn same_views(a: &[InstanceView], b: &[InstanceView]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.health == y.health && x.registration == y.registration)
}

/// A service of the catalog this gateway follows.
struct Watcher {
    last_refresh: Option<Instant>,
    synced: bool,
}

/// A registration the agent accepted that Consul's view (the catalog the
/// watches read) may not show yet: routed at once, as passing - the same
/// optimistic start the check itself gets - until a health result carries
/// this write's `gw-write` value (from then on Consul's view, whatever it
/// says, is newer than the write) or `PENDING_MAX` passes.
struct Pending {
    view: InstanceView,
    write: String,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Consul's view per service (plus, during a restart grace, instances
    /// it no longer shows).
    services: BTreeMap<String, Vec<InstanceView>>,
    watchers: HashMap<String, Watcher>,
    /// Services whose health must be read again (their checks changed, they
    /// are new, or a re-read was asked for).
    dirty: BTreeSet<String>,
    /// Registrations this gateway accepted, by Consul id, with the
    /// `gw-write` value they were written with: written again when the
    /// agent lost them.
    owned: HashMap<String, (Registration, String)>,
    /// Accepted here, not yet seen in Consul's view; by Consul id.
    pending: HashMap<String, Pending>,
    /// The `gw-write` value of every instance in the last applied health
    /// answers, by Consul id: a write the watch already brought back needs
    /// no pending entry.
    seen_writes: HashMap<String, String>,
    /// Until then, instances that disappear from Consul's view stay routed
    /// (Consul answered again after an outage or a restart).
    grace_until: Option<Instant>,
    services_loaded: bool,
    connected: bool,
    last_error: Option<String>,
    version: u64,
}

struct Inner {
    client: ConsulClient,
    config: ConsulConfig,
    tx: watch::Sender<Arc<Catalog>>,
    synced: watch::Sender<bool>,
    state: Mutex<State>,
    /// Makes the service-list watch read again at once.
    services_refresh: Arc<Notify>,
    /// Wakes the health watch: services were marked dirty.
    health_refresh: Arc<Notify>,
    /// What the watch loops did (for `/metrics`).
    watch_stats: WatchStats,
}

/// Counters of the watch loops, read by `status()`.
#[derive(Debug)]
struct WatchStats {
    wakeups: AtomicU64,
    errors: AtomicU64,
    /// Milliseconds since `epoch` of the last successful read, plus one
    /// (0 = none yet).
    last_ok_ms: AtomicU64,
    epoch: Instant,
}

impl WatchStats {
    fn new() -> Self {
        Self {
            wakeups: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_ok_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn answered(&self) {
        self.wakeups.fetch_add(1, Ordering::Relaxed);
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last_ok_ms.store(ms, Ordering::Relaxed);
    }

    fn counters(&self) -> crate::registry::WatchCounters {
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        crate::registry::WatchCounters {
            wakeups: self.wakeups.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            since_last_read_s: (last > 0).then(|| {
                (self.epoch.elapsed().as_millis() as u64).saturating_sub(last - 1) as f64 / 1000.0
            }),
        }
    }
}

/// The Consul-backed registry. Cheap to clone.
#[derive(Clone)]
pub struct ConsulRegistry {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

/// Why the Consul registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsulStartError {
    /// The HTTP client could not be built.
    #[error("consul client: {0}")]
    Client(#[from] reqwest::Error),
    /// The agent rejected the ACL token.
    #[error("consul.token was rejected by the Consul agent: {0}")]
    Token(ConsulError),
    /// The agent did not answer.
    #[error("consul.address: the Consul agent did not answer: {0}")]
    Unreachable(ConsulError),
}

impl ConsulRegistry {
    /// Connects to the agent (checking that it answers and accepts the
    /// token: a bad token is a start-up error, not a silently empty routing
    /// table) and starts the watches.
    pub async fn connect(config: ConsulConfig) -> Result<Self, ConsulStartError> {
        let client = ConsulClient::new(&config)?;
        match client.agent_self().await {
            Ok(_) => {}
            Err(e @ ConsulError::Forbidden { .. }) => return Err(ConsulStartError::Token(e)),
            Err(e) => return Err(ConsulStartError::Unreachable(e)),
        }
        // A token that may read the agent but not the catalog would leave
        // the routing table empty without a word: check that too.
        match client.services(0, config.wait).await {
            Ok(_) => {}
            Err(e @ ConsulError::Forbidden { .. }) => return Err(ConsulStartError::Token(e)),
            Err(e) => return Err(ConsulStartError::Unreachable(e)),
        }
        Ok(Self::start(client, config))
    }

    fn start(client: ConsulClient, config: ConsulConfig) -> Self {
        let (tx, _) = watch::channel(Arc::new(Catalog::default()));
        let (synced, _) = watch::channel(false);
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            client,
            config,
            tx,
            synced,
            state: Mutex::new(State {
                connected: true,
                ..Default::default()
            }),
            services_refresh: Arc::new(Notify::new()),
            health_refresh: Arc::new(Notify::new()),
            watch_stats: WatchStats::new(),
        });
        tokio::spawn(services_loop(Arc::downgrade(&inner), cancel.clone()));
        tokio::spawn(health_loop(Arc::downgrade(&inner), cancel.clone()));
        Self {
            _guard: Arc::new(cancel.drop_guard()),
            inner,
        }
    }

    /// Resolves once the first full view (service list and every service's
    /// health) has been read.
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, st: &mut State) {
        st.version += 1;
        let mut instances: Vec<InstanceView> = st
            .services
            .iter()
            .flat_map(|(name, v)| {
                v.iter()
                    .filter(|i| {
                        !st.pending
                            .contains_key(&consul_id(name, &i.registration.instance_id))
                    })
                    .cloned()
            })
            .chain(st.pending.values().map(|p| p.view.clone()))
            .collect();
        instances.sort_by(|a, b| {
            (&a.registration.service, &a.registration.instance_id)
                .cmp(&(&b.registration.service, &b.registration.instance_id))
        });
        self.tx.send_replace(Arc::new(Catalog {
            instances,
            version: st.version,
        }));
    }

    fn check_synced(&self, st: &State) {
        if st.services_loaded && st.watchers.values().all(|w| w.synced) && !*self.synced.borrow() {
            info!(services = st.watchers.len(), "Initial Consul state loaded.");
            self.synced.send_replace(true);
        }
    }

    fn mark_error(&self, context: &str, e: &ConsulError) {
        let mut st = self.lock();
        let msg = format!("{context}: {e}");
        if st.connected {
            warn!(error = %e, context, "Consul unavailable; routing on the last known state.");
        } else {
            debug!(error = %e, context, "Consul still unavailable.");
        }
        st.connected = false;
        st.last_error = Some(msg);
    }

    fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// A watch saw Consul's index go backwards: the agent restarted, maybe
    /// empty. Health answers are held back (as during an outage) until the
    /// service-list watch has written back what this gateway accepted.
    fn mark_restarted(&self) {
        {
            let mut st = self.lock();
            if st.connected {
                info!("Consul index went backwards (agent restarted); resyncing.");
            }
            st.connected = false;
            st.last_error = Some("consul index went backwards: agent restarted".into());
        }
        self.services_refresh.notify_one();
    }

    /// Consul answers again (or restarted): write back what the agent lost,
    /// then mark connected and make every health watch read afresh. Health
    /// watches do not apply answers while disconnected, so a restarted,
    /// still-empty agent never empties the routing table.
    ///
    /// Then a grace window (`consul.restart_grace`) opens: Consul may have
    /// come back empty and the other replicas may not have written back
    /// their registrations yet, so for that long an instance missing from
    /// Consul's view stays routed (Consul's view still adds instances and
    /// marks them failing). When it closes, every watch reads afresh and
    /// Consul's view applies in full.
    async fn recover(self: &Arc<Self>) {
        info!("Consul reachable; resyncing registrations this gateway accepted.");
        self.resync_owned().await;
        let grace = self.config.restart_grace;
        let mut st = self.lock();
        st.connected = true;
        st.last_error = None;
        if !grace.is_zero() {
            st.grace_until = Some(Instant::now() + grace);
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if let Some(inner) = weak.upgrade() {
                    inner.end_grace();
                }
            });
        }
        self.refresh_all(&mut st);
    }

    /// Every followed service's health is read again.
    fn refresh_all(&self, st: &mut State) {
        let names: Vec<String> = st.watchers.keys().cloned().collect();
        st.dirty.extend(names);
        self.health_refresh.notify_one();
    }

    /// The restart grace is over: read everything afresh and apply it.
    fn end_grace(&self) {
        let mut st = self.lock();
        if st.grace_until.is_some_and(|g| g <= Instant::now()) {
            st.grace_until = None;
            debug!("Consul restart grace over; applying Consul's view in full.");
            self.refresh_all(&mut st);
            drop(st);
            self.services_refresh.notify_one();
        }
    }

    fn in_grace(st: &State) -> bool {
        st.grace_until.is_some_and(|g| Instant::now() < g)
    }

    /// Writes back every registration this gateway accepted that the agent
    /// no longer has (a restarted dev agent keeps nothing).
    ///
    /// Also every gateway-written registration of the last known view (its
    /// `gw-write` was seen) that no replica may still own: after a rolling
    /// restart the replicas that accepted a registration are gone, and the
    /// new processes only read it from Consul; without this, an agent that
    /// came back empty would lose it for good once the restart grace ends
    /// (the Consul-restarted-empty scenario of `gateway-bin/tests/haproxy.rs`).
    /// Every replica writes the same registrations back: registering is
    /// idempotent.
    async fn resync_owned(&self) {
        let owned: Vec<(String, (Registration, String))> = {
            let st = self.lock();
            let mut all: Vec<(String, (Registration, String))> = st
                .owned
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for v in st.services.values().flatten() {
                let id = consul_id(&v.registration.service, &v.registration.instance_id);
                if st.seen_writes.contains_key(&id) && !st.owned.contains_key(&id) {
                    all.push((id, ((*v.registration).clone(), new_write_id())));
                }
            }
            all
        };
        for (id, (reg, write)) in owned {
            match self.client.has_service(&id).await {
                Ok(true) => {}
                Ok(false) => match to_agent_write(&reg, &self.config, &write) {
                    Ok(a) => match self.client.register(&a).await {
                        Ok(()) => {
                            info!(service = %reg.service, instance = %reg.instance_id, "Re-registered an instance the Consul agent lost.")
                        }
                        Err(e) => {
                            warn!(service = %reg.service, error = %e, "Re-registration failed; will retry.")
                        }
                    },
                    Err(e) => warn!(service = %reg.service, error = %e, "Cannot re-register."),
                },
                Err(e) => {
                    warn!(error = %e, "Resync interrupted; will retry.");
                    return;
                }
            }
        }
    }
}

async fn pace(last: &mut Option<Instant>, min: Duration) {
    if let Some(l) = *last {
        let next = l + min;
        if next > Instant::now() {
            tokio::time::sleep_until(next.into()).await;
        }
    }
    *last = Some(Instant::now());
}

fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * 2u32.saturating_pow(attempt.min(6));
    let base = base.min(Duration::from_secs(5));
    base + base.mul_f64(rand::rng().random_range(0.0..0.5))
}

fn jittered(wait: Duration) -> Duration {
    wait + wait.mul_f64(rand::rng().random_range(0.0..0.05))
}

/// The state every watch loop keeps: Consul's index, the failure streak
/// for backoff, and when the last query started (for pacing).
#[derive(Default)]
struct Watch {
    index: u64,
    failures: u32,
    last: Option<Instant>,
}

impl Watch {
    /// Waits for the next query slot (rate limit) and returns what the query
    /// needs; `None` once the registry is gone or cancelled.
    async fn next_round(
        &mut self,
        weak: &std::sync::Weak<Inner>,
        cancel: &CancellationToken,
    ) -> Option<(ConsulClient, Duration)> {
        let inner = weak.upgrade()?;
        let (client, min, wait) = (
            inner.client.clone(),
            inner.config.min_query_interval,
            jittered(inner.config.wait),
        );
        drop(inner);
        tokio::select! {
            _ = cancel.cancelled() => None,
            _ = pace(&mut self.last, min) => Some((client, wait)),
        }
    }

    /// Records a failed query and backs off; `false` once cancelled.
    async fn failed(
        &mut self,
        inner: Arc<Inner>,
        context: &str,
        e: &ConsulError,
        cancel: &CancellationToken,
    ) -> bool {
        inner.mark_error(context, e);
        inner.watch_stats.errors.fetch_add(1, Ordering::Relaxed);
        drop(inner);
        self.failures += 1;
        // After a failure read afresh: a restarted agent's index is far below
        // ours, and blocking on ours would stall recovery for a whole wait.
        self.index = 0;
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(backoff(self.failures)) => true,
        }
    }
}

async fn services_loop(weak: std::sync::Weak<Inner>, cancel: CancellationToken) {
    let Some(refresh) = weak.upgrade().map(|i| i.services_refresh.clone()) else {
        return;
    };
    let mut w = Watch::default();
    loop {
        let Some((client, wait)) = w.next_round(&weak, &cancel).await else {
            return;
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = refresh.notified() => { w.index = 0; continue; }
            r = client.services(w.index, wait) => r,
        };
        let Some(inner) = weak.upgrade() else { return };
        match result {
            Ok(r) => {
                inner.watch_stats.answered();
                w.failures = 0;
                let went_back = r.index < w.index;
                if !inner.is_connected() || went_back {
                    if went_back {
                        info!(
                            previous = w.index,
                            now = r.index,
                            "Consul index went backwards; resetting and resyncing."
                        );
                        inner.mark_restarted();
                    }
                    // Write back what the agent lost before applying a view
                    // that may be missing it, then read afresh.
                    inner.recover().await;
                    w.index = 0;
                    continue;
                }
                w.index = next_index(w.index, r.index);
                reconcile_watchers(
                    &inner,
                    r.value.into_keys().filter(|n| n != "consul").collect(),
                );
            }
            Err(e) => {
                if !w
                    .failed(inner, "watching the service list", &e, &cancel)
                    .await
                {
                    return;
                }
            }
        }
    }
}

fn reconcile_watchers(inner: &Arc<Inner>, names: Vec<String>) {
    let mut st = inner.lock();
    let mut changed = false;
    // During a restart grace a service missing from the list keeps its
    // watch and its instances: its owner may not have written it back yet.
    let grace = Inner::in_grace(&st);
    let gone: Vec<String> = st
        .watchers
        .keys()
        .filter(|k| !grace && !names.contains(k))
        .cloned()
        .collect();
    // A local write the list still does not show after PENDING_MAX was
    // removed from Consul meanwhile: Consul's view wins.
    let before = st.pending.len();
    st.pending.retain(|_, p| {
        grace || names.contains(&p.view.registration.service) || p.since.elapsed() < PENDING_MAX
    });
    changed |= st.pending.len() != before;
    for name in gone {
        st.watchers.remove(&name);
        st.dirty.remove(&name);
        if st.services.remove(&name).is_some() {
            changed = true;
        }
        debug!(service = %name, "Service left the Consul catalog.");
    }
    let mut added = false;
    for name in names {
        if st.watchers.contains_key(&name) {
            continue;
        }
        st.dirty.insert(name.clone());
        st.watchers.insert(
            name,
            Watcher {
                last_refresh: None,
                synced: false,
            },
        );
        added = true;
    }
    if added {
        inner.health_refresh.notify_one();
    }
    st.services_loaded = true;
    if changed {
        inner.publish(&mut st);
    }
    inner.check_synced(&st);
}

/// At most this many targeted health reads at once (two blocking queries
/// plus these: the connections this gateway holds to the agent).
const READS_IN_FLIGHT: usize = 2;
/// A health-state change that no check explains (metadata changed by
/// another tool, a node update) re-reads every service, at most this often.
const SWEEP_MIN: Duration = Duration::from_secs(5);

/// A fingerprint per service of its checks in `/v1/health/state/any`
/// (status, ids and `ModifyIndex`, node checks of its nodes included): a
/// service whose fingerprint moved has changed.
pub(crate) fn fingerprints(checks: &[StateCheck]) -> HashMap<String, u64> {
    use std::hash::{Hash, Hasher};
    let mut node_checks: HashMap<&str, Vec<&StateCheck>> = HashMap::new();
    let mut by_service: HashMap<&str, Vec<&StateCheck>> = HashMap::new();
    for c in checks {
        if c.service_id.is_empty() {
            node_checks.entry(&c.node).or_default().push(c);
        } else {
            by_service.entry(&c.service_name).or_default().push(c);
        }
    }
    by_service
        .into_iter()
        .map(|(name, mut cs)| {
            let mut nodes: Vec<&str> = cs.iter().map(|c| c.node.as_str()).collect();
            nodes.sort_unstable();
            nodes.dedup();
            for n in nodes {
                if let Some(nc) = node_checks.get(n) {
                    cs.extend(nc.iter().copied());
                }
            }
            // By every hashed field, so that the fingerprint depends on the
            // checks listed and never on their order (even if an answer
            // listed one check twice).
            fn key(c: &StateCheck) -> (&str, &str, &str, &str, u64) {
                (
                    &c.node,
                    &c.service_id,
                    &c.check_id,
                    &c.status,
                    c.modify_index,
                )
            }
            cs.sort_by(|a, b| key(a).cmp(&key(b)));
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for c in cs {
                (
                    &c.node,
                    &c.service_id,
                    &c.check_id,
                    &c.status,
                    c.modify_index,
                )
                    .hash(&mut h);
            }
            (name.to_owned(), h.finish())
        })
        .collect()
}

/// The health watch: ONE blocking query on every check of the datacenter;
/// when it moves, the services whose checks changed (and those marked
/// dirty otherwise) are read again without blocking, a few at a time, on
/// the same connections.
async fn health_loop(weak: std::sync::Weak<Inner>, cancel: CancellationToken) {
    let Some(refresh) = weak.upgrade().map(|i| i.health_refresh.clone()) else {
        return;
    };
    let mut w = Watch::default();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut last_sweep: Option<Instant> = None;
    let mut sweep_due = false;
    loop {
        if !read_dirty(&weak, &cancel, &mut w).await {
            return;
        }
        let Some((client, mut wait)) = w.next_round(&weak, &cancel).await else {
            return;
        };
        if sweep_due {
            let left = last_sweep.map_or(Duration::ZERO, |t| SWEEP_MIN.saturating_sub(t.elapsed()));
            if left.is_zero() {
                sweep_due = false;
                last_sweep = Some(Instant::now());
                let Some(inner) = weak.upgrade() else { return };
                debug!("Consul changed in a way no check shows; re-reading every service.");
                let mut st = inner.lock();
                inner.refresh_all(&mut st);
                continue;
            }
            wait = wait.min(left.max(Duration::from_millis(1)));
        }
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            // Services were marked dirty: read them now (the blocking
            // query starts again afterwards from the same index).
            _ = refresh.notified() => continue,
            r = client.health_state(w.index, wait) => r,
        };
        let Some(inner) = weak.upgrade() else { return };
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                if !w.failed(inner, "watching health state", &e, &cancel).await {
                    return;
                }
                continue;
            }
        };
        inner.watch_stats.answered();
        w.failures = 0;
        if r.index < w.index {
            // Went backwards: the agent restarted. Read afresh once the
            // service-list watch has written back what this gateway owns.
            inner.mark_restarted();
            w.index = 0;
            seen.clear();
            continue;
        }
        if !inner.is_connected() {
            // Until the service-list watch has resynced, an answer may come
            // from a restarted, empty agent: keep the last known state and
            // wait to be told to read again.
            drop(inner);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = refresh.notified() => {}
            }
            w.index = 0;
            continue;
        }
        let previous = w.index;
        w.index = next_index(w.index, r.index);
        let fps = fingerprints(&r.value);
        drop(r);
        let mut changed: Vec<String> = fps
            .iter()
            .filter(|(k, v)| seen.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .collect();
        changed.extend(seen.keys().filter(|k| !fps.contains_key(*k)).cloned());
        seen = fps;
        if previous > 0 && w.index != previous && changed.is_empty() {
            sweep_due = true;
        }
        let mut st = inner.lock();
        for name in changed {
            if st.watchers.contains_key(&name) {
                st.dirty.insert(name);
            }
        }
    }
}

/// Reads the health of every dirty service (non-blocking, a few at a
/// time) and applies it; `false` once cancelled or gone.
async fn read_dirty(
    weak: &std::sync::Weak<Inner>,
    cancel: &CancellationToken,
    w: &mut Watch,
) -> bool {
    let Some(inner) = weak.upgrade() else {
        return false;
    };
    let names: Vec<String> = {
        let mut st = inner.lock();
        if !st.connected {
            return true;
        }
        let dirty = std::mem::take(&mut st.dirty);
        dirty
            .into_iter()
            .filter(|n| st.watchers.contains_key(n))
            .collect()
    };
    if names.is_empty() {
        return true;
    }
    let (client, wait) = (inner.client.clone(), inner.config.wait);
    drop(inner);
    let mut reads = futures_util::stream::iter(names)
        .map(|name| {
            let client = client.clone();
            async move {
                let r = client.health(&name, 0, wait).await;
                (name, r)
            }
        })
        .buffer_unordered(READS_IN_FLIGHT);
    let mut failure = None;
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return false,
            n = reads.next() => n,
        };
        let Some((name, r)) = next else { break };
        let Some(inner) = weak.upgrade() else {
            return false;
        };
        match r {
            Ok(r) => apply_health(&inner, &name, r.value),
            Err(e) => {
                inner.lock().dirty.insert(name);
                failure = Some(e);
            }
        }
    }
    if let Some(e) = failure {
        let Some(inner) = weak.upgrade() else {
            return false;
        };
        return w.failed(inner, "reading service health", &e, cancel).await;
    }
    true
}

/// Applies one service's health answer (Consul's view, the restart grace,
/// read-your-writes).
fn apply_health(inner: &Inner, name: &str, entries: Vec<ServiceEntry>) {
    let mut views: Vec<InstanceView> = entries.iter().map(entry_to_view).collect();
    let mut st = inner.lock();
    if !st.connected {
        // An answer from an agent that may have restarted empty: read it
        // again once the service-list watch has resynced.
        st.dirty.insert(name.to_owned());
        return;
    }
    // Locally accepted writes this answer shows (or that waited too
    // long) give way to Consul's view.
    let now = Instant::now();
    let before = st.pending.len();
    st.pending.retain(|id, p| {
        p.view.registration.service != name
            || (now < p.since + PENDING_MAX
                && !entries.iter().any(|e| {
                    e.service.id == *id
                        && e.service
                            .meta
                            .as_ref()
                            .and_then(|m| m.get(META_WRITE))
                            .is_some_and(|v| *v == p.write)
                }))
    });
    let mut changed = st.pending.len() != before;
    let prefix = format!("{name}:");
    st.seen_writes
        .retain(|id, _| !id.starts_with(&prefix) || entries.iter().any(|e| e.service.id == *id));
    for e in &entries {
        if let Some(v) = e.service.meta.as_ref().and_then(|m| m.get(META_WRITE)) {
            st.seen_writes.insert(e.service.id.clone(), v.clone());
        }
    }
    if Inner::in_grace(&st) {
        let kept: Vec<InstanceView> = st
            .services
            .get(name)
            .into_iter()
            .flatten()
            .filter(|o| {
                !views
                    .iter()
                    .any(|v| v.registration.instance_id == o.registration.instance_id)
            })
            .cloned()
            .collect();
        if !kept.is_empty() {
            debug!(service = %name, kept = kept.len(), "Consul restart grace: keeping instances Consul does not show (yet).");
            views.extend(kept);
        }
    }
    views.sort_by(|a, b| a.registration.instance_id.cmp(&b.registration.instance_id));
    changed |= st
        .services
        .get(name)
        .is_none_or(|old| !same_views(old, &views));
    if changed {
        debug!(service = %name, instances = views.len(), "Consul health changed.");
        st.services.insert(name.to_owned(), views);
        inner.publish(&mut st);
    }
    if let Some(watcher) = st.watchers.get_mut(name) {
        watcher.synced = true;
    }
    inner.check_synced(&st);
}

fn unavailable(e: ConsulError) -> RegistryError {
    match e {
        ConsulError::Status {
            status: 400, body, ..
        } => RegistryError::Rejected(format!("consul refused the registration: {body}")),
        e => RegistryError::Unavailable(e.to_string()),
    }
}

impl Registry for ConsulRegistry {
    fn register(&self, reg: Registration) -> BoxFuture<'_, Result<RegisterOutcome, RegistryError>> {
        async move {
            let write = new_write_id();
            let agent = to_agent_write(&reg, &self.inner.config, &write)?;
            let client = &self.inner.client;
            // Whether this instance is new is decided before the write: once
            // the agent has it, the blocking query may bring it back into
            // `services` before this task takes the lock again.
            let known = {
                let st = self.inner.lock();
                st.services.get(&reg.service).is_some_and(|v| {
                    v.iter()
                        .any(|i| i.registration.instance_id == reg.instance_id)
                })
            };
            // Consul keeps a check's status when a service is registered
            // again, so an instance that restarted after its check went
            // critical would stay unrouted until the check next passes. A
            // registration replaces the previous one: remove a non-passing
            // one first so the new one starts passing, like a fresh one.
            // (A passing one is replaced in place: no gap for other replicas.)
            match client
                .agent_service_status(&agent.id)
                .await
                .map_err(unavailable)?
            {
                // Not "maintenance": that is an operator's decision to keep.
                Some(status) if status == "critical" || status == "warning" => {
                    debug!(service = %reg.service, instance = %reg.instance_id, %status, "Re-registration replaces a non-passing registration.");
                    client.deregister(&agent.id).await.map_err(unavailable)?;
                }
                _ => {}
            }
            client.register(&agent).await.map_err(unavailable)?;
            let mut st = self.inner.lock();
            let created = st
                .owned
                .insert(agent.id.clone(), (reg.clone(), write.clone()))
                .is_none()
                && !known;
            // Read-your-writes: the agent holds it, so this gateway routes
            // it before acknowledging, without waiting for the catalog sync
            // and the blocking query to bring it back (unless they already
            // did: then Consul's view is at least as new as this write).
            if st.seen_writes.get(&agent.id) == Some(&write) {
                if st.pending.remove(&agent.id).is_some() {
                    self.inner.publish(&mut st);
                }
                return Ok(RegisterOutcome {
                    instance_id: reg.instance_id,
                    lease: reg.lease,
                    created,
                });
            }
            st.pending.insert(
                agent.id,
                Pending {
                    view: InstanceView {
                        registration: Arc::new(in_force(&reg, &self.inner.config)),
                        health: Health::Passing,
                        detail: "accepted by the consul agent; awaiting its view".into(),
                        lease_deadline: None,
                    },
                    write,
                    since: Instant::now(),
                },
            );
            self.inner.publish(&mut st);
            drop(st);
            Ok(RegisterOutcome {
                instance_id: reg.instance_id,
                lease: reg.lease,
                created,
            })
        }
        .boxed()
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        async move {
            let id = consul_id(service, instance_id);
            let existed = self
                .inner
                .client
                .deregister(&id)
                .await
                .map_err(unavailable)?;
            let mut st = self.inner.lock();
            let owned = st.owned.remove(&id).is_some();
            if st.pending.remove(&id).is_some() {
                self.inner.publish(&mut st);
            }
            Ok(existed || owned)
        }
        .boxed()
    }

    fn renew<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Duration, RegistryError>> {
        async move {
            let id = consul_id(service, instance_id);
            let not_found = || RegistryError::NotFound {
                service: service.to_owned(),
                instance_id: instance_id.to_owned(),
            };
            let (owned, known) = {
                let st = self.inner.lock();
                let known = st
                    .services
                    .get(service)
                    .and_then(|v| v.iter().find(|i| i.registration.instance_id == instance_id))
                    .map(|i| i.registration.clone())
                    .or_else(|| st.pending.get(&id).map(|p| p.view.registration.clone()));
                (st.owned.get(&id).map(|(r, _)| r.clone()), known)
            };
            // The lease answered is the renewal cadence the instance asked
            // for (only a TTL check enforces it; see `in_force`).
            let lease = owned
                .as_ref()
                .map(|r| r.lease)
                .or(known.as_ref().map(|r| r.lease))
                .filter(|l| !l.is_zero());
            let ttl = owned
                .as_ref()
                .or(known.as_deref())
                .is_some_and(|r| r.health.kind == CheckKind::Ttl);
            if ttl {
                // A TTL check lives on the agent the instance registered
                // through; passing it is the renewal.
                return match self
                    .inner
                    .client
                    .pass_ttl(&format!("service:{id}"))
                    .await
                    .map_err(unavailable)?
                {
                    true => Ok(lease.unwrap_or(Duration::from_secs(30))),
                    false => Err(not_found()),
                };
            }
            // Consul's own checks keep other instances alive; a renewal
            // only tells the instance whether Consul still has it (after a
            // Consul restart it must register again).
            let present = known.is_some()
                || self
                    .inner
                    .client
                    .has_service(&id)
                    .await
                    .map_err(unavailable)?;
            if present {
                Ok(lease.unwrap_or(Duration::from_secs(30)))
            } else {
                Err(not_found())
            }
        }
        .boxed()
    }

    fn watch(&self) -> watch::Receiver<Arc<Catalog>> {
        self.inner.tx.subscribe()
    }

    fn service_unreachable(&self, service: &str) {
        let mut st = self.inner.lock();
        let st = &mut *st;
        if let Some(w) = st.watchers.get_mut(service) {
            // At most one forced re-read per service per 500 ms.
            if w.last_refresh
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
            {
                w.last_refresh = Some(Instant::now());
                info!(
                    service,
                    "Every instance unreachable from this gateway; re-reading Consul."
                );
                st.dirty.insert(service.to_owned());
                self.inner.health_refresh.notify_one();
            }
        }
    }

    fn status(&self) -> RegistryStatus {
        let st = self.inner.lock();
        RegistryStatus {
            kind: "consul",
            connected: st.connected,
            last_error: st.last_error.clone(),
            sync: None,
            watch: Some(self.inner.watch_stats.counters()),
        }
    }

    fn synced(&self) -> BoxFuture<'_, ()> {
        self.wait_synced().boxed()
    }

    fn recheck<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Option<bool>> {
        async move {
            {
                let mut st = self.inner.lock();
                if st.watchers.contains_key(service) {
                    st.dirty.insert(service.to_owned());
                    self.inner.health_refresh.notify_one();
                }
            }
            let entries = self
                .inner
                .client
                .health(service, 0, self.inner.config.wait)
                .await
                .ok()?;
            let id = consul_id(service, instance_id);
            Some(entries.value.iter().any(|e| {
                e.service.id == id
                    || e.service
                        .meta
                        .as_ref()
                        .and_then(|m| m.get(META_INSTANCE))
                        .is_some_and(|i| i == instance_id)
            }))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests;
