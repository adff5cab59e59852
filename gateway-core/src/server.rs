//! Serving HTTP on a pre-bound listener until a shutdown future resolves,
//! then draining in-flight requests within a grace period.
//!
//! One function for every listener (public, internal, registration, admin):
//! HTTP/1.1 and h2c on the same port (or, with TLS, HTTP/1.1 and h2 by
//! ALPN, the handshake bounded by its own timeout on the connection's task),
//! and every accepted connection bounded from accept onwards:
//!
//! - at most `max_connections` open (and `max_connections_per_ip` per client
//!   address); one over is answered with a canned 503 and closed at once;
//! - a client that says nothing (no first byte, no h2 preface and SETTINGS)
//!   within `first_byte` is closed;
//! - an HTTP/1.1 head must arrive within `header_read` (hyper's timer);
//! - HTTP/2 peers are pinged and dropped when they stop answering;
//! - a connection with no request in flight for `idle` is closed (HTTP/2
//!   with a GOAWAY);
//! - HTTP/1.1 framing hyper resolves silently is refused with a JSON 400
//!   (see the `conn` module).
//!
//! [`Server::connection`] takes any `AsyncRead + AsyncWrite` stream: on a TLS
//! listener the acceptor wraps the accepted TCP stream first.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};
use tracing::{debug, info, warn};

use crate::conn::{ConnState, InFlight, Watched};
use crate::error::{ErrorKind, ForwardError};
use crate::tls::{ConnectionTls, TlsAcceptor};

/// The TCP peer of the connection a request arrived on; set by the server
/// as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Time a client gets to send a request's headers.
    pub header_read_timeout: Duration,
    /// Hard cap on the header bytes hyper buffers (the JSON 431 is given
    /// below this by the request path; beyond it hyper answers 431 itself).
    pub max_header_bytes: usize,
    /// Hard cap on the number of header fields hyper parses.
    pub max_headers: usize,
    /// Longest wait for in-flight requests after shutdown.
    pub grace: Duration,
    /// Time from accept until the client's first byte (h2c: its preface
    /// and first frame).
    pub first_byte_timeout: Duration,
    /// A connection without a request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 PING interval when the peer is silent.
    pub http2_keep_alive_interval: Duration,
    /// HTTP/2 PING acknowledgement deadline.
    pub http2_keep_alive_timeout: Duration,
    /// Open connections on this listener.
    pub max_connections: usize,
    /// Open connections per client address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// TLS on this listener (handshake with a timeout, then the same
    /// serving code); `None` = plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// Where refused and slow connections are counted, if anywhere.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

/// A client that was asked to close (idle, draining) and has not within
/// this long is dropped: an HTTP/2 peer that never acknowledges the
/// GOAWAY's PING would otherwise hold the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `svc` on `listener` until `shutdown` resolves; then stops
/// accepting and waits up to `opts.grace` for open requests to finish.
pub async fn serve<S>(
    listener: TcpListener,
    svc: S,
    opts: ServerOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let server = Arc::new(Server::new(svc, opts));
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning on accept.
                    warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(permit) = Slots::admit(&server.slots, peer.ip()) else {
            server.refuse(stream, peer);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let s = server.clone();
        // Shared with a WebSocket relay the connection may be upgraded to:
        // the slot is given back when both have ended.
        let slot = ConnectionSlot(Arc::new(permit));
        match server.opts.tls.clone() {
            None => {
                server.tasks.spawn(async move {
                    s.connection(stream, peer, false, slot).await;
                });
            }
            Some(tls) => {
                // The handshake runs on the connection's own task, within
                // its own timeout: a slow client must not hold up accepting.
                server.tasks.spawn(async move {
                    tokio::select! {
                        r = tls.accept(stream) => match r {
                            Ok(stream) => s.connection(stream, peer, true, slot).await,
                            Err(e) => debug!(%peer, error = %e, "TLS handshake failed."),
                        },
                        _ = s.killed.cancelled() => {}
                    }
                });
            }
        }
    }
    drop(listener);
    info!(listener = ?local, open = server.tasks.len(), "Stopped accepting; draining connections.");
    server.draining.cancel();
    server.tasks.close();
    if tokio::time::timeout(server.opts.grace, server.tasks.wait())
        .await
        .is_err()
    {
        warn!(listener = ?local, grace = ?server.opts.grace, "Grace period over; closing remaining connections.");
        server.killed.cancel();
        server.tasks.wait().await;
    }
}

/// One listener's connection handling: limits, timers, the hyper builder.
pub struct Server<S> {
    builder: auto::Builder<TokioExecutor>,
    svc: S,
    opts: ServerOptions,
    slots: Arc<Slots>,
    refused: AtomicU64,
    /// The raw 503 a connection over the limit gets.
    refusal: Bytes,
    draining: CancellationToken,
    killed: CancellationToken,
    tasks: TaskTracker,
}

