//! Forwarding errors, classified once.
//!
//! Every failure on the request path becomes a [`ForwardError`]: a stable
//! [`ErrorKind`] that says who caused it ([`Source`]) and whether trying
//! another instance is safe ([`Retry`]). [`ForwardError::into_response`] is
//! the one place an error becomes an HTTP response.

use std::borrow::Cow;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent something we refuse.
    Client,
    /// The backend instance failed or misbehaved.
    Upstream,
    /// The gateway itself (overload, draining).
    Gateway,
}

/// Whether the request may be sent to another instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The request never reached an instance (connection refused, or an
    /// HTTP/2 stream refused with `REFUSED_STREAM`): retrying elsewhere
    /// cannot run it twice.
    Safe,
    /// The request may have been processed: do not retry.
    Unsafe,
}

/// The stable catalogue of failures. The `code()` strings are API: clients
/// may match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed request (bad path, bad header, duplicate Host...).
    BadRequest,
    /// No route matches the request.
    RouteNotFound,
    /// Request body over the limit.
    BodyTooLarge,
    /// Request headers over the limit (size or count).
    HeadersTooLarge,
    /// The route's service has no instance that can take the request.
    NoHealthyInstance,
    /// Connecting to the instance failed, or it refused the stream; the
    /// request was not processed.
    UpstreamConnect,
    /// The instance failed the call (gRPC error, reset...).
    UpstreamFailed,
    /// The instance answered something that is not a valid HTTP response.
    UpstreamInvalidResponse,
    /// The route's timeout expired.
    UpstreamTimeout,
    /// The gateway sheds load.
    Overloaded,
    /// The client went away or its body stream broke mid-read.
    ClientBody,
    /// A WebSocket upgrade to a service that does not declare `streaming`.
    WebSocketUnsupported,
    /// Ambiguous HTTP/1.1 message framing (Transfer-Encoding with
    /// Content-Length, repeated Content-Length, bare LF line ends): the
    /// stuff request smuggling is made of.
    BadRequestFraming,
    /// A `Host` that is not `host[:port]`, or one that disagrees with the
    /// HTTP/2 `:authority`.
    InvalidHost,
    /// The listener is at `limits.max_connections` (or the client's address
    /// at `limits.max_connections_per_ip`).
    TooManyConnections,
    /// A `[[rate_limits]]` policy of the route refused the request.
    RateLimited,
    /// A CORS preflight for an origin, method or header the route's
    /// `[routes.cors]` does not allow.
    CorsRefused,
    /// An `[[auth]]` policy found no valid credential (401).
    Unauthorized,
    /// A valid credential without the scopes or claims the route needs (403).
    Forbidden,
    /// The credential could not be checked: keys not loaded yet, or the
    /// forward-auth service did not answer (503).
    AuthUnavailable,
}

impl ErrorKind {
    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::RouteNotFound => "route_not_found",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::NoHealthyInstance => "no_healthy_instance",
            ErrorKind::UpstreamConnect => "upstream_connect_failed",
            ErrorKind::UpstreamFailed => "upstream_failed",
            ErrorKind::UpstreamInvalidResponse => "upstream_invalid_response",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ClientBody => "client_body_error",
            ErrorKind::WebSocketUnsupported => "websocket_unsupported",
            ErrorKind::BadRequestFraming => "bad_request_framing",
            ErrorKind::InvalidHost => "invalid_host",
            ErrorKind::TooManyConnections => "too_many_connections",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::CorsRefused => "cors_refused",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::AuthUnavailable => "auth_unavailable",
        }
    }

    /// HTTP status this failure is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::ClientBody
            | ErrorKind::BadRequestFraming
            | ErrorKind::InvalidHost => StatusCode::BAD_REQUEST,
            ErrorKind::RouteNotFound => StatusCode::NOT_FOUND,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::NoHealthyInstance
            | ErrorKind::Overloaded
            | ErrorKind::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamConnect
            | ErrorKind::UpstreamFailed
            | ErrorKind::UpstreamInvalidResponse => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::WebSocketUnsupported => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::CorsRefused => StatusCode::FORBIDDEN,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Who caused it.
    pub fn source(self) -> Source {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::RouteNotFound
            | ErrorKind::BodyTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::ClientBody
            | ErrorKind::BadRequestFraming
            | ErrorKind::InvalidHost
            | ErrorKind::RateLimited
            | ErrorKind::CorsRefused => Source::Client,
            ErrorKind::Unauthorized | ErrorKind::Forbidden => Source::Client,
            ErrorKind::UpstreamConnect
            | ErrorKind::UpstreamFailed
            | ErrorKind::UpstreamInvalidResponse
            | ErrorKind::UpstreamTimeout
            | ErrorKind::WebSocketUnsupported => Source::Upstream,
            ErrorKind::NoHealthyInstance
            | ErrorKind::Overloaded
            | ErrorKind::TooManyConnections
            | ErrorKind::AuthUnavailable => Source::Gateway,
        }
    }

    /// Whether another instance may be tried.
    pub fn retry(self) -> Retry {
        match self {
            ErrorKind::UpstreamConnect => Retry::Safe,
            _ => Retry::Unsafe,
        }
    }
}

