//! The embedded registry: registrations in memory, active health checks run
//! by the gateway itself, leases that expire when an instance stops renewing.
//! The default when no Consul is configured; one gateway, one machine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info};

use super::{
    Catalog, CheckKind, Health, InstanceView, RegisterOutcome, Registration, Registry,
    RegistryError, RegistryStatus,
};
use crate::health::Checker;
use crate::tls::UpstreamTls;

type Key = (String, String);

struct Entry {
    reg: Arc<Registration>,
    health: Health,
    detail: Arc<str>,
    lease_deadline: Instant,
    failing_since: Option<Instant>,
    checker: Option<AbortHandle>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<Key, Entry>,
    version: u64,
}

struct Inner {
    state: Mutex<State>,
    tx: watch::Sender<Arc<Catalog>>,
    cancel: CancellationToken,
    /// For health checks of instances dialled over TLS.
    upstream_tls: Option<UpstreamTls>,
}

/// In-memory registry with its own health checks. Cheap to clone; background
/// tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct MemoryRegistry {
    inner: Arc<Inner>,
    _guard: Arc<DropGuard>,
}

impl MemoryRegistry {
    /// A new empty registry. Must be called inside a Tokio runtime: it
    /// spawns the lease sweeper.
    pub fn new() -> Self {
        Self::with_upstream_tls(None)
    }

    /// A new empty registry whose health checks reach instances over TLS
    /// as `upstream_tls` (the gateway's `[upstream_tls]`) says.
    pub fn with_upstream_tls(upstream_tls: Option<UpstreamTls>) -> Self {
        let (tx, _) = watch::channel(Arc::new(Catalog::default()));
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            tx,
            cancel: cancel.clone(),
            upstream_tls,
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                inner.sweep(Instant::now());
            }
        });
        Self {
            _guard: Arc::new(inner.cancel.clone().drop_guard()),
            inner,
        }
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert/remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, state: &mut State) {
        state.version += 1;
        let instances = state
            .entries
            .values()
            .map(|e| InstanceView {
                registration: e.reg.clone(),
                health: e.health,
                detail: e.detail.clone(),
                lease_deadline: Some(e.lease_deadline),
            })
            .collect();
        self.tx.send_replace(Arc::new(Catalog {
            instances,
            version: state.version,
        }));
    }

    fn sweep(&self, now: Instant) {
        let mut st = self.lock();
        let before = st.entries.len();
        st.entries.retain(|(svc, id), e| {
            let expired = e.lease_deadline <= now;
            let critical_too_long = match (e.failing_since, e.reg.health.deregister_critical_after) {
                (Some(since), Some(after)) => now.duration_since(since) >= after,
                _ => false,
            };
            if expired || critical_too_long {
                info!(service = %svc, instance = %id, expired, critical_too_long, "Instance removed.");
                if let Some(c) = &e.checker {
                    c.abort();
                }
            }
            !(expired || critical_too_long)
        });
        if st.entries.len() != before {
            self.publish(&mut st);
        }
    }

    /// Records a check result if the registration is still the one checked.
    fn record(&self, key: &Key, reg: &Arc<Registration>, result: Result<String, String>) {
        let mut st = self.lock();
        let Some(e) = st.entries.get_mut(key).filter(|e| Arc::ptr_eq(&e.reg, reg)) else {
            return;
        };
        let (health, detail) = match result {
            Ok(d) => (Health::Passing, d),
            Err(d) => (Health::Failing, d),
        };
        let changed = e.health != health;
        if changed {
            info!(service = %key.0, instance = %key.1, ?health, detail = %detail, "Instance health changed.");
            e.failing_since = (health == Health::Failing).then(Instant::now);
        }
        if changed || *e.detail != *detail {
            e.detail = detail.into();
        }
        e.health = health;
        if changed {
            self.publish(&mut st);
        }
    }
}

fn spawn_checker(inner: &Arc<Inner>, key: Key, reg: Arc<Registration>) -> Option<AbortHandle> {
    let mut checker = Checker::new(&reg, inner.upstream_tls.as_ref())?;
    let weak = Arc::downgrade(inner);
    let cancel = inner.cancel.clone();
    let task = tokio::spawn(async move {
        loop {
            let result = checker.check().await;
            let Some(inner) = weak.upgrade() else { return };
            inner.record(&key, &reg, result);
            drop(inner);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(reg.health.interval) => {}
            }
        }
    });
    Some(task.abort_handle())
}

