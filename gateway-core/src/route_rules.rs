//! `[[routes]]`: what the operator changes on the requests and answers of a
//! route - the path the backend sees (`strip_prefix`, `rewrite_prefix`),
//! header edits both ways, CORS, and the route's body limit and timeout.
//!
//! A rule is chosen as every policy section chooses (policy.rs `Scope`:
//! service + optional prefix, the longest prefix wins), once per request,
//! after routing (`apply`). A registration may only hint `strip_prefix`;
//! a rule that says `strip_prefix` or `rewrite_prefix` wins over the hint.
//! With no `[[routes]]` and no hint, the request path takes one branch.
//!
//! The path is rewritten on the request itself (its URI), before it is
//! encoded: both encoders (`convert::request_to_wire`, `convert::wire`),
//! streams and WebSockets send the same rewritten path, the query as the
//! client wrote it.
//!
//! CORS is written here rather than with tower-http's `CorsLayer`: that
//! layer is configured once for the service it wraps, while our policy is
//! known only after routing (per service and prefix, inside `forward`); and
//! it answers a refused preflight with a 200 that lacks the headers, where
//! the gateway answers 403 `cors_refused` through its one error edge, so a
//! client (and a log reader) sees why.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::Body;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri, request::Parts};

use crate::config::{ConfigError, CorsConfig, HeaderEdits, RouteRule, ScopedToken};
use crate::error::{ErrorKind, ForwardError};
use crate::forward::Target;
use crate::policy::Scope;

/// Sent to the backend when its path was rewritten: the prefix the client
/// used, so it can build links (the `X-Forwarded-Prefix` of Spring, Traefik).
pub const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// The compiled `[[routes]]`, longest prefix first.
#[derive(Debug)]
pub struct RouteRules {
    rules: Vec<Rule>,
}

/// One compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    scope: Scope,
    path: PathRule,
    request: Edits,
    response: Edits,
    max_body_bytes: Option<usize>,
    timeout: Option<Duration>,
    cors: Option<Cors>,
}

/// What a rule does to the path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathRule {
    /// Whatever the registration hints (`strip_prefix`).
    Hint,
    /// The path as the client sent it, whatever the hint.
    Keep,
    /// The route's prefix replaced with this one (`/` = stripped).
    Replace(Box<str>),
}

#[derive(Debug, Default)]
struct Edits {
    remove: Vec<HeaderName>,
    add: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug)]
struct Cors {
    /// `None` = any origin (`*`).
    origins: Option<Vec<HeaderValue>>,
    methods: Vec<Method>,
    allow_methods: HeaderValue,
    /// `None` = any header (`*`, answered by echoing the request's list).
    headers: Option<Vec<HeaderName>>,
    allow_headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

/// What [`apply`] decided.
pub(crate) enum Applied<'r> {
    /// A CORS preflight answered by the gateway (204).
    Answered(Response<Body>),
    /// Forward the request; a rule's answer edits, if one matched.
    Forward(Option<Answer<'r>>),
}

/// A matched rule: its edits of the request ([`rewrite`]) and the answer.
pub(crate) struct Answer<'r> {
    rule: &'r Rule,
    /// The request's `Origin`, when the rule's CORS allows it.
    origin: Option<HeaderValue>,
}

impl RouteRules {
    /// Compiles the `[[routes]]` entries (`Ok(None)` when there are none),
    /// refusing a bad one with an error naming the setting.
    pub fn new(rules: &[RouteRule]) -> Result<Option<Self>, ConfigError> {
        if rules.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            let prefix = r.prefix.as_deref().unwrap_or("/");
            if rules[..i]
                .iter()
                .any(|q| q.service == r.service && q.prefix.as_deref().unwrap_or("/") == prefix)
            {
                return Err(bad(
                    "routes.prefix",
                    i,
                    format!(
                        "a second rule for service {} with the same prefix",
                        r.service
                    ),
                ));
            }
            out.push(Rule::new(i, r)?);
        }
        // Stable: equal lengths keep the file's order (they cannot both
        // cover one request: same service and length means same prefix).
        out.sort_by_key(|r| r.scope.specificity());
        Ok(Some(RouteRules { rules: out }))
    }

    /// The rule for a request routed to `service` at `route_prefix`.
    fn find(&self, service: &str, route_prefix: &str, parts: &Parts) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.scope.covers(service, route_prefix, parts))
    }
}

