//! Typed configuration. Loading (file, environment, flags) belongs to the
//! binary; the core only defines the shape, the defaults and validation.
//!
//! Every default works on one machine: no Consul, no Kafka, the embedded
//! in-memory registry with its own health checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The whole gateway configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Name of this gateway node; unique among replicas. Default: the
    /// `gateway` binary uses `<host name>-<process id>`; a
    /// [`Gateway`](crate::gateway::Gateway) built without one is named
    /// `gateway-<8 random hex digits>`.
    pub node_id: Option<String>,
    /// Listener addresses.
    pub listen: ListenConfig,
    /// Size limits for requests.
    pub limits: LimitsConfig,
    /// Timeouts of the request path.
    pub timeouts: TimeoutConfig,
    /// Instance balancing and passive health.
    pub balancer: BalancerConfig,
    /// Retries and their budget.
    pub retry: RetryConfig,
    /// Health checks and leases of the embedded registry.
    pub health: HealthConfig,
    /// Who may register what.
    pub registration: RegistrationConfig,
    /// Graceful shutdown.
    pub drain: DrainConfig,
    /// Peers whose `X-Forwarded-For/-Proto/-Host` headers are believed (a
    /// load balancer such as HAProxy). From other peers these headers are
    /// replaced, so a client cannot forge its address. Default: loopback.
    pub trusted_proxies: Vec<IpNet>,
    /// Consul registry; absent = the embedded in-memory registry.
    pub consul: Option<ConsulConfig>,
    /// Replica sync over Kafka; needs `consul` (the replicas' shared source
    /// of truth). Absent = a single gateway, or replicas that learn of
    /// changes from Consul alone.
    pub kafka: Option<KafkaConfig>,
    /// TLS on the listeners; absent = plain HTTP (and h2c) everywhere.
    pub tls: Option<TlsConfig>,
    /// TLS towards backends: the CA bundle that verifies them and the
    /// client certificate the gateway presents (mTLS). Instances are dialled
    /// over TLS when their registration says `tls` or when `all` is set.
    pub upstream_tls: Option<UpstreamTlsConfig>,
    /// OpenTelemetry traces (the `otel` cargo feature); off by default.
    pub tracing: TracingConfig,
    /// Prometheus metrics on the request path; on by default.
    pub metrics: MetricsConfig,
    /// One JSON line per request; off by default.
    pub access_log: AccessLogConfig,
    /// The admin listener's UI: the other replicas it shows.
    pub admin: AdminConfig,
    /// `[[rate_limits]]`: the operator's rate-limit policies, matched by
    /// service and route prefix. Only this file sets them: a registering
    /// service cannot add, change or lift one. Empty = no limit.
    pub rate_limits: Vec<RateLimitPolicy>,
    /// `[rate_limit_store]`: the Redis that policies with
    /// `scope = "cluster"` count in, shared by every replica. Absent = only
    /// local policies are allowed.
    pub rate_limit_store: Option<RateLimitStoreConfig>,
    /// `[[routes]]`: the operator's route rules (path rewriting, header
    /// edits, CORS, body limit, timeout), matched by service and route
    /// prefix. A registration may only hint `strip_prefix`; a rule here
    /// wins over it. Empty = requests go as registered.
    pub routes: Vec<RouteRule>,
    /// `[[canary]]`: weighted traffic split between the versions of a
    /// service's instances, with header/cookie overrides and sticky
    /// sessions. At most one entry per service. Empty = every instance
    /// takes traffic as the balancer picks (today's path).
    pub canary: Vec<CanaryPolicy>,
    /// `[cache_store]`: the response cache's bounds, shared by every
    /// `[[cache]]` policy.
    pub cache_store: CacheStoreConfig,
    /// `[[cache]]`: the routes whose GET/HEAD answers the gateway may keep
    /// and serve again, as the backend's `Cache-Control` allows (RFC 9111,
    /// as a shared cache). Empty = no cache (one branch per request).
    pub cache: Vec<CachePolicyConfig>,
    /// `[auth_providers.<name>]`: how credentials are checked (a JWT issuer
    /// or a forward-auth service), named for `[[auth]]` to use.
    pub auth_providers: std::collections::BTreeMap<String, AuthProvider>,
    /// `[auth_cache]`: decisions remembered per credential.
    pub auth_cache: AuthCache,
    /// `[[auth]]`: which routes need which credentials, matched by service
    /// and route prefix like `[[rate_limits]]`. Only this file sets them: a
    /// registering service cannot turn off its own auth. Empty = every
    /// route open.
    pub auth: Vec<AuthPolicy>,
}

/// `[cache_store]`: how much the response cache may hold (one store for
/// every `[[cache]]` policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheStoreConfig {
    /// Bytes held in all (bodies, header fields and keys); the least
    /// recently used entries go first. Default 64 MiB.
    pub max_bytes: u64,
    /// A larger response (body and header fields) is passed on but not
    /// kept. Default 1 MiB.
    pub max_entry_bytes: u64,
}

impl Default for CacheStoreConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
        }
    }
}

/// One `[[cache]]` entry: the GET/HEAD answers of `service` at or under
/// `prefix` are kept as their `Cache-Control` allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CachePolicyConfig {
    /// The service whose answers are cached (its registered name).
    pub service: String,
    /// A path prefix (`/todos/public`), normalised, matched as
    /// `[[rate_limits]]` prefixes are. Absent = every route of the service.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Freshness given to a cacheable answer (status 200, 404... without
    /// `Authorization` in the request) that states none (no `max-age`,
    /// `s-maxage` or `Expires`, and no `no-cache`). `0s` (default) = such
    /// answers are kept only when they carry a validator, and revalidated
    /// on every use.
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Duration,
}

/// One `[[canary]]` entry (see `gateway-core/src/canary.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryPolicy {
    /// The service whose instances are split by version.
    pub service: String,
    /// Where an instance's version is read: its registration's
    /// `metadata[version_key]`, else a tag `<version_key>=<v>`.
    #[serde(default = "default_version_key")]
    pub version_key: String,
    /// Relative share of requests per version (`{ v1 = 90, v2 = 10 }`):
    /// non-negative, not all zero. Instances of a version not listed get
    /// no traffic (except through `header` / `cookie`). May be left out
    /// only with `sticky_cookie` (sticky sessions without a split).
    #[serde(default)]
    pub weights: std::collections::BTreeMap<String, i64>,
    /// A request header naming the version to use (`v2`), or `1` / `true`
    /// for the canary (the smallest weight).
    #[serde(default)]
    pub header: Option<String>,
    /// The same from a cookie of this name.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Pins a client to an instance with this cookie, set on the first
    /// answer (`HttpOnly; Path=/; Max-Age=<sticky_ttl>`).
    #[serde(default)]
    pub sticky_cookie: Option<String>,
    /// How long the browser keeps the sticky cookie.
    #[serde(default = "default_sticky_ttl", with = "humantime_serde")]
    pub sticky_ttl: Duration,
}

fn default_version_key() -> String {
    "version".into()
}

fn default_sticky_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// `[rate_limit_store]`: where cluster-wide rate limits are counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitStoreConfig {
    /// `redis://host:port[/db]`.
    pub redis: String,
    /// Longest wait for Redis (connect or answer) before the request is let
    /// through unlimited (fail open, logged and counted).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RateLimitStoreConfig {
    fn default() -> Self {
        Self {
            redis: "redis://127.0.0.1:6379".into(),
            timeout: Duration::from_millis(50),
        }
    }
}

/// Where a policy's counts live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitScope {
    /// In this gateway's memory: a token bucket per key (the default; with
    /// N replicas a client may get N times the rate).
    #[default]
    Local,
    /// In `[rate_limit_store]`'s Redis, shared by every replica: a fixed
    /// window of `per` allowing `rate` requests per key.
    Cluster,
}

