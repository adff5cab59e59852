//! The response cache (`[[cache]]`, `[cache_store]`): GET and HEAD answers
//! of the covered routes are kept and served again as RFC 9111 allows a
//! *shared* cache, the rules being `http-cache-semantics`' [`CachePolicy`]
//! (freshness, `Vary`, `Authorization`, `private`, `no-store`, revalidation
//! headers); the store is a `moka` cache bounded by bytes.
//!
//! What the gateway keys on: the service, the method (GET and HEAD apart),
//! the `Host` (or `:authority`) and the path and query as sent. Any other
//! request header that changes the answer must be named by the answer's
//! `Vary`; each key holds up to [`MAX_VARIANTS`] variants, one per set of
//! `Vary`-named header values.
//!
//! Never stored, whatever the backend says: an answer with `Set-Cookie`, with
//! `Vary: *`, larger than `max_entry_bytes` (body and fields), with
//! trailers, to a request with `Cache-Control: no-store` or `Range`; and by
//! the shared-cache rules an answer with `private` or `no-store`, and one
//! to a request with `Authorization` unless it says `public`,
//! `s-maxage` or `must-revalidate`.
//!
//! A stale entry is revalidated with the validators it carries
//! (`If-None-Match`, `If-Modified-Since`): a 304 refreshes its fields and
//! the client gets the stored body (`x-cache: REVALIDATED`); any other answer
//! replaces it (`STALE`). A successful unsafe request (POST, PUT, PATCH,
//! DELETE) invalidates its URL (RFC 9111 4.4). Entries carry the service's
//! registration generation ([`crate::balance::ServiceEndpoints::generation`]):
//! when its instances register anew or leave, every entry of the service
//! becomes a miss, without a scan.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, request};
use http_body_util::BodyExt;
use http_cache_semantics::{BeforeRequest, CacheOptions, CachePolicy};
use prometheus_client::metrics::counter::Counter;

use crate::config::{CachePolicyConfig, CacheStoreConfig};
use crate::error::{ErrorKind, ForwardError};
use crate::metrics::Metrics;
use crate::policy::Scope;

/// The response header saying what the cache did.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Variants kept per key (sets of `Vary`-named values); the oldest goes.
pub const MAX_VARIANTS: usize = 8;

/// Fixed bytes an entry is charged besides its body and fields.
const ENTRY_OVERHEAD: usize = 256;

/// What the cache did with one request (`x-cache`, and the metric's
/// `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from a fresh entry; the backend was not called.
    Hit,
    /// Nothing stored; the backend answered (and the answer may be kept).
    Miss,
    /// The entry was stale and the backend sent a new answer, which
    /// replaced it.
    Stale,
    /// The entry was stale; the backend said 304 and the stored body was
    /// served with refreshed fields.
    Revalidated,
    /// Not cacheable (an unsafe method, `no-store`, `Range`): passed on.
    Bypass,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Stale,
        Outcome::Revalidated,
        Outcome::Bypass,
    ];

    /// As written in `x-cache` and the metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Bypass => "BYPASS",
        }
    }
}

/// One `[[cache]]` policy, ready.
pub(crate) struct Policy {
    scope: Scope,
    default_ttl: Duration,
    /// Per [`Outcome::ALL`]; `None` with metrics off.
    counters: Option<[Counter; 5]>,
}

/// One stored answer: its head, body and the policy that judges it.
struct Stored {
    policy: CachePolicy,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// The service's registration generation when stored.
    generation: u64,
    /// Bytes charged in the store.
    weight: u32,
}

type Variants = Arc<[Arc<Stored>]>;

/// Every `[[cache]]` policy and the one store they share.
pub struct ResponseCache {
    store: moka::sync::Cache<Box<str>, Variants>,
    /// Longest prefix first.
    policies: Box<[Policy]>,
    max_entry_bytes: usize,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("policies", &self.policies.len())
            .field("entries", &self.store.entry_count())
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// The cache of validated policies; `None` when there are none (the
    /// request path then takes one branch).
    pub fn new(
        store: &CacheStoreConfig,
        policies: &[CachePolicyConfig],
        metrics: &Metrics,
    ) -> Option<Self> {
        if policies.is_empty() {
            return None;
        }
        let mut policies: Vec<Policy> = policies
            .iter()
            .map(|p| Policy {
                scope: Scope::new(&p.service, p.prefix.as_deref()),
                default_ttl: p.default_ttl,
                counters: metrics.cache_counters(&p.service, Outcome::ALL.map(Outcome::as_str)),
            })
            .collect();
        policies.sort_by_key(|p| p.scope.specificity());
        #[allow(clippy::borrowed_box)] // moka passes the key as stored
        let weigh = |k: &Box<str>, v: &Variants| -> u32 {
            v.iter()
                .fold(k.len() as u32, |n, s| n.saturating_add(s.weight))
        };
        Some(Self {
            store: moka::sync::Cache::builder()
                .max_capacity(store.max_bytes)
                .weigher(weigh)
                .build(),
            policies: policies.into(),
            max_entry_bytes: usize::try_from(store.max_entry_bytes).unwrap_or(usize::MAX),
        })
    }

