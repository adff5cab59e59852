//! The embedding example, run for real: the application's own routes and
//! a backend registered through the gateway's registration API, both
//! answered on the application's one public listener.

use std::time::Duration;

use axum::routing::any;
use gateway_core::config::GatewayConfig;
use service_sdk::Backend;
use tokio::net::TcpListener;

#[tokio::test]
async fn the_application_serves_its_own_routes_and_forwards_the_rest() {
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registration = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (app_addr, reg_addr) = (
        public.local_addr().unwrap(),
        registration.local_addr().unwrap(),
    );
    let mut config = GatewayConfig::default();
    config.drain.readiness_delay = Duration::ZERO;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let app = tokio::spawn(embed_axum::run(config, public, registration, async {
        let _ = stop_rx.await;
    }));

    // A backend on the SDK, registering through the embedded gateway.
    let backend =
        Backend::builder("echo")
            .route("/echo")
            .gateway(format!("http://{reg_addr}"))
            .bind(axum::Router::new().route(
                "/echo/{*rest}",
                any(|uri: axum::http::Uri, body: String| async move {
                    format!("{} {}", uri.path(), body)
                }),
            ))
            .await
            .unwrap();
    let (backend_stop, backend_stopped) = tokio::sync::oneshot::channel::<()>();
    let backend = tokio::spawn(backend.serve(async {
        let _ = backend_stopped.await;
    }));

    let http = reqwest::Client::new();
    let own = http
        .get(format!("http://{app_addr}/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert!(own.text().await.unwrap().contains("embedding application"));
    let who: serde_json::Value = http
        .get(format!("http://{app_addr}/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who["embedded"], true);

    // Routable once registered (registration is asynchronous to this test).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let forwarded = loop {
        let r = http
            .post(format!("http://{app_addr}/echo/a/b"))
            .body("ping")
            .send()
            .await
            .unwrap();
        if r.status() == 200 || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(forwarded.status(), 200);
    assert_eq!(forwarded.text().await.unwrap(), "/echo/a/b ping");

    // Not the application's and not registered: the gateway's JSON 404.
    let missing = http
        .get(format!("http://{app_addr}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["content-type"], "application/json");
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "route_not_found");

    let _ = backend_stop.send(());
    backend.await.unwrap().unwrap();
    let _ = stop_tx.send(());
    app.await.unwrap().unwrap();
}