/// One `[[rate_limits]]` entry: a token bucket per key on the routes of
/// `service` at or under `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// The service whose routes are limited (its registered name).
    pub service: String,
    /// A path prefix (`/orders/login`), in normalised form: the policy
    /// covers the service's requests whose route prefix, or else whose
    /// normalised path, is this one or lies under it, on whole segments.
    /// Absent = every route of the service. When several policies match,
    /// the longest prefix wins.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Requests allowed per `per`, sustained.
    pub rate: u32,
    /// The window `rate` is counted over ("1s", "1m").
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Requests allowed at once, after a quiet spell. Default: `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Who gets a bucket of their own.
    #[serde(default)]
    pub key: RateLimitKey,
    /// With `key = "header"`: the header whose value is the key. A request
    /// without it is keyed by its client address.
    #[serde(default)]
    pub header: Option<String>,
    /// With `key = "claim"`: the JWT claim whose value is the key (`sub`).
    #[serde(default)]
    pub claim: Option<String>,
    /// `local` (default) or `cluster` (counted in `[rate_limit_store]`).
    #[serde(default)]
    pub scope: RateLimitScope,
}

/// Whose requests share one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitKey {
    /// The client's address: the TCP peer, or the last `X-Forwarded-For`
    /// entry when the peer is one of `trusted_proxies`.
    #[default]
    Client,
    /// The value of `header` (an API key, a tenant id).
    Header,
    /// One bucket for the whole route, every client together.
    Route,
    /// The value of the verified JWT claim `claim` (an `[[auth]]` policy on
    /// the route verifies it); requests without one are keyed by client
    /// address.
    Claim,
}

/// One `[[routes]]` entry: what the gateway changes on the requests and
/// answers of `service`'s routes at or under `prefix` (route_rules.rs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// The service whose routes the rule covers (its registered name).
    pub service: String,
    /// A path prefix in normalised form, matched as `[[rate_limits]]`
    /// prefixes are (policy.rs); absent = every route of the service. When
    /// several rules match, the longest prefix wins.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `true`: the backend sees the path without the matched route's prefix
    /// (`/1` for `/product/1`), with `X-Forwarded-Prefix: /product`.
    /// `false`: the path as the client sent it, even if the registration
    /// asks for `strip_prefix`. Absent = the registration's hint.
    #[serde(default)]
    pub strip_prefix: Option<bool>,
    /// Replace the matched route's prefix with this one (`/v2`: `/product/1`
    /// goes as `/v2/1`), with `X-Forwarded-Prefix`. Excludes `strip_prefix`.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
    /// Header edits on the request sent to the backend.
    #[serde(default)]
    pub request_headers: HeaderEdits,
    /// Header edits on the answer sent to the client.
    #[serde(default)]
    pub response_headers: HeaderEdits,
    /// Largest request body on these routes, in bytes, buffered or streamed
    /// (413 above it). Absent = `limits.max_body_bytes` (buffered) and
    /// `limits.max_stream_body_bytes` (streamed).
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// Time for the exchange with the backend (as a registration's
    /// `timeout_ms`, which it overrides). Absent = the route's own.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// `[routes.cors]`: the gateway answers CORS preflights and sets the
    /// `Access-Control-*` headers itself. Absent = requests and answers pass
    /// as they are (a backend may do CORS itself).
    #[serde(default)]
    pub cors: Option<CorsConfig>,
}

/// Header edits of one direction: `remove` first, then `add`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderEdits {
    /// Fields set, replacing any the message had (a client cannot forge
    /// one the operator sets).
    pub add: std::collections::BTreeMap<String, String>,
    /// Fields removed.
    pub remove: Vec<String>,
}

/// `[routes.cors]`: who may call the routes from a browser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins allowed (`https://app.example`, scheme, host and port as the
    /// browser sends them), or `["*"]` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight may ask for. Default: GET, HEAD, POST.
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (`["*"]`: any).
    pub allow_headers: Vec<String>,
    /// Response headers a page may read beyond the CORS-safelisted ones.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Whether a page may send cookies / read answers to credentialed
    /// requests. Not with `allow_origins = ["*"]`.
    pub allow_credentials: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            allow_methods: vec!["GET".into(), "HEAD".into(), "POST".into()],
            allow_headers: Vec::new(),
            expose_headers: Vec::new(),
            max_age: None,
            allow_credentials: false,
        }
    }
}

/// `[admin]`: how the admin UI finds the other replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin URLs of every replica (`http://10.0.0.2:8091`), this one
    /// included or not: the same list on every replica, like HAProxy's
    /// server list. `/admin/replicas` and the UI show each one's view side
    /// by side. Empty: this replica alone.
    pub peers: Vec<String>,
    /// How long `/admin/replicas` waits for one peer before showing it
    /// as down.
    #[serde(with = "humantime_serde")]
    pub peer_timeout: Duration,
    /// This replica's admin URL as the others reach it. With `[consul]`,
    /// every gateway writes its URL to Consul's KV store
    /// (`forwarding-gateway/admin/<node id>`) and shows whoever wrote one,
    /// besides `peers`. Default: `http://<listen.admin>`, unless that is a
    /// wildcard address (`0.0.0.0`), which no peer can dial: then nothing is
    /// written.
    pub advertise: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            peer_timeout: Duration::from_millis(1000),
            advertise: None,
        }
    }
}

/// `[metrics]`: whether the request path records metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Record request and upstream metrics (`GET /metrics` on the admin
    /// listener). Off: the request path does no metric work (one branch per
    /// request) and `/metrics` shows only scrape-time values (connections,
    /// registry, per-instance in-flight). Default: true.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[access_log]`: one JSON line per answered request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Write the access log. Default: false (no work, no allocation on the
    /// request path).
    pub enabled: bool,
    /// File the lines are appended to (created if missing). Absent: standard
    /// output.
    pub path: Option<PathBuf>,
    /// Lines held for the writer; beyond it lines are dropped (counted in
    /// `gateway_access_log_dropped_total`), never waited for. Default: 8192.
    pub buffer: usize,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: None,
            buffer: 8192,
        }
    }
}

/// `[tracing]`: where OpenTelemetry spans go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/gRPC endpoint of a collector (`http://127.0.0.1:4317`). Absent:
    /// no spans are made or exported. Needs a build with the `otel` feature
    /// (the `gateway` binary's default).
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans. Default: `forwarding-gateway`.
    pub service_name: Option<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            listen: ListenConfig::default(),
            limits: LimitsConfig::default(),
            timeouts: TimeoutConfig::default(),
            balancer: BalancerConfig::default(),
            retry: RetryConfig::default(),
            health: HealthConfig::default(),
            registration: RegistrationConfig::default(),
            drain: DrainConfig::default(),
            trusted_proxies: vec![
                IpNet::V4(ipnet::Ipv4Net::new_assert(
                    std::net::Ipv4Addr::new(127, 0, 0, 0),
                    8,
                )),
                IpNet::V6(ipnet::Ipv6Net::new_assert(
                    std::net::Ipv6Addr::LOCALHOST,
                    128,
                )),
            ],
            consul: None,
            kafka: None,
            tracing: TracingConfig::default(),
            metrics: MetricsConfig::default(),
            access_log: AccessLogConfig::default(),
            admin: AdminConfig::default(),
            rate_limits: Vec::new(),
            routes: Vec::new(),
            rate_limit_store: None,
            canary: Vec::new(),
            cache_store: CacheStoreConfig::default(),
            cache: Vec::new(),
            auth_providers: Default::default(),
            auth_cache: AuthCache::default(),
            auth: Vec::new(),
            tls: None,
            upstream_tls: None,
        }
    }
}

/// Listener addresses. Ports may be 0 (the OS picks one; the gateway logs it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// Public HTTP listener (HTTP/1.1 and h2c): routes only `public` services.
    pub public: SocketAddr,
    /// Internal HTTP listener for service-to-service calls: routes `public`
    /// and `internal` services. Keep it off the public network. `None` = off.
    pub internal: Option<SocketAddr>,
    /// Registration API: gRPC `RegistryService` and HTTP/JSON `/v1/registrations`.
    pub registration: SocketAddr,
    /// Admin listener: `/healthz`, `/readyz`, `/admin/services`; also routes
    /// every visibility (`public`, `internal`, `admin`).
    pub admin: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            public: SocketAddr::from(([127, 0, 0, 1], 8080)),
            internal: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            registration: SocketAddr::from(([127, 0, 0, 1], 8090)),
            admin: SocketAddr::from(([127, 0, 0, 1], 8091)),
        }
    }
}

/// Request size limits. Requests over a limit are refused before they are
/// buffered whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body the gateway buffers for `Send`, in bytes (413
    /// above it). Bodies streamed to a backend that declares `streaming` are
    /// not buffered and not bound by it.
    pub max_body_bytes: usize,
    /// A request body with a `Content-Length` up to this size goes to a
    /// streaming backend with unary `Send`; larger or unknown-length bodies
    /// use `Stream`.
    pub unary_body_bytes: usize,
    /// Largest request body streamed to a backend (`Stream`), in bytes; 0 =
    /// no limit. Over it: 413 when `Content-Length` says so up front, else
    /// the stream is cut and the backend's call cancelled.
    pub max_stream_body_bytes: u64,
    /// Largest total size of request headers, names plus values, in bytes
    /// (431 above it).
    pub max_header_bytes: usize,
    /// Most request header fields accepted (431 above it).
    pub max_headers: usize,
    /// Requests handled at once per listener; more are shed with 503.
    pub max_concurrent_requests: usize,
    /// Open connections per listener; a connection over it is answered
    /// with a plain 503 `too_many_connections` and closed at once.
    pub max_connections: usize,
    /// Open connections per client IP address per listener (same answer
    /// over it); 0 = no per-address limit. Behind a load balancer every
    /// client shares its address: leave it 0 there.
    pub max_connections_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            unary_body_bytes: 64 * 1024,
            max_stream_body_bytes: 0,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_requests: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 0,
        }
    }
}

/// Timeouts of the request path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Default time for the whole exchange with a backend when the route sets
    /// none; the remaining budget is sent to the backend (504 when spent).
    #[serde(with = "humantime_serde")]
    pub request: Duration,
    /// Time to read a request's headers; slow clients are closed after it.
    #[serde(with = "humantime_serde")]
    pub header_read: Duration,
    /// Time to establish a connection to a backend instance.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// A `Stream` exchange (SSE, download, upload, WebSocket) in which
    /// neither side sends anything for this long is ended.
    #[serde(with = "humantime_serde")]
    pub stream_idle: Duration,
    /// Longest a `Stream` exchange may last when its route sets no
    /// `max_duration_ms`; the remaining time is the backend's deadline.
    #[serde(with = "humantime_serde")]
    pub stream_max: Duration,
    /// Time from accept until a client has sent its first byte, and for
    /// h2c its whole connection preface and first SETTINGS frame; a
    /// connection that says nothing is closed after it.
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// A connection (HTTP/1.1 or HTTP/2) with no request in flight for
    /// this long is closed (HTTP/2 with a GOAWAY). Bytes that are not
    /// requests (pings, trickled partial heads) do not keep it open.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// HTTP/2: a PING is sent after this long without frames from the
    /// client, and every this long on the connections to instances...
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_interval: Duration,
    /// ...and the connection is closed if its acknowledgement does not
    /// come within this.
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_timeout: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(30),
            header_read: Duration::from_secs(10),
            connect: Duration::from_secs(1),
            stream_idle: Duration::from_secs(300),
            stream_max: Duration::from_secs(24 * 3600),
            first_byte: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(30),
            http2_keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

