//! The order service: buys products from the product service (another
//! backend, in Python) by calling it *through the gateway*, as any client
//! would - it never learns the product service's address.
//!
//! Routes (under the registered prefix `/order`):
//! * `POST /order/purchase/{product_id}` - decrement the product's stock and
//!   record an order: 201, 404 unknown product, 409 out of stock, 502 when the
//!   product service cannot be reached.
//! * `GET /order` - every order; `GET /order/{id}` - one order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde::Serialize;
use serde_json::{Value, json};
use service_sdk::{Backend, Router};

#[derive(Parser)]
struct Args {
    /// Address to serve ForwardingService on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Gateway registration API (gRPC); empty = do not register.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    gateway: String,
    /// Gateway HTTP base URL used to reach the product service (the
    /// internal listener, so internal services are reachable too).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    products_via: String,
    /// Registration token, if the gateway requires one.
    #[arg(long, env = "GATEWAY_REGISTRATION_TOKEN")]
    token: Option<String>,
}

#[derive(Clone, Serialize)]
struct Order {
    id: u64,
    product_id: String,
    product_name: String,
    price_cents: u64,
}

#[derive(Clone)]
struct App {
    orders: Arc<Mutex<Vec<Order>>>,
    http: reqwest::Client,
    products_via: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn purchase(State(app): State<App>, Path(product_id): Path<String>) -> Response {
    let url = format!("{}/product/{}/decrement", app.products_via, product_id);
    let resp = match app.http.put(&url).send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("product service unreachable: {e}"),
            );
        }
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match status.as_u16() {
        200 => {}
        404 => return error(StatusCode::NOT_FOUND, format!("no product {product_id}")),
        409 => {
            return error(
                StatusCode::CONFLICT,
                format!("product {product_id} is out of stock"),
            );
        }
        s => {
            return error(
                StatusCode::BAD_GATEWAY,
                format!("product service answered {s}: {body}"),
            );
        }
    }
    let mut orders = app.orders.lock().unwrap_or_else(|p| p.into_inner());
    let order = Order {
        id: orders.len() as u64 + 1,
        product_id,
        product_name: body["name"].as_str().unwrap_or_default().to_owned(),
        price_cents: body["price_cents"].as_u64().unwrap_or(0),
    };
    orders.push(order.clone());
    (
        StatusCode::CREATED,
        [("location", format!("/order/{}", order.id))],
        axum::Json(json!({"order": order, "remaining_quantity": body["quantity"]})),
    )
        .into_response()
}

async fn list(State(app): State<App>) -> Response {
    let orders = app.orders.lock().unwrap_or_else(|p| p.into_inner()).clone();
    axum::Json(json!({"orders": orders})).into_response()
}

async fn one(State(app): State<App>, Path(id): Path<u64>) -> Response {
    let orders = app.orders.lock().unwrap_or_else(|p| p.into_inner());
    match orders.iter().find(|o| o.id == id) {
        Some(o) => axum::Json(o.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no order {id}")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let app = App {
        orders: Arc::default(),
        http: reqwest::Client::new(),
        products_via: args.products_via.trim_end_matches('/').to_owned(),
    };
    let router = Router::new()
        .route("/order", get(list))
        .route("/order/{id}", get(one))
        .route("/order/purchase/{product_id}", post(purchase))
        .with_state(app);
    let mut builder = Backend::builder("order")
        .listen(args.listen)
        .route("/order");
    if !args.gateway.is_empty() {
        builder = builder.gateway(args.gateway);
    }
    if let Some(t) = args.token {
        builder = builder.token(t);
    }
    let backend = builder.bind(router).await?;
    println!("READY {}", backend.local_addr());
    backend.serve(shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
