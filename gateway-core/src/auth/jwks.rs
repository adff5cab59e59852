//! A JWK Set fetched over HTTPS or HTTP: at start (retried with backoff until it
//! loads), every `jwks_refresh`, and on demand when a token names an
//! unknown `kid` (at most once per [`REFETCH_EVERY`], so forged `kid`s
//! cannot make the gateway hammer the key server). Until the first set
//! arrives, tokens get 503 `auth_unavailable`: the client's token may be
//! fine, so a 401 would make it throw a good token away.
//!
//! The client is hyper's over `hyper-rustls` (ring, TLS 1.2 and 1.3),
//! trusting the system's roots or only `jwks_ca`; a set is at most
//! [`MAX_SET_BYTES`] and a fetch at most [`FETCH_TIMEOUT`].

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::jwt::{Family, Key, Keys};
use crate::config::ConfigError;

/// Least time between two fetches asked for by unknown `kid`s (the
/// scheduled ones do not count, so a rotation right after start-up is
/// still picked up at once).
pub(crate) const REFETCH_EVERY: Duration = Duration::from_secs(10);

/// Largest JWK Set accepted (a set holds a few keys of a few KB).
pub(crate) const MAX_SET_BYTES: usize = 1 << 20;

/// Longest one fetch (connect, TLS, answer and body) may take.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Empty<bytes::Bytes>,
>;

