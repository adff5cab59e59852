//! A JWK Set fetched over HTTP: at start (retried with backoff until it
//! loads), every `jwks_refresh`, and on demand when a token names an
//! unknown `kid` (at most once per [`REFETCH_EVERY`], so forged `kid`s
//! cannot make the gateway hammer the key server). Until the first set
//! arrives, tokens get 503 `auth_unavailable`: the client's token may be
//! fine, so a 401 would make it throw a good token away.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::jwt::{Family, Key, Keys};

/// Least time between two fetches asked for by unknown `kid`s (the
/// scheduled ones do not count, so a rotation right after start-up is
/// still picked up at once).
pub(crate) const REFETCH_EVERY: Duration = Duration::from_secs(10);

/// One provider's key source.
pub(crate) struct Jwks {
    name: Box<str>,
    url: Box<str>,
    refresh: Duration,
    client: reqwest::Client,
    keys: Arc<ArcSwap<Keys>>,
    /// The last on-demand fetch; held while one runs, so concurrent
    /// requests with a new `kid` share it.
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    pub(crate) fn new(name: &str, url: &str, refresh: Duration, keys: Arc<ArcSwap<Keys>>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            name: name.into(),
            url: url.into(),
            refresh,
            client,
            keys,
            last: tokio::sync::Mutex::new(None),
        }
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

    async fn get(&self) -> Result<JwkSet, reqwest::Error> {
        self.client
            .get(&*self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }
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
