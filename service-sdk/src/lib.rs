//! Write a backend for the forwarding gateway in a few lines.
//!
//! A backend implements one trait, [`Handler`]: take the forwarded HTTP
//! request, return an HTTP response. The usual way is an [`axum::Router`]
//! (handlers by method and path), which implements [`Handler`] already.
//! [`Backend`] serves it as `forwarding.v1.ForwardingService` next to the
//! standard `grpc.health.v1` service, registers with a gateway, renews the
//! registration, registers again if the gateway forgot it (a restart), and on
//! shutdown deregisters *before* it stops serving, so no gateway routes to a
//! closed port.
//!
//! ```no_run
//! use service_sdk::{Backend, routing::get};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), service_sdk::Error> {
//!     let app = service_sdk::Router::new()
//!         .route("/hello", get(|| async { "hello through the gateway\n" }))
//!         .route("/hello/{name}", get(|axum::extract::Path(n): axum::extract::Path<String>| async move {
//!             format!("hello, {n}\n")
//!         }));
//!     Backend::builder("hello")
//!         .listen("127.0.0.1:0".parse().unwrap())
//!         .gateway("http://127.0.0.1:8090")
//!         .bind(app)
//!         .await?
//!         .serve(async { let _ = tokio::signal::ctrl_c().await; })
//!         .await
//! }
//! ```
//!
//! Then `curl http://127.0.0.1:8080/hello/you` through the gateway.
//!
//! # Streaming, server-sent events, WebSocket
//!
//! Bodies stream both ways, so the same axum handlers serve uploads of any
//! size, downloads, server-sent events and WebSocket (see [`ws`]):
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use axum::response::sse::{Event, Sse};
//! use futures_util::{Stream, StreamExt};
//! use service_sdk::routing::{get, post};
//! use service_sdk::ws::{Message, WebSocket, WebSocketUpgrade};
//! use service_sdk::{Backend, Body};
//!
//! /// Counts the bytes of an upload as they arrive, without holding it.
//! async fn upload(body: Body) -> String {
//!     let mut chunks = body.into_data_stream();
//!     let mut n = 0;
//!     while let Some(chunk) = chunks.next().await {
//!         match chunk {
//!             Ok(bytes) => n += bytes.len(),
//!             Err(e) => return format!("upload cut off: {e}\n"),
//!         }
//!     }
//!     format!("{n} bytes\n")
//! }
//!
//! /// One event a second; each one reaches the client when it is produced.
//! async fn ticks() -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
//!     let events = futures_util::stream::unfold(0u64, |i| async move {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Some((Ok(Event::default().data(i.to_string())), i + 1))
//!     });
//!     Sse::new(events)
//! }
//!
//! async fn echo(mut socket: WebSocket) {
//!     while let Some(Ok(msg)) = socket.recv().await {
//!         if matches!(msg, Message::Close(_)) || socket.send(msg).await.is_err() {
//!             return;
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), service_sdk::Error> {
//!     let app = service_sdk::Router::new()
//!         .route("/files/upload", post(upload))
//!         .route("/files/ticks", get(ticks))
//!         .route("/files/ws", get(|ws: WebSocketUpgrade| async move { ws.on_upgrade(echo) }));
//!     Backend::builder("files")
//!         .gateway("http://127.0.0.1:8090")
//!         .bind(app)
//!         .await?
//!         .serve(async { let _ = tokio::signal::ctrl_c().await; })
//!         .await
//! }
//! ```
//!
//! Extractors that buffer (`Bytes`, `String`, `Json`, `Form`) still work,
//! within axum's default body limit (2 MB; see
//! `axum::extract::DefaultBodyLimit`); read [`Body`] as a stream for more.
//!
//! ## How the exchange travels
//!
//! The backend registers with `streaming = true`, and its routes (those of
//! [`BackendBuilder::route`], or the default `/<name>`) with `stream = true`,
//! so the gateway forwards every request over `ForwardingService.Stream`
//! (unless [`BackendBuilder::prefer_unary`]). On `Stream`, the SDK:
//! * builds the request from the `head` frame; its body yields the `body`
//!   chunks as they arrive and ends at `end`, whose trailers become the
//!   body's trailers (a call that ends before `end` makes reading the body
//!   fail, so a truncated upload never looks complete);
//! * answers with a `head` (status and headers, no body), then one `body`
//!   frame per data frame of the response body as soon as it is produced,
//!   then `end` with the body's trailers (empty when none), then gRPC OK;
//! * fails the call with INTERNAL when the response body fails (the
//!   gateway then aborts the client's response), and with INVALID_ARGUMENT,
//!   naming the problem, when the frames are out of order;
//! * drops the handler (its future, its response body, its WebSocket
//!   callback) as soon as the gateway cancels the call.
//!
//! Frames are handed over through channels of two frames each way, and the
//! handler only runs while gRPC flow control lets frames out: a slow client
//! slows the handler instead of filling memory.
//!
//! On unary `Send` the request body is the complete body (and its
//! trailers), and the SDK collects the response body (and its trailers)
//! into one `ForwardingResp`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use proto::convert::{headers_from_wire, headers_to_wire, version_from_wire};
use proto::v1 as pb;
use proto::v1::forwarding_service_server::{ForwardingService, ForwardingServiceServer};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::{info, warn};

pub use axum::Router;
pub use axum::body::Body;
pub use axum::routing;
pub use proto;

#[cfg(feature = "otel")]
pub mod otel;
mod registration;
mod stream;
pub mod ws;
pub use registration::Registrar;

/// A forwarded request: the client's HTTP request as the gateway received it
/// (raw path and query, headers in order), with [`ForwardContext`] in its
/// extensions. The body streams: on `Stream` it yields the client's bytes as
/// they arrive (and its trailers, if any); on `Send` it is the whole,
/// already buffered body.
pub type Request = http::Request<Body>;
/// The HTTP response to send back through the gateway. On `Stream` every
/// data frame of the body goes to the gateway as soon as it is produced; on
/// `Send` the body is collected first.
pub type Response = http::Response<Body>;

/// What the gateway knows about a request besides the HTTP message. Found in
/// the request's extensions.
#[derive(Debug, Clone, Default)]
pub struct ForwardContext {
    /// Request id (also in the `x-request-id` header).
    pub request_id: String,
    /// Client address chain, oldest first; the last one is the TCP peer of the gateway.
    pub client_addresses: Vec<String>,
    /// W3C `traceparent`, if any: the gateway's span when it exports
    /// traces, the client's otherwise.
    pub traceparent: String,
    /// W3C `tracestate`, if any.
    pub tracestate: String,
    /// Time left before the gateway gives up, if it set a deadline.
    pub deadline: Option<Duration>,
    /// Node id of the gateway that forwarded the request.
    pub gateway_node: String,
    /// Service name the request was routed to.
    pub service: String,
    /// Route prefix that matched.
    pub matched_prefix: String,
}

/// Handles forwarded requests. The one required method; the hooks have
/// defaults.
pub trait Handler: Send + Sync + 'static {
    /// Answers one forwarded request. The request body streams in as the
    /// client sends it; the response body streams out as it is produced
    /// (on `Stream`; on `Send` both are complete messages).
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;

    /// Called after every successful (re-)registration with the gateway.
    fn on_registered(&self, _instance_id: &str) {}
}

