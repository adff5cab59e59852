//! Discovery: what instances exist and how healthy they are.
//!
//! A [`Registry`] accepts registrations and publishes an immutable
//! [`Catalog`] on a watch channel whenever membership or health changes. The
//! balancer turns each catalogue into a routing snapshot; selection never
//! touches the registry on the request path.
//!
//! [`memory::MemoryRegistry`] is the single-machine default: it keeps
//! registrations in memory, checks health itself and expires instances that
//! stop renewing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use ipnet::IpNet;
use proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;

/// Who may reach a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// From the public listener.
    Public,
    /// From the internal listener (service to service).
    Internal,
    /// From the admin listener only.
    Admin,
}

/// How an instance's health is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckKind {
    /// `grpc.health.v1.Health/Check` with this service name.
    Grpc {
        /// Service name sent in the check ("" = whole server).
        service: String,
    },
    /// HTTP GET on the instance address; 2xx = passing.
    Http {
        /// Path to GET.
        path: String,
    },
    /// Passing while the instance renews its lease.
    Ttl,
}

/// A health check with its timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What is checked.
    #[serde(flatten)]
    pub kind: CheckKind,
    /// Interval between checks.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Timeout of one check.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Remove the instance after failing this long (Consul's
    /// `DeregisterCriticalServiceAfter`); `None` = the registry's default.
    #[serde(with = "humantime_serde")]
    pub deregister_critical_after: Option<Duration>,
}

/// A registered route of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Path prefix, starting with '/'.
    pub path_prefix: String,
    /// Hosts the route is limited to; empty = any.
    pub hosts: Vec<String>,
    /// Per-route timeout (the whole `Send` exchange; the response head on `Stream`).
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Requests on this route always use `Stream` (when the instance streams).
    #[serde(default)]
    pub stream: bool,
    /// Longest a `Stream` exchange on this route may last; `None` = the
    /// gateway's `timeouts.stream_max`.
    #[serde(default, with = "humantime_serde")]
    pub max_duration: Option<Duration>,
    /// The backend is sent the path without `path_prefix` (a hint the
    /// operator's `[[routes]]` may override).
    #[serde(default)]
    pub strip_prefix: bool,
}

/// A validated registration of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// Service name.
    pub service: String,
    /// Instance id, unique within the service.
    pub instance_id: String,
    /// `host:port` the gateway dials.
    pub address: String,
    /// Routes; never empty after validation (default `/<service>`).
    pub routes: Vec<RouteSpec>,
    /// Who may reach the service.
    pub visibility: Visibility,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Free-form metadata.
    pub metadata: BTreeMap<String, String>,
    /// Balancing weight, 1-1000.
    pub weight: u32,
    /// How health is checked.
    pub health: HealthCheck,
    /// Lease: the instance must renew within it.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// The instance implements `ForwardingService.Stream`.
    #[serde(default)]
    pub streaming: bool,
    /// The instance serves TLS: dialled with `[upstream_tls]`.
    #[serde(default)]
    pub tls: bool,
    /// Name the instance's certificate is checked against; `None` = the
    /// gateway's `upstream_tls.server_name` or the address's host.
    #[serde(default)]
    pub tls_server_name: Option<String>,
}