    /// The policy covering a request routed to `service` at
    /// `route_prefix` (the longest prefix), if any.
    pub(crate) fn policy(
        &self,
        service: &str,
        route_prefix: &str,
        parts: &request::Parts,
    ) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.scope.covers(service, route_prefix, parts))
    }

    /// `/admin/explain`: the policy covering a request, `null` if none.
    pub(crate) fn explain(
        &self,
        service: &str,
        route_prefix: &str,
        parts: &request::Parts,
    ) -> serde_json::Value {
        self.policy(service, route_prefix, parts)
            .map_or(serde_json::Value::Null, |p| {
                serde_json::json!({
                    "service": &*p.scope.service,
                    "prefix": &*p.scope.prefix,
                    "default_ttl_s": p.default_ttl.as_secs(),
                })
            })
    }

    /// The unary exchange of a request on `service` through the cache,
    /// under `policy` (from [`ResponseCache::policy`]): `send` calls the
    /// backend. `generation` is the service's registration generation.
    pub(crate) async fn serve<F, Fut>(
        &self,
        policy: &Policy,
        service: &str,
        generation: u64,
        parts: request::Parts,
        send: F,
    ) -> Result<Response<Body>, ForwardError>
    where
        F: FnOnce(request::Parts) -> Fut,
        Fut: Future<Output = Result<Response<Body>, ForwardError>>,
    {
        let (outcome, result) = self
            .exchange(policy, service, generation, parts, send)
            .await;
        if let Some(c) = &policy.counters {
            c[outcome as usize].inc();
        }
        result.map(|mut resp| {
            resp.headers_mut()
                .insert(X_CACHE, HeaderValue::from_static(outcome.as_str()));
            resp
        })
    }

    async fn exchange<F, Fut>(
        &self,
        policy: &Policy,
        service: &str,
        generation: u64,
        mut parts: request::Parts,
        send: F,
    ) -> (Outcome, Result<Response<Body>, ForwardError>)
    where
        F: FnOnce(request::Parts) -> Fut,
        Fut: Future<Output = Result<Response<Body>, ForwardError>>,
    {
        if parts.method != Method::GET && parts.method != Method::HEAD {
            return (
                Outcome::Bypass,
                self.unsafe_request(service, parts, send).await,
            );
        }
        if parts.headers.contains_key(header::RANGE) || has_directive(&parts.headers, "no-store") {
            return (Outcome::Bypass, send(parts).await);
        }
        let key = key(service, &parts.method, &parts);
        let now = SystemTime::now();
        let mut stale = None;
        if let Some(variants) = self.store.get(&key) {
            for v in variants.iter().filter(|v| v.generation == generation) {
                match v.policy.before_request(&parts, now) {
                    BeforeRequest::Fresh(_) => return (Outcome::Hit, Ok(v.respond(&parts, now))),
                    BeforeRequest::Stale {
                        request,
                        matches: true,
                    } => {
                        stale = Some((v.clone(), request));
                        break;
                    }
                    BeforeRequest::Stale { .. } => {}
                }
            }
        }
        let judged = judged_request(&parts);
        let Some((stored, revalidation)) = stale else {
            let result = match send(parts).await {
                Ok(resp) => self.keep(policy, key, generation, &judged, resp).await,
                Err(e) => Err(e),
            };
            return (Outcome::Miss, result);
        };
        // A client's own conditional request is passed on as it is: a 304
        // then answers its validators, not the entry's.
        let own_conditional = [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
        ]
        .iter()
        .any(|h| parts.headers.contains_key(h));
        if !own_conditional {
            for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
                if let Some(v) = revalidation.headers.get(&name) {
                    parts.headers.insert(name, v.clone());
                }
            }
        }
        let resp = match send(parts).await {
            Ok(resp) => resp,
            Err(e) => return (Outcome::Stale, Err(e)),
        };
        if resp.status() == StatusCode::NOT_MODIFIED && !own_conditional {
            let refreshed = stored.refreshed(&judged, resp.headers(), now);
            let out = refreshed.respond(&judged, now);
            match refreshed.policy.is_storable() {
                true => self.put(key, &judged, refreshed, now),
                false => self.forget(&key, &judged, generation, now),
            }
            return (Outcome::Revalidated, Ok(out));
        }
        (
            Outcome::Stale,
            self.keep(policy, key, generation, &judged, resp).await,
        )
    }

    /// POST, PUT, PATCH, DELETE (and any unknown method): passed on; a
    /// success or redirect invalidates the URL's GET and HEAD entries.
    async fn unsafe_request<F, Fut>(
        &self,
        service: &str,
        parts: request::Parts,
        send: F,
    ) -> Result<Response<Body>, ForwardError>
    where
        F: FnOnce(request::Parts) -> Fut,
        Fut: Future<Output = Result<Response<Body>, ForwardError>>,
    {
        let safe = parts.method == Method::OPTIONS || parts.method == Method::TRACE;
        let keys = (!safe).then(|| [Method::GET, Method::HEAD].map(|m| key(service, &m, &parts)));
        let result = send(parts).await;
        if let (Some(keys), Ok(resp)) = (keys, &result)
            && (resp.status().is_success() || resp.status().is_redirection())
        {
            for k in &keys {
                self.store.invalidate(k);
            }
        }
        result
    }

    /// Stores `resp` as the variant of `req` when the rules allow, and
    /// returns it (its body read: it is whole already, a unary answer).
    async fn keep(
        &self,
        policy: &Policy,
        key: Box<str>,
        generation: u64,
        req: &request::Parts,
        resp: Response<Body>,
    ) -> Result<Response<Body>, ForwardError> {
        let now = SystemTime::now();
        let fits = http_body::Body::size_hint(resp.body())
            .exact()
            .is_some_and(|n| n <= self.max_entry_bytes as u64);
        let judged = fits
            .then(|| cache_policy(req, resp.status(), resp.headers(), policy.default_ttl, now))
            .flatten();
        let Some(judged) = judged else {
            self.forget(&key, req, generation, now);
            return Ok(resp);
        };
        let (head, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| {
                ForwardError::new(
                    ErrorKind::UpstreamInvalidResponse,
                    format!("response body: {e}"),
                )
            })?
            .to_bytes();
        let weight = ENTRY_OVERHEAD
            + key.len()
            + body.len()
            + head
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum::<usize>();
        if weight > self.max_entry_bytes {
            self.forget(&key, req, generation, now);
        } else {
            let stored = Stored {
                policy: judged,
                status: head.status,
                headers: head.headers.clone(),
                body: body.clone(),
                generation,
                weight: u32::try_from(weight).unwrap_or(u32::MAX),
            };
            self.put(key, req, stored, now);
        }
        Ok(Response::from_parts(head, Body::from(body)))
    }

    /// Adds `stored` under `key`, replacing the variant `req` selects and
    /// dropping variants of an older generation.
    fn put(&self, key: Box<str>, req: &request::Parts, stored: Stored, now: SystemTime) {
        let generation = stored.generation;
        let mut list = vec![Arc::new(stored)];
        if let Some(old) = self.store.get(&key) {
            list.extend(
                old.iter()
                    .filter(|v| v.generation == generation && !v.selected_by(req, now))
                    .take(MAX_VARIANTS - 1)
                    .cloned(),
            );
        }
        self.store.insert(key, list.into());
    }

    /// Drops the variant `req` selects, if stored.
    fn forget(&self, key: &str, req: &request::Parts, generation: u64, now: SystemTime) {
        let Some(old) = self.store.get(key) else {
            return;
        };
        let kept: Vec<_> = old
            .iter()
            .filter(|v| v.generation == generation && !v.selected_by(req, now))
            .cloned()
            .collect();
        if kept.len() == old.len() {
            return;
        }
        match kept.is_empty() {
            true => self.store.invalidate(key),
            false => self.store.insert(key.into(), kept.into()),
        }
    }

    /// Entries held (an estimate: moka counts lazily).
    pub fn entry_count(&self) -> u64 {
        self.store.entry_count()
    }
}

