//! `scope = "cluster"` rate limits on a real Redis (`redis-server`, run by
//! the test on a free loopback port; `scripts/install-deps.sh redis`): two
//! gateway processes share one limit, so the sum of what both let through
//! is bounded; with Redis gone the limit fails open, and says so.

mod support;

use std::process::Stdio;
use std::time::Duration;

use axum::routing::any;
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess, closed_port, eventually};
use tokio::process::{Child, Command};

/// `redis-server` as this test's own process: no persistence, loopback only.
struct RedisProcess {
    child: Child,
    port: u16,
}

impl RedisProcess {
    async fn start() -> Self {
        let port = closed_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server on PATH (scripts/install-deps.sh redis)");
        eventually("redis-server listening", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        Self { child, port }
    }
}

fn config(name: &str, port: u16) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rl-cluster-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rate_limit_store]\nredis = \"redis://127.0.0.1:{port}\"\ntimeout = \"500ms\"\n\n\
             [[rate_limits]]\nservice = \"{name}\"\nrate = 10\nper = \"1h\"\nkey = \"route\"\nscope = \"cluster\"\n"
        ),
    )
    .unwrap();
    cfg
}

async fn gateway_with_backend(
    cfg: &std::path::Path,
    service: &str,
) -> (GatewayProcess, BackendHandle) {
    let gw = GatewayProcess::start(&["--config", cfg.to_str().unwrap()], &[]).await;
    let reg = gw.registration_url();
    let backend = BackendHandle::start(
        service,
        Router::new().fallback(any(|| async { "hello" })),
        Some(&reg),
        |b| b.registration(|r| r.streaming = false),
    )
    .await;
    gw.wait_routable(service, 1).await;
    (gw, backend)
}

async fn metric(gw: &GatewayProcess, series: &str) -> f64 {
    let text = gw
        .http
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_one_limit_and_fail_open_without_redis() {
    let mut redis = RedisProcess::start().await;
    let cfg = config("shared", redis.port);
    let (gw1, _b1) = gateway_with_backend(&cfg, "shared").await;
    let (gw2, _b2) = gateway_with_backend(&cfg, "shared").await;

    let (mut ok, mut limited) = (0, 0);
    for i in 0..30 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        let r = gw.http.get(gw.url("/shared/x")).send().await.unwrap();
        match r.status().as_u16() {
            200 => {
                ok += 1;
                assert_eq!(r.headers()["ratelimit-policy"], "\"shared-0\";q=10;w=3600");
            }
            429 => {
                limited += 1;
                let h = r.headers();
                let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((3500..=3600).contains(&retry), "{retry}");
                assert!(
                    h["ratelimit"]
                        .to_str()
                        .unwrap()
                        .starts_with("\"shared-0\";r=0;t=")
                );
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited");
            }
            s => panic!("unexpected status {s}"),
        }
    }
    // Per replica the limit would let 20 through; shared, exactly 10.
    assert_eq!((ok, limited), (10, 20));
    assert!(metric(&gw1, "gateway_refused_total{reason=\"rate_limited\"}").await >= 10.0);
    assert_eq!(
        metric(&gw1, "gateway_rate_limit_store_errors_total").await,
        0.0
    );

    // Redis goes away: requests pass (fail open), and are counted.
    redis.child.kill().await.unwrap();
    for _ in 0..3 {
        let r = gw1.http.get(gw1.url("/shared/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("ratelimit"));
    }
    assert!(metric(&gw1, "gateway_rate_limit_store_errors_total").await >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_at_start_up_fails_open() {
    let cfg = config("nostore", closed_port());
    let (gw, _b) = gateway_with_backend(&cfg, "nostore").await;
    tokio::time::timeout(Duration::from_secs(30), async {
        for _ in 0..15 {
            let r = gw.http.get(gw.url("/nostore/x")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
    })
    .await
    .unwrap();
    assert!(metric(&gw, "gateway_rate_limit_store_errors_total").await >= 15.0);
}
