//! Canary, blue-green and sticky sessions: the operator's `[[canary]]`
//! policies.
//!
//! An instance's *version* is its registration's `metadata[version_key]`,
//! else a tag `<version_key>=<v>`. For a service with a policy, a request
//! first chooses a version, then the balancer picks among that version's
//! instances as it does for a whole service (strategy, ejections, panic
//! mode apply to the version's instances; retries fall back within them):
//!
//! 1. `header` / `cookie` name a version (`v2`), or say `1` / `true` for
//!    the canary, the version with the smallest weight. A name no routable
//!    instance carries is ignored (a stale cookie must not break a client).
//! 2. Else a weighted random draw over the versions with a weight above
//!    zero and at least one instance that can take traffic. A version whose
//!    instances are all failing or ejected is skipped and its share goes to
//!    the others in proportion (better a canary's traffic on the stable
//!    version than 503s); when none is left the answer is 503.
//!    Instances of an unlisted version (or without one) take no traffic.
//! 3. `sticky_cookie` pins a client to an instance: its value is an opaque
//!    hash of the instance (service and id, so every replica reads it the
//!    same). The pin holds while that instance is routable, not ejected,
//!    and of a version the request may use (a shift to `0` moves pinned
//!    clients too: blue-green); otherwise the request picks anew and the
//!    answer sets the cookie again. WebSocket upgrades read it as any
//!    request does, so a reconnecting socket finds its instance.
//!
//! The weights change at run time (`PUT /admin/canary/<service>`): one
//! `ArcSwap` per policy, read once per request. Which instances belong to
//! which version is worked out once per routing snapshot, not per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use rand::Rng;
use serde_json::json;
use tracing::info;

use crate::balance::{Balancer, Candidates, Endpoint, NoEndpoint, ServiceEndpoints, Snapshot};
use crate::config::CanaryPolicy;
use crate::error::ForwardError;
use crate::metrics::ServiceMetrics;
use crate::shared::Shared;

/// Most versions one policy may weigh (a draw tracks skipped versions in
/// one `u64`).
pub const MAX_VERSIONS: usize = 64;
/// Largest weight of one version.
pub const MAX_WEIGHT: i64 = 1_000_000;

/// Every `[[canary]]` policy.
pub struct Canaries {
    policies: Box<[Canary]>,
}

/// One service's policy and its weights in force.
pub struct Canary {
    service: Box<str>,
    version_key: Box<str>,
    weights: ArcSwap<Weights>,
    header: Option<HeaderName>,
    cookie: Option<Box<str>>,
    sticky: Option<Sticky>,
    /// Versions of the last snapshot's instances (see [`Groups`]).
    groups: ArcSwapOption<Groups>,
}

struct Sticky {
    name: Box<str>,
    ttl: Duration,
}

/// The weights in force: by version, sorted by name. Empty = no split
/// (a sticky-only policy).
#[derive(Debug, Default)]
pub struct Weights {
    versions: Box<[(Box<str>, u32)]>,
}

/// A service's routable instances sorted by version, for one endpoint list
/// of the routing snapshot (rebuilt when the snapshot's list changes).
struct Groups {
    /// The list they were built from (held, so a pointer comparison
    /// cannot be fooled by a reused address).
    endpoints: Arc<[Arc<Endpoint>]>,
    /// Every version found, sorted by name, with its instances.
    versions: Box<[(Box<str>, EndpointList)]>,
    /// Sticky hashes: (hash, index in `endpoints`, (version, index in it)).
    pins: Box<[Pin]>,
}

/// A list of endpoints as the balancer selects among them.
type EndpointList = Arc<[Arc<Endpoint>]>;

struct Pin {
    hash: u64,
    all: usize,
    version: Option<(usize, usize)>,
}

/// What the request path gets: the candidates, the service's metrics and,
/// when a sticky cookie is to be (re)set, its `Set-Cookie` value.
pub(crate) struct Picked {
    pub(crate) candidates: Candidates,
    pub(crate) metrics: Arc<ServiceMetrics>,
    pub(crate) set_cookie: Option<HeaderValue>,
}

