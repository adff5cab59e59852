//! HTTP <-> `ForwardingReq`/`ForwardingResp`, with the gateway's policy:
//! hop-by-hop headers removed (RFC 9110 section 7.6.1), `X-Forwarded-*` and
//! the request id set, request context filled in.
//!
//! Everything else survives unchanged: method, raw path and query, header
//! order and duplicates, bytes that are not UTF-8, body, trailers.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, request};
use http_body::Frame;
use http_body_util::{Full, StreamBody};
use proto::convert::{split_target, version_to_wire};
use proto::v1::{ForwardingReq, ForwardingResp, Header, RequestContext};

use crate::error::{ErrorKind, ForwardError};

pub mod wire;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop header fields: meaningful for one connection only, never
/// forwarded (RFC 9110 7.6.1, plus the legacy `Keep-Alive` and
/// `Proxy-Connection`).
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
}

/// Field names listed in `Connection` (lower-cased): also hop-by-hop.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// What the gateway knows about a request besides the HTTP message.
#[derive(Debug, Clone)]
pub struct RequestMeta<'a> {
    /// Request id (already validated or generated).
    pub request_id: &'a str,
    /// TCP peer of the accepted connection.
    pub peer: SocketAddr,
    /// Whether the peer is a trusted proxy whose `X-Forwarded-*` we keep.
    pub trusted_peer: bool,
    /// This gateway's node id.
    pub node_id: &'a str,
    /// Service the request is routed to.
    pub service: &'a str,
    /// Registered prefix that matched.
    pub matched_prefix: &'a str,
    /// Time budget left for the backend.
    pub deadline: Option<Duration>,
    /// The trace context to send instead of the client's `traceparent` and
    /// `tracestate` headers: the gateway's own span, when tracing is on.
    pub trace: Option<&'a crate::otel::OutgoingTrace>,
}

/// The request's authority: the URI's (absolute-form or HTTP/2) or the single
/// `Host` header. Two `Host` headers are a malformed request (RFC 9112 3.2).
pub fn authority(parts: &request::Parts) -> Result<&str, ForwardError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ForwardError::new(
            ErrorKind::BadRequest,
            "more than one Host header",
        ));
    }
    if let Some(a) = parts.uri.authority() {
        return Ok(a.as_str());
    }
    match host {
        Some(h) => h.to_str().map_err(|_| {
            ForwardError::new(ErrorKind::BadRequest, "Host header is not visible ASCII")
        }),
        None if parts.version == http::Version::HTTP_11 => Err(ForwardError::new(
            ErrorKind::BadRequest,
            "HTTP/1.1 request without Host header",
        )),
        None => Ok(""),
    }
}

/// The `X-Forwarded-Proto` and `X-Forwarded-Host` the backend is told: a
/// trusted peer's own values (a proto only if `http` or `https`), else
/// `https` on a TLS connection (a client's h2 `:scheme` is only believed on
/// a plain one), the request's scheme, `http`; and the request's authority.
/// One rule for both encoders (`request_to_wire` and `wire::EncodedRequest`).
pub(crate) fn forwarded_scheme_and_host<'a>(
    parts: &'a request::Parts,
    authority: &'a str,
    trusted_peer: bool,
) -> (&'a str, &'a [u8]) {
    let h = &parts.headers;
    let trusted = |n: &HeaderName| {
        trusted_peer
            .then(|| h.get(n))
            .flatten()
            .map(HeaderValue::as_bytes)
    };
    let conn_tls = parts
        .extensions
        .get::<crate::tls::ConnectionTls>()
        .map(|_| "https");
    let scheme = trusted(&X_FORWARDED_PROTO)
        .and_then(|p| std::str::from_utf8(p).ok())
        .filter(|p| *p == "http" || *p == "https")
        .or(conn_tls)
        .or(parts.uri.scheme_str())
        .unwrap_or("http");
    let host = trusted(&X_FORWARDED_HOST).unwrap_or(authority.as_bytes());
    (scheme, host)
}

