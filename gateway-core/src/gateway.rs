//! Assembly: a registry, the balancer following it, and the four listeners.
//! The binary (or an embedding proxy) builds a [`Gateway`], binds
//! [`Listeners`] and calls [`Gateway::serve`] with a shutdown future.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{self, Readiness};
use crate::balance::Balancer;
use crate::config::{ConfigError, GatewayConfig, TlsConfig};
use crate::forward::{Listener, Shared};
use crate::proxy::{HttpService, proxy_stack};
use crate::registration::{self, RegistrationApi};
use crate::registry::memory::MemoryRegistry;
use crate::registry::{RegistrationPolicy, Registry};
use crate::server::{ServerOptions, serve};
use crate::tls::{ReloadingCert, ServerTls, TlsAcceptor, TlsError, UpstreamTls};

/// Pre-bound listeners (bind first, then serve: tests bind port 0 and read
/// the addresses back).
pub struct Listeners {
    /// Public HTTP.
    pub public: TcpListener,
    /// Internal HTTP, if enabled.
    pub internal: Option<TcpListener>,
    /// Registration API.
    pub registration: TcpListener,
    /// Admin.
    pub admin: TcpListener,
}

/// The addresses the listeners are bound to.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    /// Public HTTP.
    pub public: SocketAddr,
    /// Internal HTTP.
    pub internal: Option<SocketAddr>,
    /// Registration API.
    pub registration: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
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
            public: bind(l.public, "public").await?,
            internal: match l.internal {
                Some(a) => Some(bind(a, "internal").await?),
                None => None,
            },
            registration: bind(l.registration, "registration").await?,
            admin: bind(l.admin, "admin").await?,
        })
    }

    /// Bound addresses.
    pub fn addrs(&self) -> std::io::Result<BoundAddrs> {
        Ok(BoundAddrs {
            public: self.public.local_addr()?,
            internal: self
                .internal
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
            registration: self.registration.local_addr()?,
            admin: self.admin.local_addr()?,
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

/// A gateway ready to serve.
pub struct Gateway {
    config: GatewayConfig,
    shared: Arc<Shared>,
    readiness: Readiness,
    api: RegistrationApi,
    /// Listener TLS (`[tls]`), loaded at construction so a bad file stops
    /// start-up with its name.
    tls: Option<ServerTls>,
    _follow: tokio::task::JoinHandle<()>,
}

impl Gateway {
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
            .unwrap_or_else(|| {
                format!(
                    "gateway-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                )
            })
            .into();
        let balancer = Balancer::with_upstream_tls(
            config.balancer.clone(),
            config.retry.clone(),
            config.timeouts.clone(),
            upstream_tls,
        );
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
        });
        Ok(Self {
            config,
            shared,
            readiness: Readiness::default(),
            api,
            tls,
            _follow: follow,
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
        let mut spawn = |listener: TcpListener, svc: HttpService, tls: Option<TlsAcceptor>| {
            let stop = stop.clone();
            let opts = ServerOptions {
                tls,
                ..opts.clone()
            };
            tasks.spawn(async move { serve(listener, svc, opts, stop.cancelled_owned()).await });
        };
        let sh = &self.shared;
        spawn(
            listeners.public,
            proxy_stack(sh.clone(), Listener::Public),
            tls_on(|t| t.public),
        );
        if let Some(l) = listeners.internal {
            spawn(
                l,
                proxy_stack(sh.clone(), Listener::Internal),
                tls_on(|t| t.internal),
            );
        }
        spawn(
            listeners.registration,
            HttpService::new(registration::router(self.api.clone())),
            tls_on(|t| t.registration),
        );
        let admin = admin::router(
            sh.clone(),
            self.readiness.clone(),
            self.api.clone(),
            proxy_stack(sh.clone(), Listener::Admin),
        );
        spawn(
            listeners.admin,
            HttpService::new(admin),
            tls_on(|t| t.admin),
        );
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
        info!("Gateway stopped.");
    }
}