/// Whether `weights` may be put in force: at most [`MAX_VERSIONS`]
/// versions with valid names, each weight in `0..=MAX_WEIGHT`, not all 0.
/// The message names the offending version.
pub fn check_weights(weights: &BTreeMap<String, i64>) -> Result<(), String> {
    if weights.is_empty() {
        return Err("must name at least one version".into());
    }
    if weights.len() > MAX_VERSIONS {
        return Err(format!("at most {MAX_VERSIONS} versions"));
    }
    for (v, w) in weights {
        if !valid_version(v) {
            return Err(format!(
                "{v:?} is not a version name (1-128 of A-Z a-z 0-9 . - _ + :)"
            ));
        }
        if !(0..=MAX_WEIGHT).contains(w) {
            return Err(format!(
                "weight of {v:?} is {w}: must be between 0 and {MAX_WEIGHT}"
            ));
        }
    }
    if weights.values().all(|w| *w == 0) {
        return Err("weights are all 0: at least one version must take traffic".into());
    }
    Ok(())
}

fn valid_version(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_+:".contains(&b))
}

/// An RFC 6265 `cookie-name` (an RFC 7230 token).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl Weights {
    fn of(weights: &BTreeMap<String, i64>) -> Self {
        Weights {
            versions: weights
                .iter()
                .map(|(v, w)| (v.as_str().into(), (*w).clamp(0, MAX_WEIGHT) as u32))
                .collect(),
        }
    }

    /// The canary: the version with the smallest weight (the first by name
    /// on a tie).
    fn canary(&self) -> Option<&str> {
        self.versions
            .iter()
            .min_by_key(|(_, w)| *w)
            .map(|(v, _)| &**v)
    }

    fn weight(&self, version: &str) -> u32 {
        self.versions
            .iter()
            .find(|(v, _)| &**v == version)
            .map_or(0, |(_, w)| *w)
    }

    fn to_json(&self) -> serde_json::Value {
        self.versions
            .iter()
            .map(|(v, w)| (v.to_string(), json!(w)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

impl Canary {
    /// The policy, its weights in force and the routable instances per
    /// version in `snapshot` (`/admin/canary`, `/admin/explain`).
    pub fn to_json(&self, snapshot: &Snapshot) -> serde_json::Value {
        let mut instances: BTreeMap<&str, usize> = BTreeMap::new();
        let mut unversioned = 0;
        for e in snapshot
            .services
            .get(&*self.service)
            .map(|s| &s.endpoints[..])
            .unwrap_or_default()
        {
            match version_of(e, &self.version_key) {
                Some(v) => *instances.entry(v).or_default() += 1,
                None => unversioned += 1,
            }
        }
        json!({
            "service": &*self.service,
            "version_key": &*self.version_key,
            "weights": self.weights.load().to_json(),
            "header": self.header.as_ref().map(HeaderName::as_str),
            "cookie": self.cookie.as_deref(),
            "sticky_cookie": self.sticky.as_ref().map(|s| &*s.name),
            "sticky_ttl_s": self.sticky.as_ref().map(|s| s.ttl.as_secs()),
            "instances": instances,
            "instances_without_version": unversioned,
        })
    }
}

/// The version an instance registered, as `key` reads it.
pub fn version_of<'e>(e: &'e Endpoint, key: &str) -> Option<&'e str> {
    e.labels.metadata.get(key).map(String::as_str).or_else(|| {
        e.labels
            .tags
            .iter()
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
    })
}

/// The sticky cookie's value for an instance: FNV-1a (64 bits) of
/// service and instance id. Opaque to the client and the same on every
/// replica; a forged value can only pick an instance the client could be
/// sent to anyway.
fn pin_hash(service: &str, instance_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in service.bytes().chain([0]).chain(instance_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The value of cookie `name` in the request's `Cookie` headers (HTTP/2
/// may split them), quotes removed.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

impl Groups {
    fn build(service: &str, endpoints: &Arc<[Arc<Endpoint>]>, key: &str) -> Self {
        let mut by: BTreeMap<&str, Vec<(usize, Arc<Endpoint>)>> = BTreeMap::new();
        for (i, e) in endpoints.iter().enumerate() {
            if let Some(v) = version_of(e, key) {
                by.entry(v).or_default().push((i, e.clone()));
            }
        }
        let mut pins: Vec<Pin> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| Pin {
                hash: pin_hash(service, &e.instance_id),
                all: i,
                version: None,
            })
            .collect();
        let versions = by
            .into_iter()
            .enumerate()
            .map(|(vi, (v, list))| {
                for (k, (i, _)) in list.iter().enumerate() {
                    pins[*i].version = Some((vi, k));
                }
                let list: Arc<[Arc<Endpoint>]> = list.into_iter().map(|(_, e)| e).collect();
                (Box::<str>::from(v), list)
            })
            .collect();
        Groups {
            endpoints: endpoints.clone(),
            versions,
            pins: pins.into(),
        }
    }

    fn version(&self, name: &str) -> Option<usize> {
        self.versions
            .binary_search_by(|(v, _)| (**v).cmp(name))
            .ok()
    }
}

impl Canaries {
    /// The policies of a validated configuration; `None` when there are
    /// none (the request path then takes one branch).
    pub fn new(policies: &[CanaryPolicy]) -> Option<Self> {
        if policies.is_empty() {
            return None;
        }
        Some(Canaries {
            policies: policies.iter().map(Canary::new).collect(),
        })
    }

    /// The policy of `service`.
    pub fn get(&self, service: &str) -> Option<&Canary> {
        self.policies.iter().find(|c| &*c.service == service)
    }

    /// `GET /admin/canary`: every policy, its weights in force and the
    /// routable instances per version in `snapshot`.
    pub fn to_json(&self, snapshot: &Snapshot) -> serde_json::Value {
        let list: Vec<_> = self.policies.iter().map(|c| c.to_json(snapshot)).collect();
        json!({ "canary": list })
    }

    /// `PUT /admin/canary/<service>` with `{"weights": {...}}`: the new
    /// weights in force, or the status and message of a refusal (404 for
    /// a service without a policy, 400 for a bad body).
    pub fn put_weights(
        &self,
        service: &str,
        body: &[u8],
    ) -> Result<serde_json::Value, (StatusCode, &'static str, String)> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            weights: BTreeMap<String, i64>,
        }
        let Some(c) = self.get(service) else {
            return Err((
                StatusCode::NOT_FOUND,
                "not_found",
                format!("service {service:?} has no [[canary]] policy"),
            ));
        };
        let body: Body = serde_json::from_slice(body).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body must be {{\"weights\": {{\"<version>\": <weight>, ...}}}}: {e}"),
            )
        })?;
        check_weights(&body.weights).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("weights: {e}"),
            )
        })?;
        let new = Weights::of(&body.weights);
        let json = new.to_json();
        let old = c.weights.swap(Arc::new(new));
        info!(service = %service, from = %old.to_json(), to = %json, "Canary weights changed.");
        Ok(json!({ "service": service, "weights": json }))
    }
}