impl Stored {
    /// Whether this variant answers `req` (fresh or not).
    fn selected_by(&self, req: &request::Parts, now: SystemTime) -> bool {
        match self.policy.before_request(req, now) {
            BeforeRequest::Fresh(_) => true,
            BeforeRequest::Stale { matches, .. } => matches,
        }
    }

    /// The stored answer for `req`, with its `Age`; a 304 when `req`'s
    /// `If-None-Match` names the stored `ETag`.
    fn respond(&self, req: &request::Parts, now: SystemTime) -> Response<Body> {
        let not_modified = self.status == StatusCode::OK
            && self
                .headers
                .get(header::ETAG)
                .zip(req.headers.get(header::IF_NONE_MATCH))
                .is_some_and(|(etag, inm)| etag_listed(etag, inm));
        let mut resp = match not_modified {
            true => Response::new(Body::empty()),
            false => Response::new(Body::from(self.body.clone())),
        };
        *resp.status_mut() = match not_modified {
            true => StatusCode::NOT_MODIFIED,
            false => self.status,
        };
        *resp.headers_mut() = self.headers.clone();
        let age = self.policy.age(now).as_secs();
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        resp
    }

    /// This entry after a 304 carrying `fresh` fields: those replace the
    /// stored ones (RFC 9111 3.2), framing fields excepted.
    fn refreshed(&self, req: &request::Parts, fresh: &HeaderMap, now: SystemTime) -> Stored {
        let mut headers = self.headers.clone();
        for name in fresh.keys() {
            if [
                header::CONTENT_LENGTH,
                header::CONTENT_ENCODING,
                header::TRANSFER_ENCODING,
                header::CONTENT_RANGE,
                X_CACHE,
            ]
            .contains(name)
            {
                continue;
            }
            headers.remove(name);
            for v in fresh.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let mut head = Response::new(());
        *head.status_mut() = self.status;
        *head.headers_mut() = headers;
        let policy = CachePolicy::new_options(req, &head, now, options());
        Stored {
            policy,
            status: self.status,
            headers: head.into_parts().0.headers,
            body: self.body.clone(),
            generation: self.generation,
            weight: self.weight,
        }
    }
}

/// The shared-cache rules, with no heuristic freshness of their own
/// (`default_ttl` is the operator's).
fn options() -> CacheOptions {
    CacheOptions {
        shared: true,
        cache_heuristic: 0.0,
        ..CacheOptions::default()
    }
}

/// The policy to store an answer under, or `None` when it must not be.
fn cache_policy(
    req: &request::Parts,
    status: StatusCode,
    headers: &HeaderMap,
    default_ttl: Duration,
    now: SystemTime,
) -> Option<CachePolicy> {
    if headers.contains_key(header::SET_COOKIE) || list_has(headers, header::VARY, "*") {
        return None;
    }
    let mut head = Response::new(());
    *head.status_mut() = status;
    *head.headers_mut() = headers.clone();
    let mut policy = CachePolicy::new_options(req, &head, now, options());
    if !policy.is_storable() {
        return None;
    }
    let states_freshness = headers.contains_key(header::EXPIRES)
        || ["max-age", "s-maxage", "no-cache"]
            .iter()
            .any(|d| has_directive(headers, d));
    // Heuristically cacheable statuses (RFC 9110 15.1).
    const BY_DEFAULT: [u16; 10] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 501];
    if !default_ttl.is_zero() && !states_freshness && BY_DEFAULT.contains(&status.as_u16()) {
        let max_age = format!("max-age={}", default_ttl.as_secs());
        if let Ok(v) = HeaderValue::try_from(max_age) {
            head.headers_mut().append(header::CACHE_CONTROL, v);
        }
        policy = CachePolicy::new_options(req, &head, now, options());
        if !policy.is_storable() {
            return None;
        }
    }
    // Kept if it can be served, or at least revalidated cheaply.
    let validator =
        headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    (!policy.time_to_live(now).is_zero() || validator).then_some(policy)
}

