//! The innermost service of the request path: route, read the body within
//! limits, pick an instance, call `ForwardingService.Send`, convert back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::time::Instant;
use tower::Service;
use tracing::{debug, warn};

use crate::balance::{Candidates, Endpoint, NoEndpoint, ServiceEndpoints, Snapshot};
use crate::config::LimitsConfig;
use crate::convert::wire::{self, EncodedRequest};
use crate::convert::{RequestMeta, ResponseTarget, has_token, request_to_wire, response_from_wire};
use crate::error::{ErrorKind, ForwardError};
use crate::metrics::{self, FailureKind, RouteMetrics, ServiceMetrics};
use crate::request_id::RequestId;
use crate::routing::{Listener, Route, normalise};
use crate::server::PeerAddr;
use crate::shared::Shared;
use crate::stream::{self, BodySlot, Exchange, RequestFrames, StreamBody, StreamLimits};
use crate::upstream::{Failure, failure_of};
use proto::v1::{ForwardingResp, StreamRequest, StreamResponse, stream_request, stream_response};

/// The forwarding service (see module docs).
#[derive(Clone)]
pub struct Forward {
    shared: Arc<Shared>,
    listener: Listener,
}

impl Forward {
    /// A forwarding service for one listener.
    pub fn new(shared: Arc<Shared>, listener: Listener) -> Self {
        Self { shared, listener }
    }
}

impl<B> Service<Request<B>> for Forward
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = ForwardError;
    type Future = BoxFuture<'static, Result<Response<Body>, ForwardError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        let listener = self.listener;
        Box::pin(async move {
            // Also the start of the route's timeout budget.
            let started = Instant::now();
            let metrics = shared.balancer.metrics().enabled();
            if !metrics && shared.access_log.is_none() {
                // Neither metrics nor the access log: nothing is noted.
                let mut trail = Trail::default();
                return traced(&shared, listener, req, started, &mut trail).await;
            }
            observed(&shared, listener, req, started, metrics).await
        })
    }
}

/// What the steps of [`forward`] learn that the metrics and the access log
/// report. Each part is filled only when its reader is on.
#[derive(Default)]
pub(crate) struct Trail {
    /// Metrics are on: note the route's handles.
    metrics: bool,
    /// The access log is on: note the rest.
    log: bool,
    route_metrics: Option<Arc<RouteMetrics>>,
    /// Service and route prefix.
    route: Option<(Arc<str>, Arc<str>)>,
    instance: Option<Arc<str>>,
    upstream: Option<Duration>,
    bytes_in: Option<u64>,
}

/// [`forward`] inside the request's OpenTelemetry span when traces are on.
async fn traced<B>(
    shared: &Shared,
    listener: Listener,
    req: Request<B>,
    started: Instant,
    trail: &mut Trail,
) -> Result<Response<Body>, ForwardError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    #[cfg(feature = "otel")]
    if crate::otel::enabled() {
        return crate::otel::request(req, |req| forward(shared, listener, req, started, trail))
            .await;
    }
    forward(shared, listener, req, started, trail).await
}

/// [`traced`], then the request counted in the metrics (when `metrics`) and
/// written to the access log (when configured).
async fn observed<B>(
    shared: &Shared,
    listener: Listener,
    req: Request<B>,
    started: Instant,
    metrics: bool,
) -> Result<Response<Body>, ForwardError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let m = shared.balancer.metrics();
    let _in_flight = metrics.then(|| m.in_flight());
    let method = metrics::method_class(req.method());
    // What the log line needs from the request, before it is consumed.
    let logged = shared.access_log.as_ref().map(|_| {
        (
            std::time::SystemTime::now(),
            req.extensions().get::<RequestId>().cloned(),
            req.extensions().get::<PeerAddr>().map(|p| p.0),
            req.method().clone(),
            req.uri().clone(),
        )
    });
    let mut trail = Trail {
        metrics,
        log: logged.is_some(),
        ..Trail::default()
    };
    let result = traced(shared, listener, req, started, &mut trail).await;
    let elapsed = started.elapsed();
    let (status, bytes_out) = match &result {
        Ok(resp) => (
            resp.status().as_u16(),
            http_body::Body::size_hint(resp.body()).exact(),
        ),
        Err(e) => (e.kind.status().as_u16(), None),
    };
    if metrics {
        match (&result, bytes_out) {
            (Ok(_), Some(n)) => {
                m.response_bytes.inc_by(n);
            }
            (Err(e), _) if e.kind == ErrorKind::BodyTooLarge => {
                m.body_too_large.inc();
            }
            (Err(e), _) if e.kind == ErrorKind::HeadersTooLarge => {
                m.headers_too_large.inc();
            }
            _ => {}
        }
        m.request(
            trail.route_metrics.as_deref(),
            listener,
            method,
            status,
            elapsed.as_secs_f64(),
        );
    }
    if let (Some(log), Some((at, request_id, client, method, uri))) = (&shared.access_log, logged) {
        log.log(crate::access_log::Entry {
            at,
            request_id,
            client,
            listener,
            method,
            uri,
            route: trail.route,
            instance: trail.instance,
            status,
            bytes_in: trail.bytes_in,
            bytes_out,
            total: elapsed,
            upstream: trail.upstream,
        });
    }
    result
}

/// Rejects requests whose headers exceed the configured count or size.
fn check_header_limits(
    headers: &http::HeaderMap,
    limits: &LimitsConfig,
) -> Result<(), ForwardError> {
    if headers.len() > limits.max_headers {
        return Err(ForwardError::new(
            ErrorKind::HeadersTooLarge,
            format!(
                "{} header fields; at most {} are accepted",
                headers.len(),
                limits.max_headers
            ),
        ));
    }
    let size: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if size > limits.max_header_bytes {
        return Err(ForwardError::new(
            ErrorKind::HeadersTooLarge,
            format!(
                "headers total {size} bytes; at most {} are accepted",
                limits.max_header_bytes
            ),
        ));
    }
    Ok(())
}