/// A registration field that is missing or invalid. The field is named with
/// its path in the request (`registration.address`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field `{field}`: {reason}")]
pub struct InvalidField {
    /// Dotted path of the field.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Defaults and restrictions applied when validating a registration.
#[derive(Debug, Clone)]
pub struct RegistrationPolicy {
    /// Default check interval.
    pub check_interval: Duration,
    /// Default check timeout.
    pub check_timeout: Duration,
    /// Default lease.
    pub lease: Duration,
    /// Allowed instance networks; empty = any.
    pub allowed_networks: Vec<IpNet>,
    /// Whether this gateway can dial instances over TLS (`[upstream_tls]`
    /// is configured): without it a `tls` registration is refused, since
    /// it could never be routed.
    pub upstream_tls: bool,
}

impl RegistrationPolicy {
    /// From the gateway configuration.
    pub fn from_config(c: &crate::config::GatewayConfig) -> Self {
        Self {
            check_interval: c.health.interval,
            check_timeout: c.health.timeout,
            lease: c.health.lease,
            allowed_networks: c.registration.effective_networks(c.consul.is_some()),
            upstream_tls: c.upstream_tls.is_some(),
        }
    }
}

/// Whether `s` is a valid service name: 1-63 of [a-z0-9-], starting with a letter.
pub fn valid_service_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_instance_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

/// Largest millisecond value a registration may carry (a year): deadlines
/// are computed by adding these to the clock, which overflows near `u64::MAX`.
pub const MAX_MS: u64 = 365 * 24 * 3600 * 1000;

fn bounded_ms(field: impl Into<String>, v: u64) -> Result<Option<Duration>, InvalidField> {
    if v > MAX_MS {
        return Err(invalid(field, format!("must be at most {MAX_MS} (a year)")));
    }
    Ok(ms(v))
}

/// Checks an address is `host:port` and, when networks are restricted, an IP
/// inside one of them.
pub fn validate_address(address: &str, allowed: &[IpNet]) -> Result<(), InvalidField> {
    let field = "registration.address";
    if address.is_empty() {
        return Err(invalid(field, "is required (host:port)"));
    }
    let ip = match address.parse::<SocketAddr>() {
        Ok(sa) if sa.port() == 0 => return Err(invalid(field, "port must not be 0")),
        Ok(sa) => Some(sa.ip()),
        Err(_) => {
            let (host, port) = address
                .rsplit_once(':')
                .ok_or_else(|| invalid(field, format!("{address:?} is not host:port")))?;
            // Digits only: `u16`'s parser also takes a leading '+'.
            let port_ok = port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u16>().is_ok_and(|p| p > 0);
            let host_ok = !host.is_empty()
                && host.len() <= 253
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !port_ok || !host_ok {
                return Err(invalid(field, format!("{address:?} is not host:port")));
            }
            None
        }
    };
    if allowed.is_empty() {
        return Ok(());
    }
    match ip {
        Some(ip) if allowed.iter().any(|n| n.contains(&ip)) => Ok(()),
        Some(ip) => Err(invalid(
            field,
            format!("{ip} is outside the networks allowed by registration.allowed_networks"),
        )),
        None => Err(invalid(
            field,
            "must be an IP address when registration.allowed_networks is set",
        )),
    }
}

impl Registration {
    /// Validates a wire registration, filling defaults. Nothing is half
    /// applied: either a complete registration or the first invalid field.
    pub fn from_proto(
        p: pb::Registration,
        policy: &RegistrationPolicy,
    ) -> Result<Self, InvalidField> {
        if p.service.is_empty() {
            return Err(invalid("registration.service", "is required"));
        }
        if !valid_service_name(&p.service) {
            return Err(invalid(
                "registration.service",
                "must be 1-63 characters of [a-z0-9-] starting with a letter",
            ));
        }
        validate_address(&p.address, &policy.allowed_networks)?;
        let instance_id = if p.instance_id.is_empty() {
            format!("{}-{}", p.service, p.address.replace(['[', ']'], ""))
        } else {
            p.instance_id
        };
        if !valid_instance_id(&instance_id) {
            return Err(invalid(
                "registration.instance_id",
                "must be 1-128 characters of [A-Za-z0-9._:-]",
            ));
        }
        let mut routes = Vec::with_capacity(p.routes.len().max(1));
        for (i, r) in p.routes.into_iter().enumerate() {
            let f = format!("registration.routes[{i}]");
            if !r.path_prefix.starts_with('/') {
                return Err(invalid(format!("{f}.path_prefix"), "must start with '/'"));
            }
            let segments = match crate::routing::normalise(&r.path_prefix) {
                // Characters, as the document's maxLength counts.
                Ok(s) if r.path_prefix.chars().count() <= 1024 => s,
                _ => return Err(invalid(format!("{f}.path_prefix"), "is not a valid path")),
            };
            // Routing matches the normalised form; a prefix spelled
            // otherwise would be listed as one path and route another
            // ("/a/../b" routes "/b", "/x/.." everything).
            let canonical = format!("/{}", segments.join("/"));
            // No '%' at all: "/a%zz" (no escape) would otherwise be taken.
            if canonical != r.path_prefix || r.path_prefix.contains('%') {
                return Err(invalid(
                    format!("{f}.path_prefix"),
                    format!(
                        "must be written in normalised form ({canonical:?}): no empty, '.' or '..' segments, no percent-encoding, no trailing '/'"
                    ),
                ));
            }
            for (j, h) in r.hosts.iter().enumerate() {
                if h.is_empty()
                    || h.len() > 255
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
                {
                    return Err(invalid(format!("{f}.hosts[{j}]"), "is not a host name"));
                }
            }
            routes.push(RouteSpec {
                timeout: bounded_ms(format!("{f}.timeout_ms"), r.timeout_ms)?,
                max_duration: bounded_ms(format!("{f}.max_duration_ms"), r.max_duration_ms)?,
                path_prefix: r.path_prefix,
                hosts: r.hosts,
                stream: r.stream,
                strip_prefix: r.strip_prefix,
            });
        }
        if routes.is_empty() {
            routes.push(RouteSpec {
                path_prefix: format!("/{}", p.service),
                hosts: vec![],
                timeout: None,
                stream: false,
                max_duration: None,
                strip_prefix: false,
            });
        }
        let visibility = match pb::Visibility::try_from(p.visibility) {
            Ok(pb::Visibility::Unspecified | pb::Visibility::Public) => Visibility::Public,
            Ok(pb::Visibility::Internal) => Visibility::Internal,
            Ok(pb::Visibility::Admin) => Visibility::Admin,
            Err(_) => {
                return Err(invalid(
                    "registration.visibility",
                    format!("unknown value {}", p.visibility),
                ));
            }
        };
        let weight = match p.weight {
            0 => 100,
            w @ 1..=1000 => w,
            _ => return Err(invalid("registration.weight", "must be 0-1000")),
        };
        if let Some(k) = p.metadata.keys().find(|k| k.starts_with("gw-")) {
            return Err(invalid(
                format!("registration.metadata.{k}"),
                "keys starting with gw- are reserved",
            ));
        }
        let h = p.health.unwrap_or_default();
        // For every kind, as the document's pattern says; kind `http` also
        // needs one (below).
        if !h.http_path.is_empty() && !h.http_path.starts_with('/') {
            return Err(invalid(
                "registration.health.http_path",
                "must start with '/'",
            ));
        }
        let kind = match pb::health_check::Kind::try_from(h.kind) {
            Ok(pb::health_check::Kind::Unspecified | pb::health_check::Kind::Grpc) => {
                CheckKind::Grpc {
                    service: h.grpc_service,
                }
            }
            Ok(pb::health_check::Kind::Http) => {
                if !h.http_path.starts_with('/') {
                    return Err(invalid(
                        "registration.health.http_path",
                        "must start with '/'",
                    ));
                }
                CheckKind::Http { path: h.http_path }
            }
            Ok(pb::health_check::Kind::Ttl) => CheckKind::Ttl,
            Err(_) => {
                return Err(invalid(
                    "registration.health.kind",
                    format!("unknown value {}", h.kind),
                ));
            }
        };
        let interval = bounded_ms("registration.health.interval_ms", h.interval_ms)?
            .unwrap_or(policy.check_interval);
        if interval < Duration::from_millis(10) {
            return Err(invalid(
                "registration.health.interval_ms",
                "must be at least 10",
            ));
        }
        let timeout = bounded_ms("registration.health.timeout_ms", h.timeout_ms)?
            .unwrap_or(policy.check_timeout)
            .min(interval);
        if p.tls && !policy.upstream_tls {
            return Err(invalid(
                "registration.tls",
                "this gateway has no [upstream_tls] (the CA that verifies instances), so it cannot dial an instance over TLS; configure upstream_tls or register without tls",
            ));
        }
        let tls_server_name = match p.tls_server_name.as_str() {
            "" => None,
            n if rustls_pki_types::ServerName::try_from(n).is_ok() => Some(p.tls_server_name),
            _ => {
                return Err(invalid(
                    "registration.tls_server_name",
                    "must be a DNS name or an IP address",
                ));
            }
        };
        let deregister_critical_after = bounded_ms(
            "registration.health.deregister_critical_after_ms",
            h.deregister_critical_after_ms,
        )?;
        let lease = bounded_ms("registration.lease_ms", p.lease_ms)?.unwrap_or(policy.lease);
        if lease < Duration::from_millis(100) {
            return Err(invalid("registration.lease_ms", "must be at least 100"));
        }
        Ok(Self {
            service: p.service,
            instance_id,
            address: p.address,
            routes,
            visibility,
            tags: p.tags,
            metadata: p.metadata.into_iter().collect(),
            weight,
            health: HealthCheck {
                kind,
                interval,
                timeout,
                deregister_critical_after,
            },
            lease,
            streaming: p.streaming,
            tls: p.tls,
            tls_server_name,
        })
    }

