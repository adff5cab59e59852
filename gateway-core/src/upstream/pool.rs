//! The gateway's HTTP/2 connections to one instance, and the
//! `tower::Service` tonic's generated client runs over.
//!
//! The connections are h2's client, used directly: one task per connection
//! (h2's `Connection` future and its keepalive PINGs), and a call runs on
//! the caller's task - `poll_ready` and `send_request` on a clone of h2's
//! `SendRequest`, the request body handed to h2 inline while it is ready,
//! the response read from h2's `RecvStream`. Only a request body that is
//! not complete on its first poll (a streaming call) gets a task of its
//! own. (hyper's client adds a dispatch channel to its connection task and
//! one or two tasks per request; tonic's `Channel` a `Buffer` worker.)
//!
//! A pool has `balancer.connections_per_instance` slots, each dialled on
//! first use (an instance that never gets a request costs no connection)
//! and taken in turn. A connection older than its `max_connection_age`
//! (jittered +-10%) has a replacement dialled in the background; it keeps
//! taking calls until the replacement is in place, then takes none, and
//! h2 closes it when its last call is done: nothing in flight fails.
//! A closed connection is dialled again by the next call that finds it.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use h2::client::SendRequest;
use rand::Rng;
use tokio::time::Instant;
use tonic::body::Body;
use tower::BoxError;
use tracing::debug;

use super::body::{self, UpstreamBody};
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
    send: SendRequest<Bytes>,
    /// Set by the connection task when the connection has ended.
    closed: Arc<AtomicBool>,
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
            .filter(|s| s.live.load().as_ref().is_some_and(|c| !c.is_closed()))
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
    fn live(self: &Arc<Self>, i: usize) -> Option<(SendRequest<Bytes>, usize)> {
        let guard = self.slots[i].live.load();
        let conn = guard.as_ref()?;
        if conn.is_closed() {
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
    /// the h2 connection task (with its keepalive PINGs) is spawned.
    async fn connect(&self) -> io::Result<Conn> {
        let s = &self.settings;
        let handshake = async {
            let io = self.connector.connect(&self.target).await?;
            // hyper's HTTP/2 client defaults, which the gateway used before.
            h2::client::Builder::new()
                .initial_window_size(2 * 1024 * 1024)
                .initial_connection_window_size(5 * 1024 * 1024)
                .max_frame_size(16 * 1024)
                .max_header_list_size(16 * 1024)
                .max_send_buffer_size(1024 * 1024)
                .enable_push(false)
                .handshake::<_, Bytes>(io)
                .await
                .map_err(io::Error::other)
        };
        let (send, mut conn) = match tokio::time::timeout(s.connect_timeout, handshake).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("not connected within {:?}", s.connect_timeout),
                ));
            }
        };
        let address = self.target.address.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let ping = conn.ping_pong();
        let (interval, timeout) = (s.keep_alive_interval, s.keep_alive_timeout);
        let ended = closed.clone();
        tokio::spawn(async move {
            let keepalive = keep_alive(ping, interval, timeout);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(address = %address, error = %e, "Upstream connection ended.");
                },
                () = keepalive => {
                    debug!(address = %address, "Upstream connection closed: PING not acknowledged.");
                }
            }
            // Dropping the connection (on a keepalive timeout) fails the
            // streams still on it.
            ended.store(true, Ordering::Release);
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
            closed,
            expires_ns: AtomicU64::new(expires_ns),
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// One call: a connection of the next slot (dialled if need be), the
    /// request on it. A request the connection could not take (it closed or
    /// got `GOAWAY` first) is sent once more on a new connection.
    async fn send(
        self: Arc<Self>,
        req: http::Request<Body>,
    ) -> Result<http::Response<UpstreamBody>, BoxError> {
        let (mut parts, mut req_body) = req.into_parts();
        if parts.uri.scheme().is_none() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.scheme = Some(self.target.scheme.clone());
            uri.authority = Some(self.target.authority.clone());
            parts.uri = http::Uri::from_parts(uri)?;
        }
        body::strip_connection_headers(&mut parts.headers);
        let mut head = Some(http::Request::from_parts(parts, ()));
        let n = self.slots.len();
        let i = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % n
        };
        let mut again = true;
        let (response, mut stream) = loop {
            let (mut send, used) = match self.live(i) {
                Some(s) => s,
                None => {
                    let conn = self.dial(i).await.map_err(|e| self.connect_error(&e))?;
                    (conn.send.clone(), Arc::as_ptr(&conn) as usize)
                }
            };
            let e = match std::future::poll_fn(|cx| send.poll_ready(cx)).await {
                Ok(()) => {
                    // h2 takes the head even when it refuses it: no second
                    // try then.
                    match send.send_request(head.take().expect("the request head"), false) {
                        Ok(sent) => break sent,
                        Err(e) => {
                            again = false;
                            e
                        }
                    }
                }
                Err(e) => e,
            };
            // Never written: that connection is done for new calls.
            self.slots[i].live.rcu(|cur| match cur {
                Some(c) if Arc::as_ptr(c) as usize == used => None,
                other => other.clone(),
            });
            if !again {
                return Err(tonic::Status::from(UpstreamError::NotSent {
                    address: self.target.address.clone(),
                    source: e,
                })
                .into());
            }
            again = false;
        };
        // The request body: what is ready now is handed to h2 here; the
        // rest (a streaming call) is pumped by a task of its own.
        let cancel = match body::send_ready(&mut req_body, &mut stream).await {
            Ok(true) => None,
            Ok(false) => Some(body::spawn_pump(req_body, stream)),
            Err(body::SendError::Body(status)) => {
                stream.send_reset(h2::Reason::CANCEL);
                return Err(status.into());
            }
            // The stream is reset or its connection gone: the response
            // future reports which (`REFUSED_STREAM` included).
            Err(body::SendError::Stream) => None,
        };
        let response = response.await.map_err(|e| self.sent_error(e))?;
        Ok(response.map(|recv| UpstreamBody::new(recv, cancel)))
    }

    fn connect_error(&self, e: &io::Error) -> BoxError {
        tonic::Status::from(UpstreamError::Connect {
            address: self.target.address.clone(),
            source: io::Error::new(e.kind(), e.to_string()),
        })
        .into()
    }

    /// An error of a request that was written: `REFUSED_STREAM` from the
    /// instance is ours to report; the rest goes to tonic as h2's error.
    fn sent_error(&self, e: h2::Error) -> BoxError {
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
/// pool's business, per call), the response body is h2's, as an
/// `http_body::Body`.
#[derive(Clone, Debug)]
pub struct Upstream(Arc<Pool>);

impl tower::Service<http::Request<Body>> for Upstream {
    type Response = http::Response<UpstreamBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.clone().send(req))
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A PING after every `interval`, also while idle; returns when one is not
/// acknowledged within `timeout` (or the connection is gone), which closes
/// the connection.
async fn keep_alive(ping: Option<h2::PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    if interval.is_zero() {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            // The connection is done: its own future reports why.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}