impl Handler for axum::Router {
    async fn handle(&self, req: Request) -> Response {
        match self.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        }
    }
}

/// A [`Handler`] from an async function.
pub struct HandlerFn<F>(pub F);

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response> + Send,
{
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send {
        (self.0)(req)
    }
}

/// Errors of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Config(String),
}

/// Turns a complete `ForwardingReq` (as `Send` carries it) into an HTTP
/// request whose body yields `body`, then `trailers` if there are any. Fails
/// with a message when the message cannot be an HTTP request (bad method,
/// target, header or trailer).
pub fn request_from_wire(req: pb::ForwardingReq) -> Result<Request, String> {
    let (req, body, trailers) = split_wire_request(req)?;
    let trailers = if trailers.is_empty() {
        None
    } else {
        Some(headers_from_wire(&trailers).map_err(|e| format!("trailer {e}"))?)
    };
    Ok(req.map(|()| Body::new(stream::BufferedBody::new(body, trailers))))
}

/// The request without its body, and the body and trailers of the message.
pub(crate) fn split_wire_request(
    req: pb::ForwardingReq,
) -> Result<(http::Request<()>, Bytes, Vec<pb::Header>), String> {
    let method = http::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("invalid method {:?}", req.method))?;
    let target = if req.has_query || !req.query.is_empty() {
        format!("{}?{}", req.path, req.query)
    } else {
        req.path.clone()
    };
    let uri: http::Uri = target
        .parse()
        .map_err(|e| format!("invalid request target {target:?}: {e}"))?;
    let headers = headers_from_wire(&req.headers).map_err(|e| e.to_string())?;
    let mut out = http::Request::new(());
    *out.method_mut() = method;
    *out.uri_mut() = uri;
    *out.version_mut() =
        version_from_wire(pb::HttpVersion::try_from(req.version).unwrap_or_default());
    *out.headers_mut() = headers;
    let ctx = req.context.unwrap_or_default();
    out.extensions_mut().insert(ForwardContext {
        request_id: ctx.request_id,
        client_addresses: ctx.client_addresses,
        traceparent: ctx.traceparent,
        tracestate: ctx.tracestate,
        deadline: (ctx.deadline_ms > 0).then(|| Duration::from_millis(ctx.deadline_ms)),
        gateway_node: ctx.gateway_node,
        service: ctx.service,
        matched_prefix: ctx.matched_prefix,
    });
    Ok((out, req.body, req.trailers))
}