/// Instance selection and passive health (outlier detection).
///
/// Two kinds of evidence eject an instance, and they are treated apart: a
/// refused connection (the instance takes no request at all; dialling it
/// again costs a client nothing, since a refused request falls back or is
/// answered 503 anyway) and failed calls (the instance took requests and
/// failed them; readmitting it costs real failures, so that ejection backs
/// off). See the README's "Balancing, ejection and retries".
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    /// How an instance is picked.
    pub strategy: BalanceStrategy,
    /// How long an instance is skipped after it refused a connection, and
    /// the base of the ejection for failed calls (multiplied by the number
    /// of ejections in a row, as Envoy's `base_ejection_time`).
    #[serde(with = "humantime_serde")]
    pub ejection_time: Duration,
    /// Longest ejection for failed calls, however often the instance was
    /// ejected in a row.
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    /// Largest share of a service's instances that may be ejected at once, in
    /// percent. Beyond it (or when no instance is left) the balancer panics,
    /// as Envoy does: every instance that accepts connections is tried again,
    /// including those ejected for failed calls. Instances whose last
    /// connection was refused stay skipped; when every instance refused, the
    /// answer is 503 at once.
    pub max_ejection_percent: u8,
    /// How many other instances a request never processed (connection
    /// refused, HTTP/2 `REFUSED_STREAM`) may be retried on, under the retry
    /// budget.
    pub connect_retries: usize,
    /// Consecutive failed calls (non-OK gRPC statuses, timeouts, invalid
    /// answers; not the HTTP statuses a service chooses, which come back
    /// with gRPC OK) after which an instance is ejected; 0 = never. Keeps a
    /// fast-failing instance from drawing traffic through latency-aware
    /// balancing (Envoy's `consecutive_5xx`).
    pub consecutive_failures: u32,
    /// Time constant of the peak-EWMA latency estimate (`peak_ewma`): a
    /// slower answer counts at once, faster ones pull the estimate down over
    /// about this long, and an idle instance's estimate decays as fast.
    #[serde(with = "humantime_serde")]
    pub latency_decay: Duration,
    /// Latency assumed per request in flight to an instance that has not
    /// answered yet (`peak_ewma`): it gets one request at once, but is not
    /// flooded before it has shown its speed.
    #[serde(with = "humantime_serde")]
    pub default_latency: Duration,
    /// HTTP/2 connections per instance, opened as requests need them (an
    /// instance that gets none costs none). Requests take them in turn: a
    /// backend serving each connection on one task or core gets more than
    /// one, and a connection being replaced is never the only one.
    pub connections_per_instance: usize,
    /// A connection to an instance older than this (jittered +-10%) takes
    /// no new request: the next one dials a new connection and the old one
    /// closes when its calls are done. Behind one address (a Kubernetes
    /// service, an L4 balancer) new endpoints then get their share.
    /// 0 = connections are kept until they close.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            strategy: BalanceStrategy::PeakEwma,
            ejection_time: Duration::from_secs(5),
            max_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 50,
            connect_retries: 2,
            consecutive_failures: 5,
            latency_decay: Duration::from_secs(10),
            default_latency: Duration::from_millis(30),
            connections_per_instance: 2,
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// Instance selection strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceStrategy {
    /// Power of two random choices on cost = peak-EWMA latency x
    /// (in-flight plus one) / weight (Finagle's and Linkerd's balancer): a
    /// slow instance gets little traffic.
    PeakEwma,
    /// Power of two random choices on in-flight requests (weighted).
    PowerOfTwo,
    /// Plain round robin.
    RoundRobin,
}

/// Retries after a failed attempt, and the budget that bounds them.
///
/// Only what is safe is retried, on another instance: a request never
/// processed (connection refused, HTTP/2 `REFUSED_STREAM`), or an
/// idempotent request (GET, HEAD, OPTIONS, PUT, DELETE, TRACE; RFC 9110
/// 9.2.2) whose body the gateway still holds (unary `Send`, buffered) that
/// failed with gRPC `UNAVAILABLE` or was cut by the instance's `GOAWAY`. Never a streamed body, never because a
/// client header asks. Every retry is drawn from the service's budget.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Retries allowed per service, in percent of its requests over
    /// `budget_window` (Linkerd: 20).
    pub budget_percent: u32,
    /// Retries per second allowed per service on top of the percentage, so
    /// a quiet service can still retry. A rate, not a burst: the allowance
    /// accrues at this rate and holds at most one second's worth.
    pub min_per_second: u32,
    /// Window over which requests earn retries.
    #[serde(with = "humantime_serde")]
    pub budget_window: Duration,
    /// Most attempts for one idempotent request failed with `UNAVAILABLE`,
    /// the first included; 1 = no such retries.
    pub max_attempts: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            budget_percent: 20,
            min_per_second: 10,
            budget_window: Duration::from_secs(10),
            max_attempts: 2,
        }
    }
}

/// Health checks and leases of the embedded registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Interval between active checks when a registration sets none.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Timeout of one check when a registration sets none.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Lease granted when a registration asks for none; an instance that does
    /// not renew within it expires.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            lease: Duration::from_secs(30),
        }
    }
}

/// Who may register what.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Shared secret a registration must present (`authorization: Bearer
    /// <token>`); it may register, renew and deregister instances of every
    /// service. `None` (and no `tokens`) = no token required (single-machine
    /// default).
    pub token: Option<String>,
    /// Tokens limited to some services, so that holding one does not let a
    /// caller register an instance under another service's name and take its
    /// traffic. Once `token` or any of these is set, every registration,
    /// renewal and deregistration needs a token that covers its service.
    pub tokens: Vec<ScopedToken>,
    /// Networks a registered instance address must lie in, so nobody can
    /// point the gateway at arbitrary hosts. Unset = any address with the
    /// embedded registry (one machine), and the private ranges
    /// (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) - not loopback -
    /// with Consul. An empty list allows any address.
    pub allowed_networks: Option<Vec<IpNet>>,
}

/// A registration token limited to some services
/// (`[[registration.tokens]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    /// The secret, sent as `authorization: Bearer <token>`.
    pub token: String,
    /// Services the token may register, renew and deregister: an exact
    /// service name (`orders`), a name prefix ending in `*` (`orders-*`), or
    /// `*` for every service.
    pub services: Vec<String>,
}

impl ScopedToken {
    /// Whether the token covers `service`.
    pub fn covers(&self, service: &str) -> bool {
        self.services.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => service.starts_with(prefix),
            None => p == service,
        })
    }

    /// Why a service pattern is malformed, if it is.
    pub(crate) fn bad_pattern(p: &str) -> Option<&'static str> {
        let name = p.strip_suffix('*').unwrap_or(p);
        let chars_ok = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if name.contains('*') {
            Some("`*` is allowed only at the end")
        } else if !chars_ok {
            Some("service names are [a-z0-9-]")
        } else if name.len() > 63 {
            Some("service names are at most 63 characters")
        } else if name.is_empty() && !p.ends_with('*') {
            Some("empty service name")
        } else if name.bytes().next().is_some_and(|b| !b.is_ascii_lowercase()) {
            Some("service names start with a letter")
        } else {
            None
        }
    }
}

/// `SERVICES=TOKEN`, services separated by commas: `orders,orders-*=s3cret`
/// (the form of `--registration-scoped-token` and
/// `GATEWAY_REGISTRATION_TOKENS`). The token is everything after the first
/// `=`, so it may contain `=` itself.
impl std::str::FromStr for ScopedToken {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (services, token) = s
            .split_once('=')
            .ok_or("expected SERVICES=TOKEN (e.g. orders,orders-*=s3cret)")?;
        Ok(Self {
            // Header values arrive trimmed: a token with outer spaces could
            // never match.
            token: token.trim().to_owned(),
            services: services
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        })
    }
}

impl RegistrationConfig {
    /// Whether any registration token is configured (then every write
    /// needs one).
    pub fn requires_token(&self) -> bool {
        self.token.is_some() || !self.tokens.is_empty()
    }

    fn validate_tokens(&self) -> Result<(), ConfigError> {
        let err = |reason: String| {
            Err(ConfigError {
                setting: "registration.tokens",
                reason,
            })
        };
        let mut seen: Vec<&str> = self.token.iter().map(String::as_str).collect();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.is_empty() {
                return err(format!("entry {i}: the token must not be empty"));
            }
            if t.token
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
            {
                // A bearer token is one token68: it cannot hold spaces.
                return err(format!(
                    "entry {i}: the token must not contain spaces or control characters"
                ));
            }
            if seen.contains(&t.token.as_str()) {
                // One secret with two scopes: which one applies is ambiguous.
                return err(format!(
                    "entry {i}: the same token appears twice (or equals registration.token)"
                ));
            }
            seen.push(&t.token);
            if t.services.is_empty() {
                return err(format!(
                    "entry {i}: `services` must name at least one service"
                ));
            }
            if let Some((p, why)) = t
                .services
                .iter()
                .find_map(|p| ScopedToken::bad_pattern(p).map(|w| (p, w)))
            {
                return err(format!(
                    "entry {i}: {p:?} is not a service name or a prefix ending in `*` ({why})"
                ));
            }
        }
        Ok(())
    }

    /// The networks in force for a registry kind (see `allowed_networks`).
    pub fn effective_networks(&self, consul: bool) -> Vec<IpNet> {
        match (&self.allowed_networks, consul) {
            (Some(n), _) => n.clone(),
            (None, false) => Vec::new(),
            (None, true) => [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "100.64.0.0/10",
                "fc00::/7",
            ]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
        }
    }
}