    /// Back to the wire form (for listings and replica events).
    pub fn to_proto(&self) -> pb::Registration {
        let d = |d: Duration| d.as_millis() as u64;
        let (kind, grpc_service, http_path) = match &self.health.kind {
            CheckKind::Grpc { service } => {
                (pb::health_check::Kind::Grpc, service.clone(), String::new())
            }
            CheckKind::Http { path } => (pb::health_check::Kind::Http, String::new(), path.clone()),
            CheckKind::Ttl => (pb::health_check::Kind::Ttl, String::new(), String::new()),
        };
        pb::Registration {
            service: self.service.clone(),
            instance_id: self.instance_id.clone(),
            address: self.address.clone(),
            routes: self
                .routes
                .iter()
                .map(|r| pb::Route {
                    path_prefix: r.path_prefix.clone(),
                    hosts: r.hosts.clone(),
                    timeout_ms: r.timeout.map(d).unwrap_or(0),
                    stream: r.stream,
                    max_duration_ms: r.max_duration.map(d).unwrap_or(0),
                    strip_prefix: r.strip_prefix,
                })
                .collect(),
            visibility: match self.visibility {
                Visibility::Public => pb::Visibility::Public,
                Visibility::Internal => pb::Visibility::Internal,
                Visibility::Admin => pb::Visibility::Admin,
            } as i32,
            tags: self.tags.clone(),
            metadata: self.metadata.clone().into_iter().collect(),
            weight: self.weight,
            health: Some(pb::HealthCheck {
                kind: kind as i32,
                grpc_service,
                http_path,
                interval_ms: d(self.health.interval),
                timeout_ms: d(self.health.timeout),
                deregister_critical_after_ms: self
                    .health
                    .deregister_critical_after
                    .map(d)
                    .unwrap_or(0),
            }),
            lease_ms: d(self.lease),
            streaming: self.streaming,
            tls: self.tls,
            tls_server_name: self.tls_server_name.clone().unwrap_or_default(),
        }
    }
}

/// Health of an instance as this gateway sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not checked yet: routed optimistically.
    Unknown,
    /// Last check passed.
    Passing,
    /// Last check failed: not routed.
    Failing,
}