impl<S> Server<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn new(svc: S, opts: ServerOptions) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            .max_buf_size(opts.max_header_bytes.max(8192))
            .max_headers(opts.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(opts.max_header_bytes.min(u32::MAX as usize) as u32)
            .max_concurrent_streams(1024)
            // A peer that stops answering PINGs is gone: free its connection.
            .keep_alive_interval(opts.http2_keep_alive_interval)
            .keep_alive_timeout(opts.http2_keep_alive_timeout)
            // WebSocket over HTTP/2 (RFC 8441).
            .enable_connect_protocol();
        let refusal = ForwardError::new(
            ErrorKind::TooManyConnections,
            "the gateway has too many open connections; retry later",
        )
        .into_http1_bytes()
        .into();
        let slots = Arc::new(Slots {
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            max: opts.max_connections,
            max_per_ip: opts.max_connections_per_ip,
        });
        Self {
            builder,
            svc,
            opts,
            slots,
            refused: AtomicU64::new(0),
            refusal,
            draining: CancellationToken::new(),
            killed: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Answers a connection over the limit without reading from it: one
    /// non-blocking write of a canned 503 (lost if the socket buffer is
    /// full, which is fine), then close.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(m) = &self.opts.metrics {
            m.connections_refused.inc();
        }
        // A TLS client could not read a plain-text answer: it is just closed.
        if self.opts.tls.is_none() {
            let _ = stream.try_write(&self.refusal);
        }
        // Logged at 1, 2, 4, 8...: a flood is visible without flooding the log.
        if n.is_power_of_two() {
            warn!(%peer, refused_total = n, open = self.slots.open.load(Ordering::Relaxed), "Connection refused: over the connection limit.");
        }
    }

    /// Connections refused so far for being over a limit.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Serves one accepted connection until it ends, times out or the
    /// server stops. `io` is the accepted stream, or a TLS stream around it
    /// (`tls`: requests are marked [`ConnectionTls`]). An HTTP/1.1 upgrade
    /// request carries the connection's [`ConnectionSlot`], which the relay
    /// that takes the connection over keeps.
    pub async fn connection<I>(&self, io: I, peer: SocketAddr, tls: bool, slot: ConnectionSlot)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = ConnState::new();
        let io = Watched::new(io, state.clone(), self.opts.max_header_bytes);
        let svc = self.svc.clone();
        let st = state.clone();
        let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            if tls {
                req.extensions_mut().insert(ConnectionTls);
            }
            let upgrade = asks_upgrade(&req);
            if upgrade == Upgrade::Protocol {
                req.extensions_mut().insert(slot.clone());
            }
            let (refused, guard) = st.begin_request();
            let svc = svc.clone();
            let st2 = st.clone();
            async move {
                let resp = match refused {
                    Some(e) => e.into_response(None),
                    None => svc.oneshot(req).await?,
                };
                let resp = track(resp, upgrade, guard);
                if upgrade == Upgrade::H2Tunnel && resp.status().is_success() {
                    st2.tunnel_opened();
                }
                Ok::<_, Infallible>(resp)
            }
        });
        // With upgrades: WebSocket handshakes hand the connection to a relay.
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), hyper_svc);
        tokio::pin!(conn);
        let timer = tokio::time::sleep_until(state.started() + self.opts.first_byte_timeout);
        tokio::pin!(timer);
        let mut closing: Option<Instant> = None;
        loop {
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        debug!(%peer, error = %e, "Connection ended with an error.");
                    }
                    return;
                }
                _ = self.killed.cancelled() => return,
                _ = self.draining.cancelled(), if closing.is_none() => {
                    conn.as_mut().graceful_shutdown();
                    // Drain: open requests get the server's grace, not CLOSE_GRACE.
                    closing = Some(Instant::now() + self.opts.grace);
                }
                _ = state.became_idle() => {
                    let now = Instant::now();
                    if let Verdict::Wait(until) = self.verdict(&state, closing, now) {
                        timer.as_mut().reset(until);
                    } else {
                        timer.as_mut().reset(now);
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    match self.verdict(&state, closing, now) {
                        Verdict::Wait(until) => timer.as_mut().reset(until),
                        Verdict::Drop(why) => {
                            if why == SLOW_FIRST_BYTE
                                && let Some(m) = &self.opts.metrics
                            {
                                m.slow_connections.inc();
                            }
                            debug!(%peer, why, "Connection closed.");
                            return;
                        }
                        Verdict::Close(why) => {
                            debug!(%peer, why, "Closing connection.");
                            conn.as_mut().graceful_shutdown();
                            closing = Some(now + CLOSE_GRACE);
                            timer.as_mut().reset(now + CLOSE_GRACE);
                        }
                    }
                }
            }
        }
    }

    fn verdict(&self, state: &ConnState, closing: Option<Instant>, now: Instant) -> Verdict {
        if !state.greeted() {
            let deadline = state.started() + self.opts.first_byte_timeout;
            return if now >= deadline {
                Verdict::Drop(SLOW_FIRST_BYTE)
            } else {
                Verdict::Wait(deadline)
            };
        }
        if state.busy() {
            // Checked again when the last request ends (`became_idle`).
            return Verdict::Wait(now + self.opts.idle_timeout);
        }
        if let Some(by) = closing {
            return if now >= by {
                Verdict::Drop("did not close when asked")
            } else {
                Verdict::Wait(by)
            };
        }
        let deadline = state.idle_since() + self.opts.idle_timeout;
        if now >= deadline {
            Verdict::Close("no request within timeouts.idle")
        } else {
            Verdict::Wait(deadline)
        }
    }
}

