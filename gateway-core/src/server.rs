//! Serving HTTP on a pre-bound listener until a shutdown future resolves,
//! then draining in-flight requests within a grace period.
//!
//! One function for every listener (public, internal, registration, admin):
//! HTTP/1.1 and h2c on the same port (or, with TLS, HTTP/1.1 and h2 by
//! ALPN), header limits and a header read timeout against slow clients, the
//! peer address put into each request.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt};
use tracing::{debug, info, warn};

use crate::forward::PeerAddr;
use crate::tls::{ConnectionTls, TlsAcceptor};

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
    /// TLS on this listener (handshake with a timeout, then the same
    /// serving code); `None` = plain HTTP.
    pub tls: Option<TlsAcceptor>,
}

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
        // WebSocket over HTTP/2 (RFC 8441).
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
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
        let _ = stream.set_nodelay(true);
        let svc = svc.clone();
        let watcher = graceful.watcher();
        match &opts.tls {
            None => {
                tokio::spawn(connection(&builder, stream, peer, false, svc, watcher));
            }
            Some(tls) => {
                // The handshake runs on the connection's own task: a slow
                // client must not hold up the accept loop. (Its watcher
                // holds the graceful shutdown for at most the handshake
                // timeout.)
                let tls = tls.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
                    match tls.accept(stream).await {
                        Ok(stream) => connection(&builder, stream, peer, true, svc, watcher).await,
                        Err(e) => debug!(%peer, error = %e, "TLS handshake failed."),
                    }
                });
            }
        }
    }
    drop(listener);
    info!(listener = ?local, "Stopped accepting; draining connections.");
    if tokio::time::timeout(opts.grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(listener = ?local, grace = ?opts.grace, "Grace period over; closing remaining connections.");
    }
}

/// Serving one connection (plain TCP or TLS), watched by the graceful
/// shutdown; the caller runs it on the connection's task.
fn connection<IO, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: IO,
    peer: std::net::SocketAddr,
    tls: bool,
    svc: S,
    watcher: hyper_util::server::graceful::Watcher,
) -> impl Future<Output = ()> + Send + 'static
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        if tls {
            req.extensions_mut().insert(ConnectionTls);
        }
        svc.clone().oneshot(req)
    });
    // With upgrades: WebSocket handshakes hand the connection to a relay.
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), hyper_svc);
    let conn = watcher.watch(conn.into_owned());
    async move {
        if let Err(e) = conn.await {
            debug!(%peer, error = %e, "Connection ended with an error.");
        }
    }
}