/// Turns an HTTP response into a `ForwardingResp` (as `Send` answers),
/// collecting the whole body and its trailers. Fails when the body does.
pub async fn response_to_wire(resp: Response) -> Result<pb::ForwardingResp, axum::Error> {
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await?;
    let trailers = collected
        .trailers()
        .map(headers_to_wire)
        .unwrap_or_default();
    Ok(pb::ForwardingResp {
        status: u32::from(parts.status.as_u16()),
        headers: headers_to_wire(&parts.headers),
        body: collected.to_bytes(),
        trailers,
    })
}

/// Calls the handler, inside a span whose parent is the gateway's when
/// tracing is on (feature `otel`, [`otel::Otel::init`]).
pub(crate) async fn handle<H: Handler>(handler: &H, req: Request) -> Response {
    #[cfg(feature = "otel")]
    {
        let span = req.extensions().get::<ForwardContext>().and_then(|c| {
            otel::handle_span(
                req.method().as_str(),
                req.uri().path(),
                &c.service,
                &c.traceparent,
                &c.tracestate,
            )
        });
        if let Some(span) = span {
            use tracing::Instrument;
            let resp = handler.handle(req).instrument(span.clone()).await;
            span.record("http.response.status_code", resp.status().as_u16());
            return resp;
        }
    }
    handler.handle(req).await
}

/// Serves a [`Handler`] as `ForwardingService`.
pub struct Forwarding<H>(Arc<H>);

impl<H> Forwarding<H> {
    /// Wraps a handler.
    pub fn new(handler: Arc<H>) -> Self {
        Self(handler)
    }
}

#[tonic::async_trait]
impl<H: Handler> ForwardingService for Forwarding<H> {
    /// Buffered: the whole request in, the whole response out. A response
    /// body that fails is a forwarding failure (INTERNAL), not a 200 with a
    /// truncated body.
    async fn send(
        &self,
        req: tonic::Request<pb::ForwardingReq>,
    ) -> Result<tonic::Response<pb::ForwardingResp>, tonic::Status> {
        let req = request_from_wire(req.into_inner()).map_err(tonic::Status::invalid_argument)?;
        let resp = handle(&*self.0, req).await;
        let resp = response_to_wire(resp)
            .await
            .map_err(|e| tonic::Status::internal(format!("the response body failed: {e}")))?;
        Ok(tonic::Response::new(resp))
    }

    /// Streaming: see the crate documentation for the frames sent.
    async fn stream(
        &self,
        req: tonic::Request<tonic::Streaming<pb::StreamRequest>>,
    ) -> Result<tonic::Response<tonic::codegen::BoxStream<pb::StreamResponse>>, tonic::Status> {
        let call = stream::CallStream::new(self.0.clone(), req.into_inner());
        Ok(tonic::Response::new(Box::pin(call)))
    }
}

