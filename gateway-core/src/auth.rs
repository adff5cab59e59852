//! Authentication: the operator's `[[auth]]` policies, checked right after
//! routing (a policy is chosen by the matched route, `policy::Scope`)
//! and before the rate limit (so a limit can key on a verified claim).
//!
//! A policy names a provider from `[auth_providers]`:
//! - `kind = "jwt"` (`jwt`): a bearer token (the `Authorization` header,
//!   or a cookie) verified in the gateway - signature against a static key
//!   or a JWK Set, `exp`/`nbf` with a leeway, `iss`, `aud` - then the
//!   policy's `scopes` and `claims`, and chosen claims copied into request
//!   headers for the backend.
//! - `kind = "forward"` (`forward_auth`): a registered service is sent the
//!   request head over the same `ForwardingService.Send` path every unary
//!   request takes; a 2xx lets the request through (copying the headers it
//!   names), any other answer is the client's answer.
//!
//! Headers the gateway sets from a credential are removed from the client's
//! request first, on every request a provider covers, so a client cannot
//! forge `x-auth-subject`.
//!
//! Decisions that let a request through are cached per credential
//! (`cache`: a keyed hash of the token, never the token), never past the
//! token's `exp`, so a repeated token costs a hash and a map lookup rather
//! than a signature check.
//!
//! Refusals: 401 `unauthorized` with an RFC 6750 `WWW-Authenticate`
//! (`error="invalid_token"` and a description naming the reason: missing,
//! malformed, expired, bad signature, wrong issuer or audience - never key
//! material), 403 `forbidden` (`error="insufficient_scope"`), 503
//! `auth_unavailable` when the keys are not loaded yet or a forward-auth
//! service cannot answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use http::{HeaderMap, HeaderName, HeaderValue, Response, header};
use prometheus_client::metrics::counter::Counter;

use crate::config::{AuthAccess, AuthProvider, ConfigError, GatewayConfig};
use crate::error::{ErrorKind, ForwardError};
use crate::forward::Target;
use crate::policy::Scope;
use crate::shared::Shared;

pub(crate) mod cache;
pub(crate) mod forward_auth;
#[cfg(feature = "jwks")]
mod jwks;
pub(crate) mod jwt;
#[cfg(test)]
mod tests;

/// A token's verified claims.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// What a credential that was let through yields (cached per credential).
#[derive(Debug)]
pub struct Verified {
    /// A JWT's claims; `None` for forward-auth.
    pub claims: Option<Claims>,
    /// Headers set on the forwarded request.
    headers: Box<[(HeaderName, HeaderValue)]>,
}

/// What [`Auth::check`] decided.
pub(crate) enum Outcome {
    /// Forward the request; the verified credential, if one was checked.
    Allow(Option<Arc<Verified>>),
    /// Answer the client with this (a forward-auth service's refusal).
    Respond(Response<Body>),
}

/// One `[[auth]]` entry.
struct Policy {
    scope: Scope,
    access: AuthAccess,
    provider: Option<usize>,
    scopes: Box<[Box<str>]>,
    claims: Box<[(Box<str>, serde_json::Value)]>,
}

enum Kind {
    Jwt(jwt::Jwt),
    Forward(forward_auth::ForwardAuth),
}

/// `gateway_auth_decisions_total{provider,result}`, one handle per result.
struct Decisions {
    allowed: Counter,
    unauthorized: Counter,
    forbidden: Counter,
    denied: Counter,
    unavailable: Counter,
}

struct Provider {
    /// Its name in `[auth_providers]`.
    name: Box<str>,
    kind: Kind,
    /// Headers the gateway sets from this provider's answer: removed from
    /// every client request it covers.
    strip: Box<[HeaderName]>,
    decisions: Decisions,
}

/// Every configured policy and provider (see module docs).
pub struct Auth {
    /// Longest prefix first.
    policies: Box<[Policy]>,
    providers: Box<[Provider]>,
    /// Every provider's headers: stripped on a covered route that checks
    /// no credential (`access = "public"` without a provider), so a
    /// backend that trusts `x-auth-subject` never sees a forged one.
    strip_all: Box<[HeaderName]>,
    cache: Option<cache::DecisionCache>,
}

