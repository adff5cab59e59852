//! The innermost service of the request path: route, read the body within
//! limits, pick an instance, call `ForwardingService.Send`, convert back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use ipnet::IpNet;
use tokio::time::Instant;
use tower::Service;
use tracing::{debug, warn};

use crate::balance::{Balancer, NoEndpoint};
use crate::config::{LimitsConfig, TimeoutConfig};
use crate::convert::{RequestMeta, request_to_wire, response_from_wire};
use crate::error::{ErrorKind, ForwardError};
use crate::registry::{Registry, Visibility};
use crate::request_id::RequestId;
use crate::routing::normalise;

/// The TCP peer of the connection a request arrived on; set by the server.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

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
    pub fn allows(self, v: Visibility) -> bool {
        match self {
            Listener::Public => v == Visibility::Public,
            Listener::Internal => v != Visibility::Admin,
            Listener::Admin => true,
        }
    }
}

/// What every request on every listener shares.
pub struct Shared {
    /// This node's id.
    pub node_id: Arc<str>,
    /// Instance selection.
    pub balancer: Arc<Balancer>,
    /// Source of truth, told when a service looks unreachable.
    pub registry: Arc<dyn Registry>,
    /// Size limits.
    pub limits: LimitsConfig,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
    /// Peers whose forwarded headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

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
        Box::pin(async move { forward(&shared, listener, req).await })
    }
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

/// Classifies a failed `Send`: connection refused (never sent) vs a call
/// that reached the instance.
fn classify(status: &tonic::Status, service: &str) -> ForwardError {
    if is_connect_error(status) {
        return ForwardError::new(
            ErrorKind::UpstreamConnect,
            format!("could not connect to an instance of service {service}"),
        );
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

/// Whether the failure happened while connecting, so the request was never
/// sent: an `io::Error` of a refused/unreachable connection in the source
/// chain, or tonic's connect-phase error.
pub fn is_connect_error(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused
                    | AddrNotAvailable
                    | HostUnreachable
                    | NetworkUnreachable
                    | TimedOut
            ) {
                return true;
            }
        }
        let text = e.to_string();
        if text.contains("tcp connect error")
            || text.contains("connection refused")
            || text.contains("dns error")
        {
            return true;
        }
        source = e.source();
    }
    false
}

async fn forward<B>(
    shared: &Shared,
    listener: Listener,
    req: Request<B>,
) -> Result<Response<Body>, ForwardError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    check_header_limits(&parts.headers, &shared.limits)?;
    // hyper lets Transfer-Encoding override Content-Length (RFC 9112 6.3)
    // and closes the connection after; a gateway refuses the ambiguity
    // outright, since that is what request smuggling is made of.
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

    // Route on the normalised path; visibility filters what this listener sees.
    let authority = crate::convert::authority(&parts)?;
    let segments = normalise(parts.uri.path())?;
    let snapshot = shared.balancer.snapshot();
    let route = snapshot
        .routes
        .lookup(authority, &segments, |v| listener.allows(v))
        .ok_or_else(|| {
            ForwardError::new(
                ErrorKind::RouteNotFound,
                format!("no route for {}", parts.uri.path()),
            )
        })?;
    let service = route.service.clone();
    let prefix = route.prefix.clone();
    let budget = route.timeout.unwrap_or(shared.timeouts.request);
    let deadline = started + budget;

    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (body, trailers) = tokio::time::timeout_at(
        deadline,
        read_body(body, shared.limits.max_body_bytes, declared),
    )
    .await
    .map_err(|_| {
        ForwardError::new(
            ErrorKind::ClientBody,
            "request body was not received within the route's timeout",
        )
    })??;

    let endpoints = snapshot.services.get(&service);
    let candidates = match endpoints.map(|s| shared.balancer.select(s)) {
        Some(Ok(c)) => c,
        Some(Err(NoEndpoint::AllEjected)) => {
            shared.registry.service_unreachable(&service);
            return Err(ForwardError::new(
                ErrorKind::NoHealthyInstance,
                format!("every instance of service {service} is unreachable"),
            ));
        }
        Some(Err(NoEndpoint::NoneHealthy)) | None => {
            return Err(ForwardError::new(
                ErrorKind::NoHealthyInstance,
                format!("service {service} has no healthy instance"),
            ));
        }
    };
    drop(snapshot);

    let request_id = parts
        .extensions
        .get::<RequestId>()
        .map(RequestId::as_str)
        .unwrap_or_default();
    let peer = parts
        .extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
    let trusted_peer = shared
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer.ip()));
    let remaining = deadline.saturating_duration_since(Instant::now());
    let meta = RequestMeta {
        request_id,
        peer,
        trusted_peer,
        node_id: &shared.node_id,
        service: &service,
        matched_prefix: &prefix,
        deadline: Some(remaining),
    };
    let head = parts.method == Method::HEAD;

    let mut last_err = None;
    for ep in candidates {
        // Built per attempt rather than cloned up front: the message moves
        // into the call, and a fall-back (connection refused) is rare. The
        // body is `Bytes`, so rebuilding never copies it.
        let mut msg = request_to_wire(&parts, body.clone(), trailers.as_ref(), &meta)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timeout_error(&service, budget));
        }
        if let Some(ctx) = msg.context.as_mut() {
            ctx.deadline_ms = remaining.as_millis().max(1) as u64;
        }
        let mut call = tonic::Request::new(msg);
        call.set_timeout(remaining);
        let _in_flight = ep.start();
        let result = tokio::time::timeout_at(deadline, ep.client().send(call)).await;
        match result {
            Err(_) => {
                shared.balancer.record(&ep, false);
                return Err(timeout_error(&service, budget));
            }
            Ok(Ok(resp)) => {
                let converted = response_from_wire(resp.into_inner(), head);
                shared.balancer.record(&ep, converted.is_ok());
                return converted;
            }
            // tonic enforces the grpc-timeout it sends and reports it as
            // CANCELLED; either way the route's budget is spent.
            Ok(Err(_)) if Instant::now() >= deadline => {
                shared.balancer.record(&ep, false);
                return Err(timeout_error(&service, budget));
            }
            Ok(Err(status)) => {
                let err = classify(&status, &service);
                if err.kind.retry() != crate::error::Retry::Safe {
                    shared.balancer.record(&ep, false);
                    warn!(service = %service, instance = %ep.instance_id, code = ?status.code(), message = status.message(), "Forwarded call failed.");
                    return Err(err);
                }
                debug!(service = %service, instance = %ep.instance_id, "Connection refused; trying the next instance.");
                shared.balancer.eject(&ep);
                last_err = Some(err);
            }
        }
    }
    // Every candidate refused the connection.
    shared.registry.service_unreachable(&service);
    Err(last_err.map_or_else(
        || {
            ForwardError::new(
                ErrorKind::NoHealthyInstance,
                format!("service {service} has no healthy instance"),
            )
        },
        |_| {
            ForwardError::new(
                ErrorKind::NoHealthyInstance,
                format!("every instance of service {service} is unreachable"),
            )
        },
    ))
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
    fn listener_visibility() {
        assert!(Listener::Public.allows(Visibility::Public));
        assert!(!Listener::Public.allows(Visibility::Internal));
        assert!(!Listener::Internal.allows(Visibility::Admin));
        assert!(Listener::Admin.allows(Visibility::Admin));
    }
}