fn bad(setting: &'static str, i: usize, reason: String) -> ConfigError {
    ConfigError {
        setting,
        reason: format!("entry {i}: {reason}"),
    }
}

/// A normalised prefix as routing writes it (`/a/b`, no trailing `/`), the
/// same check `[[rate_limits]]` prefixes pass.
fn canonical_prefix(p: &str) -> bool {
    p.starts_with('/')
        && crate::routing::normalise(p)
            .ok()
            .map(|s| crate::routing::canonical(&s))
            .as_deref()
            == Some(p)
}

/// Header names a rule may not touch: hop-by-hop fields and framing are
/// the gateway's business, and so are the fields it sets on every request.
fn reserved(name: &HeaderName, request: bool) -> bool {
    crate::convert::is_hop_by_hop(name)
        || name == header::CONTENT_LENGTH
        || (request
            && (name == header::HOST
                || name == "x-forwarded-for"
                || name == "x-forwarded-proto"
                || name == "x-forwarded-host"
                || name == crate::request_id::HEADER))
}

impl Edits {
    fn new(
        i: usize,
        e: &HeaderEdits,
        request: bool,
        settings: (&'static str, &'static str),
    ) -> Result<Self, ConfigError> {
        let name = |setting, n: &str| {
            let h = HeaderName::try_from(n)
                .map_err(|_| bad(setting, i, format!("{n:?} is not a header name")))?;
            if reserved(&h, request) {
                return Err(bad(
                    setting,
                    i,
                    format!("{n} is set by the gateway (hop-by-hop, framing or forwarding)"),
                ));
            }
            Ok(h)
        };
        let mut out = Edits::default();
        for n in &e.remove {
            out.remove.push(name(settings.1, n)?);
        }
        for (n, v) in &e.add {
            let h = name(settings.0, n)?;
            let v = HeaderValue::from_str(v).map_err(|_| {
                bad(
                    settings.0,
                    i,
                    format!("the value of {n} is not a header value"),
                )
            })?;
            out.add.push((h, v));
        }
        Ok(out)
    }

    /// `remove` first, then `add` (replacing).
    fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.add {
            h.insert(n.clone(), v.clone());
        }
    }
}

/// `scheme://host[:port]`, as a browser writes an `Origin`.
fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    scheme_ok
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@'])
        && crate::forward::valid_host(rest.as_bytes())
}

fn joined<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    let s = items.collect::<Vec<_>>().join(", ");
    (!s.is_empty())
        .then(|| HeaderValue::from_str(&s).ok())
        .flatten()
}

impl Cors {
    fn new(i: usize, c: &CorsConfig) -> Result<Self, ConfigError> {
        let any = |l: &[String]| l.iter().any(|o| o == "*");
        if c.allow_origins.is_empty() {
            return Err(bad(
                "routes.cors.allow_origins",
                i,
                "lists no origin (use [\"*\"] for any)".into(),
            ));
        }
        let origins = if any(&c.allow_origins) {
            if c.allow_origins.len() > 1 {
                return Err(bad(
                    "routes.cors.allow_origins",
                    i,
                    "\"*\" stands alone".into(),
                ));
            }
            if c.allow_credentials {
                return Err(bad(
                    "routes.cors.allow_credentials",
                    i,
                    "browsers refuse credentials with allow_origins = [\"*\"]: list the origins"
                        .into(),
                ));
            }
            None
        } else {
            let mut list = Vec::new();
            for o in &c.allow_origins {
                if !valid_origin(o) {
                    return Err(bad(
                        "routes.cors.allow_origins",
                        i,
                        format!(
                            "{o:?} is not an origin such as https://app.example (scheme, host, optional port; no path)"
                        ),
                    ));
                }
                list.push(HeaderValue::from_str(o).map_err(|_| {
                    bad(
                        "routes.cors.allow_origins",
                        i,
                        format!("{o:?} is not an origin"),
                    )
                })?);
            }
            Some(list)
        };
        if c.allow_methods.is_empty() {
            return Err(bad(
                "routes.cors.allow_methods",
                i,
                "lists no method".into(),
            ));
        }
        let mut methods = Vec::new();
        for m in &c.allow_methods {
            let ok = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
            match Method::from_bytes(m.as_bytes()) {
                Ok(m) if ok => methods.push(m),
                _ => {
                    return Err(bad(
                        "routes.cors.allow_methods",
                        i,
                        format!("{m:?} is not a method such as GET (upper case)"),
                    ));
                }
            }
        }
        let headers = if any(&c.allow_headers) {
            None
        } else {
            let mut list = Vec::new();
            for h in &c.allow_headers {
                list.push(HeaderName::try_from(h.as_str()).map_err(|_| {
                    bad(
                        "routes.cors.allow_headers",
                        i,
                        format!("{h:?} is not a header name"),
                    )
                })?);
            }
            Some(list)
        };
        for h in &c.expose_headers {
            if h != "*" && HeaderName::try_from(h.as_str()).is_err() {
                return Err(bad(
                    "routes.cors.expose_headers",
                    i,
                    format!("{h:?} is not a header name"),
                ));
            }
        }
        Ok(Cors {
            allow_methods: joined(methods.iter().map(Method::as_str))
                .unwrap_or(HeaderValue::from_static("GET")),
            methods,
            allow_headers: headers
                .as_ref()
                .and_then(|l| joined(l.iter().map(HeaderName::as_str))),
            headers,
            origins,
            expose: joined(c.expose_headers.iter().map(String::as_str)),
            max_age: c.max_age.map(|d| HeaderValue::from(d.as_secs())),
            credentials: c.allow_credentials,
        })
    }

