//! Embedding `gateway-core` in an axum application.
//!
//! The application keeps its own routes (`GET /hello`, `GET /whoami`) and
//! hands every other request to the gateway's request path
//! ([`Gateway::proxy_service`]) as axum's fallback: routing to registered
//! backends, body limits, balancing, retries, conversion to
//! `ForwardingReq`, errors as JSON. The registration API (where backends
//! register) is served by the gateway on its own listener, as in
//! `gateway-bin`; the public listener is axum's.
//!
//! What the embedder takes on by serving with axum instead of
//! [`Gateway::serve`]: the gateway's connection limits, its raw HTTP/1.1
//! framing checks and its drain sequence apply to the listeners it serves,
//! not to axum's. The client address reaches the request path through the
//! [`PeerAddr`] extension, which [`app`] sets from axum's `ConnectInfo`.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use axum::{Json, Router};
use gateway_core::config::GatewayConfig;
use gateway_core::gateway::{Gateway, Listeners};
use gateway_core::routing::Listener;
use gateway_core::server::PeerAddr;
use serde_json::json;
use tokio::net::TcpListener;

/// The application: its own routes, then the gateway for everything else.
pub fn app(gateway: &Gateway) -> Router {
    let node_id = gateway.node_id().to_owned();
    Router::new()
        .route(
            "/hello",
            get(|| async { "hello from the embedding application\n" }),
        )
        .route(
            "/whoami",
            get(move || async move { Json(json!({ "node_id": node_id, "embedded": true })) }),
        )
        .fallback_service(gateway.proxy_service::<axum::body::Body>(Listener::Public))
        // The gateway reads the client's address (X-Forwarded-For, the
        // `ForwardingReq` context) from its own extension.
        .layer(axum::middleware::map_request(
            |mut req: Request| async move {
                if let Some(ConnectInfo(addr)) =
                    req.extensions().get::<ConnectInfo<SocketAddr>>().copied()
                {
                    req.extensions_mut().insert(PeerAddr(addr));
                }
                req
            },
        ))
}

/// Serves the application on `public` and the gateway's registration API on
/// `registration` until `shutdown` resolves.
pub async fn run(
    config: GatewayConfig,
    public: TcpListener,
    registration: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let gateway = Gateway::builder(config).build().await?;
    let app = app(&gateway);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The gateway serves only the registration listener; the public
    // traffic is axum's.
    let gateway_task = tokio::spawn(gateway.serve(
        Listeners {
            registration: Some(registration),
            ..Listeners::default()
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    axum::serve(
        public,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    let _ = stop_tx.send(());
    gateway_task.await?;
    Ok(())
}