/// Builds the `ForwardingReq` for a request whose body has been read.
pub fn request_to_wire(
    parts: &request::Parts,
    body: Bytes,
    trailers: Option<&HeaderMap>,
    meta: &RequestMeta<'_>,
) -> Result<ForwardingReq, ForwardError> {
    let authority = authority(parts)?.to_owned();
    let (path, query) = split_target(&parts.uri);
    let named = connection_named(&parts.headers);
    let h = &parts.headers;

    let mut headers = Vec::with_capacity(h.len() + 4);
    for (name, value) in h {
        if is_hop_by_hop(name)
            || named.contains(name)
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == crate::request_id::HEADER
        {
            continue;
        }
        headers.push(wire(name.as_str(), value.as_bytes()));
    }

    // Forwarded headers: kept from a trusted proxy, replaced otherwise, and
    // set after the hop-by-hop pass so a client cannot strip them by naming
    // them in `Connection`.
    let peer_ip = meta.peer.ip().to_string();
    let mut client_addresses = Vec::new();
    let mut xff = String::new();
    if meta.trusted_peer {
        for v in h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for a in v.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                client_addresses.push(a.to_owned());
                xff.push_str(a);
                xff.push_str(", ");
            }
        }
    }
    xff.push_str(&peer_ip);
    client_addresses.push(meta.peer.to_string());
    headers.push(wire("x-forwarded-for", xff.as_bytes()));

    let (scheme, fwd_host) = forwarded_scheme_and_host(parts, &authority, meta.trusted_peer);
    let scheme = scheme.to_owned();
    headers.push(wire("x-forwarded-proto", scheme.as_bytes()));
    headers.push(wire("x-forwarded-host", fwd_host));
    headers.push(wire("x-request-id", meta.request_id.as_bytes()));

    let header_str = |n: &str| {
        h.get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    Ok(ForwardingReq {
        protocol_version: proto::PROTOCOL_VERSION,
        method: parts.method.as_str().to_owned(),
        scheme,
        authority,
        path: path.to_owned(),
        query: query.unwrap_or_default().to_owned(),
        has_query: query.is_some(),
        version: version_to_wire(parts.version) as i32,
        headers,
        body,
        trailers: trailers
            .map(proto::convert::headers_to_wire)
            .unwrap_or_default(),
        context: Some(RequestContext {
            request_id: meta.request_id.to_owned(),
            client_addresses,
            traceparent: match meta.trace {
                Some(t) => t.traceparent.clone(),
                None => header_str("traceparent"),
            },
            tracestate: match meta.trace {
                Some(t) => t.tracestate.clone(),
                None => header_str("tracestate"),
            },
            deadline_ms: meta
                .deadline
                .map(|d| d.as_millis().max(1) as u64)
                .unwrap_or(0),
            gateway_node: meta.node_id.to_owned(),
            service: meta.service.to_owned(),
            matched_prefix: meta.matched_prefix.to_owned(),
        }),
        upgrade: String::new(),
    })
}

fn wire(name: &str, value: &[u8]) -> Header {
    Header {
        name: name.to_owned(),
        value: Bytes::copy_from_slice(value),
    }
}

/// Whether a header holding a comma-separated list (`TE`, `Accept`,
/// `Connection`, `Upgrade`; a single media type is a list of one) names
/// `token`, parameters after `;` ignored, case-insensitively.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case(token))
        })
}

/// How the client that will get a response can take it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseTarget {
    /// The request was `HEAD`: the answer's `Content-Length` describes the
    /// representation, not a body.
    pub head_request: bool,
    /// The client accepts trailers: HTTP/2, or HTTP/1.1 with `TE: trailers`.
    pub trailers: bool,
}

impl ResponseTarget {
    /// What the client of `parts` accepts.
    pub fn of(parts: &request::Parts) -> Self {
        Self {
            head_request: parts.method == http::Method::HEAD,
            trailers: parts.version >= http::Version::HTTP_2
                || has_token(&parts.headers, header::TE, "trailers"),
        }
    }
}