impl Auth {
    /// The policies of a validated config; `None` when there are none (the
    /// request path then takes one branch). Reads secrets and key files;
    /// starts the JWK Set fetches when called inside a tokio runtime.
    pub fn new(
        config: &GatewayConfig,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Option<Self>, ConfigError> {
        if config.auth.is_empty() {
            return Ok(None);
        }
        let names: Vec<&String> = config.auth_providers.keys().collect();
        let mut providers = Vec::with_capacity(names.len());
        for (name, p) in &config.auth_providers {
            let (kind, strip): (Kind, Vec<HeaderName>) = match p {
                AuthProvider::Jwt(j) => {
                    let jwt = jwt::Jwt::new(name, j)?;
                    let strip = jwt.header_names().collect();
                    (Kind::Jwt(jwt), strip)
                }
                AuthProvider::Forward(f) => {
                    let fa = forward_auth::ForwardAuth::new(f);
                    let strip = fa.copy_headers().to_vec();
                    (Kind::Forward(fa), strip)
                }
            };
            // One `get_or_create` per statement: its guard must be gone
            // before the next one (two at once deadlock).
            let allowed = metrics.auth_decision(name, "allowed");
            let unauthorized = metrics.auth_decision(name, "unauthorized");
            let forbidden = metrics.auth_decision(name, "forbidden");
            let denied = metrics.auth_decision(name, "denied");
            let unavailable = metrics.auth_decision(name, "unavailable");
            providers.push(Provider {
                name: name.as_str().into(),
                kind,
                strip: strip.into(),
                decisions: Decisions {
                    allowed,
                    unauthorized,
                    forbidden,
                    denied,
                    unavailable,
                },
            });
        }
        let mut policies: Vec<Policy> = config
            .auth
            .iter()
            .map(|p| Policy {
                scope: Scope::new(&p.service, p.prefix.as_deref()),
                access: p.access,
                provider: p
                    .provider
                    .as_ref()
                    .and_then(|n| names.iter().position(|m| *m == n)),
                scopes: p.scopes.iter().map(|s| s.as_str().into()).collect(),
                claims: p
                    .claims
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.clone()))
                    .collect(),
            })
            .collect();
        policies.sort_by_key(|p| p.scope.specificity());
        let mut strip_all: Vec<HeaderName> = providers
            .iter()
            .flat_map(|p| p.strip.iter().cloned())
            .collect();
        strip_all.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        strip_all.dedup();
        let c = &config.auth_cache;
        let cache = (!c.ttl.is_zero() && c.max_entries > 0)
            .then(|| cache::DecisionCache::new(c.max_entries, c.ttl));
        Ok(Some(Self {
            policies: policies.into(),
            providers: providers.into(),
            strip_all: strip_all.into(),
            cache,
        }))
    }

    /// Starts fetching the JWK Sets (retried until they load, then
    /// refreshed); a no-op outside a tokio runtime, where tokens of a
    /// `jwks_url` provider then get 503 `auth_unavailable`.
    pub fn start(&self) {
        for p in self.providers.iter() {
            if let Kind::Jwt(j) = &p.kind {
                j.start();
            }
        }
    }

    /// The policy covering the request, if any.
    fn policy_for(&self, target: &Target, parts: &http::request::Parts) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.scope.covers(&target.service, &target.prefix, parts))
    }

    /// `/admin/explain`: the policy covering a request, `null` if none.
    pub(crate) fn explain(
        &self,
        target: &Target,
        parts: &http::request::Parts,
    ) -> serde_json::Value {
        self.policy_for(target, parts)
            .map_or(serde_json::Value::Null, |p| {
                serde_json::json!({
                    "service": &*p.scope.service,
                    "prefix": &*p.scope.prefix,
                    "access": p.access,
                    "provider": p.provider.map(|i| &*self.providers[i].name),
                    "scopes": &*p.scopes,
                    "claims": p.claims.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<serde_json::Map<_, _>>(),
                })
            })
    }

    /// Step 2a: the route's `[[auth]]` policy, if one covers it. Strips the
    /// client's copies of the provider's headers, checks the credential
    /// (cached per credential) and sets the headers it yields.
    pub(crate) async fn check(
        &self,
        shared: &Shared,
        parts: &mut http::request::Parts,
        target: &Target,
    ) -> Result<Outcome, ForwardError> {
        let Some(policy) = self.policy_for(target, parts) else {
            return Ok(Outcome::Allow(None));
        };
        let Some(pid) = policy.provider else {
            for h in self.strip_all.iter() {
                parts.headers.remove(h);
            }
            return Ok(Outcome::Allow(None));
        };
        let provider = &self.providers[pid];
        for h in provider.strip.iter() {
            parts.headers.remove(h);
        }
        let d = &provider.decisions;
        let verified = match &provider.kind {
            Kind::Jwt(jwt) => match self.jwt(pid, jwt, policy, parts).await {
                Ok(Some(v)) => v,
                Ok(None) => return Ok(Outcome::Allow(None)),
                Err(e) => {
                    count_refusal(d, &e);
                    return Err(e);
                }
            },
            Kind::Forward(fa) => match self.forward_auth(pid, shared, fa, parts).await {
                Ok(Ok(v)) => v,
                Ok(Err(resp)) => {
                    d.denied.inc();
                    return Ok(Outcome::Respond(resp));
                }
                Err(e) => {
                    count_refusal(d, &e);
                    return Err(e);
                }
            },
        };
        if let Err(e) = policy.permits(verified.claims.as_ref()) {
            d.forbidden.inc();
            return Err(e);
        }
        d.allowed.inc();
        for (name, value) in verified.headers.iter() {
            parts.headers.append(name.clone(), value.clone());
        }
        Ok(Outcome::Allow(Some(verified)))
    }

    /// A JWT provider's verdict: `Ok(None)` for a public route sent no token.
    async fn jwt(
        &self,
        pid: usize,
        jwt: &jwt::Jwt,
        policy: &Policy,
        parts: &http::request::Parts,
    ) -> Result<Option<Arc<Verified>>, ForwardError> {
        let token = match jwt.token(&parts.headers) {
            Ok(t) => t,
            Err(jwt::Reject::Missing) if policy.access == AuthAccess::Public => return Ok(None),
            Err(r) => return Err(r.into_error()),
        };
        let key = self
            .cache
            .as_ref()
            .map(|_| cache_key(&[&pid.to_le_bytes(), token.as_bytes()]));
        if let (Some(c), Some(k)) = (&self.cache, &key)
            && let Some(v) = c.get(k)
        {
            return Ok(Some(v));
        }
        let claims = match jwt.verify(token) {
            Err(jwt::Reject::UnknownKey) => {
                // A key rotation: fetch the set again (rate-limited) and retry once.
                if Box::pin(jwt.refetch()).await {
                    jwt.verify(token)
                } else {
                    Err(jwt::Reject::UnknownKey)
                }
            }
            r => r,
        }
        .map_err(jwt::Reject::into_error)?;
        let ttl = ttl_until_exp(&claims);
        let verified = Arc::new(Verified {
            headers: jwt.headers_of(&claims),
            claims: Some(claims),
        });
        if let (Some(c), Some(k), Some(ttl)) = (&self.cache, key, ttl) {
            c.insert(k, verified.clone(), ttl);
        }
        Ok(Some(verified))
    }

    /// A forward-auth provider's verdict: `Ok(Err(answer))` is its refusal.
    async fn forward_auth(
        &self,
        pid: usize,
        shared: &Shared,
        fa: &forward_auth::ForwardAuth,
        parts: &http::request::Parts,
    ) -> Result<Result<Arc<Verified>, Response<Body>>, ForwardError> {
        // Per credential *and* request: the service may decide by path.
        let credential = [header::AUTHORIZATION, header::COOKIE]
            .iter()
            .any(|h| parts.headers.contains_key(h));
        let key = match (&self.cache, credential) {
            (Some(_), true) => Some(forward_auth::cache_key(pid, parts)),
            _ => None,
        };
        if let (Some(c), Some(k)) = (&self.cache, &key)
            && let Some(v) = c.get(k)
        {
            return Ok(Ok(v));
        }
        let answer = Box::pin(fa.ask(shared, parts)).await?;
        let verified = match answer {
            Ok(headers) => Arc::new(Verified {
                claims: None,
                headers,
            }),
            Err(resp) => return Ok(Err(resp)),
        };
        if let (Some(c), Some(k)) = (&self.cache, key) {
            c.insert(k, verified.clone(), c.ttl());
        }
        Ok(Ok(verified))
    }
}