impl Health {
    /// Whether traffic may go to an instance in this state.
    pub fn routable(self) -> bool {
        self != Health::Failing
    }
}

/// One instance in a catalogue.
#[derive(Debug, Clone)]
pub struct InstanceView {
    /// The registration.
    pub registration: Arc<Registration>,
    /// Current health.
    pub health: Health,
    /// Last check outcome, human readable.
    pub detail: Arc<str>,
    /// When the lease runs out, if the registry keeps leases.
    pub lease_deadline: Option<Instant>,
}

/// An immutable view of every registered instance.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Instances, sorted by (service, instance id).
    pub instances: Vec<InstanceView>,
    /// Increases with every published change.
    pub version: u64,
}

/// Result of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterOutcome {
    /// Instance id stored.
    pub instance_id: String,
    /// Lease granted.
    pub lease: Duration,
    /// Whether the instance is new.
    pub created: bool,
}

/// A registry operation that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The instance is not registered.
    #[error("instance {service}/{instance_id} is not registered")]
    NotFound {
        /// Service name.
        service: String,
        /// Instance id.
        instance_id: String,
    },
    /// The backing store is unreachable; retry later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The backing store refused the registration as invalid.
    #[error("registration rejected: {0}")]
    Rejected(String),
}

/// What the admin view shows about a registry.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryStatus {
    /// Implementation name ("memory", "consul").
    pub kind: &'static str,
    /// Whether the backing store is reachable.
    pub connected: bool,
    /// Last problem, if any.
    pub last_error: Option<String>,
    /// Replica sync state, when replicas sync over Kafka.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync: Option<serde_json::Value>,
    /// Watch loop counters, for registries that watch a backing store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watch: Option<WatchCounters>,
}

/// What a registry's watch loops did since start (Consul's blocking
/// queries): the `/metrics` discovery figures.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WatchCounters {
    /// Watch queries that returned an answer (changed or not).
    pub wakeups: u64,
    /// Watch queries that failed.
    pub errors: u64,
    /// Seconds since the last successful read; `None` before the first.
    pub since_last_read_s: Option<f64>,
}

/// A source of truth for registrations.
pub trait Registry: Send + Sync + 'static {
    /// Creates or replaces an instance (idempotent).
    fn register(&self, reg: Registration) -> BoxFuture<'_, Result<RegisterOutcome, RegistryError>>;
    /// Removes an instance; `Ok(false)` when it was unknown (idempotent).
    fn deregister<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>>;
    /// Extends an instance's lease.
    fn renew<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Duration, RegistryError>>;
    /// The current catalogue, updated on every change.
    fn watch(&self) -> watch::Receiver<Arc<Catalog>>;
    /// Every instance of `service` refused connections from this gateway:
    /// re-read the source of truth soon. Never a deletion.
    fn service_unreachable(&self, service: &str);
    /// State for the admin view.
    fn status(&self) -> RegistryStatus;
    /// Resolves once the registry has its first complete view; the gateway
    /// reports ready only after it.
    fn synced(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Re-reads the source of truth for one instance: `Some(present)`, or
    /// `None` when the registry cannot tell (it is its own truth, or the
    /// store is unreachable).
    fn recheck<'a>(
        &'a self,
        _service: &'a str,
        _instance_id: &'a str,
    ) -> BoxFuture<'a, Option<bool>> {
        Box::pin(async { None })
    }
}

#[cfg(test)]
mod tests;