/// A classified forwarding failure with a human message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.code())]
pub struct ForwardError {
    /// What failed.
    pub kind: ErrorKind,
    /// Safe to show to the client: names the problem, never leaks internals
    /// beyond the service name.
    pub message: Cow<'static, str>,
    /// Fields the answer carries besides the standard ones (a rate limit's
    /// `Retry-After` and `RateLimit`); boxed, so the common error stays small.
    pub headers: Option<Box<http::HeaderMap>>,
}

impl ForwardError {
    /// A new error.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            headers: None,
        }
    }

    /// The same error, answered with `headers` too (they override the
    /// standard ones of the same name).
    pub fn with_headers(mut self, headers: http::HeaderMap) -> Self {
        self.headers = Some(Box::new(headers));
        self
    }

    /// The one place a failure becomes a response: status from the kind, a
    /// JSON body `{"error":{"code","message","request_id"}}`.
    pub fn into_response(self, request_id: Option<&str>) -> Response<Body> {
        let mut resp = Response::new(Body::from(self.json_body(request_id)));
        *resp.status_mut() = self.kind.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.kind.retry_after() {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            h.insert(crate::request_id::HEADER, id);
        }
        if self.kind.closes_connection() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(extra) = self.headers {
            for (name, value) in extra.into_iter() {
                if let Some(name) = name {
                    h.insert(name, value);
                }
            }
        }
        resp
    }

    /// The JSON body of [`Self::into_response`].
    fn json_body(&self, request_id: Option<&str>) -> String {
        serde_json::json!({
            "error": {
                "code": self.kind.code(),
                "message": self.message,
                "request_id": request_id,
            }
        })
        .to_string()
    }

    /// The same answer as [`Self::into_response`] as raw HTTP/1.1 bytes, for
    /// the one place no HTTP stack runs yet: a connection refused right
    /// after accept, before any byte is read.
    pub fn into_http1_bytes(self) -> Vec<u8> {
        let body = self.json_body(None);
        let status = self.kind.status();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if self.kind.retry_after() {
            out.push_str("retry-after: 1\r\n");
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }
}

impl ErrorKind {
    /// Overload-like answers tell the client when to come back.
    fn retry_after(self) -> bool {
        matches!(
            self,
            ErrorKind::Overloaded
                | ErrorKind::NoHealthyInstance
                | ErrorKind::TooManyConnections
                | ErrorKind::AuthUnavailable
        )
    }

    /// A client that sent garbage gets its connection closed, so framing
    /// confusion cannot carry over to the next request on it.
    fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorKind::BadRequest
                | ErrorKind::ClientBody
                | ErrorKind::BadRequestFraming
                | ErrorKind::InvalidHost
                | ErrorKind::TooManyConnections
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn response_carries_code_message_and_request_id() {
        let resp = ForwardError::new(ErrorKind::RouteNotFound, "no route for /x")
            .into_response(Some("abc"));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["x-request-id"], "abc");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "route_not_found");
        assert_eq!(v["error"]["message"], "no route for /x");
        assert_eq!(v["error"]["request_id"], "abc");
    }

    #[test]
    fn raw_answer_matches_the_json_shape() {
        let raw = ForwardError::new(ErrorKind::TooManyConnections, "full").into_http1_bytes();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }

    #[test]
    fn only_unsent_requests_are_retryable() {
        for k in [
            ErrorKind::UpstreamFailed,
            ErrorKind::UpstreamTimeout,
            ErrorKind::UpstreamInvalidResponse,
            ErrorKind::BadRequest,
        ] {
            assert_eq!(k.retry(), Retry::Unsafe, "{k:?}");
        }
        assert_eq!(ErrorKind::UpstreamConnect.retry(), Retry::Safe);
    }

    #[test]
    fn statuses_follow_the_catalogue() {
        use ErrorKind::*;
        let expect = [
            (BadRequest, 400),
            (RouteNotFound, 404),
            (BodyTooLarge, 413),
            (HeadersTooLarge, 431),
            (NoHealthyInstance, 503),
            (UpstreamConnect, 502),
            (UpstreamFailed, 502),
            (UpstreamTimeout, 504),
            (Overloaded, 503),
            (BadRequestFraming, 400),
            (InvalidHost, 400),
            (TooManyConnections, 503),
            (RateLimited, 429),
            (Unauthorized, 401),
            (Forbidden, 403),
            (AuthUnavailable, 503),
        ];
        for (k, s) in expect {
            assert_eq!(k.status().as_u16(), s, "{k:?}");
        }
    }
}