/// Reads the whole body, refusing it as soon as it exceeds the limit (a
/// declared `Content-Length` over the limit is refused before any read).
async fn read_body<B>(
    body: B,
    max: usize,
    declared: Option<u64>,
) -> Result<(Bytes, Option<http::HeaderMap>), ForwardError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        ForwardError::new(
            ErrorKind::BodyTooLarge,
            format!("request body is larger than {max} bytes"),
        )
    };
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    if body.is_end_stream() {
        return Ok((Bytes::new(), None));
    }
    let collected = Limited::new(body, max).collect().await.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            too_large()
        } else {
            ForwardError::new(
                ErrorKind::ClientBody,
                format!("request body could not be read: {e}"),
            )
        }
    })?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes(), trailers))
}

/// Classifies a failed call whose [`Failure`] is known: never processed
/// (connection refused, stream refused) vs a call that reached the instance.
fn classify(status: &tonic::Status, failure: Failure, service: &str) -> ForwardError {
    match failure {
        Failure::Unreachable => {
            return ForwardError::new(
                ErrorKind::UpstreamConnect,
                format!("could not connect to an instance of service {service}"),
            );
        }
        Failure::Refused => {
            return ForwardError::new(
                ErrorKind::UpstreamConnect,
                format!(
                    "an instance of service {service} refused the request before processing it"
                ),
            );
        }
        Failure::Unavailable | Failure::Failed => {}
    }
    match status.code() {
        tonic::Code::DeadlineExceeded => ForwardError::new(
            ErrorKind::UpstreamTimeout,
            format!("service {service} did not answer within the route's timeout"),
        ),
        code => ForwardError::new(
            ErrorKind::UpstreamFailed,
            format!(
                "service {service} failed the forwarded call: gRPC {code:?}: {}",
                status.message()
            ),
        ),
    }
}

/// Methods a client may repeat with the same effect (RFC 9110 9.2.2): a
/// request with one of these, whose body the gateway holds whole, may be
/// sent again after `UNAVAILABLE`.
fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// Where a request goes: the matched route's service and its rules.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) service: Arc<str>,
    pub(crate) prefix: Arc<str>,
    /// The unary budget (`Send`), or the response head's (`Stream`).
    pub(crate) timeout: Duration,
    /// The route asks for `Stream`.
    pub(crate) stream: bool,
    /// Longest `Stream` exchange.
    pub(crate) max_duration: Duration,
    /// The registration asks for its prefix stripped (route_rules.rs).
    pub(crate) strip_prefix: bool,
    /// Largest buffered request body (`limits.max_body_bytes`, or the
    /// route's `[[routes]]` rule).
    pub(crate) max_body_bytes: usize,
    /// Largest streamed request body, 0 = none (`limits.max_stream_body_bytes`,
    /// or the route's rule).
    pub(crate) max_stream_body_bytes: u64,
}

/// How one request is sent upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatch {
    /// Buffer the body, one `Send`.
    Unary,
    /// `Stream` the body and the answer.
    Stream,
    /// `Stream` carrying WebSocket messages.
    WebSocket,
}

/// The request path of [`Forward`], step by step.
async fn forward<B>(
    shared: &Shared,
    listener: Listener,
    req: Request<B>,
    started: Instant,
    trail: &mut Trail,
) -> Result<Response<Body>, ForwardError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = req.into_parts();
    admit(&parts, &shared.limits)?;
    // One snapshot for routing and picking (a route and its endpoints from
    // the same catalogue), never held across an await: with auth or rate
    // limits configured (which may wait on a service or Redis) it is let go
    // first and loaded again for the pick.
    let snapshot = shared.balancer.snapshot();
    let mut target = route(shared, &snapshot, listener, &parts, trail)?;
    crate::otel::record_route(&target.service, &target.prefix);
    let rules = match crate::route_rules::apply(shared.route_rules.as_deref(), &parts, &mut target)?
    {
        crate::route_rules::Applied::Answered(preflight) => return Ok(preflight),
        crate::route_rules::Applied::Forward(rules) => rules,
    };
    let snapshot = if shared.auth.is_some() || shared.rate_limits.is_some() {
        drop(snapshot);
        None
    } else {
        Some(snapshot)
    };
    // The gateway's own refusals from here on (401, 403, 429, 503...) carry
    // the route's CORS fields, so a page from an allowed origin can read why.
    let cors = |mut e: ForwardError| {
        if let Some(r) = &rules {
            r.apply_to_error(&mut e);
        }
        e
    };
    // After a CORS preflight is answered (a preflight carries no
    // credential), before the rate limit (which may key on a claim).
    let verified = match &shared.auth {
        None => None,
        Some(auth) => match auth
            .check(shared, &mut parts, &target)
            .await
            .map_err(cors)?
        {
            crate::auth::Outcome::Allow(v) => v,
            crate::auth::Outcome::Respond(mut resp) => {
                if let Some(r) = &rules {
                    r.apply_cors(resp.headers_mut());
                }
                return Ok(resp);
            }
        },
    };
    let claims = verified.as_ref().and_then(|v| v.claims.as_ref());
    let admitted = limit(shared, &parts, &target, claims).await.map_err(cors)?;
    // Last before dispatch: every policy above matched the client's path.
    if rules.is_some() || target.strip_prefix {
        crate::route_rules::rewrite(rules.as_ref(), &mut parts, &target).map_err(cors)?;
    }
    let snapshot = snapshot.unwrap_or_else(|| shared.balancer.snapshot());
    let (candidates, up, pinned) =
        match shared.canary.as_ref().and_then(|c| c.get(&target.service)) {
            None => pick(shared, &snapshot, &target.service).map(|(c, up)| (c, up, None)),
            Some(canary) => {
                crate::canary::pick(shared, canary, &snapshot, &target.service, &parts.headers)
                    .map(|p| (p.candidates, p.metrics, p.set_cookie))
            }
        }
        .map_err(cors)?;
    drop(snapshot);
    let mut result = dispatch(
        shared, parts, body, &target, candidates, &up, started, trail,
    )
    .await;
    if let (Some(a), Ok(resp)) = (admitted, &mut result) {
        a.write(resp.headers_mut());
    }
    if let Some(r) = rules {
        match &mut result {
            Ok(resp) => r.apply(resp.headers_mut()),
            Err(e) => r.apply_to_error(e),
        }
    }
    if let (Some(cookie), Ok(resp)) = (pinned, &mut result) {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    result
}