/// Most header (or trailer) fields a backend's answer may carry; more make
/// it an invalid answer (502). Envoy and HAProxy allow about 100. The bound
/// also keeps hyper's encoder in check: it drains a `HeaderMap`, which is
/// quadratic in the values of one name (40,000 `x-h` fields took 13 s).
pub const MAX_RESPONSE_FIELDS: usize = 1000;

/// A header field of a backend's answer, however it was decoded: prost's
/// [`Header`], or [`wire::RespField`] (slices of the received buffer).
pub trait WireField {
    /// Field name as sent (validated UTF-8, not yet as an HTTP name).
    fn name(&self) -> &str;
    /// Field value as sent.
    fn value(&self) -> &Bytes;
}

impl WireField for Header {
    fn name(&self) -> &str {
        &self.name
    }
    fn value(&self) -> &Bytes {
        &self.value
    }
}

/// A backend's answer taken apart: what [`response_from_wire`] needs of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseParts<F> {
    /// `ForwardingResp.status`.
    pub status: u32,
    /// `ForwardingResp.headers`.
    pub headers: Vec<F>,
    /// `ForwardingResp.body`.
    pub body: Bytes,
    /// `ForwardingResp.trailers`.
    pub trailers: Vec<F>,
}

/// A backend's answer, however it was decoded.
pub trait WireResponse {
    /// Its header and trailer fields.
    type Field: WireField;
    /// The answer taken apart.
    fn into_parts(self) -> ResponseParts<Self::Field>;
}

impl WireResponse for ForwardingResp {
    type Field = Header;
    fn into_parts(self) -> ResponseParts<Header> {
        ResponseParts {
            status: self.status,
            headers: self.headers,
            body: self.body,
            trailers: self.trailers,
        }
    }
}

impl<F: WireField> WireResponse for ResponseParts<F> {
    type Field = F;
    fn into_parts(self) -> Self {
        self
    }
}

fn invalid_field(h: &impl WireField, reason: &'static str) -> proto::convert::InvalidHeader {
    proto::convert::InvalidHeader {
        name: h.name().to_owned(),
        reason,
    }
}

/// `proto::convert::try_append` for any [`WireField`].
fn try_append(
    map: &mut HeaderMap,
    name: HeaderName,
    value: HeaderValue,
    h: &impl WireField,
) -> Result<(), proto::convert::InvalidHeader> {
    map.try_append(name, value)
        .map(drop)
        .map_err(|_| invalid_field(h, "too many header fields (HTTP allows 32768)"))
}

/// An empty map sized for `len` fields (`proto::convert::map_for`).
fn map_for(len: usize) -> HeaderMap {
    HeaderMap::try_with_capacity(len).unwrap_or_default()
}

fn too_many_fields<F>(list: &[F]) -> Result<(), proto::convert::InvalidHeader> {
    if list.len() > MAX_RESPONSE_FIELDS {
        return Err(proto::convert::InvalidHeader {
            name: String::new(),
            reason: "too many fields (the gateway forwards at most 1000)",
        });
    }
    Ok(())
}

/// A backend's trailers as a map, within [`MAX_RESPONSE_FIELDS`].
pub fn response_trailers<F: WireField>(
    list: &[F],
) -> Result<HeaderMap, proto::convert::InvalidHeader> {
    too_many_fields(list)?;
    // `proto::convert::headers_from_wire`, for any `WireField`.
    let mut map = map_for(list.len());
    for h in list {
        let name = HeaderName::from_bytes(h.name().as_bytes())
            .map_err(|_| invalid_field(h, "invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(h.value().clone()).map_err(|_| {
            invalid_field(
                h,
                "invalid header value (control characters are not allowed)",
            )
        })?;
        try_append(&mut map, name, value, h)?;
    }
    Ok(map)
}

