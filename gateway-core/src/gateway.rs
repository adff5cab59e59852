//! Assembly: a registry, the balancer following it, and the four listeners.
//! The binary (or an embedding proxy) builds a [`Gateway`], binds
//! [`Listeners`] and calls [`Gateway::serve`] with a shutdown future.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
#[cfg(feature = "kafka")]
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, Readiness};
use crate::balance::Balancer;
use crate::config::{ConfigError, GatewayConfig, TlsConfig};
use crate::proxy::{HttpService, proxy_stack};
use crate::registration::{self, RegistrationApi};
use crate::registry::memory::MemoryRegistry;
use crate::registry::{RegistrationPolicy, Registry};
use crate::routing::Listener;
use crate::server::{ServerOptions, serve};
use crate::shared::Shared;
use crate::tls::{ReloadingCert, ServerTls, TlsError, UpstreamTls};

/// Pre-bound listeners (bind first, then serve: tests bind port 0 and read
/// the addresses back). Every one is optional: an embedder serves only
/// those it wants (and may mount the others in its own server, see
/// [`Gateway::proxy_service`]).
#[derive(Default)]
pub struct Listeners {
    /// Public HTTP.
    pub public: Option<TcpListener>,
    /// Internal HTTP, if enabled.
    pub internal: Option<TcpListener>,
    /// Registration API.
    pub registration: Option<TcpListener>,
    /// Admin.
    pub admin: Option<TcpListener>,
}

/// The addresses the listeners are bound to.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// Public HTTP.
    pub public: Option<SocketAddr>,
    /// Internal HTTP.
    pub internal: Option<SocketAddr>,
    /// Registration API.
    pub registration: Option<SocketAddr>,
    /// Admin.
    pub admin: Option<SocketAddr>,
}

impl Listeners {
    /// Binds every configured listener.
    pub async fn bind(config: &GatewayConfig) -> std::io::Result<Self> {
        let l = &config.listen;
        let bind = |a: SocketAddr, name: &'static str| async move {
            TcpListener::bind(a).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot bind {name} listener on {a}: {e}"))
            })
        };
        Ok(Self {
            public: Some(bind(l.public, "public").await?),
            internal: match l.internal {
                Some(a) => Some(bind(a, "internal").await?),
                None => None,
            },
            registration: Some(bind(l.registration, "registration").await?),
            admin: Some(bind(l.admin, "admin").await?),
        })
    }

    /// Bound addresses.
    pub fn addrs(&self) -> std::io::Result<BoundAddrs> {
        let addr = |l: &Option<TcpListener>| l.as_ref().map(TcpListener::local_addr).transpose();
        Ok(BoundAddrs {
            public: addr(&self.public)?,
            internal: addr(&self.internal)?,
            registration: addr(&self.registration)?,
            admin: addr(&self.admin)?,
        })
    }
}

/// Loads `[upstream_tls]` (the embedded registry's health checks need it
/// as well as the balancer).
pub fn load_upstream_tls(config: &GatewayConfig) -> Result<Option<UpstreamTls>, ConfigError> {
    config
        .upstream_tls
        .as_ref()
        .map(UpstreamTls::load)
        .transpose()
        .map_err(|e| ConfigError {
            setting: "upstream_tls",
            reason: e.to_string(),
        })
}

