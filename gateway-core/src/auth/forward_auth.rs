//! A `kind = "forward"` provider: the request head goes to a registered
//! service over the gateway's own unary path ([`crate::forward::pick`] and
//! [`crate::forward::dispatch_unary`]: the same balancer, upstream pool,
//! retries and conversions as any request, no second client). Its 2xx lets
//! the request through; any other answer is returned to the client as it
//! is (a login redirect, a 401 with the service's own body).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, header};
use tokio::time::Instant;
use tracing::debug;

use super::unavailable;
use crate::config::{AuthProviderForward, OnUnavailable};
use crate::error::ForwardError;
use crate::forward::{Target, Trail};
use crate::shared::Shared;

/// `x-forwarded-method`: the original request's method.
pub const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
/// `x-forwarded-uri`: the original request's path and query.
pub const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");

/// See module docs.
pub(crate) struct ForwardAuth {
    service: Arc<str>,
    prefix: Arc<str>,
    path: http::uri::PathAndQuery,
    copy: Box<[HeaderName]>,
    timeout: Duration,
    on_unavailable: OnUnavailable,
}

/// The answer of the auth service: headers to copy, or its refusal.
pub(crate) type Answer = Result<Box<[(HeaderName, HeaderValue)]>, Response<Body>>;

impl ForwardAuth {
    /// A provider of a validated config.
    pub(crate) fn new(c: &AuthProviderForward) -> Self {
        Self {
            service: c.service.as_str().into(),
            prefix: "/".into(),
            path: c
                .path
                .parse()
                .unwrap_or_else(|_| http::uri::PathAndQuery::from_static("/")),
            copy: c
                .copy_headers
                .iter()
                .filter_map(|h| HeaderName::try_from(h.as_str()).ok())
                .collect(),
            timeout: c.timeout,
            on_unavailable: c.on_unavailable,
        }
    }

    /// The headers copied from a 2xx answer.
    pub(crate) fn copy_headers(&self) -> &[HeaderName] {
        &self.copy
    }

    /// Asks the auth service about `parts` (its head only). A failure to
    /// get an answer is 503 `auth_unavailable`, or an empty allow with
    /// `on_unavailable = "allow"`.
    pub(crate) async fn ask(
        &self,
        shared: &Shared,
        parts: &http::request::Parts,
    ) -> Result<Answer, ForwardError> {
        match self.call(shared, parts).await {
            Ok(resp) if resp.status().is_success() => {
                let mut copied = Vec::new();
                for h in self.copy.iter() {
                    for v in resp.headers().get_all(h) {
                        copied.push((h.clone(), v.clone()));
                    }
                }
                Ok(Ok(copied.into()))
            }
            Ok(resp) => Ok(Err(resp)),
            Err(e) => {
                debug!(service = %self.service, error = %e, "Forward-auth service did not answer.");
                match self.on_unavailable {
                    OnUnavailable::Allow => Ok(Ok(Box::new([]))),
                    OnUnavailable::Deny => Err(unavailable(format!(
                        "the authentication service {} did not answer",
                        self.service
                    ))),
                }
            }
        }
    }

    /// One `Send` of the head to the auth service.
    async fn call(
        &self,
        shared: &Shared,
        parts: &http::request::Parts,
    ) -> Result<Response<Body>, ForwardError> {
        let mut req = http::Request::new(http_body_util::Empty::<Bytes>::new());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = http::Uri::from(self.path.clone());
        *req.version_mut() = parts.version;
        let headers = req.headers_mut();
        for (name, value) in parts.headers.iter() {
            // The body is not sent: nothing may announce one.
            if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(
            X_FORWARDED_METHOD,
            HeaderValue::from_str(parts.method.as_str()).unwrap_or(HeaderValue::from_static("GET")),
        );
        if let Some(pq) = parts.uri.path_and_query()
            && let Ok(v) = HeaderValue::from_str(pq.as_str())
        {
            headers.insert(X_FORWARDED_URI, v);
        }
        if let Some(id) = parts.extensions.get::<crate::request_id::RequestId>() {
            req.extensions_mut().insert(id.clone());
        }
        if let Some(peer) = parts.extensions.get::<crate::server::PeerAddr>() {
            req.extensions_mut().insert(*peer);
        }
        let (head, body) = req.into_parts();
        let target = Target {
            service: self.service.clone(),
            prefix: self.prefix.clone(),
            timeout: self.timeout,
            stream: false,
            max_duration: self.timeout,
            strip_prefix: false,
            max_body_bytes: shared.limits.max_body_bytes,
            max_stream_body_bytes: shared.limits.max_stream_body_bytes,
        };
        let snapshot = shared.balancer.snapshot();
        let (candidates, up) = crate::forward::pick(shared, &snapshot, &self.service)?;
        drop(snapshot);
        let mut trail = Trail::default();
        crate::forward::dispatch_unary(
            shared,
            head,
            body,
            &target,
            candidates,
            &up,
            Instant::now(),
            &mut trail,
        )
        .await
    }
}

/// The cache key of a forward-auth decision: the credential (the
/// `Authorization` and `Cookie` headers) with the method and path it was
/// for, since the service may decide by path.
pub(crate) fn cache_key(provider: usize, parts: &http::request::Parts) -> super::CacheKey {
    let value = |h| {
        parts
            .headers
            .get_all(h)
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain([b'\n']))
            .collect::<Vec<u8>>()
    };
    let auth = value(header::AUTHORIZATION);
    let cookie = value(header::COOKIE);
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    super::cache_key(&[
        &provider.to_le_bytes(),
        parts.method.as_str().as_bytes(),
        pq.as_bytes(),
        &auth,
        &cookie,
    ])
}