/// Consul as the source of truth. Present = the gateway uses Consul instead
/// of the embedded registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsulConfig {
    /// Base URL of the Consul agent's HTTP API (registrations go through
    /// the agent, whose anti-entropy keeps the catalog right).
    pub address: String,
    /// Datacenter to query; unset = the agent's own.
    pub datacenter: Option<String>,
    /// ACL token (`X-Consul-Token`); unset = anonymous. Checked at start-up:
    /// a token Consul rejects stops the gateway with a clear error.
    pub token: Option<String>,
    /// Read consistency of queries.
    pub consistency: ConsulConsistency,
    /// How long one blocking query may wait for a change.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// Consul removes an instance whose check stayed critical this long
    /// (`DeregisterCriticalServiceAfter`), when the registration sets none.
    #[serde(with = "humantime_serde")]
    pub deregister_critical_after: Duration,
    /// Smallest pause between two queries of one watch loop (rate limit).
    #[serde(with = "humantime_serde")]
    pub min_query_interval: Duration,
    /// After Consul answers again (an outage, or a restart that may have
    /// lost everything), instances missing from its view stay routed this
    /// long, so every replica can reconnect and write back what it accepted
    /// before anything is dropped. Longer than the slowest reconnect (error
    /// backoff is at most 7.5 s) plus the write-back.
    #[serde(with = "humantime_serde")]
    pub restart_grace: Duration,
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8500".into(),
            datacenter: None,
            token: None,
            consistency: ConsulConsistency::Default,
            wait: Duration::from_secs(60),
            deregister_critical_after: Duration::from_secs(60),
            min_query_interval: Duration::from_millis(5),
            restart_grace: Duration::from_secs(15),
        }
    }
}

/// Replica-to-replica registration events on a Kafka topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topic of registration events; created compacted when missing.
    pub topic: String,
    /// How long start-up waits for the brokers (and the catch-up read of the
    /// topic) before failing with a clear error.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Extra librdkafka client properties (security, tuning). Settings the
    /// gateway's guarantees rest on are rejected by name: `bootstrap.servers`,
    /// `enable.idempotence`, `acks`, `group.id`, `enable.auto.commit`,
    /// `auto.offset.reset`.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "forwarding.registrations".into(),
            startup_timeout: Duration::from_secs(30),
            properties: Default::default(),
        }
    }
}

/// TLS on the listeners (rustls; ALPN `h2` and `http/1.1`). The
/// certificate and key files are read again every `reload_interval`; a
/// changed pair is served to new connections without a restart, and a pair
/// that does not load keeps the previous one (with an error in the log).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Serve TLS on the public listener.
    pub public: bool,
    /// Serve TLS on the internal listener.
    pub internal: bool,
    /// Serve TLS on the registration listener (gRPC and HTTP/JSON).
    pub registration: bool,
    /// Serve TLS on the admin listener (off by default: local probes and
    /// scrapers usually speak plain HTTP).
    pub admin: bool,
    /// Time a client gets to complete the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often the certificate and key files are checked for changes (the
    /// `gateway` binary also checks at once on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            public: true,
            internal: true,
            registration: true,
            admin: false,
            handshake_timeout: Duration::from_secs(10),
            reload_interval: Duration::from_secs(5),
        }
    }
}

/// TLS towards backend instances (the `ForwardingService` calls and gRPC
/// health checks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM bundle of the CAs that sign backend certificates (required: the
    /// gateway trusts no system roots for backends).
    pub ca: PathBuf,
    /// PEM client certificate chain presented to backends (mTLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Name checked against backend certificates when a registration gives
    /// no `tls_server_name`; unset = the host of the instance address (an
    /// IP address is checked against the certificate's IP SANs).
    pub server_name: Option<String>,
    /// Dial every instance over TLS, whatever its registration says.
    pub all: bool,
}

/// librdkafka properties the gateway sets itself and will not let a
/// configuration override.
pub const KAFKA_RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "group.id",
    "enable.auto.commit",
    "auto.offset.reset",
];

/// Consul read consistency modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsulConsistency {
    /// Leader reads, possibly stale for a moment after a leader change.
    Default,
    /// Linearisable reads (slower).
    Consistent,
    /// Any server answers (fastest, may lag).
    Stale,
}

/// Graceful shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    /// After a shutdown signal, how long readiness fails while the listeners
    /// still serve, so a load balancer stops sending traffic first.
    #[serde(with = "humantime_serde")]
    pub readiness_delay: Duration,
    /// Longest wait for in-flight requests after the listeners close.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        Self {
            readiness_delay: Duration::from_secs(0),
            grace: Duration::from_secs(30),
        }
    }
}

