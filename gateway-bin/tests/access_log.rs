//! `[access_log]` on a real gateway process: one JSON line per request in
//! the configured file, with every field the README lists.

mod support;

use axum::routing::any;
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess, eventually};

/// The lines of the access log at `path` once it holds `n` of them.
async fn lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    eventually(&format!("{n} access log lines"), || async {
        let text = std::fs::read_to_string(path).ok()?;
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_a_json_line_with_its_fields() {
    let dir = std::env::temp_dir().join(format!("access-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let _ = std::fs::remove_file(&log);
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "[access_log]\nenabled = true\npath = {:?}\n",
            log.to_str().unwrap()
        ),
    )
    .unwrap();
    let gw = GatewayProcess::start(&["--config", cfg.to_str().unwrap()], &[]).await;
    let reg = gw.registration_url();
    let _backend = BackendHandle::start(
        "logged",
        Router::new().fallback(any(|| async { "hello" })),
        Some(&reg),
        // `Send` only: bodies are buffered, so both sizes are known.
        |b| b.registration(|r| r.streaming = false),
    )
    .await;
    gw.wait_routable("logged", 1).await;
    let view = support::admin_view(&gw).await;
    let instance = view["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "logged")
        .and_then(|s| s["endpoints"][0]["instance_id"].as_str())
        .unwrap_or_else(|| panic!("no instance of logged: {view}"))
        .to_owned();

    let r = gw
        .http
        .post(gw.url("/logged/orders?token=secret"))
        .header("x-request-id", "req-access-1")
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
    let r = gw
        .http
        .get(gw.url("/no-such-route/x"))
        .header("x-request-id", "req-access-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let lines = lines(&log, 2).await;
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}: {lines:?}"))
    };
    let ok = by_id("req-access-1");
    assert_eq!(ok["listener"], "public");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["path"], "/logged/orders", "the query is left out");
    assert_eq!(ok["route"], "/logged");
    assert_eq!(ok["service"], "logged");
    assert_eq!(ok["instance"], instance.as_str());
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["bytes_in"], 10);
    assert_eq!(ok["bytes_out"], 5);
    let client = ok["client"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    let (total, upstream) = (
        ok["duration_ms"].as_f64().unwrap(),
        ok["upstream_ms"].as_f64().unwrap(),
    );
    assert!(
        total > 0.0 && upstream > 0.0 && upstream <= total,
        "{total} {upstream}"
    );
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));

    let missing = by_id("req-access-2");
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["path"], "/no-such-route/x");
    for field in ["route", "service", "instance", "upstream_ms"] {
        assert!(missing[field].is_null(), "{field}: {missing}");
    }
    assert!(!std::fs::read_to_string(&log).unwrap().contains("secret"));

    // Nothing dropped at this load.
    let metrics = gw
        .http
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "gateway_access_log_dropped_total 0"),
        "{metrics}"
    );
}