fn count_refusal(d: &Decisions, e: &ForwardError) {
    match e.kind {
        ErrorKind::Unauthorized => d.unauthorized.inc(),
        ErrorKind::Forbidden => d.forbidden.inc(),
        _ => d.unavailable.inc(),
    };
}

impl Policy {
    /// The policy's `scopes` and `claims` against verified claims.
    fn permits(&self, claims: Option<&Claims>) -> Result<(), ForwardError> {
        if self.scopes.is_empty() && self.claims.is_empty() {
            return Ok(());
        }
        let Some(claims) = claims else {
            return Err(forbidden("the credential carries no claims"));
        };
        for s in self.scopes.iter() {
            if !has_scope(claims, s) {
                return Err(forbidden(&format!("missing scope {s}")));
            }
        }
        for (name, want) in self.claims.iter() {
            let ok = match claims.get(&**name) {
                Some(serde_json::Value::Array(items)) => items.contains(want),
                Some(v) => v == want,
                None => false,
            };
            if !ok {
                return Err(forbidden(&format!(
                    "claim {name} does not have the required value"
                )));
            }
        }
        Ok(())
    }
}

/// Whether `scope` is in the space-separated `scope` claim or the `scp`
/// claim (an array, or a space-separated string).
pub(crate) fn has_scope(claims: &Claims, scope: &str) -> bool {
    let in_str = |v: &serde_json::Value| {
        v.as_str()
            .is_some_and(|s| s.split_ascii_whitespace().any(|x| x == scope))
    };
    claims.get("scope").is_some_and(in_str)
        || match claims.get("scp") {
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(scope)),
            Some(v) => in_str(v),
            None => false,
        }
}

