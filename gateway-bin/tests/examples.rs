//! The examples, end to end: the gateway, the Python product service
//! (ForwardingService implemented from the .proto alone) and the Rust order
//! service (on the SDK), which buys products through the gateway.
//!
//! Needs `cargo build -p order-service` and the Python packages of
//! `scripts/install-deps.sh python`; `scripts/test.sh` does both.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use support::{DEADLINE, GatewayProcess};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Spawns a process and waits for its `READY <addr>` line.
async fn start_ready(mut cmd: Command) -> (Child, String) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn example");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(a) = line.strip_prefix("READY ") {
                return a.trim().to_owned();
            }
        }
        panic!("example exited before READY");
    })
    .await
    .expect("example ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_buys_from_product_through_the_gateway() {
    let order_bin = repo().join("target/debug/order-service");
    assert!(
        order_bin.exists(),
        "build the example first: cargo build -p order-service (scripts/test.sh does)"
    );
    let gw = GatewayProcess::start(&[], &[]).await;

    let mut py = Command::new("python3");
    py.arg(repo().join("examples/product-service-py/server.py"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            &gw.registration_url(),
        ]);
    let (_product, _) = start_ready(py).await;

    let mut order = Command::new(order_bin);
    order.args([
        "--listen",
        "127.0.0.1:0",
        "--gateway",
        &gw.registration_url(),
        "--products-via",
        &format!("http://{}", gw.internal),
    ]);
    let (_order, _) = start_ready(order).await;
    gw.wait_routable("product", 1).await;
    gw.wait_routable("order", 1).await;

    // The Python service answers through the gateway.
    let resp = gw.http.get(gw.url("/product/1")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cookies = resp.headers().get_all("set-cookie").iter().count();
    assert_eq!(cookies, 2, "two Set-Cookie from Python stay two");
    let p: Value = resp.json().await.unwrap();
    let before = p["quantity"].as_u64().unwrap();

    // The Rust service buys it, calling the Python one through the gateway.
    let resp = gw
        .http
        .post(gw.url("/order/purchase/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    let p: Value = gw
        .http
        .get(gw.url("/product/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["quantity"].as_u64().unwrap(), before - 1);
    let orders: Value = gw
        .http
        .get(gw.url("/order"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(orders["orders"].as_array().unwrap().len(), 1);

    // Product errors travel back as the service chose them.
    let resp = gw
        .http
        .post(gw.url("/order/purchase/404"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = gw.http.get(gw.url("/product/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // Product 3 has one left: the second purchase is out of stock.
    assert_eq!(
        gw.http
            .post(gw.url("/order/purchase/3"))
            .send()
            .await
            .unwrap()
            .status(),
        201
    );
    assert_eq!(
        gw.http
            .post(gw.url("/order/purchase/3"))
            .send()
            .await
            .unwrap()
            .status(),
        409
    );

    // Streaming, implemented in Python from the .proto alone: server-sent
    // events reach the client as they happen, an upload streams through.
    let mut events = gw
        .http
        .get(gw.url("/product/events?count=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let hello = tokio::time::timeout(std::time::Duration::from_secs(10), events.chunk())
        .await
        .expect("hello before the stream ends")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&hello).contains("event: hello"),
        "{hello:?}"
    );
    // A purchase through the Rust service is an inventory change.
    let resp = gw
        .http
        .post(gw.url("/order/purchase/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let mut rest = Vec::new();
    while let Some(c) = events.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert!(
        String::from_utf8_lossy(&rest).contains("event: decremented"),
        "{}",
        String::from_utf8_lossy(&rest)
    );

    const SIZE: usize = 8 * 1024 * 1024;
    let chunks = futures_util::stream::iter(
        (0..SIZE / 65536)
            .map(|i| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![(i % 251) as u8; 65536]))),
    );
    let resp = gw
        .http
        .post(gw.url("/product/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    use sha2::Digest;
    let mut sha = sha2::Sha256::new();
    for i in 0..SIZE / 65536 {
        sha.update(vec![(i % 251) as u8; 65536]);
    }
    let expect: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v["bytes"], SIZE);
    assert_eq!(v["sha256"], expect);
}
