//! The gateway's HTTP/2 connections to one instance, and the
//! `tower::Service` tonic's generated client runs over.
//!
//! tonic's `Channel` puts a tower `Buffer` between the caller and the
//! connection: every call is sent over an mpsc to a worker task, which
//! calls hyper's `SendRequest` (itself a channel to hyper's connection
//! task). Here the caller holds a clone of hyper's `SendRequest` and calls
//! it directly: one hop fewer per call, and no worker task per instance.
//!
//! A pool has `balancer.connections_per_instance` slots, each dialled on
//! first use (an instance that never gets a request costs no connection)
//! and taken in turn. A connection older than its `max_connection_age`
//! (jittered +-10%) has a replacement dialled in the background; it keeps
//! taking calls until the replacement is in place, then takes none, and
//! hyper closes it when its last call is done: nothing in flight fails.
//! A closed connection is dialled again by the next call that finds it.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use tokio::time::Instant;
use tonic::body::Body;
use tower::BoxError;
use tracing::debug;

use super::{Connect, UpstreamError};
use crate::tls::UpstreamTarget;

/// How a pool connects and how long its connections live.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Connections per instance (at least 1).
    pub connections: usize,
    /// Age after which a connection is replaced (jittered +-10%); zero =
    /// never.
    pub max_age: Duration,
    /// The whole connect phase: connector, TLS, HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// HTTP/2 PING after this much silence, also while idle.
    pub keep_alive_interval: Duration,
    /// Close the connection when a PING is not acknowledged within this.
    pub keep_alive_timeout: Duration,
}

