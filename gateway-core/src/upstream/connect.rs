//! How the pool gets a byte stream to an instance: [`Connect`], with TCP
//! (and TLS when the target says so) as the default and anything else -
//! an in-memory pipe to an in-process server - for tests or embedders.

use std::future::Future;
use std::io;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::tls::UpstreamTarget;

/// A byte stream to an instance.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection as a connector hands it over.
pub type BoxIo = Box<dyn Io>;

/// Opens byte streams to instances. Called once per connection (not per
/// request), so the boxed future costs nothing that matters. Any
/// `Fn(&UpstreamTarget) -> impl Future<Output = io::Result<BoxIo>>` is one.
///
/// The pool bounds the whole connect phase (this plus the HTTP/2
/// handshake) with `timeouts.connect`, and reports any error of it as
/// [`super::UpstreamError::Connect`]: the request was never sent.
pub trait Connect: Send + Sync + 'static {
    /// A stream to `target`, after TLS when `target.tls` says so.
    fn connect(&self, target: &UpstreamTarget) -> BoxFuture<'static, io::Result<BoxIo>>;
}

impl<F, Fut> Connect for F
where
    F: Fn(&UpstreamTarget) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<BoxIo>> + Send + 'static,
{
    fn connect(&self, target: &UpstreamTarget) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(self(target))
    }
}

/// TCP (`TCP_NODELAY`), then TLS with ALPN `h2` when the target is dialled
/// over TLS (`[upstream_tls]` and the registration's `tls`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connect for TcpConnector {
    fn connect(&self, target: &UpstreamTarget) -> BoxFuture<'static, io::Result<BoxIo>> {
        let target = target.clone();
        Box::pin(async move {
            let host = target.authority.host();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = target
                .authority
                .port_u16()
                .unwrap_or(if target.tls.is_some() { 443 } else { 80 });
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let Some((config, name)) = target.tls else {
                return Ok(Box::new(tcp) as BoxIo);
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            if let Some(p) = tls.get_ref().1.alpn_protocol()
                && p != b"h2"
            {
                return Err(io::Error::other(format!(
                    "the instance negotiated {:?}, not h2",
                    String::from_utf8_lossy(p)
                )));
            }
            Ok(Box::new(tls) as BoxIo)
        })
    }
}
