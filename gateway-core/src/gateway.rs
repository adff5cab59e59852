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
use crate::config::{ConfigError, GatewayConfig};
use crate::forward::{Listener, Shared};
use crate::proxy::{HttpService, proxy_stack};
use crate::registration::{self, RegistrationApi};
use crate::registry::memory::MemoryRegistry;
use crate::registry::{RegistrationPolicy, Registry};
use crate::server::{ServerOptions, serve};

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

/// A gateway ready to serve.
pub struct Gateway {
    config: GatewayConfig,
    shared: Arc<Shared>,
    readiness: Readiness,
    api: RegistrationApi,
    _follow: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// A gateway over the embedded in-memory registry (the single-machine
    /// default).
    pub fn with_memory_registry(config: GatewayConfig) -> Result<Self, ConfigError> {
        Self::new(config, Arc::new(MemoryRegistry::new()))
    }

    /// A gateway over any registry. Validates the configuration.
    pub fn new(config: GatewayConfig, registry: Arc<dyn Registry>) -> Result<Self, ConfigError> {
        config.validate()?;
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
        let balancer = Balancer::new(
            config.balancer.clone(),
            config.retry.clone(),
            config.timeouts.clone(),
        );
        let follow = balancer.follow(registry.as_ref());
        let api = RegistrationApi::new(
            registry.clone(),
            RegistrationPolicy::from_config(&config),
            config.registration.token.clone(),
        )
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
            _follow: follow,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
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
        };
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut spawn = |listener: TcpListener, svc: HttpService| {
            let stop = stop.clone();
            let opts = opts.clone();
            tasks.spawn(async move { serve(listener, svc, opts, stop.cancelled_owned()).await });
        };
        let sh = &self.shared;
        spawn(listeners.public, proxy_stack(sh.clone(), Listener::Public));
        if let Some(l) = listeners.internal {
            spawn(l, proxy_stack(sh.clone(), Listener::Internal));
        }
        spawn(
            listeners.registration,
            HttpService::new(registration::router(self.api.clone())),
        );
        let admin = admin::router(
            sh.clone(),
            self.readiness.clone(),
            self.api.clone(),
            proxy_stack(sh.clone(), Listener::Admin),
        );
        spawn(listeners.admin, HttpService::new(admin));
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