impl PoolSettings {
    /// The balancer's settings, with the keepalive the gateway has always
    /// used towards instances (PING every 30 s, also idle; 20 s for the ack).
    pub fn new(connections: usize, max_age: Duration, connect_timeout: Duration) -> Self {
        Self {
            connections: connections.max(1),
            max_age,
            connect_timeout,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

struct Conn {
    send: SendRequest<Body>,
    /// Nanoseconds since the pool's epoch when it stops taking new calls
    /// (`u64::MAX`: never). Pushed back when a replacement cannot be dialled.
    expires_ns: AtomicU64,
}

/// How long an aged connection goes on when its replacement could not be
/// dialled, before the next try.
const RETRY_REPLACEMENT: Duration = Duration::from_secs(1);

/// A dial in progress, awaited by every call that needs its slot.
type Dial = Shared<BoxFuture<'static, Result<Arc<Conn>, Arc<io::Error>>>>;

#[derive(Default)]
struct Slot {
    live: ArcSwapOption<Conn>,
    /// At most one dial per slot: a burst of calls to a cold instance opens
    /// one connection, not one each.
    dialing: Mutex<Option<Dial>>,
}

/// The connections to one instance (see module docs).
pub struct Pool {
    target: UpstreamTarget,
    connector: Arc<dyn Connect>,
    settings: PoolSettings,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    epoch: Instant,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.target)
            .field("settings", &self.settings)
            .field("open", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool with no connection yet.
    pub fn new(
        target: UpstreamTarget,
        connector: Arc<dyn Connect>,
        settings: PoolSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            target,
            connector,
            settings,
            slots: (0..settings.connections.max(1))
                .map(|_| Slot::default())
                .collect(),
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    /// What the pool dials.
    pub fn target(&self) -> &UpstreamTarget {
        &self.target
    }

    /// Connections open now (not closed, aged ones included).
    pub fn open_connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.live.load().as_ref().is_some_and(|c| !c.send.is_closed()))
            .count()
    }

    /// Whether the instance accepts a connection now (the connector alone,
    /// within the connect timeout; the stream is dropped at once).
    pub async fn probe(&self) -> bool {
        matches!(
            tokio::time::timeout(
                self.settings.connect_timeout,
                self.connector.connect(&self.target)
            )
            .await,
            Ok(Ok(_))
        )
    }

    /// The service tonic's client runs over.
    pub fn service(self: &Arc<Self>) -> Upstream {
        Upstream(self.clone())
    }

    /// A live connection of slot `i`, if it has one. An aged one is still
    /// returned, and its replacement dialled in the background.
    fn live(self: &Arc<Self>, i: usize) -> Option<(SendRequest<Body>, usize)> {
        let guard = self.slots[i].live.load();
        let conn = guard.as_ref()?;
        if conn.send.is_closed() {
            return None;
        }
        let expires = conn.expires_ns.load(Ordering::Relaxed);
        if expires != u64::MAX && self.now_ns() >= expires {
            drop(self.dial(i));
        }
        Some((conn.send.clone(), Arc::as_ptr(conn) as usize))
    }

    /// The dial of slot `i` in progress, or a new one. It runs on its own
    /// task: a caller that gives up does not abort it for the others.
    fn dial(self: &Arc<Self>, i: usize) -> Dial {
        let mut dialing = self.slots[i]
            .dialing
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dialing.as_ref() {
            return d.clone();
        }
        let pool = self.clone();
        let task = tokio::spawn(async move {
            let result = pool.connect().await.map(Arc::new).map_err(Arc::new);
            let slot = &pool.slots[i];
            match &result {
                // The connection it replaces (if any) takes no new call and
                // closes when its calls are done.
                Ok(conn) => slot.live.store(Some(conn.clone())),
                // A replacement that cannot be dialled: the aged connection
                // goes on for a while rather than a dial per call.
                Err(_) => {
                    if let Some(old) = slot.live.load().as_ref() {
                        let later = pool
                            .now_ns()
                            .saturating_add(RETRY_REPLACEMENT.as_nanos() as u64);
                        old.expires_ns.fetch_max(later, Ordering::Relaxed);
                    }
                }
            }
            *slot.dialing.lock().unwrap_or_else(|p| p.into_inner()) = None;
            result
        });
        let d: Dial = async move {
            task.await
                .unwrap_or_else(|e| Err(Arc::new(io::Error::other(e))))
        }
        .boxed()
        .shared();
        *dialing = Some(d.clone());
        d
    }

    /// Connector, then the HTTP/2 handshake, within the connect timeout;
    /// hyper's connection task is spawned.
    async fn connect(&self) -> io::Result<Conn> {
        let s = &self.settings;
        let handshake = async {
            let io = self.connector.connect(&self.target).await?;
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(s.keep_alive_interval)
                .keep_alive_timeout(s.keep_alive_timeout)
                .keep_alive_while_idle(true)
                .handshake::<_, Body>(TokioIo::new(io))
                .await
                .map_err(io::Error::other)
        };
        let (send, conn) = match tokio::time::timeout(s.connect_timeout, handshake).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not connected within {:?}", s.connect_timeout),
                ));
            }
        };
        let address = self.target.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(address = %address, error = %e, "Upstream connection ended.");
            }
        });
        let expires_ns = if s.max_age.is_zero() {
            u64::MAX
        } else {
            let jitter = rand::rng().random_range(0.9..=1.1);
            self.now_ns()
                .saturating_add(s.max_age.mul_f64(jitter).as_nanos() as u64)
        };
        Ok(Conn {
            send,
            expires_ns: AtomicU64::new(expires_ns),
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// One call: a connection of the next slot (dialled if need be), the
    /// request on it. A request the connection hands back unsent (it closed
    /// or got `GOAWAY` first) is sent once more on a new connection.
    async fn send(
        self: Arc<Self>,
        mut req: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
        if req.uri().scheme().is_none() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(self.target.scheme.clone());
            parts.authority = Some(self.target.authority.clone());
            *req.uri_mut() = http::Uri::from_parts(parts)?;
        }
        let n = self.slots.len();
        let i = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        let mut again = true;
        loop {
            let (mut send, used) = match self.live(i) {
                Some(s) => s,
                None => {
                    let conn = self.dial(i).await.map_err(|e| self.connect_error(&e))?;
                    (conn.send.clone(), Arc::as_ptr(&conn) as usize)
                }
            };
            let sent = send.try_send_request(req);
            drop(send);
            let mut e = match sent.await {
                Ok(resp) => return Ok(resp),
                Err(e) => e,
            };
            let Some(unsent) = e.take_message() else {
                return Err(self.sent_error(e.into_error()));
            };
            // Never written: that connection is done for new calls.
            self.slots[i].live.rcu(|cur| match cur {
                Some(c) if Arc::as_ptr(c) as usize == used => None,
                other => other.clone(),
            });
            if !again {
                return Err(tonic::Status::from(UpstreamError::NotSent {
                    address: self.target.address.clone(),
                    source: e.into_error(),
                })
                .into());
            }
            again = false;
            req = unsent;
        }
    }

    fn connect_error(&self, e: &io::Error) -> BoxError {
        tonic::Status::from(UpstreamError::Connect {
            address: self.target.address.clone(),
            source: io::Error::new(e.kind(), e.to_string()),
        })
        .into()
    }

    /// An error of a request that was written: `REFUSED_STREAM` from the
    /// instance is ours to report; the rest goes to tonic as hyper's error
    /// (h2 reasons in its source chain).
    fn sent_error(&self, e: hyper::Error) -> BoxError {
        let refused = super::h2_error(&e).is_some_and(|h| {
            h.reason() == Some(h2::Reason::REFUSED_STREAM) && h.is_reset() && h.is_remote()
        });
        if refused {
            return tonic::Status::from(UpstreamError::Refused {
                address: self.target.address.clone(),
            })
            .into();
        }
        e.into()
    }
}

/// `tower::Service` over a [`Pool`], for `tonic::client::Grpc` and the
/// generated `ForwardingServiceClient`: always ready (readiness is the
/// pool's business, per call), the response body is hyper's own.
#[derive(Clone, Debug)]
pub struct Upstream(Arc<Pool>);

impl tower::Service<http::Request<Body>> for Upstream {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.clone().send(req))
    }
}
