//! Rate limits: the operator's `[[rate_limits]]` policies, a token bucket
//! (GCRA, `governor`'s keyed limiter) per policy and key, checked right
//! after routing because a policy is chosen by the matched route.
//!
//! The answers carry the `RateLimit-Policy` and `RateLimit` fields of
//! draft-ietf-httpapi-ratelimit-headers-09 (structured fields, a named
//! policy): `RateLimit-Policy: "orders-0";q=10;w=1` and
//! `RateLimit: "orders-0";r=3;t=1`. A refusal is a 429 `rate_limited` with
//! `Retry-After`.
//!
//! Cost: a route of a service with no policy pays one failed scan of a
//! short slice; a limited route hashes a `Copy` key (the client address
//! or a 64-bit hash of the header's value: no allocation) into governor's
//! sharded map. The map forgets idle keys in [`RateLimits::housekeep`].
//!
//! A policy with `scope = "cluster"` is counted in Redis instead
//! ([`cluster`]): one fixed window per key shared by every replica. When
//! Redis cannot answer within `rate_limit_store.timeout` the request goes
//! through (fail open: an outage of the limiter's store must not take the
//! API down), with a warning when the store goes away and
//! `gateway_rate_limit_store_errors_total` counting every such request.

use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use ipnet::IpNet;

use crate::config::{RateLimitKey, RateLimitPolicy, RateLimitScope};
use crate::error::{ErrorKind, ForwardError};
use crate::policy::Scope;

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-09).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers-09).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Whose requests share a bucket. `Copy` and small: a lookup allocates
/// nothing (the map allocates only when it first sees a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BucketKey {
    Route,
    Addr(IpAddr),
    /// A header value, hashed with a per-process random key so a client
    /// cannot aim a collision at another's bucket.
    Hashed(u64),
}

#[cfg(feature = "redis")]
pub mod cluster;

type Keyed = RateLimiter<
    BucketKey,
    DefaultKeyedStateStore<BucketKey>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// One policy's buckets.
pub(crate) struct Limiter {
    /// Its service and canonical route prefix ("/" = every route).
    scope: Scope,
    key: RateLimitKey,
    header: Option<HeaderName>,
    /// With `key = "claim"`: the claim's name.
    claim: Option<Box<str>>,
    /// Local buckets; `None` for a cluster policy.
    buckets: Option<Keyed>,
    /// A cluster policy's window and allowance.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    rate: u32,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    per: Duration,
    clock: DefaultClock,
    hasher: std::collections::hash_map::RandomState,
    burst: u32,
    /// Time for one token to come back.
    period: Duration,
    /// `"name";q=..;w=..`, built once (a clone is a reference count).
    policy: HeaderValue,
    /// The policy's name in `RateLimit`, quoted.
    name: Box<str>,
}

/// Every configured policy (see module docs).
pub struct RateLimits {
    /// Longest prefix first, so the first match is the most specific.
    limiters: Box<[Limiter]>,
    #[cfg(feature = "redis")]
    cluster: Option<cluster::Cluster>,
}

/// A request let through: what its response tells the client.
pub(crate) struct Admitted<'a> {
    limiter: &'a Limiter,
    remaining: u32,
    /// Seconds until the bucket is full (local) or the window ends.
    reset: u64,
}

/// What [`RateLimits::check`] decided without waiting.
pub(crate) enum Verdict<'a> {
    /// No policy covers the route.
    Unlimited,
    /// A local policy let the request through.
    Admitted(Admitted<'a>),
    /// A cluster policy: ask Redis ([`RateLimits::check_cluster`]).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Cluster(&'a Limiter, Vec<u8>),
}