/// Step 2b: the route's rate limit, if a `[[rate_limits]]` policy covers it
/// (after routing: the policy is chosen by service and route prefix). A
/// local policy answers at once; a cluster one asks Redis.
async fn limit<'s>(
    shared: &'s Shared,
    parts: &http::request::Parts,
    target: &Target,
    claims: Option<&crate::auth::Claims>,
) -> Result<Option<crate::ratelimit::Admitted<'s>>, ForwardError> {
    use crate::ratelimit::Verdict;
    let Some(limits) = &shared.rate_limits else {
        return Ok(None);
    };
    let peer = parts.extensions.get::<PeerAddr>().map(|p| p.0.ip());
    let verdict = limits.check(
        &target.service,
        &target.prefix,
        parts,
        peer,
        &shared.trusted_proxies,
        claims,
    );
    let decided = match verdict {
        Ok(Verdict::Unlimited) => Ok(None),
        Ok(Verdict::Admitted(a)) => Ok(Some(a)),
        #[cfg(feature = "redis")]
        Ok(Verdict::Cluster(limiter, key)) => {
            limits.check_cluster(limiter, key, &target.service).await
        }
        #[cfg(not(feature = "redis"))]
        Ok(Verdict::Cluster(..)) => Ok(None),
        Err(e) => Err(e),
    };
    if decided.is_err() {
        let m = shared.balancer.metrics();
        if m.enabled() {
            m.rate_limited.inc();
        }
    }
    decided
}

/// Step 4b: send the request as [`choose`] says.
#[allow(clippy::too_many_arguments)]
async fn dispatch<B>(
    shared: &Shared,
    parts: http::request::Parts,
    body: B,
    target: &Target,
    candidates: Candidates,
    up: &Arc<ServiceMetrics>,
    started: Instant,
    trail: &mut Trail,
) -> Result<Response<Body>, ForwardError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The streaming dispatches are boxed: their state is large, and kept
    // inline it would grow (and cost a bigger copy on) every unary request.
    match choose(shared, &parts, &body, target, candidates.first()) {
        Dispatch::Unary => {
            // Boxed as the streams are: a route without a policy keeps the
            // future it had.
            if let Some(cache) = &shared.cache
                && let Some(policy) = cache.policy(&target.service, &target.prefix, &parts)
            {
                let generation = candidates.generation();
                let send = |parts| {
                    dispatch_unary(shared, parts, body, target, candidates, up, started, trail)
                };
                let service = &target.service;
                return Box::pin(cache.serve(policy, service, generation, parts, send)).await;
            }
            dispatch_unary(shared, parts, body, target, candidates, up, started, trail).await
        }
        Dispatch::Stream => {
            let streaming = candidates.filter(|e| e.streaming);
            Box::pin(dispatch_stream(
                shared, &parts, body, target, streaming, up, started, trail,
            ))
            .await
        }
        Dispatch::WebSocket => {
            let mut streaming = candidates.filter(|e| e.streaming).peekable();
            if streaming.peek().is_none() {
                return Err(ForwardError::new(
                    ErrorKind::WebSocketUnsupported,
                    format!(
                        "service {} does not accept WebSocket: it does not declare `streaming`",
                        target.service
                    ),
                ));
            }
            Box::pin(dispatch_websocket(
                shared, parts, target, streaming, up, started, trail,
            ))
            .await
        }
    }
}

/// Step 1: refuse what must never be forwarded - oversized headers and
/// ambiguous framing.
fn admit(parts: &http::request::Parts, limits: &LimitsConfig) -> Result<(), ForwardError> {
    check_header_limits(&parts.headers, limits)?;
    check_host(parts)?;
    // hyper lets Transfer-Encoding override Content-Length (RFC 9112 6.3)
    // and drops the Content-Length, so on HTTP/1.1 the ambiguity is caught
    // on the raw head by the connection scanner (crate::conn), which
    // answers `bad_request_framing`; this check covers whatever else hands
    // both headers to the stack (an embedding server, HTTP/2).
    if parts.headers.contains_key(header::TRANSFER_ENCODING)
        && parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err(ForwardError::new(
            ErrorKind::BadRequest,
            "request has both Transfer-Encoding and Content-Length",
        ));
    }
    // The only transfer coding a request may carry here is one `chunked`
    // (hyper refuses a final coding other than chunked, but lets
    // `chunked, chunked` through, which RFC 9112 7 forbids).
    let mut codings = parts.headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = codings.next()
        && (codings.next().is_some()
            || !first
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked"))
    {
        return Err(ForwardError::new(
            ErrorKind::BadRequest,
            "unsupported Transfer-Encoding (only a single `chunked` is accepted)",
        ));
    }
    Ok(())
}

/// RFC 9112 3.2: a request whose `Host` is not `host[:port]` gets a 400
/// (the connection-level scanner also refuses raw non-ASCII targets).
/// A `Host` beside an HTTP/2 `:authority` is not compared: routing and the
/// forwarded authority use `:authority` alone (`convert::authority`), and
/// clients do send both (tests/streaming.rs does).
fn check_host(parts: &http::request::Parts) -> Result<(), ForwardError> {
    match parts.headers.get(header::HOST) {
        Some(host) if !valid_host(host.as_bytes()) => Err(ForwardError::new(
            ErrorKind::InvalidHost,
            "Host header is not a valid host[:port]",
        )),
        _ => Ok(()),
    }
}

