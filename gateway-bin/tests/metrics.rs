//! `GET /metrics` on a real gateway process: after a few requests the
//! exposition parses, and its counters say what happened.

mod support;

use std::collections::HashMap;

use axum::routing::any;
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess};

/// Every sample of an OpenMetrics text: series (name and labels) -> value.
/// Panics on a line that is neither a comment nor `series value`.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        out.insert(series.to_owned(), value);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_from_the_admin_listener() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let reg = gw.registration_url();
    let _backend = BackendHandle::start(
        "metered",
        Router::new().fallback(any(|| async { "hello" })),
        Some(&reg),
        // `Send` only: bodies are buffered, so their sizes are counted.
        |b| b.registration(|r| r.streaming = false),
    )
    .await;
    gw.wait_routable("metered", 1).await;

    for _ in 0..3 {
        let r = gw.http.get(gw.url("/metered/a?id=1")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "hello");
    }
    let r = gw
        .http
        .post(gw.url("/metered/b"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .http
        .get(gw.url("/no-such-route/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let resp = gw
        .http
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let m = parse(&text);
    let get = |s: &str| *m.get(s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));

    let ok = |method: &str| {
        format!(
            r#"{{listener="public",service="metered",route="/metered",method="{method}",status="2xx"}}"#
        )
    };
    assert_eq!(get(&format!("gateway_requests_total{}", ok("GET"))), 3.0);
    assert_eq!(get(&format!("gateway_requests_total{}", ok("POST"))), 1.0);
    assert_eq!(
        get(&format!(
            "gateway_request_duration_seconds_count{}",
            ok("GET")
        )),
        3.0
    );
    assert!(
        get(&format!(
            "gateway_request_duration_seconds_sum{}",
            ok("GET")
        )) > 0.0
    );
    assert_eq!(
        get(
            r#"gateway_requests_total{listener="public",service="",route="",method="GET",status="4xx"}"#
        ),
        1.0
    );
    // The admin listener's own paths (this scrape, the readiness polls)
    // are not forwarded, so not counted.
    assert!(
        !m.keys().any(|k| k.contains(r#"listener="admin""#)),
        "{text}"
    );
    assert_eq!(
        get(r#"gateway_upstream_attempts_total{service="metered"}"#),
        4.0
    );
    assert_eq!(get("gateway_request_body_bytes_total"), 10.0);
    assert!(get("gateway_response_body_bytes_total") >= 20.0);
    assert_eq!(get("gateway_requests_in_flight"), 0.0);
    // Per instance, read from the balancer at scrape time.
    assert!(
        m.iter().any(|(k, v)| {
            k.starts_with(r#"gateway_upstream_in_flight{service="metered",instance=""#) && *v == 0.0
        }),
        "{text}"
    );
    assert!(get("gateway_upstream_connections") >= 1.0);
    assert_eq!(get("gateway_registry_connected"), 1.0);
    assert_eq!(get(r#"gateway_refused_total{reason="overloaded"}"#), 0.0);
    // Bounded labels: neither the query nor the unrouted path shows up.
    assert!(!text.contains("id=1") && !text.contains("no-such-route"));
}