impl RateLimits {
    /// The limiters of validated policies; `None` when there are none (the
    /// request path then takes one branch).
    ///
    /// `store` and `store_errors` serve the cluster policies (validation
    /// guarantees a store when there is one).
    pub fn new(
        policies: &[RateLimitPolicy],
        store: Option<&crate::config::RateLimitStoreConfig>,
        store_errors: prometheus_client::metrics::counter::Counter,
    ) -> Result<Option<Self>, crate::config::ConfigError> {
        if policies.is_empty() {
            return Ok(None);
        }
        let mut limiters: Vec<Limiter> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| Limiter::new(i, p))
            .collect();
        limiters.sort_by_key(|l| l.scope.specificity());
        #[cfg(feature = "redis")]
        let cluster = match store {
            Some(store) if limiters.iter().any(|l| l.buckets.is_none()) => {
                Some(cluster::Cluster::new(store, store_errors)?)
            }
            _ => None,
        };
        #[cfg(not(feature = "redis"))]
        let _ = (store, store_errors);
        Ok(Some(Self {
            limiters: limiters.into(),
            #[cfg(feature = "redis")]
            cluster,
        }))
    }

    /// The policy covering a request routed to `service` at `route_prefix`
    /// (the longest prefix), if any.
    fn limiter_for(
        &self,
        service: &str,
        route_prefix: &str,
        parts: &http::request::Parts,
    ) -> Option<&Limiter> {
        self.limiters
            .iter()
            .find(|l| l.scope.covers(service, route_prefix, parts))
    }

    /// `/admin/explain`: the policy covering a request, `null` if none.
    pub(crate) fn explain(
        &self,
        service: &str,
        route_prefix: &str,
        parts: &http::request::Parts,
    ) -> serde_json::Value {
        self.limiter_for(service, route_prefix, parts)
            .map_or(serde_json::Value::Null, |l| {
                serde_json::json!({
                    "service": &*l.scope.service,
                    "prefix": &*l.scope.prefix,
                    "name": l.name.trim_matches('"'),
                    "store": if l.buckets.is_some() { "local" } else { "cluster" },
                    "key": l.key,
                    "header": l.header.as_ref().map(|h| h.as_str()),
                    "claim": l.claim.as_deref(),
                    "burst": l.burst,
                    "token_every_ms": l.period.as_millis() as u64,
                })
            })
    }

    /// Takes a token for a request routed to `service` at `route_prefix`,
    /// or refuses it with a 429 that carries `Retry-After` and the
    /// `RateLimit` fields. `Ok(None)`: no policy covers the route.
    pub(crate) fn check(
        &self,
        service: &str,
        route_prefix: &str,
        parts: &http::request::Parts,
        peer: Option<IpAddr>,
        trusted_proxies: &[IpNet],
        claims: Option<&crate::auth::Claims>,
    ) -> Result<Verdict<'_>, ForwardError> {
        let Some(limiter) = self.limiter_for(service, route_prefix, parts) else {
            return Ok(Verdict::Unlimited);
        };
        let key = limiter.key_of(parts, peer, trusted_proxies, claims);
        let Some(buckets) = &limiter.buckets else {
            return Ok(Verdict::Cluster(
                limiter,
                limiter.cluster_key(key, parts, claims),
            ));
        };
        match buckets.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                // Full again once every spent token is back.
                let spent = limiter.burst.saturating_sub(remaining);
                Ok(Verdict::Admitted(Admitted {
                    limiter,
                    remaining,
                    reset: ceil_secs(limiter.period * spent),
                }))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock.now());
                Err(limiter.refusal(service, wait))
            }
        }
    }

    /// The Redis half of [`Self::check`] for a cluster policy: `Ok(None)`
    /// when the store could not answer (fail open).
    #[cfg(feature = "redis")]
    pub(crate) async fn check_cluster<'a>(
        &'a self,
        limiter: &'a Limiter,
        key: Vec<u8>,
        service: &str,
    ) -> Result<Option<Admitted<'a>>, ForwardError> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let Some((count, ttl)) = cluster.hit(&key, limiter.per).await else {
            return Ok(None);
        };
        if count > u64::from(limiter.rate) {
            return Err(limiter.refusal(service, ttl));
        }
        Ok(Some(Admitted {
            limiter,
            remaining: limiter.rate.saturating_sub(count as u32),
            reset: ceil_secs(ttl),
        }))
    }

    /// Forgets keys whose buckets are full again (an idle client costs no
    /// memory); the gateway calls it every minute.
    pub fn housekeep(&self) {
        for b in self.limiters.iter().filter_map(|l| l.buckets.as_ref()) {
            b.retain_recent();
            b.shrink_to_fit();
        }
    }

    /// Keys held, over all policies (tests and diagnostics).
    pub fn keys(&self) -> usize {
        self.limiters
            .iter()
            .filter_map(|l| l.buckets.as_ref())
            .map(|b| b.len())
            .sum()
    }
}

