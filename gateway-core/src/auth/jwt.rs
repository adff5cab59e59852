//! A `kind = "jwt"` provider: where the token is read, which keys verify
//! it and the checks (`jsonwebtoken`, over ring).

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{Claims, missing, unauthorized, unavailable};
use crate::config::{AuthProviderJwt, ConfigError};
use crate::error::ForwardError;

/// Why a token was refused (the client is told which; never key material).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    Missing,
    Malformed,
    Expired,
    NotYetValid,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    Algorithm,
    /// The token names a `kid` the key set does not hold.
    UnknownKey,
    MissingClaim,
    /// The JWK Set has not loaded yet.
    KeysUnavailable,
}

impl Reject {
    /// The answer: 401 with the reason, or 503 while keys are missing.
    pub(crate) fn into_error(self) -> ForwardError {
        match self {
            Reject::Missing => missing(),
            Reject::Malformed => unauthorized("malformed token"),
            Reject::Expired => unauthorized("token expired"),
            Reject::NotYetValid => unauthorized("token not yet valid"),
            Reject::BadSignature => unauthorized("bad signature"),
            Reject::WrongIssuer => unauthorized("wrong issuer"),
            Reject::WrongAudience => unauthorized("wrong audience"),
            Reject::Algorithm => unauthorized("algorithm not allowed"),
            Reject::UnknownKey => unauthorized("unknown signing key"),
            Reject::MissingClaim => unauthorized("a required claim is missing"),
            Reject::KeysUnavailable => {
                unavailable("the token's signing keys are not loaded yet; try again shortly")
            }
        }
    }
}

/// Which algorithms a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Family {
    fn of(alg: Algorithm) -> Self {
        use Algorithm::*;
        match alg {
            HS256 | HS384 | HS512 => Family::Hmac,
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
            ES256 | ES384 => Family::Ec,
            EdDSA => Family::Ed,
        }
    }
}

/// One verification key.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) family: Family,
    /// The JWK's `alg`, when it names one.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

/// The keys a provider verifies with; `loaded` is false until a JWK Set
/// arrived.
#[derive(Default)]
pub(crate) struct Keys {
    pub(crate) loaded: bool,
    pub(crate) keys: Vec<Key>,
}

/// A JWT provider (see module docs).
pub(crate) struct Jwt {
    keys: Arc<ArcSwap<Keys>>,
    #[cfg(feature = "jwks")]
    jwks: Option<Arc<super::jwks::Jwks>>,
    /// One prepared check per accepted algorithm.
    validations: Box<[(Algorithm, Validation)]>,
    cookie: Option<Box<str>>,
    claims_to_headers: Box<[(Box<str>, HeaderName)]>,
}

