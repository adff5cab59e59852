//! The request path, as one tower stack. Read [`proxy_stack`] top to bottom
//! to know every step a request takes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceBuilder};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::{ErrorKind, ForwardError};
use crate::forward::Forward;
use crate::metrics::Metrics;
use crate::request_id::{RequestId, RequestIdLayer};
use crate::routing::Listener;
use crate::shared::Shared;

/// The HTTP service a listener serves: never fails, errors are responses.
/// `B` is the request body: hyper's `Incoming` on the public listeners,
/// axum's `Body` behind the admin router.
pub type HttpService<B = hyper::body::Incoming> =
    BoxCloneSyncService<Request<B>, Response<Body>, Infallible>;

/// HTTP -> ForwardingReq -> gRPC -> ForwardingResp -> HTTP, for one listener.
///
/// The stack's concrete type, so a server calls it without boxing; wrap it
/// in [`HttpService::new`] where one nameable type is wanted.
pub fn proxy_stack<B>(
    shared: Arc<Shared>,
    listener: Listener,
) -> impl Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let max_concurrent = shared.limits.max_concurrent_requests;
    let metrics = shared.balancer.metrics().clone();
    ServiceBuilder::new()
        // One response body type for every listener (the trace layer wraps it).
        .map_response(|r: Response<_>| r.map(Body::new))
        // Request id first, so every response below - errors included - carries it.
        .layer(RequestIdLayer)
        // A span per request with method, URI and request id (so a warning
        // logged inside names its request: the admin UI's log pane reads
        // it); responses and 5xx are logged at DEBUG so a busy gateway does
        // not log every request (the causes of upstream failures are
        // logged once, where classified).
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span as fn(&Request<B>) -> tracing::Span)
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        // The one edge where a classified error becomes a JSON response.
        .layer(ErrorEdgeLayer)
        // Counts the requests shed below, in `gateway_refused_total` and
        // (unrouted: routing happens below) in `gateway_requests_total`.
        .layer(CountShedLayer { metrics, listener })
        // Shed instead of queueing when the gateway is at its concurrency
        // limit: a fast 503 beats a slow timeout under overload.
        .load_shed()
        .concurrency_limit(max_concurrent)
        // Route, body limits, balance, call, convert back (forward.rs).
        .service(Forward::new(shared, listener))
}

/// The request's span: DEBUG, so it costs nothing unless a layer wants it
/// (`RUST_LOG=debug`); the admin log pane takes request ids from the
/// warnings' own `request_id` field instead (`admin::LogFeed`).
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    tracing::debug_span!(
        target: crate::admin::REQUEST_SPAN_TARGET,
        "request",
        method = %req.method(),
        uri = %req.uri(),
        request_id = req.extensions().get::<RequestId>().map(RequestId::as_str),
    )
}

/// Layer for [`CountShed`].
#[derive(Clone)]
pub struct CountShedLayer {
    metrics: Arc<Metrics>,
    listener: Listener,
}

impl<S> Layer<S> for CountShedLayer {
    type Service = CountShed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountShed {
            inner,
            metrics: self.metrics.clone(),
            listener: self.listener,
        }
    }
}

/// Counts requests refused by the load shedder below it: the forwarder,
/// which counts every other request, never sees them. With metrics off it
/// passes requests through untouched (one branch).
#[derive(Clone)]
pub struct CountShed<S> {
    inner: S,
    metrics: Arc<Metrics>,
    listener: Listener,
}

impl<S, B> Service<Request<B>> for CountShed<S>
where
    S: Service<Request<B>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = CountShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let count = self.metrics.enabled().then(|| ShedNote {
            metrics: self.metrics.clone(),
            listener: self.listener,
            method: crate::metrics::method_class(req.method()),
        });
        CountShedFuture {
            inner: self.inner.call(req),
            count,
        }
    }
}

/// What a shed request is counted as.
pub struct ShedNote {
    metrics: Arc<Metrics>,
    listener: Listener,
    method: usize,
}

pin_project_lite::pin_project! {
    /// Response future of [`CountShed`].
    pub struct CountShedFuture<F> {
        #[pin]
        inner: F,
        count: Option<ShedNote>,
    }
}

impl<F, R> Future for CountShedFuture<F>
where
    F: Future<Output = Result<R, BoxError>>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Err(e), Some(n)) = (&out, this.count.take())
            && e.is::<tower::load_shed::error::Overloaded>()
        {
            n.metrics.shed.inc();
            // Refused at once, before routing: no latency, no route.
            let status = ErrorKind::Overloaded.status().as_u16();
            n.metrics.request(None, n.listener, n.method, status, 0.0);
        }
        Poll::Ready(out)
    }
}

/// Layer for [`ErrorEdge`].
#[derive(Debug, Clone, Copy)]
pub struct ErrorEdgeLayer;