/// Why a gateway could not be assembled from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is invalid, or a file it names could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `[consul]` is set but Consul could not be reached (or refused the token).
    #[cfg(feature = "consul")]
    #[error("starting the Consul registry: {0}")]
    Consul(#[from] crate::registry::consul::ConsulStartError),
    /// `[kafka]` is set but replica sync could not start.
    #[cfg(feature = "kafka")]
    #[error("starting replica sync: {0}")]
    Kafka(#[from] crate::registry::kafka::SyncStartError),
    /// The configuration asks for a part this build left out.
    #[error("{setting} is set but gateway-core was built without its `{feature}` feature")]
    FeatureOff {
        /// The configuration section.
        setting: &'static str,
        /// The cargo feature that would enable it.
        feature: &'static str,
    },
}

/// Assembles a [`Gateway`] from its configuration: `[consul]` picks the
/// Consul registry, otherwise the embedded in-memory one; `[kafka]` adds
/// replica sync. An embedder may hand over its own registry instead.
pub struct GatewayBuilder {
    config: GatewayConfig,
    registry: Option<Arc<dyn Registry>>,
    logs: Option<admin::LogFeed>,
}

impl GatewayBuilder {
    /// Use this registry instead of the one the configuration names
    /// (`[consul]`/`[kafka]` are then ignored).
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Show this feed's log lines in the admin UI (install
    /// [`LogFeed::layer`](admin::LogFeed::layer) in the subscriber).
    pub fn log_feed(mut self, feed: admin::LogFeed) -> Self {
        self.logs = Some(feed);
        self
    }

    /// Connects what the configuration names (Consul, Kafka) and builds the
    /// gateway. The node id defaults to `<host name>-<process id>`.
    pub async fn build(self) -> Result<Gateway, BuildError> {
        let mut config = self.config;
        config.validate()?;
        #[cfg_attr(not(feature = "kafka"), allow(unused_variables))]
        let node_id = config.node_id.get_or_insert_with(default_node_id).clone();
        let logs = self.logs;
        if let Some(registry) = self.registry {
            let mut gateway = Gateway::new(config, registry)?;
            gateway.logs = logs;
            return Ok(gateway);
        }
        // Refused before anything is connected (`[kafka]` implies `[consul]`,
        // so it is checked first to name the missing feature that matters).
        #[cfg(not(feature = "kafka"))]
        if config.kafka.is_some() {
            return Err(BuildError::FeatureOff {
                setting: "[kafka]",
                feature: "kafka",
            });
        }
        let registry: Arc<dyn Registry> = match &config.consul {
            #[cfg(feature = "consul")]
            Some(consul) => {
                Arc::new(crate::registry::consul::ConsulRegistry::connect(consul.clone()).await?)
            }
            #[cfg(not(feature = "consul"))]
            Some(_) => {
                return Err(BuildError::FeatureOff {
                    setting: "[consul]",
                    feature: "consul",
                });
            }
            None => Arc::new(MemoryRegistry::with_upstream_tls(load_upstream_tls(
                &config,
            )?)),
        };
        #[cfg(feature = "kafka")]
        let (registry, synced) = match &config.kafka {
            Some(k) => {
                use crate::registry::kafka::{KafkaSync, SyncedRegistry};
                let sync = KafkaSync::connect(k.clone(), &node_id).await?;
                let synced = SyncedRegistry::start(registry, sync)?;
                (synced.clone() as Arc<dyn Registry>, Some(synced))
            }
            None => (registry, None),
        };
        let mut gateway = Gateway::new(config, registry)?;
        #[cfg(feature = "consul")]
        if let Some(consul) = &gateway.config.consul {
            gateway.consul_peers = Some(Arc::new(admin::replicas::consul::ConsulPeers::new(
                consul,
                &gateway.shared.node_id,
            )));
        }
        #[cfg(feature = "kafka")]
        if let Some(synced) = synced {
            // Other replicas' registrations are timed until this gateway's
            // routing has them.
            synced.route_with(gateway.shared.balancer.clone());
            gateway.kafka = Some(synced.kafka().clone());
        }
        gateway.logs = logs;
        Ok(gateway)
    }
}

/// `<host name>-<process id>`: unique per process (set `node_id` for a
/// stable name; restarts are told apart by incarnation).
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    format!("{host}-{}", std::process::id())
}

/// A gateway ready to serve.
pub struct Gateway {
    config: GatewayConfig,
    shared: Arc<Shared>,
    readiness: Readiness,
    api: RegistrationApi,
    /// Listener TLS (`[tls]`), loaded at construction so a bad file stops
    /// start-up with its name.
    tls: Option<ServerTls>,
    /// Replica sync, flushed when serving ends.
    #[cfg(feature = "kafka")]
    kafka: Option<Arc<crate::registry::kafka::KafkaSync>>,
    _follow: tokio::task::JoinHandle<()>,
    /// Log lines for the admin UI.
    logs: Option<admin::LogFeed>,
    /// With `[consul]`: this gateway's admin URL in Consul's KV store, and
    /// the other replicas' (the admin UI's replicas side by side).
    #[cfg(feature = "consul")]
    consul_peers: Option<Arc<admin::replicas::consul::ConsulPeers>>,
}

