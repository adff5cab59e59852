//! The request path, as one tower stack. Read [`proxy_stack`] top to bottom
//! to know every step a request takes.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::{ErrorKind, ForwardError};
use crate::forward::Forward;
use crate::request_id::{RequestId, RequestIdLayer};
use crate::routing::Listener;
use crate::shared::Shared;

/// The HTTP service a listener serves: never fails, errors are responses.
/// `B` is the request body: hyper's `Incoming` on the public listeners,
/// axum's `Body` behind the admin router.
pub type HttpService<B = hyper::body::Incoming> =
    BoxCloneSyncService<Request<B>, Response<Body>, Infallible>;

/// HTTP -> ForwardingReq -> gRPC -> ForwardingResp -> HTTP, for one listener.
pub fn proxy_stack<B>(shared: Arc<Shared>, listener: Listener) -> HttpService<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let max_concurrent = shared.limits.max_concurrent_requests;
    let svc = ServiceBuilder::new()
        // One response body type for every listener (the trace layer wraps it).
        .map_response(|r: Response<_>| r.map(Body::new))
        // A span per request with method and URI; responses and 5xx are
        // logged at DEBUG so a busy gateway does not log every request (the
        // causes of upstream failures are logged once, where classified).
        .layer(
            TraceLayer::new_for_http()
                .on_response(DefaultOnResponse::new().level(Level::DEBUG))
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        // Request id first, so every response below - errors included - carries it.
        .layer(RequestIdLayer)
        // The one edge where a classified error becomes a JSON response.
        .layer(ErrorEdgeLayer)
        // Shed instead of queueing when the gateway is at its concurrency
        // limit: a fast 503 beats a slow timeout under overload.
        .load_shed()
        .concurrency_limit(max_concurrent)
        // Route, body limits, balance, call, convert back (forward.rs).
        .service(Forward::new(shared, listener));
    BoxCloneSyncService::new(svc)
}

/// Layer for [`ErrorEdge`].
#[derive(Debug, Clone, Copy)]
pub struct ErrorEdgeLayer;

impl<S> Layer<S> for ErrorEdgeLayer {
    type Service = ErrorEdge<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorEdge { inner }
    }
}

/// Turns every error of the stack below into a response, in one place:
/// a [`ForwardError`] keeps its classification, tower's load-shedding becomes
/// `overloaded`, anything else is a gateway failure.
#[derive(Debug, Clone)]
pub struct ErrorEdge<S> {
    inner: S,
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
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness of the inner stack is awaited per call (`oneshot`), so
        // an overloaded inner service turns into a response, not back-pressure
        // on the connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let id = req.extensions().get::<RequestId>().cloned();
        let inner = self.inner.clone();
        Box::pin(async move {
            match inner.oneshot(req).await {
                Ok(r) => Ok(r),
                Err(e) => Ok(classify(e.into()).into_response(id.as_ref().map(RequestId::as_str))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::service_fn;

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
}
