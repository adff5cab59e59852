//! The order service: buys products from the product service (another
//! backend, in Python) by calling it *through the gateway*, as any client
//! would - it never learns the product service's address.
//!
//! Routes (under the registered prefix `/order`):
//! * `POST /order/purchase/{product_id}` - decrement the product's stock and
//!   record an order: 201, 404 unknown product, 409 out of stock, 502 when the
//!   product service cannot be reached.
//! * `GET /order` - every order; `GET /order/{id}` - one order.
//! * `GET /order/events` - server-sent events: first `hello` (how many orders
//!   there are, the last order id), then one `purchase` event per order
//!   recorded from then on (`id:` the order id, data as the answer to the
//!   purchase). `?count=N` ends the stream after N events, `hello` included
//!   (for tests and scripts: `curl -N '.../order/events?count=2'` waits for
//!   one purchase). A comment line every 15 s keeps a quiet stream under
//!   every idle timeout on the way (the gateway's `timeouts.stream_idle`,
//!   proxies in front of it). A client that falls more than
//!   [`EVENT_BACKLOG`] events behind has its stream ended, so it reconnects
//!   and starts again from a fresh `hello`; so does every client when a
//!   gateway drains.
//! * `GET /order/ws` - WebSocket echo: every text and binary message comes
//!   back as it was sent. Close codes are honoured both ways: a client that
//!   closes with a code gets the same code back, and the text message
//!   `close <code> [reason]` makes the service close with that code (1000,
//!   1001-1003, 1007-1014 or 3000-4999; any other code is answered with a
//!   text error and the echo goes on).
//!
//! Every route is registered as a stream route (the SDK's default), so the
//! gateway forwards over `ForwardingService.Stream` and events reach the
//! client as they are produced.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use service_sdk::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use service_sdk::{Backend, Router};
use tokio::sync::broadcast;

/// Purchase events a slow event-stream client may fall behind by before its
/// stream is ended (it reconnects and gets a fresh `hello`).
const EVENT_BACKLOG: usize = 256;

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
    /// One `purchase` event (its id and JSON data) per recorded order.
    events: broadcast::Sender<(u64, Value)>,
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
    let answer = json!({"order": order, "remaining_quantity": body["quantity"]});
    // Sent while the lock is held, so events leave in order-id order and a
    // stream's `hello` (taken under the same lock) is never newer than the
    // first event after it. No subscriber is not an error.
    let _ = app.events.send((order.id, answer.clone()));
    drop(orders);
    (
        StatusCode::CREATED,
        [("location", format!("/order/{}", order.id))],
        axum::Json(answer),
    )
        .into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    count: Option<String>,
}

/// `GET /order/events[?count=N]`: `hello`, then one `purchase` per order.
async fn events(State(app): State<App>, Query(q): Query<EventsQuery>) -> Response {
    let limit = match q.count.as_deref().map(str::parse::<u64>) {
        None => u64::MAX,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            return error(StatusCode::BAD_REQUEST, "count must be a positive integer");
        }
    };
    // Subscribe and read the state under the orders lock: no purchase falls
    // between the `hello` and the first event.
    let (hello, rx) = {
        let orders = app.orders.lock().unwrap_or_else(|p| p.into_inner());
        let hello = json!({
            "orders": orders.len(),
            "last_order_id": orders.last().map_or(0, |o| o.id),
        });
        (hello, app.events.subscribe())
    };
    Sse::new(purchase_events(hello, rx, limit))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn purchase_events(
    hello: Value,
    rx: broadcast::Receiver<(u64, Value)>,
    limit: u64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = Event::default().event("hello").data(hello.to_string());
    futures_util::stream::unfold(
        (Some(first), rx, limit),
        |(first, mut rx, left)| async move {
            if left == 0 {
                return None;
            }
            if let Some(ev) = first {
                return Some((Ok(ev), (None, rx, left - 1)));
            }
            match rx.recv().await {
                Ok((id, data)) => {
                    let ev = Event::default()
                        .event("purchase")
                        .id(id.to_string())
                        .data(data.to_string());
                    Some((Ok(ev), (None, rx, left - 1)))
                }
                // Lagged: too far behind. End the stream; the client
                // reconnects and starts again from `hello`.
                Err(_) => None,
            }
        },
    )
}

/// `GET /order/ws`: WebSocket echo.
async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => match t.strip_prefix("close ") {
                Some(args) => match close_command(args) {
                    Ok(frame) => {
                        let _ = socket.send(Message::Close(Some(frame))).await;
                        return;
                    }
                    Err(e) => Message::Text(e),
                },
                None => Message::Text(t),
            },
            Message::Binary(b) => Message::Binary(b),
            // The client closed; the gateway has already answered its
            // close with the same code. Ending the callback ends the call.
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

/// `close <code> [reason]` -> the close frame to send.
fn close_command(args: &str) -> Result<CloseFrame, String> {
    let (code, reason) = args.split_once(' ').unwrap_or((args, ""));
    match code.parse::<u16>() {
        // The codes an endpoint may send (RFC 6455 7.4.1, 7.4.2).
        Ok(c @ (1000..=1003 | 1007..=1014 | 3000..=4999)) => Ok(CloseFrame {
            code: c,
            reason: reason.to_owned(),
        }),
        _ => Err(format!(
            "error: cannot close with code {code:?}: use 1000-1003, 1007-1014 or 3000-4999"
        )),
    }
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
        events: broadcast::channel(EVENT_BACKLOG).0,
        http: reqwest::Client::new(),
        products_via: args.products_via.trim_end_matches('/').to_owned(),
    };
    let router = Router::new()
        .route("/order", get(list))
        .route("/order/events", get(events))
        .route("/order/ws", get(ws))
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