/// The request as the policy judges it: method, URI and fields (no body,
/// no extensions).
fn judged_request(parts: &request::Parts) -> request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// The store key: service, method, host and path with query.
fn key(service: &str, method: &Method, parts: &request::Parts) -> Box<str> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut k = String::with_capacity(service.len() + host.len() + path.len() + 8);
    k.push_str(service);
    k.push(' ');
    k.push_str(method.as_str());
    k.push(' ');
    k.extend(host.chars().map(|c| c.to_ascii_lowercase()));
    k.push(' ');
    k.push_str(path);
    k.into()
}

/// Whether a comma-separated field holds `token` (case-insensitive).
fn list_has(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `Cache-Control` holds the directive `name` (with or without a
/// value).
fn has_directive(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            d.split('=')
                .next()
                .is_some_and(|d| d.trim().eq_ignore_ascii_case(name))
        })
}

/// `If-None-Match` weak comparison (RFC 9110 13.1.2): `*`, or the entity
/// tag listed, `W/` ignored.
fn etag_listed(etag: &HeaderValue, if_none_match: &HeaderValue) -> bool {
    let (Ok(etag), Ok(list)) = (etag.to_str(), if_none_match.to_str()) else {
        return false;
    };
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let etag = weak(etag);
    list.split(',').any(|t| t.trim() == "*" || weak(t) == etag)
}

#[cfg(test)]
mod tests;