impl Registry for MemoryRegistry {
    fn register(&self, reg: Registration) -> BoxFuture<'_, Result<RegisterOutcome, RegistryError>> {
        let inner = &self.inner;
        let key = (reg.service.clone(), reg.instance_id.clone());
        let lease = reg.lease;
        let now = Instant::now();
        let mut st = inner.lock();
        let created = match st.entries.get_mut(&key) {
            // Registering the same thing again only renews it: health and
            // connections stay as they are.
            Some(e) if *e.reg == reg => {
                e.lease_deadline = now + lease;
                false
            }
            existing => {
                let created = existing.is_none();
                if let Some(c) = existing.and_then(|e| e.checker.take()) {
                    c.abort();
                }
                let reg = Arc::new(reg);
                let ttl = reg.health.kind == CheckKind::Ttl;
                let checker = spawn_checker(inner, key.clone(), reg.clone());
                debug!(service = %key.0, instance = %key.1, created, "Instance registered.");
                st.entries.insert(
                    key.clone(),
                    Entry {
                        reg,
                        health: if ttl {
                            Health::Passing
                        } else {
                            Health::Unknown
                        },
                        detail: if ttl {
                            "ttl: renewed".into()
                        } else {
                            "not checked yet".into()
                        },
                        lease_deadline: now + lease,
                        failing_since: None,
                        checker,
                    },
                );
                inner.publish(&mut st);
                created
            }
        };
        let out = RegisterOutcome {
            instance_id: key.1,
            lease,
            created,
        };
        async move { Ok(out) }.boxed()
    }

    fn deregister<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        let mut st = self.inner.lock();
        let removed = st
            .entries
            .remove(&(service.to_owned(), instance_id.to_owned()));
        if let Some(c) = removed.as_ref().and_then(|e| e.checker.as_ref()) {
            c.abort();
        }
        let existed = removed.is_some();
        if existed {
            self.inner.publish(&mut st);
        }
        async move { Ok(existed) }.boxed()
    }

    fn renew<'a>(
        &'a self,
        service: &'a str,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<Duration, RegistryError>> {
        let mut st = self.inner.lock();
        let result = match st
            .entries
            .get_mut(&(service.to_owned(), instance_id.to_owned()))
        {
            Some(e) => {
                e.lease_deadline = Instant::now() + e.reg.lease;
                Ok(e.reg.lease)
            }
            None => Err(RegistryError::NotFound {
                service: service.to_owned(),
                instance_id: instance_id.to_owned(),
            }),
        };
        async move { result }.boxed()
    }

    fn watch(&self) -> watch::Receiver<Arc<Catalog>> {
        self.inner.tx.subscribe()
    }

    fn service_unreachable(&self, service: &str) {
        // The memory registry is its own source of truth: its health checks
        // already run; nothing to re-read, and nothing is deleted.
        debug!(
            service,
            "All instances unreachable; health checks will decide."
        );
    }

    fn status(&self) -> RegistryStatus {
        RegistryStatus {
            kind: "memory",
            connected: true,
            last_error: None,
            sync: None,
            watch: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{HealthCheck, RouteSpec, Visibility};

    fn reg(id: &str, kind: CheckKind, lease: Duration) -> Registration {
        Registration {
            service: "svc".into(),
            instance_id: id.into(),
            address: "127.0.0.1:1".into(),
            routes: vec![RouteSpec {
                path_prefix: "/svc".into(),
                hosts: vec![],
                timeout: None,
                stream: false,
                max_duration: None,
                strip_prefix: false,
            }],
            visibility: Visibility::Public,
            tags: vec![],
            metadata: Default::default(),
            weight: 100,
            health: HealthCheck {
                kind,
                interval: Duration::from_millis(50),
                timeout: Duration::from_millis(40),
                deregister_critical_after: None,
            },
            lease,
            streaming: false,
            tls: false,
            tls_server_name: None,
        }
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<Catalog>>,
        f: impl Fn(&Catalog) -> bool,
    ) -> Arc<Catalog> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let c = rx.borrow_and_update().clone();
                if f(&c) {
                    return c;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .expect("catalog condition not reached")
    }

    #[tokio::test]
    async fn registering_twice_never_duplicates() {
        let r = MemoryRegistry::new();
        let a = r
            .register(reg("a", CheckKind::Ttl, Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(a.created);
        let v = r.watch().borrow().version;
        let b = r
            .register(reg("a", CheckKind::Ttl, Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(!b.created);
        assert_eq!(
            r.watch().borrow().version,
            v,
            "identical re-registration is not a change"
        );
        assert_eq!(r.watch().borrow().instances.len(), 1);
        assert!(r.deregister("svc", "a").await.unwrap());
        assert!(!r.deregister("svc", "a").await.unwrap());
        assert!(r.watch().borrow().instances.is_empty());
    }

    #[tokio::test]
    async fn unreachable_instances_fail_their_grpc_check() {
        let r = MemoryRegistry::new();
        r.register(reg(
            "a",
            CheckKind::Grpc {
                service: String::new(),
            },
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
        let mut rx = r.watch();
        let c = wait_for(&mut rx, |c| {
            c.instances
                .first()
                .is_some_and(|i| i.health == Health::Failing)
        })
        .await;
        assert!(!c.instances[0].health.routable());
    }

    #[tokio::test]
    async fn grpc_health_decides_and_recovery_brings_instances_back() {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let r = MemoryRegistry::new();
        let mut reg = reg(
            "a",
            CheckKind::Grpc {
                service: String::new(),
            },
            Duration::from_secs(30),
        );
        reg.address = addr.to_string();
        r.register(reg).await.unwrap();
        let mut rx = r.watch();
        let state = |c: &Catalog| c.instances.first().map(|i| i.health);
        wait_for(&mut rx, |c| state(c) == Some(Health::Passing)).await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        wait_for(&mut rx, |c| state(c) == Some(Health::Failing)).await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        wait_for(&mut rx, |c| state(c) == Some(Health::Passing)).await;
    }

    #[tokio::test]
    async fn leases_expire_and_renewals_keep_them() {
        let r = MemoryRegistry::new();
        r.register(reg("a", CheckKind::Ttl, Duration::from_millis(300)))
            .await
            .unwrap();
        r.register(reg("b", CheckKind::Ttl, Duration::from_millis(300)))
            .await
            .unwrap();
        let mut rx = r.watch();
        let renewer = {
            let r = r.clone();
            tokio::spawn(async move {
                loop {
                    r.renew("svc", "b").await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let c = wait_for(&mut rx, |c| c.instances.len() == 1).await;
        assert_eq!(c.instances[0].registration.instance_id, "b");
        renewer.abort();
        assert!(matches!(
            r.renew("svc", "a").await,
            Err(RegistryError::NotFound { .. })
        ));
    }
}
