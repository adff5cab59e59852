//! Request -> service. Routes are registered path prefixes (whole segments)
//! optionally limited to hosts; a service registered without routes gets the
//! default route `/<service name>`.
//!
//! Selection: routes whose hosts name the request's host beat routes without
//! hosts; among those the longest prefix (in segments) wins; ties go to the
//! service whose name sorts first.
//!
//! Matching runs on a normalised copy of the path (RFC 3986 6.2.2:
//! percent-decoding, dot-segment removal, empty segments dropped); the raw
//! path still goes to the backend untouched. Because a decoded `%2F` stays
//! inside its segment and `..` cannot climb above the root, no spelling of a
//! path reaches a service other than the one its normalised form names.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::error::{ErrorKind, ForwardError};
use crate::registry::Visibility;

/// A path split into normalised, percent-decoded segments.
pub type Segments<'a> = Vec<Cow<'a, str>>;

/// Normalises a request path for routing. Refuses paths that do not start
/// with `/` and paths that decode to a NUL byte.
pub fn normalise(path: &str) -> Result<Segments<'_>, ForwardError> {
    if !path.starts_with('/') {
        return Err(ForwardError::new(
            ErrorKind::BadRequest,
            "request path must start with '/'",
        ));
    }
    let mut out: Segments<'_> = Vec::new();
    for raw in path.split('/') {
        let seg = percent_decode_str(raw).decode_utf8_lossy();
        if seg.contains('\0') {
            return Err(ForwardError::new(
                ErrorKind::BadRequest,
                "request path contains a NUL byte",
            ));
        }
        match &*seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    Ok(out)
}

/// What a segment's canonical spelling encodes: `/` (a decoded `%2F` stays
/// inside its segment) and `%` (a decoded `%25` must not decode again).
const SEGMENT_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'/').add(b'%');