impl Gateway {
    /// Assembles a gateway from `config` (see [`GatewayBuilder`]).
    pub fn builder(config: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            config,
            registry: None,
            logs: None,
        }
    }

    /// A gateway over the embedded in-memory registry (the single-machine
    /// default).
    pub fn with_memory_registry(config: GatewayConfig) -> Result<Self, ConfigError> {
        let upstream = load_upstream_tls(&config)?;
        Self::new(
            config,
            Arc::new(MemoryRegistry::with_upstream_tls(upstream)),
        )
    }

    /// A gateway over any registry. Validates the configuration and loads
    /// the TLS files it names.
    pub fn new(config: GatewayConfig, registry: Arc<dyn Registry>) -> Result<Self, ConfigError> {
        config.validate()?;
        let tls_err = |setting| {
            move |e: TlsError| ConfigError {
                setting,
                reason: e.to_string(),
            }
        };
        let tls = config
            .tls
            .as_ref()
            .map(ServerTls::load)
            .transpose()
            .map_err(tls_err("tls"))?;
        let upstream_tls = load_upstream_tls(&config)?;
        let node_id: Arc<str> = config
            .node_id
            .clone()
            .unwrap_or_else(default_node_id)
            .into();
        let balancer = Balancer::with_upstream_tls(
            config.balancer.clone(),
            config.retry.clone(),
            config.timeouts.clone(),
            upstream_tls,
        );
        // Before the first snapshot: per-service handles copy the setting.
        balancer.metrics().set_enabled(config.metrics.enabled);
        let access_log = config
            .access_log
            .enabled
            .then(|| {
                crate::access_log::AccessLog::start(
                    &config.access_log,
                    balancer.metrics().access_log_dropped.clone(),
                )
            })
            .transpose()
            .map_err(|e| ConfigError {
                setting: "access_log.path",
                reason: e.to_string(),
            })?;
        let rate_limits = crate::ratelimit::RateLimits::new(
            &config.rate_limits,
            config.rate_limit_store.as_ref(),
            balancer.metrics().rate_limit_store_errors.clone(),
        )?
        .map(Arc::new);
        let route_rules = crate::route_rules::RouteRules::new(&config.routes)?.map(Arc::new);
        let cache = crate::cache::ResponseCache::new(
            &config.cache_store,
            &config.cache,
            balancer.metrics(),
        )
        .map(Arc::new);
        let auth = crate::auth::Auth::new(&config, balancer.metrics())?.map(Arc::new);
        if let Some(a) = &auth {
            a.start();
        }
        let follow = balancer.follow(registry.as_ref());
        let api = RegistrationApi::new(
            registry.clone(),
            RegistrationPolicy::from_config(&config),
            config.registration.token.clone(),
        )
        .scoped_tokens(config.registration.tokens.clone())
        .routing_with(balancer.clone());
        let shared = Arc::new(Shared {
            node_id,
            balancer,
            registry: registry.clone(),
            limits: config.limits.clone(),
            timeouts: config.timeouts.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            draining: CancellationToken::new(),
            relays: tokio_util::task::TaskTracker::new(),
            access_log,
            rate_limits,
            canary: crate::canary::Canaries::new(&config.canary).map(Arc::new),
            route_rules,
            cache,
            auth,
        });
        // `new` is not async: an embedder may call it outside a runtime,
        // where the buckets are then never trimmed rather than a panic.
        if let (Some(limits), Ok(rt)) = (&shared.rate_limits, tokio::runtime::Handle::try_current())
        {
            // Idle clients' buckets are dropped; the task ends with the
            // gateway (it holds only a weak reference).
            let limits = Arc::downgrade(limits);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match limits.upgrade() {
                        Some(l) => l.housekeep(),
                        None => break,
                    }
                }
            });
        }
        Ok(Self {
            config,
            shared,
            readiness: Readiness::default(),
            api,
            tls,
            #[cfg(feature = "kafka")]
            kafka: None,
            _follow: follow,
            logs: None,
            #[cfg(feature = "consul")]
            consul_peers: None,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The listeners' certificate, when `[tls]` is configured: call
    /// [`ReloadingCert::reload`] to read the files now (the binary does on
    /// SIGHUP) instead of at the next `tls.reload_interval`.
    pub fn tls_certificate(&self) -> Option<Arc<ReloadingCert>> {
        self.tls.as_ref().map(|t| t.cert.clone())
    }

    /// Readiness handle (the admin `/readyz` reports it).
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The shared request-path state (for embedding: build your own stack
    /// around [`crate::proxy::proxy_stack`]).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The request path for `listener`'s visibility, to mount in another
    /// server (an axum `Router::fallback_service`, say): `B` is that
    /// server's request body.
    pub fn proxy_service<B>(&self, listener: Listener) -> HttpService<B>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<tower::BoxError>,
    {
        HttpService::new(proxy_stack(self.shared.clone(), listener))
    }

    /// The registration API (gRPC and HTTP/JSON), as an axum router.
    pub fn registration_router(&self) -> axum::Router {
        registration::router(self.api.clone())
    }

    /// The admin endpoints (`/healthz`, `/readyz`, `/admin/services`, the
    /// admin-visibility routes), as an axum router.
    pub fn admin_router(&self) -> axum::Router {
        admin::router(
            self.shared.clone(),
            self.readiness.clone(),
            self.api.clone(),
            HttpService::new(proxy_stack(self.shared.clone(), Listener::Admin)),
            admin::AdminOptions {
                config: self.config.admin.clone(),
                logs: self.logs.clone(),
                #[cfg(feature = "consul")]
                consul: self.consul_peers.clone(),
            },
        )
    }

    /// Serves every listener until `shutdown` resolves, then drains: readiness
    /// fails first, listeners keep serving for `drain.readiness_delay` so a
    /// load balancer notices, then they stop accepting and in-flight requests
    /// get up to `drain.grace` to finish.
    pub async fn serve(self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let opts = ServerOptions {
            header_read_timeout: self.config.timeouts.header_read,
            // hyper's own caps sit above ours, so the request path answers
            // with a JSON 431 first; hyper's plain 431 only guards memory.
            max_header_bytes: self.config.limits.max_header_bytes * 2,
            max_headers: self.config.limits.max_headers * 2,
            grace: self.config.drain.grace,
            first_byte_timeout: self.config.timeouts.first_byte,
            idle_timeout: self.config.timeouts.idle,
            http2_keep_alive_interval: self.config.timeouts.http2_keep_alive_interval,
            http2_keep_alive_timeout: self.config.timeouts.http2_keep_alive_timeout,
            max_connections: self.config.limits.max_connections,
            max_connections_per_ip: self.config.limits.max_connections_per_ip,
            tls: None,
            metrics: Some(self.shared.balancer.metrics().clone()),
        };
        let stop = CancellationToken::new();
        // Which listeners speak TLS: [tls] public/internal/registration/admin.
        let tls_on = |on: fn(&TlsConfig) -> bool| {
            let cfg = self.config.tls.as_ref()?;
            on(cfg)
                .then(|| self.tls.as_ref().map(|t| t.acceptor.clone()))
                .flatten()
        };
        if let (Some(t), Some(cfg)) = (&self.tls, &self.config.tls) {
            tokio::spawn(t.cert.clone().watch(cfg.reload_interval, stop.clone()));
        }
        let mut tasks = tokio::task::JoinSet::new();
        // Each listener's service keeps its concrete type: the server calls
        // it without boxing.
        macro_rules! spawn {
            ($listener:expr, $svc:expr, $tls:expr) => {{
                let (listener, svc, stop) = ($listener, $svc, stop.clone());
                let opts = ServerOptions {
                    tls: $tls,
                    ..opts.clone()
                };
                tasks
                    .spawn(async move { serve(listener, svc, opts, stop.cancelled_owned()).await });
            }};
        }
        let sh = &self.shared;
        if let Some(l) = listeners.public {
            spawn!(
                l,
                proxy_stack(sh.clone(), Listener::Public),
                tls_on(|t| t.public)
            );
        }
        if let Some(l) = listeners.internal {
            spawn!(
                l,
                proxy_stack(sh.clone(), Listener::Internal),
                tls_on(|t| t.internal)
            );
        }
        if let Some(l) = listeners.registration {
            spawn!(l, self.registration_router(), tls_on(|t| t.registration));
        }
        if let Some(l) = listeners.admin {
            #[cfg(feature = "consul")]
            if let Some(peers) = self.consul_peers.clone() {
                let url = self.config.admin.advertise.clone().or_else(|| {
                    let a = l.local_addr().ok()?;
                    (!a.ip().is_unspecified()).then(|| format!("http://{a}"))
                });
                match url {
                    Some(url) => {
                        tokio::spawn(announce(peers, url, stop.clone()));
                    }
                    None => warn!(
                        "listen.admin is a wildcard address and admin.advertise is unset: the other replicas will not find this one's admin UI through Consul."
                    ),
                }
            }
            spawn!(l, self.admin_router(), tls_on(|t| t.admin));
        }
        // Ready only once the registry has a complete view: a replica must
        // not take traffic with a half-read routing table.
        let synced = async {
            self.shared.registry.synced().await;
            // ...and the routing snapshot built from that view is in force:
            // the balancer applies catalogues on its own task.
            let version = self.shared.registry.watch().borrow().version;
            self.shared.balancer.wait_applied(version).await;
        };
        tokio::select! {
            _ = synced => {
                self.readiness.set(true);
                info!(node_id = %self.shared.node_id, "Gateway ready.");
            }
            _ = &mut shutdown => {}
        }
        if !self.readiness.is_ready() {
            return self.drain(stop, tasks).await;
        }

        (&mut shutdown).await;
        self.readiness.set(false);
        info!(delay = ?self.config.drain.readiness_delay, "Shutdown requested; readiness now fails.");
        tokio::time::sleep(self.config.drain.readiness_delay).await;
        self.drain(stop, tasks).await
    }

    async fn drain(&self, stop: CancellationToken, mut tasks: tokio::task::JoinSet<()>) {
        stop.cancel();
        self.shared.draining.cancel();
        while tasks.join_next().await.is_some() {}
        // WebSocket relays are sending their close 1001; give them the grace.
        self.shared.relays.close();
        if tokio::time::timeout(self.config.drain.grace, self.shared.relays.wait())
            .await
            .is_err()
        {
            warn!(
                open = self.shared.relays.len(),
                "Grace period over; dropping WebSocket relays."
            );
        }
        #[cfg(feature = "consul")]
        if let Some(peers) = &self.consul_peers
            && let Err(e) = peers.withdraw().await
        {
            tracing::debug!(error = %e, "Admin URL not removed from Consul.");
        }
        #[cfg(feature = "kafka")]
        if let Some(k) = self.kafka.clone() {
            // Hand queued registration events to Kafka before exiting
            // (librdkafka's flush blocks).
            let _ = tokio::task::spawn_blocking(move || k.flush(Duration::from_secs(5))).await;
        }
        info!("Gateway stopped.");
    }
}

/// Keeps this gateway's admin URL in Consul's KV store until `stop`: once
/// at start and every 30 s (a Consul that lost its data gets it back).
#[cfg(feature = "consul")]
async fn announce(
    peers: Arc<admin::replicas::consul::ConsulPeers>,
    url: String,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    let mut failing = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match peers.announce(&url).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, url = %url, "Admin URL not written to Consul; the other replicas' UIs will not show this one until it is.");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_builder_names_the_node_and_takes_an_embedders_registry() {
        let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::with_upstream_tls(None));
        let gateway = Gateway::builder(GatewayConfig::default())
            .registry(registry.clone())
            .build()
            .await
            .unwrap();
        assert_eq!(
            gateway.node_id(),
            default_node_id(),
            "the README's default: <host name>-<process id>"
        );
        assert!(Arc::ptr_eq(&gateway.shared().registry, &registry));
    }

    #[tokio::test]
    async fn the_builder_refuses_an_invalid_configuration_with_its_setting() {
        let mut config = GatewayConfig::default();
        config.limits.max_body_bytes = 0;
        let err = Gateway::builder(config).build().await.err().unwrap();
        assert!(matches!(err, BuildError::Config(_)), "{err}");
    }

    /// Without the features, a configuration naming Consul or Kafka is
    /// refused with the feature to turn on (run by scripts/test.sh with
    /// `--no-default-features`).
    #[cfg(not(feature = "consul"))]
    #[tokio::test]
    async fn consul_without_the_feature_is_refused_by_name() {
        let config = GatewayConfig {
            consul: Some(Default::default()),
            ..Default::default()
        };
        let err = Gateway::builder(config).build().await.err().unwrap();
        assert!(
            matches!(
                err,
                BuildError::FeatureOff {
                    feature: "consul",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("`consul` feature"), "{err}");
    }

    #[cfg(not(feature = "kafka"))]
    #[tokio::test]
    async fn kafka_without_the_feature_is_refused_by_name() {
        let config = GatewayConfig {
            consul: Some(Default::default()),
            kafka: Some(Default::default()),
            ..Default::default()
        };
        let err = Gateway::builder(config).build().await.err().unwrap();
        assert!(
            matches!(
                err,
                BuildError::FeatureOff {
                    feature: "kafka",
                    ..
                }
            ),
            "{err}"
        );
    }
}