/// One provider's key source.
pub(crate) struct Jwks {
    name: Box<str>,
    url: http::Uri,
    refresh: Duration,
    client: Client,
    keys: Arc<ArcSwap<Keys>>,
    /// The last on-demand fetch; held while one runs, so concurrent
    /// requests with a new `kid` share it.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// A source for a validated `jwks_url`; reads `ca` (else the system's
    /// trust store) for an `https://` one.
    pub(crate) fn new(
        name: &str,
        url: &str,
        ca: Option<&Path>,
        refresh: Duration,
        keys: Arc<ArcSwap<Keys>>,
    ) -> Result<Self, ConfigError> {
        let err = |setting, reason: String| ConfigError {
            setting,
            reason: format!("{name}: {reason}"),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e| err("auth_providers.jwks_url", format!("{url:?}: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match ca {
            Some(path) => {
                let tls = crate::tls::client_config_trusting(path)
                    .map_err(|e| err("auth_providers.jwks_ca", e.to_string()))?;
                builder.with_tls_config(tls)
            }
            // Plain http needs no roots (and a machine may have none).
            None if uri.scheme() != Some(&http::uri::Scheme::HTTPS) => builder.with_tls_config(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| err("auth_providers.jwks_url", e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
            None => builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| {
                    err(
                        "auth_providers.jwks_url",
                        format!(
                            "no usable system trust store for https ({e}); install the CA \
                         certificates or name a bundle in jwks_ca"
                        ),
                    )
                })?,
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(Self {
            name: name.into(),
            url: uri,
            refresh,
            client,
            keys,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// Starts the fetch loop (inside a runtime; else nothing). The task
    /// holds a weak reference and ends with the gateway.
    pub(crate) fn spawn(self: Arc<Self>) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(&self);
        drop(self);
        rt.spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let Some(this) = weak.upgrade() else { break };
                let ok = this.fetch().await;
                let wait = if ok {
                    backoff = Duration::from_millis(250);
                    this.refresh
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    backoff
                };
                drop(this);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// A fetch now, unless one ran within [`REFETCH_EVERY`]; whether it ran
    /// and loaded.
    pub(crate) async fn refetch(&self) -> bool {
        let mut last = self.last.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFETCH_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        self.load().await
    }

    async fn fetch(&self) -> bool {
        self.load().await
    }

    /// GET the set and swap it in; keeps the old set on any failure.
    async fn load(&self) -> bool {
        let set = match self.get().await {
            Ok(set) => set,
            Err(e) => {
                warn!(provider = %self.name, url = %self.url, error = %e, "JWK Set could not be fetched; keeping the keys held.");
                return false;
            }
        };
        let keys: Vec<Key> = set.keys.iter().filter_map(key_of).collect();
        if keys.is_empty() {
            warn!(provider = %self.name, url = %self.url, "JWK Set holds no usable key; keeping the keys held.");
            return false;
        }
        debug!(provider = %self.name, keys = keys.len(), "JWK Set loaded.");
        self.keys.store(Arc::new(Keys { loaded: true, keys }));
        true
    }

    /// One GET of the set: a 2xx answer, at most [`MAX_SET_BYTES`], within
    /// [`FETCH_TIMEOUT`].
    async fn get(&self) -> Result<JwkSet, String> {
        let req = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "forwarding-gateway-jwks")
            .body(http_body_util::Empty::new())
            .map_err(|e| e.to_string())?;
        let fetch = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("answered {status}"));
            }
            let body = http_body_util::Limited::new(resp.into_body(), MAX_SET_BYTES);
            let bytes = http_body_util::BodyExt::collect(body)
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            serde_json::from_slice::<JwkSet>(&bytes).map_err(|e| format!("not a JWK Set: {e}"))
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
    }
}

/// An error and its sources on one line (hyper's client error alone says
/// only "client error (Connect)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A verification key from a JWK; `None` for encryption keys and kinds
/// `jsonwebtoken` cannot use.
fn key_of(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Key> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return None;
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
        AlgorithmParameters::OctetKey(_) => Family::Hmac,
    };
    let alg = jwk.common.key_algorithm.and_then(|a| {
        Some(match a {
            KeyAlgorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            KeyAlgorithm::HS384 => jsonwebtoken::Algorithm::HS384,
            KeyAlgorithm::HS512 => jsonwebtoken::Algorithm::HS512,
            KeyAlgorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            KeyAlgorithm::ES384 => jsonwebtoken::Algorithm::ES384,
            KeyAlgorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            KeyAlgorithm::RS384 => jsonwebtoken::Algorithm::RS384,
            KeyAlgorithm::RS512 => jsonwebtoken::Algorithm::RS512,
            KeyAlgorithm::PS256 => jsonwebtoken::Algorithm::PS256,
            KeyAlgorithm::PS384 => jsonwebtoken::Algorithm::PS384,
            KeyAlgorithm::PS512 => jsonwebtoken::Algorithm::PS512,
            KeyAlgorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            _ => return None,
        })
    });
    Some(Key {
        kid: jwk.common.key_id.clone(),
        family,
        alg,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0LW9mLWVub3VnaC1sZW5ndGg","kid":"k1","alg":"HS256"}]}"#;

    /// A key server over TLS with a self-signed certificate for
    /// `localhost`; its address and the certificate's PEM.
    async fn tls_key_server() -> (std::net::SocketAddr, String) {
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{SET}",
            SET.len()
        );
        crate::tls::test_server::start("localhost", answer.into_bytes()).await
    }

    fn empty_keys() -> Arc<ArcSwap<Keys>> {
        Arc::new(ArcSwap::from_pointee(Keys {
            loaded: false,
            keys: vec![],
        }))
    }

    /// An `https://` set is fetched, trusting only `jwks_ca`; without it
    /// the system's roots do not trust a self-signed key server.
    #[tokio::test]
    async fn a_key_set_over_https_is_loaded_with_its_ca() {
        let (addr, pem) = tls_key_server().await;
        let dir = std::env::temp_dir().join(format!(
            "gw-jwks-tls-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, pem).unwrap();
        let url = format!("https://localhost:{}/jwks.json", addr.port());

        let keys = empty_keys();
        let jwks = Jwks::new("p", &url, Some(&ca), Duration::from_secs(60), keys.clone()).unwrap();
        assert!(jwks.load().await, "the set loads over TLS");
        let held = keys.load();
        assert!(held.loaded);
        assert_eq!(held.keys.len(), 1);
        assert_eq!(held.keys[0].kid.as_deref(), Some("k1"));

        // The system's trust store (if the machine has one) does not
        // know the self-signed certificate: nothing is loaded.
        let keys = empty_keys();
        match Jwks::new("p", &url, None, Duration::from_secs(60), keys.clone()) {
            Ok(untrusting) => {
                assert!(!untrusting.load().await);
                assert!(!keys.load().loaded);
                let e = untrusting.get().await.unwrap_err();
                assert!(
                    e.contains("certificate") || e.contains("Certificate"),
                    "{e}"
                );
            }
            Err(e) => assert_eq!(e.setting, "auth_providers.jwks_url"),
        }

        // A CA file that is not PEM is refused at start-up, naming it.
        let bad = dir.join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let e = Jwks::new("p", &url, Some(&bad), Duration::from_secs(60), empty_keys())
            .err()
            .unwrap();
        assert_eq!(e.setting, "auth_providers.jwks_ca");
        assert!(e.reason.starts_with("p: "), "{}", e.reason);
        let _ = std::fs::remove_dir_all(dir);
    }
}
