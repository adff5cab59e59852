//! TLS with rustls: listener certificates that are reloaded when their files
//! change, the server-side handshake with a timeout, and the client
//! configuration for backends (TLS and mTLS).
//!
//! The listeners share one `ServerConfig` whose certificate comes from a
//! [`ReloadingCert`] resolver: a reload swaps one `Arc<CertifiedKey>`
//! (`ArcSwap`), so open connections keep the certificate they shook hands
//! with and new ones get the new pair. rustls is used with the `ring`
//! provider only, chosen explicitly so no process-wide default is needed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{TlsConfig, UpstreamTlsConfig};

/// ALPN protocols offered by the listeners: HTTP/2 first, then HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A certificate, key or CA file that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("TLS file {}: {reason}", path.display())]
pub struct TlsError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

fn tls_err(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Marker put into the extensions of every request that arrived over TLS
/// (the `X-Forwarded-Proto` and `scheme` sent to backends say `https`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTls;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| tls_err(path, e))
}

fn certs_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn key_from_pem(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| tls_err(path, format!("no usable private key: {e}")))
}

/// Parses a certificate chain and its key, and checks that they match.
fn certified_key(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let certs = certs_from_pem(cert_path, cert_pem)?;
    let key = key_from_pem(key_path, key_pem)?;
    CertifiedKey::from_der(certs, key, &provider())
        .map_err(|e| tls_err(key_path, format!("does not fit the certificate: {e}")))
}

/// The listeners' certificate: the last pair of files that loaded.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// Contents the current pair was built from: a reload compares contents,
    /// not modification times, which a quick rewrite may leave unchanged.
    loaded: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

impl ReloadingCert {
    /// Loads the pair once; an error here stops start-up.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (c, k) = (read(cert)?, read(key)?);
        let ck = certified_key(cert, &c, key, &k)?;
        Ok(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: ArcSwap::from_pointee(ck),
            loaded: std::sync::Mutex::new((c, k)),
        })
    }

    /// Reads the files again. `Ok(true)` when a new pair is now served,
    /// `Ok(false)` when nothing changed, `Err` when the new files do not
    /// load (the previous pair stays in force).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (c, k) = (read(&self.cert_path)?, read(&self.key_path)?);
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.0 == c && loaded.1 == k {
            return Ok(false);
        }
        let ck = certified_key(&self.cert_path, &c, &self.key_path, &k)?;
        self.current.store(Arc::new(ck));
        *loaded = (c, k);
        Ok(true)
    }

    /// Reloads every `interval` until `stop` is cancelled.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.reload() {
                Ok(true) => {
                    last_error = None;
                    info!(cert = %self.cert_path.display(), "TLS certificate reloaded.");
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    // Log a broken file once, not every interval.
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        error!(error = %msg, "TLS certificate not reloaded; the previous one is still served.");
                        last_error = Some(msg);
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The TLS side of the listeners: a shared server configuration and the
/// handshake timeout.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// An acceptor serving `cert` (TLS 1.2 and 1.3, ALPN `h2`, `http/1.1`).
    pub fn new(cert: Arc<ReloadingCert>, handshake_timeout: Duration) -> Result<Self, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&cert.cert_path, e))?
            .with_no_client_auth()
            .with_cert_resolver(cert);
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            handshake_timeout,
        })
    }

    /// Runs the server handshake on an accepted connection, giving up after
    /// the handshake timeout.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(io)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("TLS handshake not done within {:?}", self.handshake_timeout),
            )),
        }
    }
}

/// Listener TLS built from `[tls]`: the acceptor, and the certificate to
/// reload.
pub struct ServerTls {
    /// Shared by every listener with TLS on.
    pub acceptor: TlsAcceptor,
    /// The certificate the acceptor serves.
    pub cert: Arc<ReloadingCert>,
}

impl ServerTls {
    /// Loads the certificate and key named by `config`.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let cert = Arc::new(ReloadingCert::load(&config.cert, &config.key)?);
        let acceptor = TlsAcceptor::new(cert.clone(), config.handshake_timeout)?;
        Ok(Self { acceptor, cert })
    }
}