/// A setting that conflicts with another or is out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration `{setting}`: {reason}")]
pub struct ConfigError {
    /// Dotted name of the setting.
    pub setting: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl GatewayConfig {
    /// `[[canary]]`: each entry sound on its own, one per service.
    fn validate_canary(&self) -> Result<(), ConfigError> {
        let err = |setting, i: usize, reason: String| {
            Err(ConfigError {
                setting,
                reason: format!("entry {i}: {reason}"),
            })
        };
        for (i, p) in self.canary.iter().enumerate() {
            if !crate::registry::valid_service_name(&p.service) {
                return err(
                    "canary.service",
                    i,
                    format!("{:?} is not a service name", p.service),
                );
            }
            if self.canary[..i].iter().any(|q| q.service == p.service) {
                return err(
                    "canary.service",
                    i,
                    format!("service {:?} has another [[canary]] entry", p.service),
                );
            }
            if p.version_key.is_empty() || p.version_key.contains('=') {
                return err(
                    "canary.version_key",
                    i,
                    "must be a non-empty metadata key without '='".into(),
                );
            }
            if p.weights.is_empty() && p.sticky_cookie.is_none() {
                return err(
                    "canary.weights",
                    i,
                    "required (e.g. { v1 = 90, v2 = 10 }) unless sticky_cookie is set".into(),
                );
            }
            if !p.weights.is_empty()
                && let Err(e) = crate::canary::check_weights(&p.weights)
            {
                return err("canary.weights", i, e);
            }
            if let Some(h) = &p.header
                && http::HeaderName::from_bytes(h.as_bytes()).is_err()
            {
                return err(
                    "canary.header",
                    i,
                    format!("{h:?} is not a valid header name"),
                );
            }
            for (setting, name) in [
                ("canary.cookie", &p.cookie),
                ("canary.sticky_cookie", &p.sticky_cookie),
            ] {
                if let Some(c) = name
                    && !crate::canary::valid_cookie_name(c)
                {
                    return err(
                        setting,
                        i,
                        format!("{c:?} is not a valid cookie name (an RFC 6265 token)"),
                    );
                }
            }
            if p.cookie.is_some() && p.cookie == p.sticky_cookie {
                return err(
                    "canary.sticky_cookie",
                    i,
                    "must differ from `cookie`".into(),
                );
            }
            if p.sticky_ttl < Duration::from_secs(1)
                || p.sticky_ttl > Duration::from_secs(400 * 86_400)
            {
                return err("canary.sticky_ttl", i, "must be between 1s and 400d".into());
            }
        }
        Ok(())
    }

    /// `[[routes]]`: each rule sound on its own (route_rules.rs compiles
    /// them), no two with the same service and prefix.
    fn validate_routes(&self) -> Result<(), ConfigError> {
        crate::route_rules::RouteRules::new(&self.routes).map(|_| ())
    }

    /// `[[rate_limits]]`: each entry sound on its own, and no two with the
    /// same service and prefix (which would win is not obvious).
    fn validate_rate_limits(&self) -> Result<(), ConfigError> {
        let err = |setting, i: usize, reason: String| {
            Err(ConfigError {
                setting,
                reason: format!("entry {i}: {reason}"),
            })
        };
        if let Some(store) = &self.rate_limit_store {
            if !(store.redis.starts_with("redis://") || store.redis.starts_with("rediss://")) {
                return Err(ConfigError {
                    setting: "rate_limit_store.redis",
                    reason: format!("{:?} is not a redis:// URL", store.redis),
                });
            }
            if store.timeout.is_zero() {
                return Err(ConfigError {
                    setting: "rate_limit_store.timeout",
                    reason: "must be greater than 0".into(),
                });
            }
        }
        for (i, p) in self.rate_limits.iter().enumerate() {
            if !is_policy_service(&p.service) {
                return err(
                    "rate_limits.service",
                    i,
                    format!("{:?} is not a service name", p.service),
                );
            }
            if let Some(prefix) = &p.prefix {
                // The written form must be the one routing matches, as for
                // a registered route: "/a/../b" would read as one prefix
                // and limit another.
                if !is_canonical_prefix(prefix) {
                    return err(
                        "rate_limits.prefix",
                        i,
                        format!(
                            "{prefix:?} is not a normalised route prefix such as /orders (no empty, '.' or '..' segments, no percent-encoding, no trailing '/')"
                        ),
                    );
                }
            }
            if p.rate == 0 {
                return err("rate_limits.rate", i, "must be greater than 0".into());
            }
            if p.per.is_zero() || p.per > Duration::from_secs(86_400) {
                return err("rate_limits.per", i, "must be between 1ns and 24h".into());
            }
            if p.per.as_nanos() / u128::from(p.rate) == 0 {
                return err(
                    "rate_limits.rate",
                    i,
                    "more than one request per nanosecond cannot be timed".into(),
                );
            }
            if p.scope == RateLimitScope::Cluster {
                if self.rate_limit_store.is_none() {
                    return err(
                        "rate_limits.scope",
                        i,
                        "scope = \"cluster\" needs [rate_limit_store]".into(),
                    );
                }
                if !cfg!(feature = "redis") {
                    return err(
                        "rate_limits.scope",
                        i,
                        "scope = \"cluster\" needs gateway-core's `redis` feature".into(),
                    );
                }
            }
            if p.burst == Some(0) {
                return err("rate_limits.burst", i, "must be greater than 0".into());
            }
            match (p.key, &p.header) {
                (RateLimitKey::Header, None) => {
                    return err(
                        "rate_limits.header",
                        i,
                        "key = \"header\" needs the header's name".into(),
                    );
                }
                (RateLimitKey::Header, Some(h))
                    if http::HeaderName::try_from(h.as_str()).is_err() =>
                {
                    return err(
                        "rate_limits.header",
                        i,
                        format!("{h:?} is not a header name"),
                    );
                }
                (RateLimitKey::Client | RateLimitKey::Route | RateLimitKey::Claim, Some(_)) => {
                    return err(
                        "rate_limits.header",
                        i,
                        "only used with key = \"header\"".into(),
                    );
                }
                _ => {}
            }
            let whole = |q: &RateLimitPolicy| q.prefix.as_deref().unwrap_or("/").to_owned();
            if self.rate_limits[..i]
                .iter()
                .any(|q| q.service == p.service && whole(q) == whole(p))
            {
                return err(
                    "rate_limits.prefix",
                    i,
                    format!(
                        "a second policy for service {} with the same prefix",
                        p.service
                    ),
                );
            }
        }
        Ok(())
    }

    /// `[cache_store]` and `[[cache]]`: bounds that can hold an entry, and
    /// policies that name one service and a normalised prefix, once each.
    fn validate_cache(&self) -> Result<(), ConfigError> {
        let store = &self.cache_store;
        if store.max_entry_bytes == 0 || store.max_entry_bytes > u64::from(u32::MAX) {
            return Err(ConfigError {
                setting: "cache_store.max_entry_bytes",
                reason: "must be between 1 and 4294967295".into(),
            });
        }
        if store.max_bytes < store.max_entry_bytes {
            return Err(ConfigError {
                setting: "cache_store.max_bytes",
                reason: format!(
                    "must be at least cache_store.max_entry_bytes ({})",
                    store.max_entry_bytes
                ),
            });
        }
        let err = |setting, i: usize, reason: String| {
            Err(ConfigError {
                setting,
                reason: format!("entry {i}: {reason}"),
            })
        };
        for (i, p) in self.cache.iter().enumerate() {
            if !is_policy_service(&p.service) {
                return err(
                    "cache.service",
                    i,
                    format!("{:?} is not a service name", p.service),
                );
            }
            if let Some(prefix) = &p.prefix
                && !is_canonical_prefix(prefix)
            {
                return err(
                    "cache.prefix",
                    i,
                    format!(
                        "{prefix:?} is not a normalised route prefix such as /todos (no empty, '.' or '..' segments, no percent-encoding, no trailing '/')"
                    ),
                );
            }
            if p.default_ttl > Duration::from_secs(365 * 24 * 3600) {
                return err("cache.default_ttl", i, "must be at most 365d".into());
            }
            let whole = |q: &CachePolicyConfig| q.prefix.as_deref().unwrap_or("/").to_owned();
            if self.cache[..i]
                .iter()
                .any(|q| q.service == p.service && whole(q) == whole(p))
            {
                return err(
                    "cache.prefix",
                    i,
                    format!(
                        "a second policy for service {} with the same prefix",
                        p.service
                    ),
                );
            }
        }
        Ok(())
    }

    /// Rejects conflicting or out-of-range settings, naming the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |setting, reason: &str| {
            Err(ConfigError {
                setting,
                reason: reason.to_owned(),
            })
        };
        if self.limits.max_body_bytes == 0 {
            return err("limits.max_body_bytes", "must be greater than 0");
        }
        if self.limits.max_headers == 0 {
            return err("limits.max_headers", "must be greater than 0");
        }
        if self.limits.max_header_bytes < 1024 {
            return err("limits.max_header_bytes", "must be at least 1024");
        }
        if self.access_log.enabled && self.access_log.buffer == 0 {
            return err("access_log.buffer", "must be greater than 0");
        }
        if self.limits.max_concurrent_requests == 0 {
            return err("limits.max_concurrent_requests", "must be greater than 0");
        }
        if self.limits.max_connections == 0 {
            return err("limits.max_connections", "must be greater than 0");
        }
        for (setting, d) in [
            ("timeouts.header_read", self.timeouts.header_read),
            ("timeouts.first_byte", self.timeouts.first_byte),
            ("timeouts.idle", self.timeouts.idle),
            (
                "timeouts.http2_keep_alive_interval",
                self.timeouts.http2_keep_alive_interval,
            ),
            (
                "timeouts.http2_keep_alive_timeout",
                self.timeouts.http2_keep_alive_timeout,
            ),
        ] {
            if d.is_zero() {
                return err(setting, "must be greater than 0");
            }
        }
        if self.timeouts.request.is_zero() {
            return err("timeouts.request", "must be greater than 0");
        }
        if self.health.interval.is_zero() {
            return err("health.interval", "must be greater than 0");
        }
        if self.admin.peer_timeout.is_zero() {
            return err("admin.peer_timeout", "must be greater than 0");
        }
        let urls = self.admin.peers.iter().map(|p| ("admin.peers", p));
        for (setting, url) in
            urls.chain(self.admin.advertise.iter().map(|a| ("admin.advertise", a)))
        {
            let ok = url
                .parse::<http::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some());
            if !ok {
                return Err(ConfigError {
                    setting,
                    reason: format!("{url:?} is not an http://host:port URL"),
                });
            }
        }
        if self.health.timeout >= self.health.interval {
            return err("health.timeout", "must be shorter than health.interval");
        }
        if self.health.lease < self.health.interval {
            return err("health.lease", "must be at least health.interval");
        }
        if self.balancer.max_ejection_percent > 100 {
            return err("balancer.max_ejection_percent", "must be 0-100");
        }
        if self.balancer.max_ejection_time < self.balancer.ejection_time {
            return err(
                "balancer.max_ejection_time",
                "must be at least balancer.ejection_time",
            );
        }
        if self.balancer.connections_per_instance == 0 {
            return err("balancer.connections_per_instance", "must be at least 1");
        }
        if self.balancer.latency_decay.is_zero() {
            return err("balancer.latency_decay", "must be greater than 0");
        }
        if self.retry.budget_percent > 100 {
            return err("retry.budget_percent", "must be 0-100");
        }
        if self.retry.budget_window < Duration::from_secs(1)
            || self.retry.budget_window > Duration::from_secs(60)
        {
            return err("retry.budget_window", "must be between 1s and 60s");
        }
        if self.retry.max_attempts == 0 {
            return err(
                "retry.max_attempts",
                "must be at least 1 (the first attempt)",
            );
        }
        if matches!(&self.registration.token, Some(t) if t.is_empty()) {
            return err("registration.token", "must not be empty (omit it instead)");
        }
        self.registration.validate_tokens()?;
        self.validate_rate_limits()?;
        self.validate_canary()?;
        self.validate_routes()?;
        self.validate_cache()?;
        self.validate_auth()?;
        if let Some(c) = &self.consul {
            if !(c.address.starts_with("http://") || c.address.starts_with("https://")) {
                return err("consul.address", "must be an http:// or https:// URL");
            }
            if c.wait < Duration::from_secs(1) || c.wait > Duration::from_secs(600) {
                return err("consul.wait", "must be between 1s and 10m");
            }
            if c.deregister_critical_after < Duration::from_secs(60) {
                // Consul's reaper runs every 30 s and refuses shorter values.
                return err(
                    "consul.deregister_critical_after",
                    "must be at least 1m (Consul's minimum)",
                );
            }
        }
        if let Some(k) = &self.kafka {
            if self.consul.is_none() {
                return err(
                    "kafka",
                    "replica sync needs [consul]: replicas share Consul as the source of truth",
                );
            }
            if k.brokers.trim().is_empty()
                || k.brokers.split(',').any(|b| {
                    b.trim()
                        .rsplit_once(':')
                        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
                })
            {
                return err("kafka.brokers", "must be host:port[,host:port...]");
            }
            let legal = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-';
            if k.topic.is_empty()
                || k.topic.len() > 249
                || !k.topic.chars().all(legal)
                || k.topic == "."
                || k.topic == ".."
            {
                return err("kafka.topic", "must be 1-249 characters of [A-Za-z0-9._-]");
            }
            if let Some(p) = k
                .properties
                .keys()
                .find(|p| KAFKA_RESERVED_PROPERTIES.contains(&p.as_str()))
            {
                return Err(ConfigError {
                    setting: "kafka.properties",
                    reason: format!(
                        "`{p}` is set by the gateway (idempotent producer, acks=all, every replica reads every event) and cannot be overridden"
                    ),
                });
            }
        }
        if let Some(t) = &self.tls {
            if t.cert.as_os_str().is_empty() {
                return err("tls.cert", "must name the certificate PEM file");
            }
            if t.key.as_os_str().is_empty() {
                return err("tls.key", "must name the private key PEM file");
            }
            if t.handshake_timeout.is_zero() {
                return err("tls.handshake_timeout", "must be greater than 0");
            }
            if t.reload_interval < Duration::from_millis(10) {
                return err("tls.reload_interval", "must be at least 10ms");
            }
        }
        if let Some(u) = &self.upstream_tls {
            if u.ca.as_os_str().is_empty() {
                return err("upstream_tls.ca", "must name the CA bundle PEM file");
            }
            match (&u.cert, &u.key) {
                (Some(_), None) => {
                    return err("upstream_tls.key", "is needed with upstream_tls.cert");
                }
                (None, Some(_)) => {
                    return err("upstream_tls.cert", "is needed with upstream_tls.key");
                }
                _ => {}
            }
        }
        let l = &self.listen;
        let mut addrs = vec![
            ("listen.public", l.public),
            ("listen.registration", l.registration),
            ("listen.admin", l.admin),
        ];
        if let Some(i) = l.internal {
            addrs.push(("listen.internal", i));
        }
        for (i, (name, a)) in addrs.iter().enumerate() {
            if a.port() == 0 {
                continue;
            }
            if let Some((other, _)) = addrs[..i].iter().find(|(_, b)| b == a) {
                return Err(ConfigError {
                    setting: name,
                    reason: format!("same address {a} as {other}"),
                });
            }
        }
        Ok(())
    }
}