/// `uri-host [ ":" port ]` (RFC 9112 3.2, RFC 3986 3.2.2); empty is allowed
/// (a target without authority). No user info, no path, no spaces.
pub(crate) fn valid_host(h: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix(b"[") {
        // IP literal: hex digits, ':' and '.' (IPv6, v4-mapped), optional zone not allowed.
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let (lit, after) = (&rest[..end], &rest[end + 1..]);
        if lit.is_empty()
            || !lit
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.')
        {
            return false;
        }
        match after {
            [] => return true,
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    // reg-name / IPv4: unreserved, pct-encoded and sub-delims.
    let reg_name = host.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    let port_ok = port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit));
    reg_name && port_ok
}

/// Step 2: route on the normalised path; visibility filters what this
/// listener sees.
fn route(
    shared: &Shared,
    snapshot: &Snapshot,
    listener: Listener,
    parts: &http::request::Parts,
    trail: &mut Trail,
) -> Result<Target, ForwardError> {
    let authority = crate::convert::authority(parts)?;
    let route = matched_route(snapshot, listener, authority, parts.uri.path())?;
    if trail.metrics {
        trail.route_metrics = Some(route.metrics.clone());
    }
    if trail.log {
        trail.route = Some((route.service.clone(), route.prefix.clone()));
    }
    Ok(Target::of(shared, route))
}

/// The route a request for `authority` and `path` takes on `listener`
/// (step 2 without the request; admin explain calls it too).
pub(crate) fn matched_route<'s>(
    snapshot: &'s Snapshot,
    listener: Listener,
    authority: &str,
    path: &str,
) -> Result<&'s Route, ForwardError> {
    let segments = normalise(path)?;
    snapshot
        .routes
        .lookup(authority, &segments, |v| listener.allows(v))
        .ok_or_else(|| ForwardError::new(ErrorKind::RouteNotFound, format!("no route for {path}")))
}

impl Target {
    /// The rules of a matched route, the gateway's defaults filled in.
    pub(crate) fn of(shared: &Shared, route: &Route) -> Self {
        Target {
            service: route.service.clone(),
            prefix: route.prefix.clone(),
            timeout: route.timeout.unwrap_or(shared.timeouts.request),
            stream: route.stream,
            max_duration: route.max_duration.unwrap_or(shared.timeouts.stream_max),
            strip_prefix: route.strip_prefix,
            max_body_bytes: shared.limits.max_body_bytes,
            max_stream_body_bytes: shared.limits.max_stream_body_bytes,
        }
    }
}

/// Why a service cannot take a request, as the client is told.
pub(crate) fn no_endpoint_error(service: &str, why: Option<NoEndpoint>) -> ForwardError {
    match why {
        Some(NoEndpoint::AllEjected) => ForwardError::new(
            ErrorKind::NoHealthyInstance,
            format!("every instance of service {service} is unreachable"),
        ),
        Some(NoEndpoint::NoneHealthy) | None => ForwardError::new(
            ErrorKind::NoHealthyInstance,
            format!("service {service} has no healthy instance"),
        ),
    }
}

/// Step 3: the instances to try, best first.
pub(crate) fn pick(
    shared: &Shared,
    snapshot: &Snapshot,
    service: &Arc<str>,
) -> Result<(Candidates, Arc<ServiceMetrics>), ForwardError> {
    pick_by(shared, snapshot, service, |s| shared.balancer.select(s))
}

/// Step 3 with another chooser (a `[[canary]]`'s): `select` on the
/// service's endpoints in `snapshot`, and what its failure means (a
/// service whose every instance is unreachable is reported once).
pub(crate) fn pick_by<T>(
    shared: &Shared,
    snapshot: &Snapshot,
    service: &Arc<str>,
    select: impl FnOnce(&ServiceEndpoints) -> Result<T, NoEndpoint>,
) -> Result<(T, Arc<ServiceMetrics>), ForwardError> {
    let Some(s) = snapshot.services.get(service) else {
        return Err(no_endpoint_error(service, None));
    };
    match select(s) {
        Ok(c) => Ok((c, s.metrics.clone())),
        Err(why) => {
            if why == NoEndpoint::AllEjected && shared.balancer.report_unreachable(service) {
                shared.registry.service_unreachable(service);
            }
            Err(no_endpoint_error(service, Some(why)))
        }
    }
}

/// Step 4: `Send` or `Stream` (the rule forwarding.proto states), for the
/// balancer's pick `first` (admin explain asks it for every candidate).
pub(crate) fn choose<B: http_body::Body>(
    shared: &Shared,
    parts: &http::request::Parts,
    body: &B,
    target: &Target,
    first: &Endpoint,
) -> Dispatch {
    if crate::websocket::is_upgrade(parts) {
        return Dispatch::WebSocket;
    }
    // The balancer picks the instance, then the RPC follows from what that
    // instance declares: an instance without `streaming` gets `Send` (its
    // body buffered) even on a stream route, so a rolling upgrade between
    // capabilities keeps the balancer's spread. Nothing below is looked at
    // for instances that only speak `Send`.
    if !first.streaming {
        return Dispatch::Unary;
    }
    let small_and_complete = match declared_length(parts) {
        Some(n) => n <= shared.limits.unary_body_bytes as u64,
        None => body.is_end_stream(),
    };
    if target.stream
        || has_token(&parts.headers, header::ACCEPT, "text/event-stream")
        || !small_and_complete
    {
        Dispatch::Stream
    } else {
        Dispatch::Unary
    }
}

fn declared_length(parts: &http::request::Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// What the request context says besides the HTTP message.
fn request_meta<'a>(
    shared: &'a Shared,
    parts: &'a http::request::Parts,
    target: &'a Target,
    deadline: Duration,
) -> RequestMeta<'a> {
    let peer = parts
        .extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    RequestMeta {
        request_id: parts
            .extensions
            .get::<RequestId>()
            .map(RequestId::as_str)
            .unwrap_or_default(),
        peer,
        trusted_peer: shared
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer.ip())),
        node_id: &shared.node_id,
        service: &target.service,
        matched_prefix: &target.prefix,
        deadline: Some(deadline),
        trace: parts.extensions.get(),
    }
}