/// The certificates of a CA bundle as a root store.
fn roots_from_pem(path: &Path, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(path, pem)? {
        roots
            .add(c)
            .map_err(|e| tls_err(path, format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A client configuration (ring, TLS 1.2 and 1.3, no client certificate)
/// that trusts only the CA bundle at `ca` (a JWK Set's `jwks_ca`).
#[cfg(feature = "jwks")]
pub(crate) fn client_config_trusting(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let roots = roots_from_pem(ca, &read(ca)?)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(ca, e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Client TLS towards backends, built once from `[upstream_tls]`.
#[derive(Clone)]
pub struct UpstreamTls {
    /// For tonic channels (`ForwardingService`, gRPC health checks).
    tonic: tonic::transport::ClientTlsConfig,
    /// The same trust and identity for plain HTTP health checks.
    rustls: Arc<rustls::ClientConfig>,
    /// The same again with ALPN `h2`, for the balancer's own connections
    /// (`ForwardingService`, see `upstream`).
    h2: Arc<rustls::ClientConfig>,
    server_name: Option<String>,
    all: bool,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("all", &self.all)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Reads the CA bundle and the optional client certificate and key.
    pub fn load(config: &UpstreamTlsConfig) -> Result<Self, TlsError> {
        let ca_pem = read(&config.ca)?;
        let roots = roots_from_pem(&config.ca, &ca_pem)?;
        let mut tonic_cfg = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem));
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&config.ca, e))?
            .with_root_certificates(roots);
        let rustls_cfg = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => {
                let (c, k) = (read(cert)?, read(key)?);
                // Checks the pair before tonic meets it at the first call.
                certified_key(cert, &c, key, &k)?;
                tonic_cfg = tonic_cfg.identity(tonic::transport::Identity::from_pem(&c, &k));
                builder
                    .with_client_auth_cert(certs_from_pem(cert, &c)?, key_from_pem(key, &k)?)
                    .map_err(|e| tls_err(key, e))?
            }
            _ => builder.with_no_client_auth(),
        };
        let mut h2 = rustls_cfg.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            tonic: tonic_cfg,
            h2: Arc::new(h2),
            rustls: Arc::new(rustls_cfg),
            server_name: config.server_name.clone(),
            all: config.all,
        })
    }

    /// Whether an instance is dialled over TLS.
    pub fn applies(&self, registration_tls: bool) -> bool {
        self.all || registration_tls
    }

    /// The name a backend certificate is checked against: the
    /// registration's, else the configured one, else the address's host.
    pub fn server_name(&self, registered: Option<&str>, address: &str) -> String {
        registered
            .or(self.server_name.as_deref())
            .map(str::to_owned)
            .unwrap_or_else(|| host_of(address).to_owned())
    }

    /// A rustls client configuration with the same trust and identity (for
    /// HTTP health checks).
    pub fn rustls_config(&self) -> Arc<rustls::ClientConfig> {
        self.rustls.clone()
    }
}

/// The host of `host:port` or `[v6]:port`, without brackets.
fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Why a backend cannot be dialled over TLS.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// The registration asks for TLS but the gateway has no `[upstream_tls]`.
    #[error("the instance registered `tls` but this gateway has no [upstream_tls] configured")]
    NotConfigured,
    /// tonic refused the endpoint (bad address or server name).
    #[error("TLS endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
    /// The address is not `host[:port]`.
    #[error("address {0:?} is not host:port")]
    Address(String),
    /// The name a certificate would be checked against is not a DNS name or
    /// an IP address.
    #[error("TLS server name {0:?} is not a DNS name or an IP address")]
    ServerName(String),
}

/// How the balancer dials an instance: its address, and the TLS client
/// configuration and server name when it is dialled over TLS.
#[derive(Clone)]
pub struct UpstreamTarget {
    /// `host:port`, as registered.
    pub address: Arc<str>,
    /// `http` (h2c) or `https`.
    pub scheme: http::uri::Scheme,
    /// The `:authority` of every call (the address).
    pub authority: http::uri::Authority,
    /// TLS: the client configuration (ALPN `h2`) and the name the
    /// certificate is checked against.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

impl fmt::Debug for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTarget")
            .field("address", &self.address)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .finish()
    }
}

impl UpstreamTarget {
    /// A plain (h2c) target, checked like [`upstream_target`] checks one.
    pub fn plain(address: &str) -> Result<Self, UpstreamTlsError> {
        upstream_target(address, false, None, None)
    }
}

/// What the balancer dials for an instance: h2c, or TLS with the upstream
/// configuration when `[upstream_tls]` applies (as [`backend_endpoint`]
/// decides for tonic). Checked here, so dialling later cannot fail on the
/// address or the server name.
pub fn upstream_target(
    address: &str,
    registration_tls: bool,
    server_name: Option<&str>,
    upstream: Option<&UpstreamTls>,
) -> Result<UpstreamTarget, UpstreamTlsError> {
    let authority: http::uri::Authority = address
        .parse()
        .ok()
        .filter(|a: &http::uri::Authority| a.as_str() == address)
        .ok_or_else(|| UpstreamTlsError::Address(address.to_owned()))?;
    let (scheme, tls) = match upstream {
        Some(u) if u.applies(registration_tls) => {
            let name = u.server_name(server_name, address);
            let server = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|_| UpstreamTlsError::ServerName(name))?;
            (http::uri::Scheme::HTTPS, Some((u.h2.clone(), server)))
        }
        None if registration_tls => return Err(UpstreamTlsError::NotConfigured),
        _ => (http::uri::Scheme::HTTP, None),
    };
    Ok(UpstreamTarget {
        address: address.into(),
        scheme,
        authority,
        tls,
    })
}