impl<S> Layer<S> for ErrorEdgeLayer {
    type Service = ErrorEdge<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorEdge {
            inner,
            not_ready: None,
        }
    }
}

/// Turns every error of the stack below into a response, in one place:
/// a [`ForwardError`] keeps its classification, tower's load-shedding becomes
/// `overloaded`, anything else is a gateway failure.
///
/// Readiness is passed through: below it, load shedding is always ready (it
/// refuses in `call`), so overload turns into a response, never into
/// back-pressure on the connection; a readiness error becomes the next
/// call's response. The future is concrete: no box, no clone of the stack.
#[derive(Debug, Clone)]
pub struct ErrorEdge<S> {
    inner: S,
    not_ready: Option<ForwardError>,
}

fn classify(e: BoxError) -> ForwardError {
    match e.downcast::<ForwardError>() {
        Ok(fe) => *fe,
        Err(e) if e.is::<tower::load_shed::error::Overloaded>() => ForwardError::new(
            ErrorKind::Overloaded,
            "the gateway is at its concurrency limit; retry later",
        ),
        Err(e) => ForwardError::new(ErrorKind::Overloaded, format!("gateway error: {e}")),
    }
}

impl<S, B> Service<Request<B>> for ErrorEdge<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ErrorEdgeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_none()
            && let Err(e) = std::task::ready!(self.inner.poll_ready(cx))
        {
            self.not_ready = Some(classify(e.into()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Set by the request id layer above; an error response carries it.
        let id = req.extensions().get::<RequestId>().cloned();
        match self.not_ready.take() {
            Some(err) => ErrorEdgeFuture::Refused {
                err: Some((err, id)),
            },
            None => ErrorEdgeFuture::Called {
                inner: self.inner.call(req),
                id,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ErrorEdge`] (fields: the inner future or the
    /// readiness error, and the request's id for an error response).
    #[allow(missing_docs)]
    #[project = ErrorEdgeProj]
    pub enum ErrorEdgeFuture<F> {
        /// The stack below was called.
        Called {
            #[pin]
            inner: F,
            id: Option<RequestId>,
        },
        /// The stack below was not ready: its error is the answer.
        Refused {
            err: Option<(ForwardError, Option<RequestId>)>,
        },
    }
}

impl<F, E> Future for ErrorEdgeFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ErrorEdgeProj::Called { inner, id } => {
                let resp = match std::task::ready!(inner.poll(cx)) {
                    Ok(r) => r,
                    Err(e) => classify(e.into()).into_response(id.as_ref().map(RequestId::as_str)),
                };
                Poll::Ready(Ok(resp))
            }
            ErrorEdgeProj::Refused { err } => {
                let (err, id) = err.take().expect("polled after completion");
                Poll::Ready(Ok(err.into_response(id.as_ref().map(RequestId::as_str))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn errors_become_json_responses_with_the_request_id() {
        let failing = service_fn(|_req: Request<()>| async {
            Err::<Response<Body>, _>(ForwardError::new(ErrorKind::RouteNotFound, "nope"))
        });
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(ErrorEdgeLayer)
            .service(failing);
        let req = Request::builder()
            .header("x-request-id", "r-1")
            .body(())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["x-request-id"], "r-1");
        assert_eq!(resp.headers()["content-type"], "application/json");
    }

    #[tokio::test]
    async fn load_shedding_is_a_503() {
        let slow = service_fn(|_req: Request<()>| async {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            Ok::<_, ForwardError>(Response::new(Body::empty()))
        });
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(ErrorEdgeLayer)
            .load_shed()
            .concurrency_limit(1)
            .service(slow);
        // On the current-thread test runtime the spawned request runs (and
        // takes the only permit) when this task yields.
        let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
        tokio::task::yield_now().await;
        let resp = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(resp.status(), 503);
        first.abort();
    }

    /// A service that is never ready: its readiness error is the answer to
    /// the next call, as JSON, and the service is asked again afterwards.
    #[tokio::test]
    async fn a_readiness_error_is_the_next_calls_response() {
        #[derive(Clone)]
        struct Broken;
        impl Service<Request<()>> for Broken {
            type Response = Response<Body>;
            type Error = ForwardError;
            type Future = std::future::Ready<Result<Response<Body>, ForwardError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ForwardError>> {
                Poll::Ready(Err(ForwardError::new(ErrorKind::NoHealthyInstance, "down")))
            }
            fn call(&mut self, _: Request<()>) -> Self::Future {
                unreachable!("never called when not ready")
            }
        }
        let svc = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(ErrorEdgeLayer)
            .service(Broken);
        let req = Request::builder()
            .header("x-request-id", "r-2")
            .body(())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 503);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "no_healthy_instance");
        assert_eq!(v["error"]["request_id"], "r-2");
        assert_eq!(svc.oneshot(Request::new(())).await.unwrap().status(), 503);
    }
}
