//! `[[rate_limits]]` on a real gateway process: a burst goes through with
//! the `RateLimit` fields, the next request is a 429 `rate_limited` with
//! `Retry-After`, another key still passes, and the refusal is counted.

mod support;

use axum::routing::any;
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess};

const CONFIG: &str = r#"
[[rate_limits]]
service = "limited"
rate = 3
per = "1h"

[[rate_limits]]
service = "limited"
prefix = "/limited/keyed"
rate = 1
per = "1h"
key = "header"
header = "x-api-key"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_limit_is_a_429_with_the_ratelimit_fields() {
    let dir = std::env::temp_dir().join(format!("rate-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let gw = GatewayProcess::start(&["--config", cfg.to_str().unwrap()], &[]).await;
    let reg = gw.registration_url();
    let _backend = BackendHandle::start(
        "limited",
        Router::new().fallback(any(|| async { "hello" })),
        Some(&reg),
        |b| b.registration(|r| r.streaming = false),
    )
    .await;
    gw.wait_routable("limited", 1).await;

    // The service-wide policy: 3 at once for this client, then refused.
    for left in [2, 1, 0] {
        let r = gw.http.get(gw.url("/limited/a")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"limited-0\";q=3;w=3600");
        let rl = r.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            rl.starts_with(&format!("\"limited-0\";r={left};t=")),
            "{rl}"
        );
    }
    let r = gw.http.get(gw.url("/limited/a")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1200");
    assert_eq!(r.headers()["ratelimit"], "\"limited-0\";r=0;t=1200");
    assert_eq!(r.headers()["ratelimit-policy"], "\"limited-0\";q=3;w=3600");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // The longer prefix has its own policy, keyed by the API key.
    let keyed = |key: &'static str| {
        gw.http
            .get(gw.url("/limited/keyed/x"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(keyed("k1").await.unwrap().status(), 200);
    assert_eq!(keyed("k1").await.unwrap().status(), 429);
    assert_eq!(keyed("k2").await.unwrap().status(), 200);

    let text = gw
        .http
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("gateway_refused_total{reason=\"rate_limited\"} 2"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("service=\"limited\"")
            && l.contains("status=\"4xx\"")
            && l.starts_with("gateway_requests_total")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_stops_start_up_naming_the_setting() {
    let dir = std::env::temp_dir().join(format!("rate-limit-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        "[[rate_limits]]\nservice = \"a\"\nrate = 0\nper = \"1s\"\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rate_limits.rate"), "{err}");
}