/// What `--print-config` shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

impl GatewayConfig {
    /// A copy safe to print or log: registration tokens, the Consul ACL
    /// token and Kafka properties that carry credentials read
    /// [`REDACTED`].
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        let hide = |s: &mut String| *s = REDACTED.to_owned();
        c.registration.token.as_mut().map(hide);
        c.registration
            .tokens
            .iter_mut()
            .for_each(|t| hide(&mut t.token));
        if let Some(consul) = &mut c.consul {
            consul.token.as_mut().map(hide);
        }
        if let Some(k) = &mut c.kafka {
            for (key, v) in k.properties.iter_mut() {
                if ["password", "secret", "token"]
                    .iter()
                    .any(|w| key.to_ascii_lowercase().contains(w))
                {
                    hide(v);
                }
            }
        }
        c
    }
}

/// `[auth_providers.<name>]`: one way of checking a credential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthProvider {
    /// A bearer JWT, verified in the gateway.
    Jwt(AuthProviderJwt),
    /// A registered service asked about each request's head.
    Forward(AuthProviderForward),
}

/// `kind = "jwt"`: a bearer token verified in the gateway against one key
/// source (`jwks_url`, `secret_env` or `public_key`; exactly one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthProviderJwt {
    /// The `iss` a token must carry; unchecked when absent.
    #[serde(default)]
    pub issuer: Option<String>,
    /// One of these must be in the token's `aud`; unchecked when empty.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// A JWK Set (`https://` or `http://`) fetched at start (retried until
    /// it loads), every `jwks_refresh`, and when a token names an unknown
    /// `kid`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A PEM CA bundle that alone is trusted for an `https://` `jwks_url`;
    /// absent: the system's trust store (`SSL_CERT_FILE`, `/etc/ssl/certs`).
    #[serde(default)]
    pub jwks_ca: Option<PathBuf>,
    /// How often the JWK Set is fetched again.
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// The environment variable holding an HMAC secret (HS256/384/512),
    /// read at start-up.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A PEM public key file (RSA, EC or Ed25519), read at start-up.
    #[serde(default)]
    pub public_key: Option<PathBuf>,
    /// Accepted `alg` values ("RS256", "EdDSA"...). Default: every one the
    /// key allows.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim -> request header set from it (client-sent copies of these
    /// headers are removed first).
    #[serde(default)]
    pub claims_to_headers: std::collections::BTreeMap<String, String>,
    /// Also read the token from this cookie (`Authorization: Bearer` first).
    #[serde(default)]
    pub cookie: Option<String>,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_forward_auth_timeout() -> Duration {
    Duration::from_secs(2)
}

/// `kind = "forward"`: a registered service is sent each request's head
/// (over `ForwardingService.Send`, no body); a 2xx lets the request
/// through, any other answer goes back to the client as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthProviderForward {
    /// The registered service asked.
    pub service: String,
    /// The path it is sent; the original method and path go in
    /// `x-forwarded-method` and `x-forwarded-uri`.
    pub path: String,
    /// Headers copied from its 2xx answer onto the forwarded request
    /// (client-sent copies are removed first).
    #[serde(default)]
    pub copy_headers: Vec<String>,
    /// Longest wait for its answer.
    #[serde(default = "default_forward_auth_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// What an unreachable or slow auth service means.
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

/// What a forward-auth provider that cannot answer means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// 503 `auth_unavailable` (the default).
    #[default]
    Deny,
    /// Let the request through without the copied headers.
    Allow,
}

/// `[auth_cache]`: decisions remembered per credential (a SHA-256 of it,
/// never the credential itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthCache {
    /// How long a decision is remembered; never past the token's `exp`.
    /// 0 = no cache.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most decisions held (0 = no cache).
    pub max_entries: usize,
}

impl Default for AuthCache {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(30),
            max_entries: 10_000,
        }
    }
}

/// Whether a route needs a credential.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthAccess {
    /// Open; with a `provider`, a credential that is sent is still checked
    /// (and its claims become headers), a missing one is fine.
    Public,
    /// A valid credential from `provider` is required.
    #[default]
    Authenticated,
}

/// One `[[auth]]` entry: what the routes of `service` at or under `prefix`
/// require.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthPolicy {
    /// The service whose routes are covered.
    pub service: String,
    /// A normalised path prefix, as in `[[rate_limits]]`; absent = every
    /// route of the service. The longest matching prefix wins.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `public` or `authenticated` (the default).
    #[serde(default)]
    pub access: AuthAccess,
    /// A name in `[auth_providers]`; required unless `access = "public"`.
    #[serde(default)]
    pub provider: Option<String>,
    /// Scopes that must all be in the token's space-separated `scope`
    /// claim (or its `scp` array); otherwise 403.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claims that must have exactly these values (or, for an array
    /// claim, contain them); otherwise 403.
    #[serde(default)]
    pub claims: std::collections::BTreeMap<String, serde_json::Value>,
}

impl GatewayConfig {
    /// `[auth_providers]`, `[auth_cache]` and `[[auth]]`: every provider
    /// usable, every policy naming one that exists.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let err = |setting, reason: String| Err(ConfigError { setting, reason });
        for (name, p) in &self.auth_providers {
            match p {
                AuthProvider::Jwt(j) => {
                    let sources = usize::from(j.jwks_url.is_some())
                        + usize::from(j.secret_env.is_some())
                        + usize::from(j.public_key.is_some());
                    if sources != 1 {
                        return err(
                            "auth_providers.jwks_url",
                            format!(
                                "{name}: exactly one of jwks_url, secret_env, public_key must be set"
                            ),
                        );
                    }
                    if let Some(url) = &j.jwks_url {
                        let https = url.starts_with("https://");
                        if !https && !url.starts_with("http://") {
                            return err(
                                "auth_providers.jwks_url",
                                format!("{name}: {url:?} is not an https:// or http:// URL"),
                            );
                        }
                        if url.parse::<http::Uri>().is_err() {
                            return err(
                                "auth_providers.jwks_url",
                                format!("{name}: {url:?} is not a valid URL"),
                            );
                        }
                        if j.jwks_ca.is_some() && !https {
                            return err(
                                "auth_providers.jwks_ca",
                                format!("{name}: only for an https:// jwks_url"),
                            );
                        }
                        if !cfg!(feature = "jwks") {
                            return err(
                                "auth_providers.jwks_url",
                                format!("{name}: needs gateway-core's `jwks` feature"),
                            );
                        }
                        if j.jwks_refresh < Duration::from_secs(1) {
                            return err(
                                "auth_providers.jwks_refresh",
                                format!("{name}: must be at least 1s"),
                            );
                        }
                    }
                    for a in &j.algorithms {
                        if a.parse::<jsonwebtoken::Algorithm>().is_err() {
                            return err(
                                "auth_providers.algorithms",
                                format!("{name}: {a:?} is not a JWS algorithm (RS256, EdDSA...)"),
                            );
                        }
                    }
                    for h in j.claims_to_headers.values() {
                        if http::HeaderName::try_from(h.as_str()).is_err() {
                            return err(
                                "auth_providers.claims_to_headers",
                                format!("{name}: {h:?} is not a header name"),
                            );
                        }
                    }
                }
                AuthProvider::Forward(f) => {
                    if ScopedToken::bad_pattern(&f.service).is_some() || f.service.ends_with('*') {
                        return err(
                            "auth_providers.service",
                            format!("{name}: {:?} is not a service name", f.service),
                        );
                    }
                    if !f.path.starts_with('/')
                        || http::uri::PathAndQuery::try_from(f.path.as_str()).is_err()
                    {
                        return err(
                            "auth_providers.path",
                            format!("{name}: {:?} is not an absolute path", f.path),
                        );
                    }
                    for h in &f.copy_headers {
                        if http::HeaderName::try_from(h.as_str()).is_err() {
                            return err(
                                "auth_providers.copy_headers",
                                format!("{name}: {h:?} is not a header name"),
                            );
                        }
                    }
                    if f.timeout.is_zero() {
                        return err(
                            "auth_providers.timeout",
                            format!("{name}: must be greater than 0"),
                        );
                    }
                }
            }
        }
        for (i, p) in self.auth.iter().enumerate() {
            if !is_policy_service(&p.service) {
                return err(
                    "auth.service",
                    format!("auth[{i}]: {:?} is not a service name", p.service),
                );
            }
            if let Some(prefix) = &p.prefix
                && !is_canonical_prefix(prefix)
            {
                return err(
                    "auth.prefix",
                    format!(
                        "auth[{i}]: {prefix:?} is not a normalised route prefix such as /orders"
                    ),
                );
            }
            match (&p.provider, p.access) {
                (None, AuthAccess::Authenticated) => {
                    return err(
                        "auth.provider",
                        format!("auth[{i}]: access = \"authenticated\" needs a provider"),
                    );
                }
                (Some(name), _) if !self.auth_providers.contains_key(name) => {
                    return err(
                        "auth.provider",
                        format!("auth[{i}]: no provider {name:?} in [auth_providers]"),
                    );
                }
                _ => {}
            }
            let jwt = matches!(
                p.provider.as_ref().and_then(|n| self.auth_providers.get(n)),
                Some(AuthProvider::Jwt(_))
            );
            if (!p.scopes.is_empty() || !p.claims.is_empty()) && !jwt {
                return err(
                    "auth.scopes",
                    format!("auth[{i}]: scopes and claims need a provider of kind \"jwt\""),
                );
            }
            let whole = |q: &AuthPolicy| q.prefix.as_deref().unwrap_or("/").to_owned();
            if self.auth[..i]
                .iter()
                .any(|q| q.service == p.service && whole(q) == whole(p))
            {
                return err(
                    "auth.prefix",
                    format!(
                        "auth[{i}]: a second policy for service {} with the same prefix",
                        p.service
                    ),
                );
            }
        }
        for (i, r) in self.rate_limits.iter().enumerate() {
            if r.key == RateLimitKey::Claim {
                if r.claim.is_none() {
                    return err(
                        "rate_limits.claim",
                        format!("entry {i}: key = \"claim\" needs the claim's name"),
                    );
                }
                if !self.auth.iter().any(|a| a.service == r.service) {
                    return err(
                        "rate_limits.claim",
                        format!(
                            "entry {i}: key = \"claim\" needs an [[auth]] policy for service {}",
                            r.service
                        ),
                    );
                }
            } else if r.claim.is_some() {
                return err(
                    "rate_limits.claim",
                    format!("entry {i}: only used with key = \"claim\""),
                );
            }
        }
        Ok(())
    }
}