/// The tonic endpoint for an instance: `http://address` (h2c), or
/// `https://address` with the upstream TLS configuration when the instance
/// is dialled over TLS.
pub fn backend_endpoint(
    address: &str,
    registration_tls: bool,
    server_name: Option<&str>,
    upstream: Option<&UpstreamTls>,
) -> Result<tonic::transport::Endpoint, UpstreamTlsError> {
    match upstream {
        Some(u) if u.applies(registration_tls) => {
            let cfg = u
                .tonic
                .clone()
                .domain_name(u.server_name(server_name, address));
            Ok(
                tonic::transport::Endpoint::from_shared(format!("https://{address}"))?
                    .tls_config(cfg)?,
            )
        }
        None if registration_tls => Err(UpstreamTlsError::NotConfigured),
        _ => Ok(tonic::transport::Endpoint::from_shared(format!(
            "http://{address}"
        ))?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("svc.local:443"), "svc.local");
    }

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c, k, ck.cert.pem())
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "gw-tls-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn served_leaf(r: &ReloadingCert) -> Vec<u8> {
        r.current.load().cert[0].to_vec()
    }

    #[test]
    fn reload_swaps_a_good_pair_and_keeps_the_old_on_a_bad_one() {
        let dir = temp_dir("reload");
        let (c, k, _) = write_pair(&dir, "one.test");
        let r = ReloadingCert::load(&c, &k).unwrap();
        let first = served_leaf(&r);
        assert!(!r.reload().unwrap(), "unchanged files are not a reload");

        write_pair(&dir, "two.test");
        assert!(r.reload().unwrap());
        let second = served_leaf(&r);
        assert_ne!(first, second);

        // A key that does not fit the certificate: the old pair stays.
        let other = rcgen::generate_simple_self_signed(vec!["x.test".into()]).unwrap();
        std::fs::write(&k, other.signing_key.serialize_pem()).unwrap();
        let e = r.reload().unwrap_err();
        assert!(e.to_string().contains("key.pem"), "{e}");
        assert_eq!(served_leaf(&r), second);

        // Garbage in the certificate file: the same.
        std::fs::write(&c, "not pem").unwrap();
        assert!(r.reload().is_err());
        assert_eq!(served_leaf(&r), second);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn start_up_names_the_bad_file() {
        let dir = temp_dir("bad");
        let (c, _, _) = write_pair(&dir, "one.test");
        let missing = dir.join("missing.pem");
        let e = ReloadingCert::load(&c, &missing).unwrap_err();
        assert_eq!(e.path, missing);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn plain_instances_stay_h2c_and_tls_without_config_is_refused() {
        let e = backend_endpoint("127.0.0.1:1", false, None, None).unwrap();
        assert_eq!(e.uri().scheme_str(), Some("http"));
        assert!(matches!(
            backend_endpoint("127.0.0.1:1", true, None, None),
            Err(UpstreamTlsError::NotConfigured)
        ));
    }

    #[tokio::test]
    async fn upstream_tls_dials_https_when_asked_or_forced() {
        let dir = temp_dir("up");
        let (c, k, _) = write_pair(&dir, "backend.test");
        let mut cfg = UpstreamTlsConfig {
            ca: c.clone(),
            cert: Some(c),
            key: Some(k),
            ..Default::default()
        };
        let u = UpstreamTls::load(&cfg).unwrap();
        let plain = backend_endpoint("127.0.0.1:1", false, None, Some(&u)).unwrap();
        assert_eq!(plain.uri().scheme_str(), Some("http"));
        let tls = backend_endpoint("127.0.0.1:1", true, Some("backend.test"), Some(&u)).unwrap();
        assert_eq!(tls.uri().scheme_str(), Some("https"));
        assert_eq!(u.server_name(None, "[::1]:5"), "::1");
        cfg.all = true;
        cfg.server_name = Some("svc.test".into());
        let u = UpstreamTls::load(&cfg).unwrap();
        let forced = backend_endpoint("127.0.0.1:1", false, None, Some(&u)).unwrap();
        assert_eq!(forced.uri().scheme_str(), Some("https"));
        assert_eq!(u.server_name(None, "127.0.0.1:1"), "svc.test");
        // The balancer's own targets follow the same rules.
        let t = upstream_target("127.0.0.1:1", false, None, Some(&u)).unwrap();
        assert_eq!(t.scheme, http::uri::Scheme::HTTPS);
        assert_eq!(t.tls.as_ref().unwrap().0.alpn_protocols, [b"h2".to_vec()]);
        assert!(
            upstream_target("127.0.0.1:1", false, None, None)
                .unwrap()
                .tls
                .is_none()
        );
        assert!(matches!(
            upstream_target("127.0.0.1:1", true, None, None),
            Err(UpstreamTlsError::NotConfigured)
        ));
        assert!(matches!(
            upstream_target("no host/x", false, None, None),
            Err(UpstreamTlsError::Address(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A TLS server for tests: a self-signed certificate for `name`, and to
/// every connection, once its request head is read, the bytes `answer`.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Its address and the certificate's PEM (the CA bundle to trust).
    pub(crate) async fn start(name: &str, answer: Vec<u8>) -> (SocketAddr, String) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let key =
            rustls_pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer: Arc<[u8]> = answer.into();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&answer).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, ck.cert.pem())
    }
}