/// Every candidate refused the connection (or there was none).
fn all_refused(shared: &Shared, service: &str, last_err: Option<ForwardError>) -> ForwardError {
    if last_err.is_some() {
        if shared.balancer.report_unreachable(service) {
            shared.registry.service_unreachable(service);
        }
        return ForwardError::new(
            ErrorKind::NoHealthyInstance,
            format!("every instance of service {service} is unreachable"),
        );
    }
    ForwardError::new(
        ErrorKind::NoHealthyInstance,
        format!("service {service} has no healthy instance"),
    )
}

/// A request not processed anywhere could go to another instance, but the
/// service's retry budget is spent: 503, so the client may try later.
fn budget_spent(service: &str) -> ForwardError {
    ForwardError::new(
        ErrorKind::NoHealthyInstance,
        format!("no instance of service {service} took the request and its retry budget is spent"),
    )
}

/// Step 5a: read the whole body within the limit, then one `Send`. Another
/// instance is tried, under the service's retry budget, when the request
/// was never processed (connection or stream refused; up to
/// `balancer.connect_retries` times), or when it is idempotent and failed
/// with `UNAVAILABLE` (up to `retry.max_attempts` attempts in all): the body
/// is held whole, so it can be sent again as it was.
#[expect(
    clippy::too_many_arguments,
    reason = "one request's parts, as the other dispatch steps take them"
)]
pub(crate) async fn dispatch_unary<B>(
    shared: &Shared,
    parts: http::request::Parts,
    body: B,
    target: &Target,
    candidates: Candidates,
    up: &ServiceMetrics,
    started: Instant,
    trail: &mut Trail,
) -> Result<Response<Body>, ForwardError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = &target.service;
    let budget = target.timeout;
    let deadline = started + budget;
    let (body, trailers) = tokio::time::timeout_at(
        deadline,
        read_body(body, target.max_body_bytes, declared_length(&parts)),
    )
    .await
    .map_err(|_| {
        ForwardError::new(
            ErrorKind::ClientBody,
            "request body was not received within the route's timeout",
        )
    })??;
    if trail.metrics {
        shared
            .balancer
            .metrics()
            .request_bytes
            .inc_by(body.len() as u64);
    }
    if trail.log {
        trail.bytes_in = Some(body.len() as u64);
    }
    let respond_to = ResponseTarget::of(&parts);
    let meta = request_meta(shared, &parts, target, budget);
    let balancer = &shared.balancer;
    let idempotent = is_idempotent(&parts.method);
    let (mut unsent_retries, mut sent) = (0, 0);
    // The failure that sends the request on to the next candidate, and
    // whether it left the request unprocessed.
    let mut last: Option<(ForwardError, bool)> = None;
    // The last failure of an attempt that reached an instance: what the
    // client is told if later candidates only refuse.
    let mut answered: Option<ForwardError> = None;
    let mut encoded: Option<EncodedRequest> = None;
    for ep in candidates {
        if let Some((err, unsent)) = last.take() {
            let allowed = if unsent {
                unsent_retries < balancer.connect_retries()
            } else {
                sent < balancer.max_attempts()
            };
            if !allowed {
                last = Some((err, unsent));
                break;
            }
            if !balancer.withdraw_retry(service) {
                return Err(match (unsent, answered) {
                    (true, None) => budget_spent(service),
                    (true, Some(a)) => a,
                    (false, _) => err,
                });
            }
            up.retry();
            if unsent {
                unsent_retries += 1;
            }
        }
        // Encoded once, on the first attempt; a retry re-sends the same
        // bytes with its own `deadline_ms` (convert::wire).
        let msg = match &encoded {
            Some(m) => m,
            None => encoded.insert(EncodedRequest::encode(
                &parts,
                body.clone(),
                trailers.as_ref(),
                &meta,
            )?),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timeout_error(service, budget));
        }
        let call = msg.attempt(remaining.as_millis().max(1) as u64);
        let _in_flight = ep.start();
        if trail.log {
            trail.instance = Some(ep.instance_id.clone());
        }
        let span = crate::otel::Attempt::start(service, &ep.instance_id, "Send");
        up.attempt();
        let attempt = Instant::now();
        let result = span
            .run(tokio::time::timeout_at(
                deadline,
                wire::send(ep.upstream(), call, remaining),
            ))
            .await;
        match &result {
            Err(_) => span.outcome(&"timeout"),
            Ok(Ok(_)) => span.outcome(&"ok"),
            Ok(Err(status)) => span.outcome(&status.code()),
        }
        match result {
            Err(_) => {
                up.failure(FailureKind::Timeout);
                balancer.observe(&ep, attempt.elapsed());
                balancer.record(&ep, false);
                return Err(timeout_error(service, budget));
            }
            Ok(Ok(resp)) => {
                let took = attempt.elapsed();
                balancer.observe(&ep, took);
                if trail.log {
                    trail.upstream = Some(took);
                }
                let converted = response_from_wire(resp.into_inner(), respond_to);
                if converted.is_err() {
                    up.failure(FailureKind::InvalidAnswer);
                }
                balancer.record(&ep, converted.is_ok());
                return converted;
            }
            // A failure at or past the deadline (the backend gave up on the
            // grpc-timeout it was sent, say) means the route's budget is spent.
            Ok(Err(_)) if Instant::now() >= deadline => {
                up.failure(FailureKind::Timeout);
                balancer.observe(&ep, attempt.elapsed());
                balancer.record(&ep, false);
                return Err(timeout_error(service, budget));
            }
            Ok(Err(status)) => {
                let failure = failure_of(&status);
                let err = classify(&status, failure, service);
                up.failure(failure_kind(failure));
                match failure {
                    Failure::Unreachable => {
                        debug!(service = %service, instance = %ep.instance_id, "Connection refused; trying the next instance.");
                        balancer.eject(&ep);
                        last = Some((err, true));
                    }
                    Failure::Refused => {
                        debug!(service = %service, instance = %ep.instance_id, "Stream refused before processing; trying the next instance.");
                        last = Some((err, true));
                    }
                    failure => {
                        sent += 1;
                        balancer.observe(&ep, attempt.elapsed());
                        balancer.record(&ep, false);
                        if balancer.log_failure(&ep) {
                            warn!(service = %service, instance = %ep.instance_id, request_id = request_id(&parts), code = ?status.code(), message = status.message(), failures = balancer.stats(&ep).failures, "Forwarded call failed.");
                        } else {
                            debug!(service = %service, instance = %ep.instance_id, code = ?status.code(), message = status.message(), "Forwarded call failed.");
                        }
                        if failure != Failure::Unavailable || !idempotent {
                            return Err(err);
                        }
                        answered = Some(err.clone());
                        last = Some((err, false));
                    }
                }
            }
        }
    }
    match (last, answered) {
        (Some((err, false)), _) => Err(err),
        (_, Some(answered)) => Err(answered),
        (last, None) => Err(all_refused(shared, service, last.map(|(e, _)| e))),
    }
}