/// Builder for a [`Backend`].
pub struct BackendBuilder {
    name: String,
    listen: SocketAddr,
    advertise: Option<String>,
    gateway: Option<String>,
    registration: pb::Registration,
    token: Option<String>,
    drain: Duration,
    /// Prefixes given with [`BackendBuilder::route`].
    sdk_routes: Vec<String>,
    prefer_unary: bool,
    tls: Option<tonic::transport::ServerTlsConfig>,
    gateway_tls: Option<tonic::transport::ClientTlsConfig>,
}

/// A backend service: `ForwardingService` + health + registration.
pub struct Backend;

impl Backend {
    /// Starts building a backend for service `name`.
    pub fn builder(name: impl Into<String>) -> BackendBuilder {
        let name = name.into();
        BackendBuilder {
            registration: pb::Registration {
                service: name.clone(),
                // Every SDK backend implements `ForwardingService.Stream`.
                streaming: true,
                ..Default::default()
            },
            name,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            gateway: None,
            token: None,
            drain: Duration::from_millis(500),
            sdk_routes: Vec::new(),
            prefer_unary: false,
            tls: None,
            gateway_tls: None,
        }
    }
}

impl BackendBuilder {
    /// Address to listen on (port 0 = any free port). Default 127.0.0.1:0.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Address the gateway should dial (default: the bound address).
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// Gateway registration endpoint, e.g. `http://127.0.0.1:8090` (gRPC).
    /// Without one the backend serves but does not register.
    pub fn gateway(mut self, url: impl Into<String>) -> Self {
        self.gateway = Some(url.into());
        self
    }

    /// Registration token sent as `authorization: Bearer <token>`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Adds a route prefix (default, when no route is given: `/<name>`).
    ///
    /// The route is registered with `stream = true` (unless
    /// [`prefer_unary`](Self::prefer_unary)): the gateway sends every request
    /// on it over `ForwardingService.Stream`, since the SDK cannot know which
    /// handlers stream their answers.
    pub fn route(mut self, path_prefix: impl Into<String>) -> Self {
        let path_prefix = path_prefix.into();
        self.sdk_routes.push(path_prefix.clone());
        self.registration.routes.push(pb::Route {
            path_prefix,
            stream: !self.prefer_unary,
            ..Default::default()
        });
        self
    }

    /// Registers the routes of [`route`](Self::route) (and the default
    /// `/<name>` route) with `stream = false`.
    ///
    /// By default those routes are registered with `stream = true`, so the
    /// gateway uses `ForwardingService.Stream` for every request: response
    /// bodies reach the client as the handler produces them, whatever the
    /// request looked like. That costs a little per request (a few more
    /// gRPC messages, no unary fast path).
    ///
    /// With `prefer_unary`, the gateway uses unary `Send` for small,
    /// complete requests (a `Content-Length` within its
    /// `limits.unary_body_bytes`) that do not `Accept: text/event-stream`,
    /// and `Stream` only for WebSocket upgrades, large or chunked uploads
    /// and event-stream requests. The handlers are the same either way, but
    /// on `Send` the SDK collects the whole response before answering: a
    /// download or a long poll requested without `Accept:
    /// text/event-stream` then reaches the client only once complete (and
    /// must fit the gateway's limits). Choose it when every handler answers
    /// promptly with a small body. Routes set up with
    /// [`registration`](Self::registration) keep the `stream` flag they
    /// were given.
    pub fn prefer_unary(mut self) -> Self {
        self.prefer_unary = true;
        for r in &mut self.registration.routes {
            if self.sdk_routes.contains(&r.path_prefix) {
                r.stream = false;
            }
        }
        self
    }

    /// Visibility of the service (default public).
    pub fn visibility(mut self, v: pb::Visibility) -> Self {
        self.registration.visibility = v as i32;
        self
    }