const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl Jwt {
    /// A provider of a validated config: reads `secret_env` / `public_key`.
    pub(crate) fn new(name: &str, c: &AuthProviderJwt) -> Result<Self, ConfigError> {
        let err = |setting, reason: String| ConfigError {
            setting,
            reason: format!("{name}: {reason}"),
        };
        let mut keys = Keys::default();
        if let Some(var) = &c.secret_env {
            let secret = std::env::var(var)
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    err(
                        "auth_providers.secret_env",
                        format!("environment variable {var} is not set"),
                    )
                })?;
            keys = Keys {
                loaded: true,
                keys: vec![Key {
                    kid: None,
                    family: Family::Hmac,
                    alg: None,
                    key: DecodingKey::from_secret(secret.as_bytes()),
                }],
            };
        }
        if let Some(path) = &c.public_key {
            let pem = std::fs::read(path).map_err(|e| {
                err(
                    "auth_providers.public_key",
                    format!("{}: {e}", path.display()),
                )
            })?;
            let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (Family::Rsa, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (Family::Ec, k)
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                (Family::Ed, k)
            } else {
                return Err(err(
                    "auth_providers.public_key",
                    format!(
                        "{} is not an RSA, EC or Ed25519 public key in PEM",
                        path.display()
                    ),
                ));
            };
            keys = Keys {
                loaded: true,
                keys: vec![Key {
                    kid: None,
                    family,
                    alg: None,
                    key,
                }],
            };
        }
        let allowed: Vec<Algorithm> = if c.algorithms.is_empty() {
            ALL.to_vec()
        } else {
            c.algorithms.iter().filter_map(|a| a.parse().ok()).collect()
        };
        let validations = allowed
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = c.leeway.as_secs();
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &c.issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                if c.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&c.audiences);
                    required.push("aud");
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        let keys = Arc::new(ArcSwap::from_pointee(keys));
        Ok(Self {
            #[cfg(feature = "jwks")]
            jwks: c
                .jwks_url
                .as_ref()
                .map(|url| {
                    super::jwks::Jwks::new(
                        name,
                        url,
                        c.jwks_ca.as_deref(),
                        c.jwks_refresh,
                        keys.clone(),
                    )
                    .map(Arc::new)
                })
                .transpose()?,
            keys,
            validations,
            cookie: c.cookie.as_deref().map(Into::into),
            claims_to_headers: c
                .claims_to_headers
                .iter()
                .filter_map(|(claim, h)| {
                    Some((
                        claim.as_str().into(),
                        HeaderName::try_from(h.as_str()).ok()?,
                    ))
                })
                .collect(),
        })
    }

    /// A provider over fixed keys (tests).
    #[cfg(test)]
    pub(crate) fn with_keys(c: &AuthProviderJwt, keys: Keys) -> Self {
        let j = Self::new("test", c).expect("valid provider");
        j.keys.store(Arc::new(keys));
        j
    }

    /// Starts the JWK Set fetch loop, if the keys come from a URL.
    pub(crate) fn start(&self) {
        #[cfg(feature = "jwks")]
        if let Some(j) = &self.jwks {
            j.clone().spawn();
        }
    }

    /// Fetches the JWK Set again now, unless that was done very recently;
    /// whether it was.
    pub(crate) async fn refetch(&self) -> bool {
        #[cfg(feature = "jwks")]
        if let Some(j) = &self.jwks {
            return j.refetch().await;
        }
        false
    }

    /// The headers this provider sets.
    pub(crate) fn header_names(&self) -> impl Iterator<Item = HeaderName> + '_ {
        self.claims_to_headers.iter().map(|(_, h)| h.clone())
    }

    /// The token: `Authorization: Bearer`, else the cookie.
    pub(crate) fn token<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, Reject> {
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            let v = v.to_str().map_err(|_| Reject::Malformed)?;
            if let Some((scheme, token)) = v.split_once(' ')
                && scheme.eq_ignore_ascii_case("bearer")
            {
                let token = token.trim();
                return if token.is_empty() {
                    Err(Reject::Malformed)
                } else {
                    Ok(token)
                };
            }
        }
        if let Some(name) = &self.cookie {
            for v in headers.get_all(header::COOKIE) {
                let Ok(v) = v.to_str() else { continue };
                for pair in v.split(';') {
                    if let Some((n, value)) = pair.trim().split_once('=')
                        && n == &**name
                        && !value.is_empty()
                    {
                        return Ok(value.trim_matches('"'));
                    }
                }
            }
        }
        Err(Reject::Missing)
    }

    /// Verifies a token: its `alg` accepted, a key for it, the signature,
    /// `exp`/`nbf` within the leeway, `iss` and `aud` when configured.
    pub(crate) fn verify(&self, token: &str) -> Result<Claims, Reject> {
        let head = jsonwebtoken::decode_header(token).map_err(|_| Reject::Malformed)?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == head.alg) else {
            return Err(Reject::Algorithm);
        };
        let keys = self.keys.load();
        if !keys.loaded {
            return Err(Reject::KeysUnavailable);
        }
        let family = Family::of(head.alg);
        let fits = |k: &&Key| k.family == family && k.alg.is_none_or(|a| a == head.alg);
        let key = match &head.kid {
            Some(kid) => keys
                .keys
                .iter()
                .filter(fits)
                .find(|k| k.kid.as_deref() == Some(kid))
                // A static key has no id: it verifies whatever the token names.
                .or_else(|| keys.keys.iter().filter(fits).find(|k| k.kid.is_none())),
            None => keys.keys.iter().find(fits),
        };
        let Some(key) = key else {
            return Err(if head.kid.is_some() {
                Reject::UnknownKey
            } else {
                Reject::Algorithm
            });
        };
        jsonwebtoken::decode::<Claims>(token, &key.key, validation)
            .map(|d| d.claims)
            .map_err(|e| classify(e.kind()))
    }

    /// `claims_to_headers`: string claims as they are, arrays joined by
    /// spaces (a `scp` array reads like a `scope` string), other values as
    /// JSON. A claim the token lacks sets nothing.
    pub(crate) fn headers_of(&self, claims: &Claims) -> Box<[(HeaderName, HeaderValue)]> {
        self.claims_to_headers
            .iter()
            .filter_map(|(claim, h)| {
                let text = claim_text(claims.get(&**claim)?);
                Some((h.clone(), HeaderValue::try_from(text).ok()?))
            })
            .collect()
    }
}

/// A claim's value as header text.
pub(crate) fn claim_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => {
            items.iter().map(claim_text).collect::<Vec<_>>().join(" ")
        }
        other => other.to_string(),
    }
}

fn classify(kind: &jsonwebtoken::errors::ErrorKind) -> Reject {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => Reject::Expired,
        K::ImmatureSignature => Reject::NotYetValid,
        K::InvalidSignature => Reject::BadSignature,
        K::InvalidIssuer => Reject::WrongIssuer,
        K::InvalidAudience => Reject::WrongAudience,
        K::InvalidAlgorithm | K::InvalidAlgorithmName => Reject::Algorithm,
        K::MissingRequiredClaim(_) => Reject::MissingClaim,
        // A key that cannot verify (a malformed JWK) is the signature's
        // failure as far as the client can tell.
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat | K::RsaFailedSigning => {
            Reject::BadSignature
        }
        _ => Reject::Malformed,
    }
}