/// The request's id (set by `RequestIdLayer`), as a log field: the admin
/// UI's log pane shows it next to the warning.
fn request_id(parts: &http::request::Parts) -> Option<&str> {
    parts.extensions.get::<RequestId>().map(RequestId::as_str)
}

/// The clocks of a `Stream` exchange on `target`: the unary timeout for the
/// head, the gateway's idle limit, the route's maximum duration.
fn stream_exchange(
    shared: &Shared,
    parts: &http::request::Parts,
    target: &Target,
    started: Instant,
) -> Arc<Exchange> {
    Exchange::new(
        started,
        StreamLimits {
            head_timeout: target.timeout,
            idle: shared.timeouts.stream_idle,
            max_deadline: started + target.max_duration,
        },
        parts.extensions.get::<RequestId>().cloned(),
    )
}

/// Opens `Stream` on one instance and waits for the response head, or for
/// the exchange to end first (client body broke, a clock ran out).
async fn open_stream<S>(
    ep: &Endpoint,
    frames: S,
    ex: &Exchange,
) -> Result<Result<(tonic::Streaming<StreamResponse>, ForwardingResp), tonic::Status>, ForwardError>
where
    S: futures_util::Stream<Item = StreamRequest> + Send + 'static,
{
    let remaining = ex
        .limits
        .max_deadline
        .saturating_duration_since(Instant::now());
    let mut call = tonic::Request::new(frames);
    call.set_timeout(remaining);
    let mut client = ep.client();
    let attempt = async move {
        let mut s = client.stream(call).await?.into_inner();
        match s.message().await? {
            Some(StreamResponse {
                frame: Some(stream_response::Frame::Head(h)),
            }) => Ok((s, h)),
            Some(_) => Err(tonic::Status::internal(
                "malformed stream: the first frame of the answer is not a head",
            )),
            None => Err(tonic::Status::internal(
                "malformed stream: the answer ended without a head",
            )),
        }
    };
    tokio::select! {
        r = attempt => Ok(r),
        e = ex.ended_before_head() => Err(e),
    }
}

/// Takes the wait for a `Stream` head into the instance's latency estimate:
/// counted from when the request body was complete (an upload's transfer
/// time is the client's, not the instance's), or from the attempt if the
/// head came first.
fn observe_head(shared: &Shared, ep: &Endpoint, ex: &Exchange, attempt: Instant) {
    let from = ex.body_done_at().map_or(attempt, |done| done.max(attempt));
    shared.balancer.observe(ep, from.elapsed());
}

/// What a failed `Stream` attempt means: retry elsewhere (never sent), or
/// the error for the client.
fn stream_failure(
    shared: &Shared,
    ep: &Arc<Endpoint>,
    status: &tonic::Status,
    service: &str,
    retryable: bool,
    ex: &Exchange,
    up: &ServiceMetrics,
) -> Result<ForwardError, ForwardError> {
    if Instant::now() >= ex.limits.max_deadline {
        up.failure(FailureKind::Timeout);
        shared.balancer.record(ep, false);
        return Err(timeout_error(service, ex.limits.head_timeout));
    }
    let failure = failure_of(status);
    let mut err = classify(status, failure, service);
    up.failure(failure_kind(failure));
    if status.message().starts_with("malformed stream") {
        err = ForwardError::new(
            ErrorKind::UpstreamInvalidResponse,
            format!("service {service}: {}", status.message()),
        );
    }
    if err.kind.retry() == crate::error::Retry::Safe && retryable {
        // Refused connections eject; a refused stream is not held against
        // the instance (see `Failure::Refused`).
        if failure == Failure::Unreachable {
            debug!(service = %service, instance = %ep.instance_id, "Connection refused; trying the next instance.");
            shared.balancer.eject(ep);
        }
        return Ok(err);
    }
    shared.balancer.record(ep, false);
    if shared.balancer.log_failure(ep) {
        warn!(service = %service, instance = %ep.instance_id, request_id = ex.rid(), code = ?status.code(), message = status.message(), failures = shared.balancer.stats(ep).failures, "Forwarded stream failed before its head.");
    } else {
        debug!(service = %service, instance = %ep.instance_id, code = ?status.code(), message = status.message(), "Forwarded stream failed before its head.");
    }
    Err(err)
}