/// Whole seconds, rounded up: a client told 0 would come back too early.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limiter {
    fn new(i: usize, p: &RateLimitPolicy) -> Self {
        // Validation guarantees rate > 0, burst > 0 and per / rate >= 1ns.
        let rate = p.rate.max(1);
        let burst = p.burst.unwrap_or(rate).max(1);
        let period = (p.per / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        let clock = DefaultClock::default();
        let local = p.scope == RateLimitScope::Local;
        let buckets = local.then(|| {
            RateLimiter::dashmap_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>()
        });
        let name = format!("\"{}-{i}\"", p.service);
        // Local: q tokens per w seconds, the bucket's size over the time it
        // takes to fill, so `r` never exceeds `q`. Cluster: the window.
        let (q, window) = if local {
            (burst, ceil_secs(period * burst).max(1))
        } else {
            (rate, ceil_secs(p.per).max(1))
        };
        let policy = HeaderValue::from_str(&format!("{name};q={q};w={window}"))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        Self {
            scope: Scope::new(&p.service, p.prefix.as_deref()),
            key: p.key,
            header: p
                .header
                .as_deref()
                .and_then(|h| HeaderName::try_from(h).ok()),
            claim: p.claim.as_deref().map(Into::into),
            buckets,
            rate,
            per: p.per,
            clock,
            hasher: Default::default(),
            burst,
            period,
            policy,
            name: name.into(),
        }
    }

    /// The bucket a request draws from. A verified claim is hashed like a
    /// header; a request without one is keyed by its client address.
    fn key_of(
        &self,
        parts: &http::request::Parts,
        peer: Option<IpAddr>,
        trusted: &[IpNet],
        claims: Option<&crate::auth::Claims>,
    ) -> BucketKey {
        if self.key == RateLimitKey::Claim {
            return match self.claim_value(claims) {
                Some(v) => BucketKey::Hashed(self.hasher.hash_one(v.as_bytes())),
                None => BucketKey::Addr(client_addr(parts, peer, trusted)),
            };
        }
        match (self.key, &self.header) {
            (RateLimitKey::Route, _) => BucketKey::Route,
            (RateLimitKey::Header, Some(h)) => match parts.headers.get(h) {
                Some(v) => BucketKey::Hashed(self.hasher.hash_one(v.as_bytes())),
                None => BucketKey::Addr(client_addr(parts, peer, trusted)),
            },
            _ => BucketKey::Addr(client_addr(parts, peer, trusted)),
        }
    }

    /// The Redis key of a cluster policy: the same on every replica, so the
    /// header value itself rather than this process's keyed hash.
    fn cluster_key(
        &self,
        key: BucketKey,
        parts: &http::request::Parts,
        claims: Option<&crate::auth::Claims>,
    ) -> Vec<u8> {
        let mut k = format!("fgw:rl:{}:", self.name.trim_matches('"')).into_bytes();
        match key {
            BucketKey::Route => k.extend_from_slice(b"route"),
            BucketKey::Addr(a) => k.extend_from_slice(a.to_string().as_bytes()),
            BucketKey::Hashed(_) if self.key == RateLimitKey::Claim => {
                k.extend_from_slice(b"c:");
                if let Some(v) = self.claim_value(claims) {
                    k.extend_from_slice(v.as_bytes());
                }
            }
            BucketKey::Hashed(_) => {
                k.extend_from_slice(b"h:");
                if let Some(v) = self.header.as_ref().and_then(|h| parts.headers.get(h)) {
                    k.extend_from_slice(v.as_bytes());
                }
            }
        }
        k
    }

    /// The verified value of `claim`: a string as it is, anything else as
    /// JSON text.
    fn claim_value<'c>(
        &self,
        claims: Option<&'c crate::auth::Claims>,
    ) -> Option<std::borrow::Cow<'c, str>> {
        let v = claims?.get(self.claim.as_deref()?)?;
        Some(match v {
            serde_json::Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            other => std::borrow::Cow::Owned(other.to_string()),
        })
    }

    fn refusal(&self, service: &str, wait: Duration) -> ForwardError {
        let secs = ceil_secs(wait).max(1);
        let mut h = HeaderMap::with_capacity(3);
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        h.insert(RATELIMIT_POLICY, self.policy.clone());
        if let Some(v) = ratelimit_value(&self.name, 0, secs) {
            h.insert(RATELIMIT, v);
        }
        ForwardError::new(
            ErrorKind::RateLimited,
            format!("rate limit of service {service} reached; retry in {secs}s"),
        )
        .with_headers(h)
    }
}

