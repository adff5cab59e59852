//! Request ids: keep a valid `x-request-id` from the client, otherwise make
//! one; put it in the request (header and extension) and on the response.
//!
//! Written here rather than taken from tower-http's `SetRequestId` because
//! that one keeps any client value, valid or not, and we need the id in an
//! extension the error path can read without parsing headers again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The header carrying the request id.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of a request, as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id as text (always visible ASCII).
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// Whether a client-sent id is acceptable: 1-128 visible ASCII characters.
pub fn is_valid(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

fn generate() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    let s = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("0"))
}

/// Layer that assigns request ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

/// See [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for RequestIdService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers().get(&HEADER) {
            Some(v) if is_valid(v) && req.headers().get_all(&HEADER).iter().count() == 1 => {
                v.clone()
            }
            _ => generate(),
        };
        req.headers_mut().insert(HEADER, id.clone());
        req.extensions_mut().insert(RequestId(id.clone()));
        ResponseFuture {
            inner: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// Response future of [`RequestIdService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            resp.headers_mut().entry(HEADER).or_insert(id);
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    async fn echo(req: Request<()>) -> Result<Response<String>, Infallible> {
        let ext = req
            .extensions()
            .get::<RequestId>()
            .unwrap()
            .as_str()
            .to_owned();
        assert_eq!(req.headers()[HEADER].to_str().unwrap(), ext);
        Ok(Response::new(ext))
    }

    #[tokio::test]
    async fn keeps_a_valid_client_id() {
        let svc = RequestIdLayer.layer(service_fn(echo));
        let req = Request::builder()
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[HEADER], "abc-123");
        assert_eq!(resp.body(), "abc-123");
    }

    #[tokio::test]
    async fn replaces_invalid_or_duplicate_ids() {
        for bad in [
            vec!["has space"],
            vec![""],
            vec!["a", "b"],
            vec![&"x".repeat(129)],
        ] {
            let mut b = Request::builder();
            for v in &bad {
                b = b.header("x-request-id", *v);
            }
            let resp = RequestIdLayer
                .layer(service_fn(echo))
                .oneshot(b.body(()).unwrap())
                .await
                .unwrap();
            let id = resp.headers()[HEADER].to_str().unwrap();
            assert_eq!(id.len(), 32, "{bad:?} -> {id}");
        }
    }

    #[tokio::test]
    async fn generates_when_absent() {
        let svc = RequestIdLayer.layer(service_fn(echo));
        let resp = svc.oneshot(Request::new(())).await.unwrap();
        assert!(is_valid(&resp.headers()[HEADER]));
    }
}