/// Step 5b: `Stream` - the body flows up as it arrives, the answer flows
/// back as it is produced (stream.rs). A request whose body has started to
/// go upstream is never tried on another instance.
#[expect(
    clippy::too_many_arguments,
    reason = "one request's parts, as the other dispatch steps take them"
)]
async fn dispatch_stream<B>(
    shared: &Shared,
    parts: &http::request::Parts,
    body: B,
    target: &Target,
    candidates: impl Iterator<Item = Arc<Endpoint>> + Send,
    up: &ServiceMetrics,
    started: Instant,
    trail: &mut Trail,
) -> Result<Response<Body>, ForwardError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let service = &target.service;
    let limit = target.max_stream_body_bytes;
    if limit > 0 && declared_length(parts).is_some_and(|n| n > limit) {
        return Err(ForwardError::new(
            ErrorKind::BodyTooLarge,
            format!("request body is larger than {limit} bytes"),
        ));
    }
    let ex = stream_exchange(shared, parts, target, started);
    let slot = BodySlot::new(body);
    let respond_to = ResponseTarget::of(parts);
    let mut last_err = None;
    for ep in candidates {
        // Each fall-back to another instance is a retry, from the budget.
        if last_err.is_some() {
            if !shared.balancer.withdraw_retry(service) {
                return Err(budget_spent(service));
            }
            up.retry();
        }
        let remaining = ex
            .limits
            .max_deadline
            .saturating_duration_since(Instant::now());
        let meta = request_meta(shared, parts, target, remaining);
        let head = request_to_wire(parts, Bytes::new(), None, &meta)?;
        let frames = RequestFrames::new(head, slot.clone(), limit, ex.clone())
            .counting(shared.balancer.metrics().request_byte_count());
        let in_flight = ep.start();
        if trail.log {
            trail.instance = Some(ep.instance_id.clone());
        }
        let span = crate::otel::Attempt::start(service, &ep.instance_id, "Stream");
        up.attempt();
        let attempt = Instant::now();
        let opened = span.run(open_stream(&ep, frames, &ex)).await;
        match &opened {
            Err(e) => span.outcome(&e.kind.code()),
            Ok(Ok(_)) => span.outcome(&"ok"),
            Ok(Err(status)) => span.outcome(&status.code()),
        }
        match opened {
            Err(e) => {
                shared.balancer.record(&ep, false);
                return Err(e);
            }
            Ok(Ok((s, head))) => {
                let (status, headers, first) = match stream::response_head(head, respond_to) {
                    Ok(h) => h,
                    Err(e) => {
                        up.failure(FailureKind::InvalidAnswer);
                        shared.balancer.record(&ep, false);
                        warn!(service = %service, instance = %ep.instance_id, request_id = ex.rid(), error = %e, "Invalid stream head.");
                        return Err(e);
                    }
                };
                shared.balancer.record(&ep, true);
                observe_head(shared, &ep, &ex, attempt);
                if trail.log {
                    trail.upstream = Some(attempt.elapsed());
                }
                let drain = stream::is_event_stream(&headers)
                    .then(|| shared.draining.clone().cancelled_owned());
                let body =
                    StreamBody::new(first, s, ex, respond_to, drain, service.clone(), in_flight)
                        .counting(shared.balancer.metrics().response_byte_count());
                return Ok(stream::build_response(status, headers, body));
            }
            Ok(Err(status)) => {
                // The client's side broke first: that is the cause, whatever
                // the backend said about the cut-off stream.
                if let Some(e) = ex.take_abort() {
                    shared.balancer.record(&ep, true);
                    return Err(e);
                }
                last_err = Some(stream_failure(
                    shared,
                    &ep,
                    &status,
                    service,
                    slot.untouched(),
                    &ex,
                    up,
                )?);
            }
        }
    }
    Err(all_refused(shared, service, last_err))
}

/// Step 5c: WebSocket - the backend accepts the upgrade with a 101 head,
/// then a relay task carries messages both ways (websocket.rs).
async fn dispatch_websocket(
    shared: &Shared,
    mut parts: http::request::Parts,
    target: &Target,
    candidates: impl Iterator<Item = Arc<Endpoint>> + Send,
    up: &ServiceMetrics,
    started: Instant,
    trail: &mut Trail,
) -> Result<Response<Body>, ForwardError> {
    let service = &target.service;
    let accept = crate::websocket::accept_key(&parts)?;
    let mut on_upgrade = Some(
        parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                ForwardError::new(
                    ErrorKind::BadRequest,
                    "this connection cannot be upgraded to WebSocket",
                )
            })?,
    );
    let ex = stream_exchange(shared, &parts, target, started);
    // No body: the backend's answer is due at once.
    ex.request_complete();
    let respond_to = ResponseTarget::of(&parts);
    let mut last_err = None;
    for ep in candidates {
        // Each fall-back to another instance is a retry, from the budget.
        if last_err.is_some() {
            if !shared.balancer.withdraw_retry(service) {
                return Err(budget_spent(service));
            }
            up.retry();
        }
        let remaining = ex
            .limits
            .max_deadline
            .saturating_duration_since(Instant::now());
        let meta = request_meta(shared, &parts, target, remaining);
        let mut head = request_to_wire(&parts, Bytes::new(), None, &meta)?;
        head.headers
            .retain(|h| !crate::websocket::is_handshake_field(&h.name));
        head.upgrade = "websocket".into();
        // Backends see one shape of upgrade whatever the client spoke: an
        // HTTP/2 extended CONNECT is presented as the GET it stands for.
        head.method = "GET".into();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let frames = crate::websocket::frames(
            StreamRequest {
                frame: Some(stream_request::Frame::Head(head)),
            },
            rx,
        );
        let in_flight = ep.start();
        if trail.log {
            trail.instance = Some(ep.instance_id.clone());
        }
        let span = crate::otel::Attempt::start(service, &ep.instance_id, "Stream");
        up.attempt();
        let attempt = Instant::now();
        let opened = span.run(open_stream(&ep, frames, &ex)).await;
        match &opened {
            Err(e) => span.outcome(&e.kind.code()),
            Ok(Ok(_)) => span.outcome(&"ok"),
            Ok(Err(status)) => span.outcome(&status.code()),
        }
        if trail.log {
            trail.upstream = Some(attempt.elapsed());
        }
        match opened {
            Err(e) => {
                shared.balancer.record(&ep, false);
                return Err(e);
            }
            Ok(Ok((s, head))) if head.status == 101 => {
                shared.balancer.record(&ep, true);
                observe_head(shared, &ep, &ex, attempt);
                let invalid = |m: String| ForwardError::new(ErrorKind::UpstreamInvalidResponse, m);
                let headers = crate::convert::response_headers(&head.headers)
                    .map_err(|e| invalid(format!("response {e}")))?;
                let Some(on_upgrade) = on_upgrade.take() else {
                    return Err(invalid("upgrade already used".into()));
                };
                shared.relays.spawn(
                    crate::websocket::Relay {
                        on_upgrade,
                        to_backend: tx,
                        from_backend: s,
                        ex,
                        draining: shared.draining.clone(),
                        max_message: shared.limits.max_body_bytes,
                        service: service.clone(),
                        in_flight,
                        slot: parts
                            .extensions
                            .get::<crate::server::ConnectionSlot>()
                            .cloned(),
                        bytes_in: shared.balancer.metrics().request_byte_count(),
                        bytes_out: shared.balancer.metrics().response_byte_count(),
                    }
                    .run(),
                );
                return Ok(crate::websocket::switching_response(headers, accept));
            }
            Ok(Ok((s, head))) => {
                // The backend refused the upgrade: its answer is the response.
                drop(tx);
                let (status, headers, first) = stream::response_head(head, respond_to)
                    .inspect_err(|_| shared.balancer.record(&ep, false))?;
                shared.balancer.record(&ep, true);
                observe_head(shared, &ep, &ex, attempt);
                let body =
                    StreamBody::new(first, s, ex, respond_to, None, service.clone(), in_flight)
                        .counting(shared.balancer.metrics().response_byte_count());
                return Ok(stream::build_response(status, headers, body));
            }
            Ok(Err(status)) => {
                last_err = Some(stream_failure(
                    shared, &ep, &status, service, true, &ex, up,
                )?);
            }
        }
    }
    Err(all_refused(shared, service, last_err))
}