    /// Instance id (default `<name>-<address>`).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.registration.instance_id = id.into();
        self
    }

    /// Edits the registration sent to the gateway (tags, metadata, weight,
    /// health check, lease...).
    pub fn registration(mut self, edit: impl FnOnce(&mut pb::Registration)) -> Self {
        edit(&mut self.registration);
        self
    }

    /// Serves TLS (the certificate and, for mTLS, the client CA the gateway's
    /// certificate must chain to) and registers with `tls = true`, so a
    /// gateway with `[upstream_tls]` dials it over https. The server name
    /// the gateway checks can be set with
    /// [`registration`](Self::registration) (`tls_server_name`).
    pub fn tls(mut self, config: tonic::transport::ServerTlsConfig) -> Self {
        self.tls = Some(config);
        self.registration.tls = true;
        self
    }

    /// TLS towards the gateway's registration listener (use an `https://`
    /// [`gateway`](Self::gateway) URL with it).
    pub fn gateway_tls(mut self, config: tonic::transport::ClientTlsConfig) -> Self {
        self.gateway_tls = Some(config);
        self
    }

    /// How long to keep serving after deregistering on shutdown, so every
    /// gateway has stopped routing here before the port closes.
    pub fn drain(mut self, d: Duration) -> Self {
        self.drain = d;
        self
    }

    /// Binds the listener; serve with [`BoundBackend::serve`].
    pub async fn bind<H: Handler>(self, handler: H) -> Result<BoundBackend<H>, Error> {
        if !(1..=63).contains(&self.name.len()) {
            return Err(Error::Config("service name must be 1-63 characters".into()));
        }
        let listener = TcpListener::bind(self.listen).await?;
        let local = listener.local_addr()?;
        let mut registration = self.registration;
        registration.address = self.advertise.unwrap_or_else(|| local.to_string());
        if registration.routes.is_empty() {
            // The gateway's default would be the same prefix, but only a
            // route of ours can say `stream`.
            registration.routes.push(pb::Route {
                path_prefix: format!("/{}", self.name),
                stream: !self.prefer_unary,
                ..Default::default()
            });
        }
        Ok(BoundBackend {
            listener,
            handler: Arc::new(handler),
            registration,
            gateway: self.gateway,
            token: self.token,
            drain: self.drain,
            tls: self.tls,
            gateway_tls: self.gateway_tls,
        })
    }
}