    /// The `Access-Control-Allow-Origin` for this request's `Origin`, when
    /// allowed.
    fn allowed_origin(&self, parts: &Parts) -> Option<HeaderValue> {
        let origin = parts.headers.get(header::ORIGIN)?;
        match &self.origins {
            None => Some(HeaderValue::from_static("*")),
            Some(list) => list
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    /// The gateway's answer to a preflight: 204 with the `Access-Control-*`
    /// fields, or 403 `cors_refused` naming what is not allowed.
    fn preflight(&self, parts: &Parts, rule: &Rule) -> Result<Response<Body>, ForwardError> {
        let refused = |what: String| {
            ForwardError::new(
                ErrorKind::CorsRefused,
                format!("CORS preflight refused: {what} is not allowed on this route"),
            )
        };
        let h = &parts.headers;
        let origin = self.allowed_origin(parts).ok_or_else(|| {
            let o = h
                .get(header::ORIGIN)
                .map(|o| String::from_utf8_lossy(o.as_bytes()));
            refused(format!("origin {}", o.unwrap_or_default()))
        })?;
        let method = h
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !self.methods.iter().any(|m| m.as_str().as_bytes() == method) {
            return Err(refused(format!(
                "method {}",
                String::from_utf8_lossy(method)
            )));
        }
        let requested = h.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        if let (Some(allowed), Some(req)) = (&self.headers, requested) {
            let list = req
                .to_str()
                .map_err(|_| refused("that header list".into()))?;
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !allowed
                    .iter()
                    .any(|a| a.as_str().eq_ignore_ascii_case(name))
                {
                    return Err(refused(format!("request header {name}")));
                }
            }
        }
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let out = resp.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        let allow_headers = match &self.headers {
            Some(_) => self.allow_headers.clone(),
            None => requested.cloned(),
        };
        if let Some(v) = allow_headers {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(v) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, v.clone());
        }
        if self.credentials {
            out.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        rule.response.apply(out);
        Ok(resp)
    }

    /// The CORS fields of an actual answer. The backend's own
    /// `Access-Control-*` fields are dropped: on a route with `[routes.cors]`
    /// the gateway alone decides.
    fn answer(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        for n in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            h.remove(n);
        }
        // The answer depends on the Origin whenever the origin is echoed
        // (or refused): a shared cache must not serve one origin's to another.
        if self.origins.is_some() {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        let Some(origin) = origin else {
            return;
        };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if let Some(v) = &self.expose {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
}

impl Rule {
    fn new(i: usize, r: &RouteRule) -> Result<Self, ConfigError> {
        if ScopedToken::bad_pattern(&r.service).is_some() || r.service.ends_with('*') {
            return Err(bad(
                "routes.service",
                i,
                format!("{:?} is not a service name", r.service),
            ));
        }
        if let Some(p) = &r.prefix
            && !canonical_prefix(p)
        {
            return Err(bad(
                "routes.prefix",
                i,
                format!(
                    "{p:?} is not a normalised route prefix such as /orders (no empty, '.' or '..' segments, no percent-encoding, no trailing '/')"
                ),
            ));
        }
        let path = match (r.strip_prefix, &r.rewrite_prefix) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "routes.rewrite_prefix",
                    i,
                    "strip_prefix and rewrite_prefix are exclusive: set one".into(),
                ));
            }
            (None, None) => PathRule::Hint,
            (Some(false), None) => PathRule::Keep,
            (Some(true), None) => PathRule::Replace("/".into()),
            (None, Some(p)) if canonical_prefix(p) && !p.contains('%') => {
                PathRule::Replace(p.as_str().into())
            }
            (None, Some(p)) => {
                return Err(bad(
                    "routes.rewrite_prefix",
                    i,
                    format!(
                        "{p:?} is not a normalised path prefix such as /v2 (no empty, '.' or '..' segments, no percent-encoding, no trailing '/')"
                    ),
                ));
            }
        };
        if r.max_body_bytes == Some(0) {
            return Err(bad(
                "routes.max_body_bytes",
                i,
                "must be greater than 0".into(),
            ));
        }
        if let Some(t) = r.timeout
            && (t.is_zero() || t > Duration::from_secs(365 * 86_400))
        {
            return Err(bad(
                "routes.timeout",
                i,
                "must be between 1ms and a year".into(),
            ));
        }
        Ok(Rule {
            scope: Scope::new(&r.service, r.prefix.as_deref()),
            path,
            request: Edits::new(
                i,
                &r.request_headers,
                true,
                (
                    "routes.request_headers.add",
                    "routes.request_headers.remove",
                ),
            )?,
            response: Edits::new(
                i,
                &r.response_headers,
                false,
                (
                    "routes.response_headers.add",
                    "routes.response_headers.remove",
                ),
            )?,
            max_body_bytes: r.max_body_bytes,
            timeout: r.timeout,
            cors: r.cors.as_ref().map(|c| Cors::new(i, c)).transpose()?,
        })
    }
}