/// Why a connection that sent nothing in time is dropped (a slow
/// connection, as `gateway_refused_total{reason="slow_connection"}` counts).
const SLOW_FIRST_BYTE: &str = "nothing received within timeouts.first_byte";

enum Verdict {
    Wait(Instant),
    /// Ask the peer to close (h1: close when idle; h2: GOAWAY).
    Close(&'static str),
    /// Drop the connection now.
    Drop(&'static str),
}

/// A connection's place under `max_connections`, shared by the serving
/// task and, after an HTTP/1.1 upgrade, by the WebSocket relay that takes
/// the connection over from hyper: the slot is free again once both ended.
#[derive(Clone)]
pub struct ConnectionSlot(#[allow(dead_code)] Arc<Permit>);

impl std::fmt::Debug for ConnectionSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionSlot")
    }
}

/// The connections a listener has open, overall and per client address.
struct Slots {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
    /// 0 = no per-address limit.
    max_per_ip: usize,
}

impl Slots {
    /// Takes a connection slot for `ip`, if one is free.
    fn admit(this: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        if this.open.fetch_add(1, Ordering::AcqRel) >= this.max {
            this.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let per_ip = this.max_per_ip;
        if per_ip > 0 {
            let mut map = this.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= per_ip {
                drop(map);
                this.open.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            *n += 1;
        }
        Some(Permit {
            slots: this.clone(),
            ip,
        })
    }
}

/// A connection slot; given back when the connection ends.
struct Permit {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let s = &self.slots;
        if s.max_per_ip > 0 {
            let mut map = s.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.ip);
                }
            }
        }
        s.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What an HTTP/1.1 request may switch the connection to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upgrade {
    No,
    /// `Upgrade:` header: switched by a 101.
    Protocol,
    /// `CONNECT`: switched by a 2xx.
    Tunnel,
    /// HTTP/2 extended CONNECT (WebSocket, RFC 8441): one stream becomes a
    /// tunnel inside a connection that goes on.
    H2Tunnel,
}

fn asks_upgrade<B>(req: &Request<B>) -> Upgrade {
    if req.version() == http::Version::HTTP_2 {
        if req.method() == http::Method::CONNECT {
            Upgrade::H2Tunnel
        } else {
            Upgrade::No
        }
    } else if req.version() > http::Version::HTTP_2 {
        Upgrade::No
    } else if req.method() == http::Method::CONNECT {
        Upgrade::Tunnel
    } else if req.headers().contains_key(header::UPGRADE) {
        Upgrade::Protocol
    } else {
        Upgrade::No
    }
}

/// Holds the request's in-flight guard until its response body ends. An
/// HTTP/1.1 upgrade request that is not upgraded gets its connection
/// closed: the framing scanner stops at an upgrade request (the bytes after
/// it may be another protocol), so no unscanned request may follow it.
fn track(mut resp: Response<Body>, upgrade: Upgrade, guard: InFlight) -> Response<TrackedBody> {
    let switched = match upgrade {
        Upgrade::No | Upgrade::H2Tunnel => true,
        Upgrade::Protocol => resp.status() == StatusCode::SWITCHING_PROTOCOLS,
        Upgrade::Tunnel => resp.status().is_success(),
    };
    if !switched {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp.map(|body| TrackedBody {
        body,
        _guard: guard,
    })
}

pin_project_lite::pin_project! {
    /// A response body that counts as a request in flight until it ends.
    pub struct TrackedBody {
        #[pin]
        body: Body,
        _guard: InFlight,
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
