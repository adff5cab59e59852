//! Where an operator's route policy applies: the one matching rule every
//! `[[...]]` policy section (rate limits, auth, cache, route rules, canary)
//! shares, so a policy written for `service = "todos", prefix = "/todos/x"`
//! covers the same requests whichever feature it configures.
//!
//! A policy names a service and, optionally, a route prefix (canonical:
//! starts with `/`, no trailing `/`). It covers a request routed to that
//! service when the policy's prefix is the route's prefix or above it, or
//! when it lies below the route's prefix and the request's *normalised*
//! path falls under it (so `//login` or `/%6cogin` cannot slip past a
//! policy on `/api/login` of a service routed at `/api`). Among several
//! policies of one kind, the longest prefix wins: sort them with
//! [`Scope::specificity`] and take the first that [`Scope::covers`].

/// A policy's service and prefix (see module docs).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub service: Box<str>,
    /// Canonical; `/` when the policy named no prefix.
    pub prefix: Box<str>,
}

impl Scope {
    pub(crate) fn new(service: &str, prefix: Option<&str>) -> Self {
        Scope {
            service: service.into(),
            prefix: prefix.unwrap_or("/").into(),
        }
    }

    /// Sort key: longest prefix first (`sort_by_key(|p| p.scope.specificity())`).
    pub(crate) fn specificity(&self) -> std::cmp::Reverse<usize> {
        std::cmp::Reverse(self.prefix.len())
    }

    /// Whether this policy covers a request routed to `service` at
    /// `route_prefix`. Allocates only for a policy deeper than the route.
    pub(crate) fn covers(
        &self,
        service: &str,
        route_prefix: &str,
        parts: &http::request::Parts,
    ) -> bool {
        &*self.service == service
            && (covers(&self.prefix, route_prefix)
                || (covers(route_prefix, &self.prefix) && path_under(&self.prefix, parts)))
    }
}

/// Whether a policy at `policy` covers a route at `route`: the same prefix
/// or one under it, on whole segments (both canonical).
fn covers(policy: &str, route: &str) -> bool {
    policy == "/"
        || route
            .strip_prefix(policy)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether the request's path, normalised as routing normalises it, lies at
/// or under `policy`.
fn path_under(policy: &str, parts: &http::request::Parts) -> bool {
    crate::routing::normalise(parts.uri.path())
        .is_ok_and(|s| covers(policy, &crate::routing::canonical(&s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(path: &str) -> http::request::Parts {
        http::Request::get(path).body(()).unwrap().into_parts().0
    }

    #[test]
    fn whole_segments_and_deeper_policies() {
        let s = Scope::new("api", Some("/api/login"));
        assert!(s.covers("api", "/api/login", &parts("/api/login")));
        assert!(s.covers("api", "/api", &parts("/api/login/x")));
        assert!(s.covers("api", "/api", &parts("//api/%6cogin")));
        assert!(!s.covers("api", "/api", &parts("/api/loginx")));
        assert!(!s.covers("other", "/api/login", &parts("/api/login")));
        let all = Scope::new("api", None);
        assert!(all.covers("api", "/anything", &parts("/anything")));
    }
}