/// The spelling of normalised segments as a path: normalising it gives the
/// same segments back (idempotence), so a route's reported prefix names
/// exactly what it matches ("/a%2Fb" stays that, not "/a/b").
pub fn canonical<S: AsRef<str>>(segments: &[S]) -> String {
    let mut out = String::new();
    for s in segments {
        out.push('/');
        out.extend(percent_encoding::utf8_percent_encode(
            s.as_ref(),
            SEGMENT_ENCODE,
        ));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// One routable prefix of one service.
#[derive(Debug, Clone)]
pub struct Route {
    /// Service the route leads to.
    pub service: Arc<str>,
    /// The prefix as registered (normalised form, e.g. "/orders").
    pub prefix: Arc<str>,
    /// Normalised segments of the prefix.
    pub(crate) segments: Vec<String>,
    /// Lower-cased hosts, empty = any.
    pub(crate) hosts: Vec<String>,
    /// Per-route timeout.
    pub timeout: Option<Duration>,
    /// Who may reach the service.
    pub visibility: Visibility,
    /// Requests here always use `Stream` when the instance streams.
    pub stream: bool,
    /// Longest `Stream` exchange; `None` = the gateway's default.
    pub max_duration: Option<Duration>,
    /// The registration's hint: the backend sees the path without the
    /// prefix (a `[[routes]]` rule that says otherwise wins).
    pub strip_prefix: bool,
    /// Request metric handles of this route (filled on first use).
    pub metrics: Arc<crate::metrics::RouteMetrics>,
}

impl Route {
    /// A route for `service` at `prefix`. `prefix` must start with '/'.
    pub fn new(
        service: Arc<str>,
        prefix: &str,
        hosts: &[String],
        timeout: Option<Duration>,
        visibility: Visibility,
    ) -> Result<Self, ForwardError> {
        let segments: Vec<String> = normalise(prefix)?
            .into_iter()
            .map(Cow::into_owned)
            .collect();
        let prefix: Arc<str> = canonical(&segments).into();
        Ok(Self {
            metrics: Arc::new(crate::metrics::RouteMetrics::new(&service, &prefix)),
            service,
            prefix,
            segments,
            hosts: hosts
                .iter()
                .map(|h| strip_port(h).to_ascii_lowercase())
                .collect(),
            timeout,
            visibility,
            stream: false,
            max_duration: None,
            strip_prefix: false,
        })
    }

    /// The hosts the route is limited to (lower case, no port); empty =
    /// any host.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    pub(crate) fn matches(&self, host: &str, segs: &[Cow<'_, str>]) -> bool {
        (self.hosts.is_empty() || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
            && segs.len() >= self.segments.len()
            && self.segments.iter().zip(segs).all(|(a, b)| a == b)
    }

    /// Sort key: host-specific first, then longer prefixes, then service name.
    pub(crate) fn rank(&self) -> (bool, std::cmp::Reverse<usize>, Arc<str>) {
        (
            self.hosts.is_empty(),
            std::cmp::Reverse(self.segments.len()),
            self.service.clone(),
        )
    }
}

/// Strips a port from an authority: `h:1` -> `h`, `[::1]:1` -> `[::1]`.
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.find(']').map_or(authority, |i| &authority[..=i]);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// An immutable routing table, rebuilt whenever the catalogue changes.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Routes by the first segment of their prefix, each list in rank order.
    by_first: HashMap<String, Vec<Route>>,
    /// Catch-all routes (prefix "/"), in rank order.
    root: Vec<Route>,
}

impl RouteTable {
    /// Builds a table; duplicate (prefix, hosts) pairs across services keep
    /// the first in rank order, and are reported as conflicts.
    pub fn new(routes: impl IntoIterator<Item = Route>) -> (Self, Vec<String>) {
        let mut all: Vec<Route> = routes.into_iter().collect();
        all.sort_by_key(Route::rank);
        let mut conflicts = Vec::new();
        let mut seen: HashMap<(Vec<String>, Vec<String>), Arc<str>> = HashMap::new();
        let mut table = RouteTable::default();
        for r in all {
            let mut hosts = r.hosts.clone();
            hosts.sort();
            let key = (r.segments.clone(), hosts);
            if let Some(owner) = seen.get(&key) {
                if **owner != *r.service {
                    conflicts.push(format!(
                        "route {} of service {} is shadowed by service {}",
                        r.prefix, r.service, owner
                    ));
                }
                continue;
            }
            seen.insert(key, r.service.clone());
            match r.segments.first() {
                Some(first) => table.by_first.entry(first.clone()).or_default().push(r),
                None => table.root.push(r),
            }
        }
        (table, conflicts)
    }

    /// The best route for a request, among the visibilities `allowed`.
    pub fn lookup(
        &self,
        authority: &str,
        segs: &[Cow<'_, str>],
        allowed: impl Fn(Visibility) -> bool,
    ) -> Option<&Route> {
        let host = strip_port(authority);
        let candidates = segs.first().and_then(|s| self.by_first.get(s.as_ref()));
        fn pick<'r>(
            list: Option<&'r Vec<Route>>,
            host: &str,
            segs: &[Cow<'_, str>],
            allowed: &impl Fn(Visibility) -> bool,
        ) -> Option<&'r Route> {
            list?
                .iter()
                .find(|r| allowed(r.visibility) && r.matches(host, segs))
        }
        // A host-specific catch-all outranks a host-less prefix.
        let specific = pick(candidates, host, segs, &allowed);
        let root = pick(Some(&self.root), host, segs, &allowed);
        match (specific, root) {
            (Some(s), Some(r)) if r.rank() < s.rank() => Some(r),
            (Some(s), _) => Some(s),
            (None, r) => r,
        }
    }

    /// Every route, in no particular order (admin view).
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.by_first.values().flatten().chain(&self.root)
    }

    /// Every route that matches the request whatever its visibility, in the
    /// order [`RouteTable::lookup`] ranks them: the first one a listener
    /// allows is the one `lookup` returns (admin explain).
    pub fn matching(&self, authority: &str, segs: &[Cow<'_, str>]) -> Vec<&Route> {
        let host = strip_port(authority);
        let mut all: Vec<&Route> = self.iter().filter(|r| r.matches(host, segs)).collect();
        all.sort_by_key(|r| r.rank());
        all
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.by_first.values().map(Vec::len).sum::<usize>() + self.root.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which listener a request came in on; decides which services it may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Public traffic: `public` services only.
    Public,
    /// Service-to-service: `public` and `internal`.
    Internal,
    /// Operators: every visibility.
    Admin,
}

impl Listener {
    /// Whether a service of visibility `v` is reachable from here.
    pub fn allows(self, v: crate::registry::Visibility) -> bool {
        use crate::registry::Visibility;
        match self {
            Listener::Public => v == Visibility::Public,
            Listener::Internal => v != Visibility::Admin,
            Listener::Admin => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(svc: &str, prefix: &str, hosts: &[&str]) -> Route {
        let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        Route::new(svc.into(), prefix, &hosts, None, Visibility::Public).unwrap()
    }

    fn table() -> RouteTable {
        RouteTable::new([
            route("orders", "/orders", &[]),
            route("order-admin", "/orders/admin", &[]),
            route("shop", "/", &["shop.example"]),
            route("fallback", "/", &[]),
            route("beta", "/orders", &["beta.example"]),
        ])
        .0
    }

    fn find(t: &RouteTable, host: &str, path: &str) -> Option<String> {
        let segs = normalise(path).ok()?;
        t.lookup(host, &segs, |_| true)
            .map(|r| r.service.to_string())
    }

    #[test]
    fn longest_prefix_and_host_rules() {
        let t = table();
        assert_eq!(find(&t, "x", "/orders/1").as_deref(), Some("orders"));
        assert_eq!(
            find(&t, "x", "/orders/admin/1").as_deref(),
            Some("order-admin")
        );
        assert_eq!(find(&t, "x", "/ordersx").as_deref(), Some("fallback"));
        assert_eq!(
            find(&t, "beta.example:443", "/orders/1").as_deref(),
            Some("beta")
        );
        assert_eq!(
            find(&t, "SHOP.example", "/orders/1").as_deref(),
            Some("shop")
        );
        assert_eq!(find(&t, "x", "/").as_deref(), Some("fallback"));
    }

    #[test]
    fn normalisation_cannot_escape_the_named_service() {
        let t = RouteTable::new([
            route("public", "/public", &[]),
            route("admin", "/admin", &[]),
        ])
        .0;
        assert_eq!(
            find(&t, "h", "/public/../admin/x").as_deref(),
            Some("admin")
        );
        assert_eq!(
            find(&t, "h", "/public/%2e%2e/admin").as_deref(),
            Some("admin")
        );
        assert_eq!(find(&t, "h", "//public//x").as_deref(), Some("public"));
        assert_eq!(find(&t, "h", "/../../public").as_deref(), Some("public"));
        // An encoded slash stays inside its segment: not "/public/../admin".
        assert_eq!(find(&t, "h", "/public%2F..%2Fadmin"), None);
        assert_eq!(find(&t, "h", "/%70ublic/x").as_deref(), Some("public"));
        assert!(normalise("/a%00b").is_err());
        assert!(normalise("*").is_err());
    }

    #[test]
    fn matching_ranks_like_lookup() {
        let t = table();
        for (host, path) in [
            ("x", "/orders/admin/1"),
            ("beta.example", "/orders/1"),
            ("shop.example", "/x"),
        ] {
            let segs = normalise(path).unwrap();
            let all = t.matching(host, &segs);
            let best = t.lookup(host, &segs, |_| true).unwrap();
            assert_eq!(all[0].service, best.service, "{host}{path}");
            assert!(all.len() >= 2);
        }
    }

    #[test]
    fn visibility_filter_hides_services() {
        let mut r = route("secret", "/secret", &[]);
        r.visibility = Visibility::Internal;
        let t = RouteTable::new([r]).0;
        let segs = normalise("/secret/x").unwrap();
        assert!(t.lookup("h", &segs, |v| v == Visibility::Public).is_none());
        assert!(t.lookup("h", &segs, |_| true).is_some());
    }

    #[test]
    fn conflicts_are_reported_and_deterministic() {
        let (t, c) = RouteTable::new([route("b", "/x", &[]), route("a", "/x", &[])]);
        assert_eq!(find(&t, "h", "/x").as_deref(), Some("a"));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_route_prefix_is_spelled_so_that_it_normalises_to_itself() {
        assert_eq!(&*route("a", "/x/%2e%2e/a%2Fb/", &[]).prefix, "/a%2Fb");
        assert_eq!(&*route("a", "/%2541", &[]).prefix, "/%2541");
        assert_eq!(&*route("a", "//./", &[]).prefix, "/");
        // Found by the routing fuzz target: "%%44" decodes to "%D", which
        // spelled as is would decode again.
        let segs = normalise("/%%44AS%DS/%%4A").unwrap();
        assert_eq!(normalise(&canonical(&segs)).unwrap(), segs);
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("h:80"), "h");
        assert_eq!(strip_port("h"), "h");
    }

    proptest! {
        /// Whatever the spelling, the chosen service is the one the
        /// normalised path names.
        #[test]
        fn routing_agrees_with_the_normalised_path(path in "(/(a|b|\\.|\\.\\.|%2e|%2E%2e|%2F|x|)){1,8}") {
            let t = RouteTable::new([route("a", "/a", &[]), route("b", "/b", &[])]).0;
            let segs = normalise(&path).unwrap();
            let got = t.lookup("h", &segs, |_| true).map(|r| r.service.to_string());
            let expect = match segs.first().map(|s| s.as_ref()) {
                Some("a") => Some("a".to_string()),
                Some("b") => Some("b".to_string()),
                _ => None,
            };
            prop_assert_eq!(got, expect);
        }

        #[test]
        fn normalise_never_panics(path in "\\PC{0,64}") {
            let _ = normalise(&path);
        }
    }

    #[test]
    fn listener_visibility() {
        assert!(Listener::Public.allows(crate::registry::Visibility::Public));
        assert!(!Listener::Public.allows(crate::registry::Visibility::Internal));
        assert!(!Listener::Internal.allows(crate::registry::Visibility::Admin));
        assert!(Listener::Admin.allows(crate::registry::Visibility::Admin));
    }
}