/// A CORS preflight: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method` (Fetch standard, 3.2.2).
fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts.headers.contains_key(header::ORIGIN)
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Step 2a: the route's rule, if a `[[routes]]` entry covers it: answers
/// a CORS preflight, sets the body limit and timeout on `target`. The
/// request itself is changed later ([`rewrite`]): the policies between
/// (rate limits, auth) match the path the client sent. One branch when
/// there are no rules.
#[inline]
pub(crate) fn apply<'r>(
    rules: Option<&'r RouteRules>,
    parts: &Parts,
    target: &mut Target,
) -> Result<Applied<'r>, ForwardError> {
    let Some(rules) = rules else {
        return Ok(Applied::Forward(None));
    };
    let Some(rule) = rules.find(&target.service, &target.prefix, parts) else {
        return Ok(Applied::Forward(None));
    };
    if let Some(cors) = &rule.cors
        && is_preflight(parts)
    {
        return cors.preflight(parts, rule).map(Applied::Answered);
    }
    if let Some(n) = rule.max_body_bytes {
        target.max_body_bytes = n;
        target.max_stream_body_bytes = n as u64;
    }
    if let Some(t) = rule.timeout {
        target.timeout = t;
    }
    let origin = rule.cors.as_ref().and_then(|c| c.allowed_origin(parts));
    Ok(Applied::Forward(Some(Answer { rule, origin })))
}

/// Step 3a, just before dispatch: the path the backend sees (the rule's,
/// else the registration's `strip_prefix` hint) and the rule's request
/// header edits (`remove`, then `add`).
pub(crate) fn rewrite(
    matched: Option<&Answer<'_>>,
    parts: &mut Parts,
    target: &Target,
) -> Result<(), ForwardError> {
    let path = matched.map_or(&PathRule::Hint, |m| &m.rule.path);
    match path {
        PathRule::Hint if target.strip_prefix => rewrite_path(parts, &target.prefix, "/")?,
        PathRule::Hint | PathRule::Keep => {}
        PathRule::Replace(to) => rewrite_path(parts, &target.prefix, to)?,
    }
    if let Some(m) = matched {
        m.rule.request.apply(&mut parts.headers);
    }
    Ok(())
}