/// The metric class of a failure that came back as a gRPC status.
fn failure_kind(f: Failure) -> FailureKind {
    match f {
        Failure::Unreachable => FailureKind::RefusedConnection,
        Failure::Refused => FailureKind::RefusedStream,
        Failure::Unavailable => FailureKind::GrpcUnavailable,
        Failure::Failed => FailureKind::GrpcError,
    }
}

fn timeout_error(service: &str, budget: Duration) -> ForwardError {
    ForwardError::new(
        ErrorKind::UpstreamTimeout,
        format!("service {service} did not answer within {budget:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_limits_count_and_size() {
        let limits = LimitsConfig {
            max_headers: 3,
            max_header_bytes: 1024,
            ..Default::default()
        };
        let mut h = http::HeaderMap::new();
        for i in 0..3 {
            h.insert(
                http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        check_header_limits(&h, &limits).unwrap();
        h.insert("x-big", "a".repeat(2000).parse().unwrap());
        assert_eq!(
            check_header_limits(&h, &limits).unwrap_err().kind,
            ErrorKind::HeadersTooLarge
        );
    }

    #[tokio::test]
    async fn declared_oversized_bodies_are_refused_unread() {
        let body = http_body_util::Full::new(Bytes::from_static(b"tiny"));
        let e = read_body(body, 10, Some(1 << 30)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::BodyTooLarge);
        let body = http_body_util::Full::new(Bytes::from(vec![0u8; 11]));
        assert_eq!(
            read_body(body, 10, None).await.unwrap_err().kind,
            ErrorKind::BodyTooLarge
        );
        let body = http_body_util::Full::new(Bytes::from(vec![0u8; 10]));
        assert_eq!(read_body(body, 10, None).await.unwrap().0.len(), 10);
    }

    #[test]
    fn failures_are_classified_by_type() {
        use std::io;
        let refused_stream =
            tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM)));
        assert_eq!(refused_stream.code(), tonic::Code::Unavailable);
        assert_eq!(failure_of(&refused_stream), Failure::Refused);
        assert_eq!(
            classify(&refused_stream, failure_of(&refused_stream), "s").kind,
            ErrorKind::UpstreamConnect
        );
        let connect = tonic::Status::from(crate::upstream::UpstreamError::Connect {
            address: "a:1".into(),
            source: io::Error::other("handshake failed"),
        });
        assert_eq!(failure_of(&connect), Failure::Unreachable);
        // As the pool reports a refused connection.
        let refused = tonic::Status::from(crate::upstream::UpstreamError::Connect {
            address: "a:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        });
        assert_eq!(failure_of(&refused), Failure::Unreachable);
        // What a backend answers is its answer, whatever the code.
        let unavailable = tonic::Status::unavailable("overloaded");
        assert_eq!(failure_of(&unavailable), Failure::Unavailable);
        assert_eq!(
            classify(&unavailable, failure_of(&unavailable), "s").kind,
            ErrorKind::UpstreamFailed
        );
        assert_eq!(
            failure_of(&tonic::Status::internal("boom")),
            Failure::Failed
        );
        // A stream reset without a gRPC status is the instance's failure,
        // not a refusal. (A remote GOAWAY, classed `Unavailable`, has no
        // public constructor in h2 to test with.)
        let reset = tonic::Status::from_error(Box::new(h2::Error::from(h2::Reason::NO_ERROR)));
        assert_eq!(failure_of(&reset), Failure::Failed);
    }

    #[test]
    fn only_rfc_9110_idempotent_methods_are_retried() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn hosts_must_be_host_and_port() {
        for ok in [
            "a",
            "a:80",
            "example.com",
            "EX-1.example.com:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:8080",
            "[::ffff:1.2.3.4]",
            "",
            "a:",
            "xn--bcher-kva.de",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok:?}");
        }
        for bad in [
            "bad host/x",
            "a/b",
            "user@a",
            "a:b",
            "a:123456",
            "[::1",
            "[zz]",
            "[::1]x",
            "a b",
            "a?b",
            "a#b",
            "a\\b",
            "a:80:80",
            "\u{e9}.com",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_host_is_refused_before_routing() {
        let req = |host: &str| {
            let (parts, ()) = Request::builder()
                .uri("/x")
                .header(header::HOST, host)
                .body(())
                .unwrap()
                .into_parts();
            parts
        };
        check_host(&req("a.example:8080")).unwrap();
        let e = check_host(&req("bad host/x")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidHost);
        assert_eq!(e.kind.status(), 400);
    }
}