impl Admitted<'_> {
    /// Tells the client its policy and what is left (a successful answer).
    pub(crate) fn write(&self, headers: &mut HeaderMap) {
        let l = self.limiter;
        headers.insert(RATELIMIT_POLICY, l.policy.clone());
        if let Some(v) = ratelimit_value(&l.name, u64::from(self.remaining), self.reset) {
            headers.insert(RATELIMIT, v);
        }
    }
}

/// `"name";r=<r>;t=<t>`, written by hand: `format!` cost more than the
/// limit check itself on every admitted request (BENCHMARKS.md, issue 12).
fn ratelimit_value(name: &str, r: u64, t: u64) -> Option<HeaderValue> {
    let mut v = Vec::with_capacity(name.len() + 46);
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(b";r=");
    push_decimal(&mut v, r);
    v.extend_from_slice(b";t=");
    push_decimal(&mut v, t);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The client's address: the last `X-Forwarded-For` entry when the peer is
/// a trusted proxy (the one that proxy saw), else the peer. Parsed in place.
fn client_addr(parts: &http::request::Parts, peer: Option<IpAddr>, trusted: &[IpNet]) -> IpAddr {
    let Some(peer) = peer else {
        return IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    };
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> RateLimitPolicy {
        toml::from_str(toml_text).unwrap()
    }

    impl RateLimits {
        fn local(policies: &[RateLimitPolicy]) -> Option<Self> {
            Self::new(policies, None, Default::default()).unwrap()
        }
    }

    impl<'a> Verdict<'a> {
        fn is_none(&self) -> bool {
            matches!(self, Verdict::Unlimited)
        }
        fn is_some(&self) -> bool {
            !self.is_none()
        }
        fn unwrap(self) -> Admitted<'a> {
            match self {
                Verdict::Admitted(a) => a,
                _ => panic!("not admitted locally"),
            }
        }
    }

    fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    const PEER: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));

    #[test]
    fn a_burst_is_allowed_then_refused_with_the_headers() {
        let rl = RateLimits::local(&[policy(
            "service = \"orders\"\nrate = 2\nper = \"1m\"\nburst = 3",
        )])
        .unwrap();
        let p = parts(&[]);
        let mut remaining = vec![];
        for _ in 0..3 {
            let a = rl
                .check("orders", "/orders", &p, PEER, &[], None)
                .unwrap()
                .unwrap();
            remaining.push(a.remaining);
        }
        assert_eq!(remaining, [2, 1, 0]);
        let err = match rl.check("orders", "/orders", &p, PEER, &[], None) {
            Err(e) => e,
            Ok(_) => panic!("the fourth request must be refused"),
        };
        assert_eq!(err.kind, ErrorKind::RateLimited);
        let resp = err.into_response(Some("r-1"));
        assert_eq!(resp.status(), 429);
        let h = resp.headers();
        // One token every 30 s.
        assert_eq!(h["retry-after"], "30");
        assert_eq!(h["ratelimit-policy"], "\"orders-0\";q=3;w=90");
        assert_eq!(h["ratelimit"], "\"orders-0\";r=0;t=30");
        assert_eq!(h["content-type"], "application/json");
    }

    #[test]
    fn success_headers_say_what_is_left() {
        let rl = RateLimits::local(&[policy("service = \"a\"\nrate = 10\nper = \"10s\"")]).unwrap();
        let a = rl
            .check("a", "/", &parts(&[]), PEER, &[], None)
            .unwrap()
            .unwrap();
        let mut h = HeaderMap::new();
        a.write(&mut h);
        assert_eq!(h["ratelimit-policy"], "\"a-0\";q=10;w=10");
        assert_eq!(h["ratelimit"], "\"a-0\";r=9;t=1");
    }

    #[test]
    fn clients_have_buckets_of_their_own() {
        let rl = RateLimits::local(&[policy("service = \"a\"\nrate = 1\nper = \"1h\"")]).unwrap();
        let p = parts(&[]);
        let other = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8)));
        assert!(rl.check("a", "/x", &p, PEER, &[], None).is_ok());
        assert!(rl.check("a", "/x", &p, PEER, &[], None).is_err());
        assert!(rl.check("a", "/x", &p, other, &[], None).is_ok());
        assert_eq!(rl.keys(), 2);
    }

    #[test]
    fn behind_a_trusted_proxy_the_forwarded_client_is_the_key() {
        let rl = RateLimits::local(&[policy("service = \"a\"\nrate = 1\nper = \"1h\"")]).unwrap();
        let trusted: Vec<IpNet> = vec!["192.0.2.0/24".parse().unwrap()];
        let c1 = parts(&[("x-forwarded-for", "203.0.113.9, 198.51.100.1")]);
        let c2 = parts(&[("x-forwarded-for", "198.51.100.2")]);
        assert!(rl.check("a", "/", &c1, PEER, &trusted, None).is_ok());
        assert!(rl.check("a", "/", &c1, PEER, &trusted, None).is_err());
        assert!(rl.check("a", "/", &c2, PEER, &trusted, None).is_ok());
        // Untrusted peer: its forwarded header is not believed.
        let rl = RateLimits::local(&[policy("service = \"a\"\nrate = 1\nper = \"1h\"")]).unwrap();
        assert!(rl.check("a", "/", &c1, PEER, &[], None).is_ok());
        assert!(rl.check("a", "/", &c2, PEER, &[], None).is_err());
    }

    #[test]
    fn header_keys_and_their_fallback() {
        let rl = RateLimits::local(&[policy(
            "service = \"a\"\nrate = 1\nper = \"1h\"\nkey = \"header\"\nheader = \"x-api-key\"",
        )])
        .unwrap();
        let k1 = parts(&[("x-api-key", "one")]);
        let k2 = parts(&[("x-api-key", "two")]);
        assert!(rl.check("a", "/", &k1, PEER, &[], None).is_ok());
        assert!(rl.check("a", "/", &k1, PEER, &[], None).is_err());
        assert!(rl.check("a", "/", &k2, PEER, &[], None).is_ok());
        // No header: the client's address.
        assert!(rl.check("a", "/", &parts(&[]), PEER, &[], None).is_ok());
        assert!(rl.check("a", "/", &parts(&[]), PEER, &[], None).is_err());
    }

    #[test]
    fn the_longest_prefix_wins_on_whole_segments() {
        let rl = RateLimits::local(&[
            policy("service = \"a\"\nrate = 100\nper = \"1s\""),
            policy("service = \"a\"\nprefix = \"/login\"\nrate = 1\nper = \"1h\"\nkey = \"route\""),
        ])
        .unwrap();
        let p = parts(&[]);
        assert!(rl.check("a", "/login", &p, PEER, &[], None).is_ok());
        assert!(rl.check("a", "/login/sso", &p, PEER, &[], None).is_err());
        // "/loginx" is not under "/login": the service-wide policy.
        assert!(rl.check("a", "/loginx", &p, PEER, &[], None).is_ok());
        assert!(rl.check("a", "/loginx", &p, PEER, &[], None).is_ok());
        // A policy deeper than the route: the normalised path decides.
        let deep = |path: &str| {
            let mut p = parts(&[]);
            p.uri = path.parse().unwrap();
            p
        };
        let rl2 = RateLimits::local(&[policy(
            "service = \"a\"\nprefix = \"/a/login\"\nrate = 1\nper = \"1h\"\nkey = \"route\"",
        )])
        .unwrap();
        assert!(
            rl2.check("a", "/a", &deep("/a/other"), PEER, &[], None)
                .unwrap()
                .is_none()
        );
        assert!(
            rl2.check("a", "/a", &deep("/a/login"), PEER, &[], None)
                .unwrap()
                .is_some()
        );
        assert!(
            rl2.check("a", "/a", &deep("//a/./%6cogin/x"), PEER, &[], None)
                .is_err()
        );
        // Another service: no policy.
        assert!(
            rl.check("b", "/login", &p, PEER, &[], None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let rl =
            RateLimits::local(&[policy("service = \"a\"\nrate = 1000\nper = \"1ms\"")]).unwrap();
        assert!(rl.check("a", "/", &parts(&[]), PEER, &[], None).is_ok());
        assert_eq!(rl.keys(), 1);
        std::thread::sleep(Duration::from_millis(5));
        rl.housekeep();
        assert_eq!(rl.keys(), 0);
    }

    #[test]
    fn the_ratelimit_value_is_written_as_format_would() {
        for (r, t) in [(0, 0), (7, 30), (u64::MAX, 1_000_000)] {
            let v = ratelimit_value("\"a-0\"", r, t).unwrap();
            assert_eq!(v, format!("\"a-0\";r={r};t={t}").as_str());
        }
    }

    #[test]
    fn no_policy_no_limiter() {
        assert!(RateLimits::local(&[]).is_none());
    }
}