/// What admin explain shows of step 2a and 3a for a request: the rule that
/// covers it (`null`: none), the path and query the backend would get and
/// the body limit; `target` gets the rule's limits, as on the request path.
pub(crate) fn explain(
    rules: Option<&RouteRules>,
    parts: &Parts,
    target: &mut Target,
) -> serde_json::Value {
    let matched = match apply(rules, parts, target) {
        Ok(Applied::Forward(m)) => m,
        Ok(Applied::Answered(_)) | Err(_) => None,
    };
    let (mut sent, ()) = http::Request::new(()).into_parts();
    sent.method = parts.method.clone();
    sent.uri = parts.uri.clone();
    sent.headers = parts.headers.clone();
    let backend_path = rewrite(matched.as_ref(), &mut sent, target).ok().map(|()| {
        sent.uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned()
    });
    serde_json::json!({
        "matched": matched.as_ref().map(|m| serde_json::json!({
            "service": &*m.rule.scope.service,
            "prefix": &*m.rule.scope.prefix,
        })),
        "backend_path": backend_path,
        "max_body_bytes": target.max_body_bytes,
    })
}

impl Answer<'_> {
    /// The rule's edits on the answer's head (unary or streamed).
    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        if let Some(cors) = &self.rule.cors {
            cors.answer(self.origin.as_ref(), h);
        }
        self.rule.response.apply(h);
    }

    /// The CORS fields on the gateway's own answers (401, 403, 429, 413,
    /// 502, 504...), so a page from an allowed origin can read why; the
    /// header edits are for the backend's answers only.
    pub(crate) fn apply_to_error(&self, e: &mut ForwardError) {
        if self.rule.cors.is_some() {
            self.apply_cors(e.headers.get_or_insert_default());
        }
    }

    /// Only the CORS fields, on an answer that is not the backend's (a
    /// forward-auth service's refusal).
    pub(crate) fn apply_cors(&self, h: &mut HeaderMap) {
        if let Some(cors) = &self.rule.cors {
            cors.answer(self.origin.as_ref(), h);
        }
    }
}

/// What a segment is percent-encoded with when the path has to be
/// rebuilt from its normalised segments: everything but RFC 3986 `pchar`.
const PCHAR_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// The part of `path` below `route_prefix` (`/1` of `/product/1`, "" for
/// `/product`). As the client wrote it when it plainly starts with the
/// prefix and has nothing to normalise; otherwise rebuilt from the
/// normalised segments (routing matched those), so no spelling
/// (`//product/%2e%2e/x`) hands the backend a path above what it was given.
fn below<'p>(path: &'p str, route_prefix: &str) -> Result<Cow<'p, str>, ForwardError> {
    let literal = if route_prefix == "/" {
        Some(path)
    } else {
        path.strip_prefix(route_prefix)
            .filter(|r| r.is_empty() || r.starts_with('/'))
    };
    if let Some(rest) = literal
        && !rest.contains("//")
        && !rest.contains("/.")
        && !rest.contains('%')
    {
        return Ok(Cow::Borrowed(if rest == "/" { "" } else { rest }));
    }
    let segments = crate::routing::normalise(path)?;
    let skip = route_prefix.split('/').filter(|s| !s.is_empty()).count();
    let mut out = String::new();
    for s in segments.iter().skip(skip) {
        out.push('/');
        out.extend(percent_encoding::utf8_percent_encode(s, PCHAR_ENCODE));
    }
    if !out.is_empty() && path.ends_with('/') {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Replaces the route's prefix of the request's path with `to` (`/` =
/// strip), keeping the query, and tells the backend the prefix the client
/// used in `X-Forwarded-Prefix` (a client's own is replaced).
fn rewrite_path(parts: &mut Parts, route_prefix: &str, to: &str) -> Result<(), ForwardError> {
    let (path, query) = proto::convert::split_target(&parts.uri);
    let rest = below(path, route_prefix)?;
    let base = if to == "/" { "" } else { to };
    let mut target = String::with_capacity(base.len() + rest.len() + 1 + query.map_or(0, str::len));
    target.push_str(base);
    target.push_str(&rest);
    if target.is_empty() {
        target.push('/');
    }
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(target.parse().map_err(|_| {
        ForwardError::new(
            ErrorKind::BadRequest,
            "the rewritten request path is not valid",
        )
    })?);
    parts.uri = Uri::from_parts(uri).map_err(|_| {
        ForwardError::new(
            ErrorKind::BadRequest,
            "the rewritten request path is not valid",
        )
    })?;
    if let Ok(v) = HeaderValue::from_str(route_prefix) {
        parts.headers.insert(X_FORWARDED_PREFIX, v);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