impl Canary {
    fn new(p: &CanaryPolicy) -> Self {
        Canary {
            service: p.service.as_str().into(),
            version_key: p.version_key.as_str().into(),
            weights: ArcSwap::from_pointee(Weights::of(&p.weights)),
            // Validation checked the names.
            header: p
                .header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            cookie: p.cookie.as_deref().map(Into::into),
            sticky: p.sticky_cookie.as_deref().map(|name| Sticky {
                name: name.into(),
                ttl: p.sticky_ttl,
            }),
            groups: ArcSwapOption::empty(),
        }
    }

    /// The versions of `s`'s instances, built once per snapshot list.
    fn groups(&self, s: &ServiceEndpoints) -> Arc<Groups> {
        if let Some(g) = &*self.groups.load()
            && Arc::ptr_eq(&g.endpoints, &s.endpoints)
        {
            return g.clone();
        }
        let g = Arc::new(Groups::build(
            &self.service,
            &s.endpoints,
            &self.version_key,
        ));
        self.groups.store(Some(g.clone()));
        g
    }

    /// The version `header` or `cookie` asks for, if routable instances
    /// carry it.
    fn requested(&self, headers: &HeaderMap, weights: &Weights, groups: &Groups) -> Option<usize> {
        let from_header = self
            .header
            .as_ref()
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok());
        let from_cookie = || self.cookie.as_deref().and_then(|c| cookie(headers, c));
        let asked = from_header.or_else(from_cookie)?.trim();
        groups.version(asked).or_else(|| {
            (asked == "1" || asked.eq_ignore_ascii_case("true"))
                .then(|| weights.canary().and_then(|v| groups.version(v)))
                .flatten()
        })
    }

    /// Candidates for a request to this policy's service (see module docs).
    pub(crate) fn pick(
        &self,
        balancer: &Balancer,
        s: &ServiceEndpoints,
        headers: &HeaderMap,
    ) -> Result<(Candidates, Option<HeaderValue>), NoEndpoint> {
        let groups = self.groups(s);
        let weights = self.weights.load();
        let requested = self.requested(headers, &weights, &groups);
        let split = !weights.versions.is_empty();
        // May the request use version `vi`?
        let allowed = |vi: usize| match requested {
            Some(r) => r == vi,
            None => !split || weights.weight(&groups.versions[vi].0) > 0,
        };
        if let Some(sticky) = &self.sticky
            && let Some(hash) =
                cookie(headers, &sticky.name).and_then(|v| u64::from_str_radix(v, 16).ok())
            && let Some(pin) = groups.pins.iter().find(|p| p.hash == hash)
        {
            let pinned = match pin.version {
                Some((vi, k)) if allowed(vi) && (requested.is_some() || split) => {
                    balancer.pinned(s, &groups.versions[vi].1, k)
                }
                _ if requested.is_none() && !split => {
                    balancer.pinned(s, &groups.endpoints, pin.all)
                }
                _ => None,
            };
            if let Some(c) = pinned {
                return Ok((c, None));
            }
        }
        let candidates = match requested {
            Some(vi) => balancer.select_in(s, &groups.versions[vi].1)?,
            None if !split => balancer.select(s)?,
            None => self.draw(balancer, s, &weights, &groups)?,
        };
        let set_cookie = self.sticky.as_ref().and_then(|st| {
            let hash = pin_hash(&self.service, &candidates.first().instance_id);
            HeaderValue::from_str(&format!(
                "{}={hash:016x}; Path=/; Max-Age={}; HttpOnly",
                st.name,
                st.ttl.as_secs()
            ))
            .ok()
        });
        Ok((candidates, set_cookie))
    }

    /// The weighted draw over versions that can take traffic; a version
    /// the balancer refuses is left out and the draw repeated.
    fn draw(
        &self,
        balancer: &Balancer,
        s: &ServiceEndpoints,
        weights: &Weights,
        groups: &Groups,
    ) -> Result<Candidates, NoEndpoint> {
        // Bit i: version i of `weights` is out (no weight or instance).
        let mut out: u64 = 0;
        let mut why = NoEndpoint::NoneHealthy;
        let group = |i: usize| groups.version(&weights.versions[i].0);
        for (i, (_, w)) in weights.versions.iter().enumerate() {
            if *w == 0 || group(i).is_none() {
                out |= 1 << i;
            }
        }
        let mut rng = rand::rng();
        loop {
            let live = || {
                weights
                    .versions
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| out & (1 << i) == 0)
            };
            let total: u64 = live().map(|(_, (_, w))| u64::from(*w)).sum();
            if total == 0 {
                return Err(why);
            }
            let mut r = rng.random_range(0..total);
            let Some(i) = live().find_map(|(i, (_, w))| {
                let w = u64::from(*w);
                if r < w {
                    Some(i)
                } else {
                    r -= w;
                    None
                }
            }) else {
                return Err(why);
            };
            let Some(gi) = group(i) else {
                out |= 1 << i;
                continue;
            };
            match balancer.select_in(s, &groups.versions[gi].1) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    if e == NoEndpoint::AllEjected {
                        why = e;
                    }
                    out |= 1 << i;
                }
            }
        }
    }
}

/// Step 3 of the request path for a service with a `[[canary]]` policy
/// (the others take `forward::pick`).
pub(crate) fn pick(
    shared: &Shared,
    canary: &Canary,
    snapshot: &Snapshot,
    service: &Arc<str>,
    headers: &HeaderMap,
) -> Result<Picked, ForwardError> {
    crate::forward::pick_by(shared, snapshot, service, |s| {
        canary.pick(&shared.balancer, s, headers)
    })
    .map(|((candidates, set_cookie), metrics)| Picked {
        candidates,
        metrics,
        set_cookie,
    })
    .map_err(|mut e| {
        if !canary.weights.load().versions.is_empty() && snapshot.services.contains_key(service) {
            e.message = format!(
                "{} among the versions its [[canary]] policy routes to",
                e.message
            )
            .into();
        }
        e
    })
}

#[cfg(test)]
mod tests;