/// Whether a policy's `prefix` is written as routing matches it (the same
/// rule as a registered route): "/a/../b" would read as one prefix and
/// apply to another.
fn is_canonical_prefix(prefix: &str) -> bool {
    prefix.starts_with('/')
        && crate::routing::normalise(prefix).is_ok_and(|s| crate::routing::canonical(&s) == prefix)
}

/// Whether a policy section's `service` names one service (no pattern).
fn is_policy_service(service: &str) -> bool {
    ScopedToken::bad_pattern(service).is_none() && !service.ends_with('*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_tokens_parse_and_are_checked_by_name() {
        let c: GatewayConfig = toml::from_str(
            "[registration]\ntoken = \"all\"\n[[registration.tokens]]\ntoken = \"o\"\nservices = [\"orders\", \"orders-*\"]\n",
        )
        .unwrap();
        c.validate().unwrap();
        let t = &c.registration.tokens[0];
        assert!(t.covers("orders") && t.covers("orders-eu"));
        assert!(!t.covers("ordersx") && !t.covers("payments"));
        let star: ScopedToken = "*=x".parse().unwrap();
        assert!(star.covers("anything"));
        let parsed: ScopedToken = "orders, orders-*=a=b ".parse().unwrap();
        assert_eq!(parsed.services, ["orders", "orders-*"]);
        assert_eq!(parsed.token, "a=b");
        assert!("no-equals".parse::<ScopedToken>().is_err());

        for (services, token) in [
            (vec!["Orders"], "t"),
            (vec!["or*ders"], "t"),
            (vec!["-x*"], "t"),
            (vec![], "t"),
            (vec!["orders"], ""),
            (vec!["orders"], "all"),
            (vec!["orders"], "two words"),
        ] {
            let mut bad = c.clone();
            bad.registration.tokens.push(ScopedToken {
                token: token.into(),
                services: services.iter().map(|s| s.to_string()).collect(),
            });
            let e = bad.validate().unwrap_err();
            assert_eq!(e.setting, "registration.tokens", "{services:?} {token:?}");
            assert!(e.to_string().contains("entry 1"), "{e}");
        }
    }

    #[test]
    fn redacted_hides_every_secret() {
        let mut c = GatewayConfig::default();
        c.registration.token = Some("shared-secret".into());
        c.registration
            .tokens
            .push("orders=scoped-secret".parse().unwrap());
        c.consul = Some(ConsulConfig {
            token: Some("consul-secret".into()),
            ..Default::default()
        });
        let mut k = KafkaConfig::default();
        k.properties
            .insert("sasl.password".into(), "kafka-secret".into());
        c.kafka = Some(k);
        let text = toml::to_string(&c.redacted()).unwrap();
        assert!(!text.contains("secret\""), "{text}");
        assert_eq!(text.matches(REDACTED).count(), 4, "{text}");
        assert!(text.contains("orders"), "scopes stay visible: {text}");
    }

    #[test]
    fn defaults_are_valid() {
        GatewayConfig::default().validate().unwrap();
    }

    #[test]
    fn humane_durations_parse() {
        let c: GatewayConfig = toml::from_str("[timeouts]\nrequest = \"250ms\"\n").unwrap();
        assert_eq!(c.timeouts.request, Duration::from_millis(250));
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let e = toml::from_str::<GatewayConfig>("[timeouts]\nrequets = \"1s\"\n").unwrap_err();
        assert!(e.to_string().contains("requets"), "{e}");
    }

    #[test]
    fn kafka_settings_are_checked_by_name() {
        let mut c = GatewayConfig {
            kafka: Some(KafkaConfig::default()),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().setting, "kafka");
        c.consul = Some(ConsulConfig::default());
        c.validate().unwrap();
        let k = c.kafka.as_mut().unwrap();
        k.properties.insert("acks".into(), "1".into());
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("`acks`"), "{e}");
        let k = c.kafka.as_mut().unwrap();
        k.properties.clear();
        k.brokers = "nohostport".into();
        assert_eq!(c.validate().unwrap_err().setting, "kafka.brokers");
        let k = c.kafka.as_mut().unwrap();
        k.brokers = "127.0.0.1:9092".into();
        k.topic = "bad topic".into();
        assert_eq!(c.validate().unwrap_err().setting, "kafka.topic");
    }

    #[test]
    fn tls_settings_are_checked_by_name() {
        let c: GatewayConfig =
            toml::from_str("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        c.validate().unwrap();
        let t = c.tls.as_ref().unwrap();
        assert!(t.public && t.internal && t.registration && !t.admin);
        let c: GatewayConfig = toml::from_str("[tls]\ncert = \"c.pem\"\n").unwrap();
        assert_eq!(c.validate().unwrap_err().setting, "tls.key");
        let c: GatewayConfig =
            toml::from_str("[upstream_tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\n").unwrap();
        assert_eq!(c.validate().unwrap_err().setting, "upstream_tls.key");
        let c: GatewayConfig = toml::from_str("[upstream_tls]\nall = true\n").unwrap();
        assert_eq!(c.validate().unwrap_err().setting, "upstream_tls.ca");
    }

    #[test]
    fn conflicts_name_the_setting() {
        let mut c = GatewayConfig::default();
        c.listen.admin = c.listen.public;
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "listen.admin");
        let mut c = GatewayConfig::default();
        c.health.timeout = c.health.interval;
        assert_eq!(c.validate().unwrap_err().setting, "health.timeout");
        let mut c = GatewayConfig::default();
        c.balancer.max_ejection_time = Duration::from_secs(1);
        assert_eq!(
            c.validate().unwrap_err().setting,
            "balancer.max_ejection_time"
        );
        let mut c = GatewayConfig::default();
        c.retry.max_attempts = 0;
        assert_eq!(c.validate().unwrap_err().setting, "retry.max_attempts");
        let mut c = GatewayConfig::default();
        c.retry.budget_window = Duration::from_secs(120);
        assert_eq!(c.validate().unwrap_err().setting, "retry.budget_window");
    }

    #[test]
    fn admin_peers_parse_and_are_checked() {
        let c: GatewayConfig = toml::from_str(
            "[admin]\npeers = [\"http://10.0.0.1:8091\", \"http://gw2:8091\"]\npeer_timeout = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(c.admin.peers.len(), 2);
        assert_eq!(c.admin.peer_timeout, Duration::from_millis(250));
        c.validate().unwrap();
        for bad in ["https://10.0.0.1:8091", "10.0.0.1:8091", "http://"] {
            let mut c = GatewayConfig::default();
            c.admin.peers = vec![bad.into()];
            assert_eq!(c.validate().unwrap_err().setting, "admin.peers", "{bad}");
        }
        let mut c = GatewayConfig::default();
        c.admin.advertise = Some("gw1:8091".into());
        assert_eq!(c.validate().unwrap_err().setting, "admin.advertise");
        let mut c = GatewayConfig::default();
        c.admin.peer_timeout = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().setting, "admin.peer_timeout");
    }

    #[test]
    fn rate_limit_policies_are_validated_naming_the_setting() {
        let ok = "[[rate_limits]]\nservice = \"orders\"\nprefix = \"/orders/new\"\nrate = 10\nper = \"1s\"\nburst = 20\nkey = \"header\"\nheader = \"x-api-key\"\n";
        let c: GatewayConfig = toml::from_str(ok).unwrap();
        c.validate().unwrap();
        assert_eq!(c.rate_limits[0].key, RateLimitKey::Header);
        let cases = [
            (
                "service = \"Orders\"\nrate = 1\nper = \"1s\"",
                "rate_limits.service",
            ),
            (
                "service = \"a\"\nprefix = \"/a/\"\nrate = 1\nper = \"1s\"",
                "rate_limits.prefix",
            ),
            (
                "service = \"a\"\nprefix = \"/a/../b\"\nrate = 1\nper = \"1s\"",
                "rate_limits.prefix",
            ),
            (
                "service = \"a\"\nrate = 0\nper = \"1s\"",
                "rate_limits.rate",
            ),
            ("service = \"a\"\nrate = 1\nper = \"0s\"", "rate_limits.per"),
            (
                "service = \"a\"\nrate = 1\nper = \"1s\"\nburst = 0",
                "rate_limits.burst",
            ),
            (
                "service = \"a\"\nrate = 1\nper = \"1s\"\nkey = \"header\"",
                "rate_limits.header",
            ),
            (
                "service = \"a\"\nrate = 1\nper = \"1s\"\nheader = \"x-k\"",
                "rate_limits.header",
            ),
        ];
        for (entry, setting) in cases {
            let c: GatewayConfig = toml::from_str(&format!("[[rate_limits]]\n{entry}\n")).unwrap();
            assert_eq!(c.validate().unwrap_err().setting, setting, "{entry}");
        }
        // Two policies for the same service and prefix.
        let twice = "[[rate_limits]]\nservice = \"a\"\nrate = 1\nper = \"1s\"\n[[rate_limits]]\nservice = \"a\"\nprefix = \"/\"\nrate = 2\nper = \"1s\"\n";
        let c: GatewayConfig = toml::from_str(twice).unwrap();
        assert_eq!(c.validate().unwrap_err().setting, "rate_limits.prefix");
        // An unknown field is a parse error, not a silently ignored policy.
        assert!(
            toml::from_str::<GatewayConfig>(
                "[[rate_limits]]\nservice = \"a\"\nrate = 1\nper = \"1s\"\nlimit = 3\n"
            )
            .is_err()
        );
    }

    #[test]
    fn canary_policies_are_validated_naming_the_setting() {
        let ok = "[[canary]]\nservice = \"todos\"\nweights = { v1 = 90, v2 = 10 }\nheader = \"x-canary\"\ncookie = \"canary\"\nsticky_cookie = \"gw-sticky\"\nsticky_ttl = \"1h\"\n";
        let c: GatewayConfig = toml::from_str(ok).unwrap();
        c.validate().unwrap();
        assert_eq!(c.canary[0].version_key, "version");
        assert_eq!(c.canary[0].sticky_ttl, Duration::from_secs(3600));
        let cases = [
            (
                "service = \"Todos\"\nweights = { v1 = 1 }",
                "canary.service",
                "",
            ),
            (
                "service = \"t\"\nweights = { v1 = -1, v2 = 5 }",
                "canary.weights",
                "\"v1\"",
            ),
            (
                "service = \"t\"\nweights = { v1 = 0, v2 = 0 }",
                "canary.weights",
                "all 0",
            ),
            ("service = \"t\"", "canary.weights", "required"),
            (
                "service = \"t\"\nweights = { v1 = 1 }\nheader = \"x canary\"",
                "canary.header",
                "",
            ),
            (
                "service = \"t\"\nweights = { v1 = 1 }\ncookie = \"a;b\"",
                "canary.cookie",
                "",
            ),
            (
                "service = \"t\"\nweights = { v1 = 1 }\nsticky_cookie = \"a b\"",
                "canary.sticky_cookie",
                "",
            ),
            (
                "service = \"t\"\nweights = { v1 = 1 }\nversion_key = \"\"",
                "canary.version_key",
                "",
            ),
            (
                "service = \"t\"\nsticky_cookie = \"s\"\nsticky_ttl = \"0s\"",
                "canary.sticky_ttl",
                "",
            ),
        ];
        for (entry, setting, says) in cases {
            let c: GatewayConfig = toml::from_str(&format!("[[canary]]\n{entry}\n")).unwrap();
            let e = c.validate().unwrap_err();
            assert_eq!(e.setting, setting, "{entry}");
            assert!(e.reason.contains(says), "{entry}: {e}");
        }
        // Sticky sessions alone need no weights.
        let c: GatewayConfig =
            toml::from_str("[[canary]]\nservice = \"t\"\nsticky_cookie = \"s\"\n").unwrap();
        c.validate().unwrap();
        let twice = "[[canary]]\nservice = \"t\"\nweights = { v1 = 1 }\n[[canary]]\nservice = \"t\"\nweights = { v2 = 1 }\n";
        let c: GatewayConfig = toml::from_str(twice).unwrap();
        assert_eq!(c.validate().unwrap_err().setting, "canary.service");
    }

    #[test]
    fn cache_policies_are_validated_naming_the_setting() {
        let ok = "[cache_store]\nmax_bytes = 1000\nmax_entry_bytes = 100\n[[cache]]\nservice = \"todos\"\nprefix = \"/todos/public\"\ndefault_ttl = \"10s\"\n";
        let c: GatewayConfig = toml::from_str(ok).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cache[0].default_ttl, Duration::from_secs(10));
        assert_eq!(c.cache_store.max_entry_bytes, 100);
        let cases = [
            ("[[cache]]\nservice = \"Todos\"", "cache.service"),
            (
                "[[cache]]\nservice = \"a\"\nprefix = \"/a/\"",
                "cache.prefix",
            ),
            ("[[cache]]\nservice = \"a\"\nprefix = \"a\"", "cache.prefix"),
            (
                "[[cache]]\nservice = \"a\"\n[[cache]]\nservice = \"a\"\nprefix = \"/\"",
                "cache.prefix",
            ),
            (
                "[[cache]]\nservice = \"a\"\ndefault_ttl = \"400d\"",
                "cache.default_ttl",
            ),
            (
                "[cache_store]\nmax_entry_bytes = 0",
                "cache_store.max_entry_bytes",
            ),
            (
                "[cache_store]\nmax_bytes = 10\nmax_entry_bytes = 100",
                "cache_store.max_bytes",
            ),
        ];
        for (entry, setting) in cases {
            let c: GatewayConfig = toml::from_str(entry).unwrap();
            assert_eq!(c.validate().unwrap_err().setting, setting, "{entry}");
        }
        assert!(
            toml::from_str::<GatewayConfig>("[[cache]]\nservice = \"a\"\nttl = \"1s\"\n").is_err()
        );
    }

    #[test]
    fn auth_sections_are_validated_naming_the_setting() {
        let ok = r#"
[auth_providers.users]
kind = "jwt"
issuer = "todo-auth"
audiences = ["todo-api"]
jwks_url = "http://127.0.0.1:8080/jwks.json"
algorithms = ["EdDSA"]
claims_to_headers = { sub = "x-auth-subject" }

[auth_providers.session]
kind = "forward"
service = "auth"
path = "/auth/verify"
copy_headers = ["x-auth-subject"]

[[auth]]
service = "todos"
prefix = "/todos"
provider = "users"
scopes = ["todos:write"]
claims = { role = "admin" }

[[rate_limits]]
service = "todos"
rate = 1
per = "1s"
key = "claim"
claim = "sub"
"#;
        let c: GatewayConfig = toml::from_str(ok).unwrap();
        #[cfg(feature = "jwks")]
        c.validate().unwrap();
        // Without the feature a JWKS URL cannot be fetched: refused at start-up.
        #[cfg(not(feature = "jwks"))]
        assert_eq!(c.validate().unwrap_err().setting, "auth_providers.jwks_url");
        assert_eq!(c.auth_cache, AuthCache::default());
        for (text, setting) in [
            (
                "[[auth]]\nservice = \"a\"\nprovider = \"x\"\n",
                "auth.provider",
            ),
            ("[[auth]]\nservice = \"a\"\n", "auth.provider"),
            (
                "[auth_providers.p]\nkind = \"jwt\"\nsecret_env = \"S\"\njwks_url = \"http://x/\"\n",
                "auth_providers.jwks_url",
            ),
            (
                "[auth_providers.p]\nkind = \"jwt\"\njwks_url = \"ftp://x/\"\n",
                "auth_providers.jwks_url",
            ),
            (
                "[auth_providers.p]\nkind = \"jwt\"\njwks_url = \"https://x y/\"\n",
                "auth_providers.jwks_url",
            ),
            (
                "[auth_providers.p]\nkind = \"jwt\"\njwks_url = \"http://x/\"\njwks_ca = \"ca.pem\"\n",
                "auth_providers.jwks_ca",
            ),
            (
                "[auth_providers.p]\nkind = \"jwt\"\nsecret_env = \"S\"\nalgorithms = [\"none\"]\n",
                "auth_providers.algorithms",
            ),
            (
                "[auth_providers.p]\nkind = \"forward\"\nservice = \"a\"\npath = \"verify\"\n",
                "auth_providers.path",
            ),
            (
                "[auth_providers.p]\nkind = \"forward\"\nservice = \"a\"\npath = \"/v\"\n[[auth]]\nservice = \"a\"\nprovider = \"p\"\nscopes = [\"x\"]\n",
                "auth.scopes",
            ),
            (
                "[[rate_limits]]\nservice = \"a\"\nrate = 1\nper = \"1s\"\nkey = \"claim\"\nclaim = \"sub\"\n",
                "rate_limits.claim",
            ),
        ] {
            let c: GatewayConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err();
            assert_eq!(e.setting, setting, "{text}: {e}");
        }
        let e = toml::from_str::<GatewayConfig>("[[auth]]\nservice = \"a\"\nprovider = \"x\"\n")
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid configuration `auth.provider`: auth[0]: no provider \"x\" in [auth_providers]"
        );
        assert!(
            toml::from_str::<GatewayConfig>(
                "[auth_providers.p]\nkind = \"jwt\"\nsecret_env = \"S\"\nbogus = 1\n"
            )
            .is_err()
        );
    }
}