/// How long a decision on this token may be remembered: until its `exp`.
/// `None` = not at all (expired within the leeway, or no `exp`).
fn ttl_until_exp(claims: &Claims) -> Option<Duration> {
    let exp = claims.get("exp")?.as_f64()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    (exp > now).then(|| Duration::from_secs_f64(exp - now))
}

/// The cache key of a credential: 128 bits of keyed SipHash-1-3 (two
/// `RandomState`s made once per process) over its parts, each
/// length-prefixed so two splits of one string differ. Keyed with secret
/// random keys, so nobody can craft a token that collides with a cached
/// one; a SHA-256 here was 13.7k instructions per request, half the cost
/// of a cached JWT check (BENCHMARKS.md).
pub(crate) fn cache_key(parts: &[&[u8]]) -> CacheKey {
    use std::hash::{BuildHasher, Hasher};
    static KEYS: std::sync::OnceLock<[std::hash::RandomState; 2]> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| [std::hash::RandomState::new(), std::hash::RandomState::new()]);
    let half = |k: &std::hash::RandomState| {
        let mut h = k.build_hasher();
        for p in parts {
            h.write_usize(p.len());
            h.write(p);
        }
        h.finish().to_le_bytes()
    };
    let (a, b) = (half(&keys[0]), half(&keys[1]));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a);
    out[8..].copy_from_slice(&b);
    out
}

/// See [`cache_key`].
pub(crate) type CacheKey = [u8; 16];

/// Only what RFC 6750's `error_description` allows (printable ASCII but
/// `"` and `\`).
fn description(s: &str) -> String {
    s.chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .collect()
}

fn www_authenticate(value: String) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(1);
    if let Ok(v) = HeaderValue::try_from(value) {
        h.insert(header::WWW_AUTHENTICATE, v);
    }
    h
}

/// 401 for a request without a credential: RFC 6750 3.1 says no error code.
pub(crate) fn missing() -> ForwardError {
    ForwardError::new(ErrorKind::Unauthorized, "missing bearer token")
        .with_headers(www_authenticate("Bearer realm=\"gateway\"".to_owned()))
}

/// 401 `invalid_token`, the reason in the description and the message.
pub(crate) fn unauthorized(reason: &'static str) -> ForwardError {
    ForwardError::new(ErrorKind::Unauthorized, reason).with_headers(www_authenticate(format!(
        "Bearer realm=\"gateway\", error=\"invalid_token\", error_description=\"{}\"",
        description(reason)
    )))
}

/// 403 `insufficient_scope`.
pub(crate) fn forbidden(reason: &str) -> ForwardError {
    let reason = description(reason);
    ForwardError::new(ErrorKind::Forbidden, reason.clone()).with_headers(www_authenticate(format!(
        "Bearer realm=\"gateway\", error=\"insufficient_scope\", error_description=\"{reason}\""
    )))
}

/// 503 `auth_unavailable`.
pub(crate) fn unavailable(reason: impl Into<std::borrow::Cow<'static, str>>) -> ForwardError {
    ForwardError::new(ErrorKind::AuthUnavailable, reason)
}