/// Builds a response header map from the wire list in one pass, leaving out
/// hop-by-hop fields and those named in `Connection`. Filtering while
/// building (not removing afterwards) keeps the order the contract promises:
/// `HeaderMap::remove` moves the last name into the hole.
pub fn response_headers<F: WireField>(
    list: &[F],
) -> Result<HeaderMap, proto::convert::InvalidHeader> {
    too_many_fields(list)?;
    let named: Vec<&str> = list
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value()).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut map = map_for(list.len());
    for h in list {
        let name = HeaderName::from_bytes(h.name().as_bytes())
            .map_err(|_| invalid_field(h, "invalid header name"))?;
        if is_hop_by_hop(&name) || named.iter().any(|n| n.eq_ignore_ascii_case(name.as_str())) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(h.value().clone()).map_err(|_| {
            invalid_field(
                h,
                "invalid header value (control characters are not allowed)",
            )
        })?;
        try_append(&mut map, name, value, h)?;
    }
    // Room for the `Trailer` field the gateway may add: `insert` panics
    // on a map at its limit.
    map.try_reserve(1)
        .map_err(|_| proto::convert::InvalidHeader {
            name: String::new(),
            reason: "too many header fields (HTTP allows 32768)",
        })?;
    Ok(map)
}

/// The HTTP status of a backend's answer: 0 means 200; 200-599 pass; 1xx,
/// and anything else, cannot be forwarded as a final response.
pub fn response_status(status: u32) -> Result<StatusCode, ForwardError> {
    let invalid = |m: String| ForwardError::new(ErrorKind::UpstreamInvalidResponse, m);
    match status {
        0 => Ok(StatusCode::OK),
        s @ 200..=599 => {
            StatusCode::from_u16(s as u16).map_err(|_| invalid(format!("invalid HTTP status {s}")))
        }
        s => Err(invalid(format!("HTTP status {s} cannot be forwarded"))),
    }
}

/// Announces trailer names in a `Trailer` header, which hyper needs to send
/// HTTP/1.1 trailers (and which tells the client what to expect).
fn announce_trailers(headers: &mut HeaderMap, trailers: &HeaderMap) {
    let mut names = String::new();
    for name in trailers.keys() {
        if !names.is_empty() {
            names.push_str(", ");
        }
        names.push_str(name.as_str());
    }
    if let Ok(v) = HeaderValue::from_str(&names) {
        headers.insert(header::TRAILER, v);
    }
}

/// Turns a backend's `ForwardingResp` into the HTTP response. A response
/// HTTP cannot carry (bad status, control characters in a header) is an
/// upstream failure (502), never passed on half-valid.
pub fn response_from_wire(
    resp: impl WireResponse,
    target: ResponseTarget,
) -> Result<Response<Body>, ForwardError> {
    let resp = resp.into_parts();
    let invalid = |m: String| ForwardError::new(ErrorKind::UpstreamInvalidResponse, m);
    let status = response_status(resp.status)?;
    let mut headers =
        response_headers(&resp.headers).map_err(|e| invalid(format!("response {e}")))?;
    // The body is complete, so its length is known: framing is ours to set.
    // A HEAD answer keeps the length of the representation it describes.
    if !(target.head_request && resp.body.is_empty()) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let trailers =
        response_trailers(&resp.trailers).map_err(|e| invalid(format!("response trailer {e}")))?;

    let body = if trailers.is_empty() || !target.trailers || target.head_request {
        Body::new(Full::new(resp.body))
    } else {
        // Trailers need a chunked HTTP/1.1 body: a body of unknown size
        // (a stream of frames) rather than `Full`, whose exact size makes
        // hyper send `Content-Length` and drop the trailers.
        announce_trailers(&mut headers, &trailers);
        let frames = [
            Ok::<_, std::convert::Infallible>(Frame::data(resp.body)),
            Ok(Frame::trailers(trailers)),
        ];
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Removes hop-by-hop fields and those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for n in connection_named(headers) {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(n);
    }
}

#[cfg(test)]
mod tests;