/// A backend with its listener bound.
pub struct BoundBackend<H> {
    listener: TcpListener,
    handler: Arc<H>,
    registration: pb::Registration,
    gateway: Option<String>,
    token: Option<String>,
    drain: Duration,
    tls: Option<tonic::transport::ServerTlsConfig>,
    gateway_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl<H: Handler> BoundBackend<H> {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves; then reports NOT_SERVING,
    /// deregisters, keeps serving for the drain time, and stops.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        health_reporter
            .set_service_status(
                &self.registration.service,
                tonic_health::ServingStatus::Serving,
            )
            .await;

        let stop_server = tokio_util::sync::CancellationToken::new();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = self.tls.clone() {
            server = server.tls_config(tls)?;
        }
        let server = server
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(
                ForwardingServiceServer::new(Forwarding::new(self.handler.clone()))
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            )
            .serve_with_incoming_shutdown(
                // Accepted sockets need TCP_NODELAY set here: the builder's
                // `tcp_nodelay` only applies to listeners tonic binds itself,
                // and without it Nagle + delayed ACK add ~40 ms per answer.
                tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                stop_server.clone().cancelled_owned(),
            );
        let server = tokio::spawn(server);

        let registrar = match &self.gateway {
            Some(url) => {
                let handler = self.handler.clone();
                let r = Registrar::new(url, self.registration.clone(), self.token.clone())
                    .and_then(|r| match self.gateway_tls.clone() {
                        Some(tls) => r.with_tls(url, tls),
                        None => Ok(r),
                    })
                    .map_err(|e| Error::Config(format!("gateway url: {e}")))?;
                Some((
                    r.clone(),
                    tokio::spawn(r.run(move |id| handler.on_registered(id))),
                ))
            }
            None => None,
        };

        shutdown.await;
        info!(service = %self.registration.service, "Shutting down: deregistering, then draining.");
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        if let Some((r, task)) = registrar {
            task.abort();
            if let Err(e) = r.deregister().await {
                warn!(error = %e, "Deregistration failed; the gateway's health checks will notice.");
            }
            tokio::time::sleep(self.drain).await;
        }
        stop_server.cancel();
        match server.await {
            Ok(r) => r.map_err(Error::from),
            Err(e) => Err(Error::Io(std::io::Error::other(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_request_becomes_http() {
        let req = pb::ForwardingReq {
            method: "PATCH".into(),
            path: "/a%2Fb".into(),
            query: "x=1".into(),
            has_query: true,
            version: pb::HttpVersion::Http2 as i32,
            headers: vec![
                pb::Header {
                    name: "set-cookie".into(),
                    value: Bytes::from_static(b"a"),
                },
                pb::Header {
                    name: "set-cookie".into(),
                    value: Bytes::from_static(b"b"),
                },
            ],
            body: Bytes::from_static(b"body"),
            context: Some(pb::RequestContext {
                request_id: "r".into(),
                deadline_ms: 250,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = request_from_wire(req).unwrap();
        assert_eq!(r.method(), "PATCH");
        assert_eq!(r.uri(), "/a%2Fb?x=1");
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        let ctx = r.extensions().get::<ForwardContext>().unwrap();
        assert_eq!(ctx.deadline, Some(Duration::from_millis(250)));
    }

    #[test]
    fn bad_wire_requests_are_named() {
        let e = request_from_wire(pb::ForwardingReq {
            method: "BAD METHOD".into(),
            path: "/".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("method"), "{e}");
        let e = request_from_wire(pb::ForwardingReq {
            method: "GET".into(),
            path: "no slash space".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("target"), "{e}");
    }

    #[tokio::test]
    async fn router_handles_by_method_and_path() {
        let app = Router::new().route(
            "/x/{id}",
            routing::get(|axum::extract::Path(id): axum::extract::Path<String>| async move { id }),
        );
        let req = http::Request::get("/x/42").body(Body::empty()).unwrap();
        let resp = response_to_wire(app.handle(req).await).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, "42");
        let resp = app
            .handle(http::Request::post("/x/42").body(Body::empty()).unwrap())
            .await;
        assert_eq!(resp.status(), 405);
    }

    #[tokio::test]
    async fn send_bodies_carry_their_trailers() {
        let req = request_from_wire(pb::ForwardingReq {
            method: "POST".into(),
            path: "/".into(),
            body: Bytes::from_static(b"abc"),
            trailers: vec![pb::Header {
                name: "x-checksum".into(),
                value: Bytes::from_static(b"900150983cd24fb0"),
            }],
            ..Default::default()
        })
        .unwrap();
        let body = req.into_body();
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(3));
        let collected = body.collect().await.unwrap();
        assert_eq!(
            collected.trailers().unwrap()["x-checksum"],
            "900150983cd24fb0"
        );
        assert_eq!(collected.to_bytes(), "abc");

        let e = request_from_wire(pb::ForwardingReq {
            method: "POST".into(),
            path: "/".into(),
            trailers: vec![pb::Header {
                name: "bad name".into(),
                value: Bytes::new(),
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("trailer"), "{e}");
    }

    #[tokio::test]
    async fn response_trailers_are_collected_for_send() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"a"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"b"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body = Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )));
        let wire = response_to_wire(Response::new(body)).await.unwrap();
        assert_eq!(wire.body, "ab");
        assert_eq!(wire.trailers.len(), 1);
        assert_eq!(wire.trailers[0].name, "grpc-status");
    }

    #[test]
    fn routes_default_to_streaming_unless_unary_is_preferred() {
        let b = Backend::builder("svc")
            .route("/a")
            .prefer_unary()
            .route("/b");
        assert!(b.registration.streaming);
        assert!(b.registration.routes.iter().all(|r| !r.stream));
        let b = Backend::builder("svc").route("/a");
        assert!(b.registration.routes[0].stream);
    }

    #[tokio::test]
    async fn the_default_route_is_registered_explicitly() {
        let bound = Backend::builder("svc").bind(Router::new()).await.unwrap();
        let routes = &bound.registration.routes;
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].path_prefix, "/svc");
        assert!(routes[0].stream);
        assert!(bound.registration.streaming);

        let bound = Backend::builder("svc")
            .prefer_unary()
            .bind(Router::new())
            .await
            .unwrap();
        assert!(!bound.registration.routes[0].stream);

        let bound = Backend::builder("svc")
            .registration(|r| {
                r.routes = vec![pb::Route {
                    path_prefix: "/own".into(),
                    ..Default::default()
                }]
            })
            .bind(Router::new())
            .await
            .unwrap();
        assert_eq!(bound.registration.routes.len(), 1);
        assert!(!bound.registration.routes[0].stream);
    }
}
