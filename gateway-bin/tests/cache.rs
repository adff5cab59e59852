//! `[[cache]]` on a real gateway process, a counting backend behind it:
//! MISS then HIT with one backend call, expiry then REVALIDATED through an
//! ETag 304, what is never stored (Set-Cookie, Authorization unless
//! public), Vary variants kept apart, POST invalidating, re-registration
//! purging, the `x-cache` header and the metric.

mod support;

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess, eventually};

const CONFIG: &str = r#"
[cache_store]
max_bytes = 1048576
max_entry_bytes = 4096

[[cache]]
service = "cached"
prefix = "/cached/c"

[[cache]]
service = "cached"
prefix = "/cached/c/ttl"
default_ttl = "60s"
"#;

/// What the backend saw: (method, path and query, If-None-Match).
type Log = Arc<Mutex<Vec<(Method, String, Option<String>)>>>;

fn calls(log: &Log, path: &str) -> usize {
    log.lock().unwrap().iter().filter(|c| c.1 == path).count()
}

fn backend(log: Log) -> Router {
    Router::new().fallback(any(move |method: Method, uri: Uri, headers: HeaderMap| {
        let log = log.clone();
        async move {
            let inm = headers
                .get("if-none-match")
                .map(|v| v.to_str().unwrap().to_owned());
            let path = uri.path_and_query().unwrap().as_str().to_owned();
            let n = {
                let mut log = log.lock().unwrap();
                log.push((method.clone(), path.clone(), inm.clone()));
                log.iter().filter(|c| c.1 == path).count()
            };
            let body = format!("{path} #{n}");
            let cc = [("cache-control", "max-age=60")];
            let r: Response = match uri.path() {
                _ if method == Method::POST => StatusCode::NO_CONTENT.into_response(),
                "/cached/c/etag" if inm.as_deref() == Some("\"v1\"") => {
                    (StatusCode::NOT_MODIFIED, [("etag", "\"v1\"")]).into_response()
                }
                "/cached/c/etag" => {
                    ([("cache-control", "max-age=1"), ("etag", "\"v1\"")], body).into_response()
                }
                "/cached/c/cookie" => (cc, [("set-cookie", "s=1")], body).into_response(),
                "/cached/c/private" => {
                    ([("cache-control", "private, max-age=60")], body).into_response()
                }
                "/cached/c/star" => (cc, [("vary", "*")], body).into_response(),
                "/cached/c/ttl" => body.into_response(),
                // Stale at once, and a new ETag each time: never a 304.
                "/cached/c/changing" => {
                    let etag = format!("\"{n}\"");
                    (
                        [("cache-control", "max-age=0".to_owned()), ("etag", etag)],
                        body,
                    )
                        .into_response()
                }
                "/cached/c/auth" if uri.query() == Some("public") => {
                    ([("cache-control", "public, max-age=60")], body).into_response()
                }
                "/cached/c/lang" => {
                    let lang = headers["accept-language"].to_str().unwrap().to_owned();
                    (cc, [("vary", "accept-language")], format!("{lang} #{n}")).into_response()
                }
                "/cached/c/big" => (cc, "x".repeat(5000)).into_response(),
                _ => (cc, [("etag", format!("\"{path}\""))], body).into_response(),
            };
            r
        }
    }))
}

/// GET with extra fields: (x-cache, status, body).
async fn get(gw: &GatewayProcess, path: &str, headers: &[(&str, &str)]) -> (String, u16, String) {
    let mut req = gw.http.get(gw.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let r = req.send().await.unwrap();
    let x = r
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (x, r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_what_the_backend_allows() {
    let dir = std::env::temp_dir().join(format!("cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let gw = GatewayProcess::start(&["--config", cfg.to_str().unwrap()], &[]).await;
    let reg = gw.registration_url();
    let log: Log = Arc::default();
    let plain = |b: service_sdk::BackendBuilder| b.registration(|r| r.streaming = false);
    let _a = BackendHandle::start("cached", backend(log.clone()), Some(&reg), plain).await;
    gw.wait_routable("cached", 1).await;

    // MISS, then HIT with the first body and an Age; the backend saw one.
    assert_eq!(
        get(&gw, "/cached/c/a", &[]).await,
        ("MISS".into(), 200, "/cached/c/a #1".into())
    );
    let r = gw.http.get(gw.url("/cached/c/a")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    assert!(r.headers().contains_key("age"));
    assert_eq!(r.text().await.unwrap(), "/cached/c/a #1");
    assert_eq!(calls(&log, "/cached/c/a"), 1);
    // The client's own validator is answered from the entry.
    let r = get(&gw, "/cached/c/a", &[("if-none-match", "\"/cached/c/a\"")]).await;
    assert_eq!(r, ("HIT".into(), 304, String::new()));
    // `default_ttl` gives an answer without freshness of its own some.
    assert_eq!(get(&gw, "/cached/c/ttl", &[]).await.0, "MISS");
    assert_eq!(
        get(&gw, "/cached/c/ttl", &[]).await,
        ("HIT".into(), 200, "/cached/c/ttl #1".into())
    );
    // Outside the policy's prefix: no cache, no header.
    assert_eq!(get(&gw, "/cached/other", &[]).await.0, "");
    assert_eq!(get(&gw, "/cached/other", &[]).await.2, "/cached/other #2");

    // max-age=1 runs out; the entry is revalidated with its ETag and the
    // 304 serves the stored body.
    assert_eq!(get(&gw, "/cached/c/etag", &[]).await.0, "MISS");
    let stale = eventually("the etag entry goes stale", || async {
        let r = get(&gw, "/cached/c/etag", &[]).await;
        (r.0 != "HIT").then_some(r)
    })
    .await;
    assert_eq!(
        stale,
        ("REVALIDATED".into(), 200, "/cached/c/etag #1".into())
    );
    let seen = log.lock().unwrap().clone();
    let last = seen.iter().rev().find(|c| c.1 == "/cached/c/etag").unwrap();
    assert_eq!(last.2.as_deref(), Some("\"v1\""));
    // A stale entry answered with a new body is replaced.
    assert_eq!(get(&gw, "/cached/c/changing", &[]).await.0, "MISS");
    let r = get(&gw, "/cached/c/changing", &[]).await;
    assert_eq!(r, ("STALE".into(), 200, "/cached/c/changing #2".into()));
    let seen = log.lock().unwrap().clone();
    let last = seen
        .iter()
        .rev()
        .find(|c| c.1 == "/cached/c/changing")
        .unwrap();
    assert_eq!(last.2.as_deref(), Some("\"1\""));

    // Set-Cookie, `private`, `Vary: *`, Authorization (unless public) and
    // oversized bodies are never kept.
    for (path, headers) in [
        ("/cached/c/cookie", &[][..]),
        ("/cached/c/private", &[][..]),
        ("/cached/c/star", &[][..]),
        ("/cached/c/auth", &[("authorization", "Bearer t")][..]),
        ("/cached/c/big", &[][..]),
    ] {
        assert_eq!(get(&gw, path, headers).await.0, "MISS");
        assert_eq!(get(&gw, path, headers).await.0, "MISS", "{path}");
        assert_eq!(calls(&log, path), 2, "{path}");
    }
    let auth = [("authorization", "Bearer t")];
    assert_eq!(get(&gw, "/cached/c/auth?public", &auth).await.0, "MISS");
    assert_eq!(get(&gw, "/cached/c/auth?public", &auth).await.0, "HIT");
    // A request that forbids storing passes by the cache.
    let no_store = [("cache-control", "no-store")];
    assert_eq!(get(&gw, "/cached/c/ns", &no_store).await.0, "BYPASS");
    assert_eq!(get(&gw, "/cached/c/ns", &no_store).await.0, "BYPASS");
    assert_eq!(calls(&log, "/cached/c/ns"), 2);

    // Vary: accept-language keeps one variant per language.
    for round in ["MISS", "HIT"] {
        for lang in ["en", "fr"] {
            let (x, _, body) = get(&gw, "/cached/c/lang", &[("accept-language", lang)]).await;
            assert_eq!(x, round);
            assert!(body.starts_with(lang), "{body}");
        }
    }
    assert_eq!(calls(&log, "/cached/c/lang"), 2);

    // A POST to a cached URL invalidates it.
    let r = gw.http.post(gw.url("/cached/c/a")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "BYPASS");
    assert_eq!(
        get(&gw, "/cached/c/a", &[]).await,
        ("MISS".into(), 200, "/cached/c/a #3".into())
    );
    assert_eq!(get(&gw, "/cached/c/a", &[]).await.0, "HIT");

    // A new instance registering purges the service's entries; so does one
    // leaving.
    let b = BackendHandle::start("cached", backend(log.clone()), Some(&reg), plain).await;
    gw.wait_routable("cached", 2).await;
    assert_eq!(get(&gw, "/cached/c/a", &[]).await.0, "MISS");
    assert_eq!(get(&gw, "/cached/c/a", &[]).await.0, "HIT");
    b.stop().await;
    gw.wait_routable("cached", 1).await;
    assert_eq!(get(&gw, "/cached/c/a", &[]).await.0, "MISS");

    // `no-cache` asks the backend (which sends a new body here).
    let r = get(&gw, "/cached/c/a", &[("cache-control", "no-cache")]).await;
    assert_eq!(r, ("STALE".into(), 200, "/cached/c/a #6".into()));
    assert_eq!(get(&gw, "/cached/c/a", &[]).await.2, "/cached/c/a #6");

    let text = gw
        .http
        .get(format!("http://{}/metrics", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |result: &str| -> u64 {
        let label =
            format!("gateway_cache_requests_total{{service=\"cached\",result=\"{result}\"}} ");
        let line = text.lines().find(|l| l.starts_with(&label));
        line.and_then(|l| l[label.len()..].parse().ok())
            .unwrap_or(0)
    };
    // The HITs include those polled while the etag entry was fresh.
    assert!(count("HIT") >= 8, "{text}");
    let counts = ["MISS", "STALE", "REVALIDATED", "BYPASS"].map(count);
    assert_eq!(counts, [20, 2, 1, 3], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_stops_start_up_naming_the_setting() {
    let dir = std::env::temp_dir().join(format!("cache-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, "[[cache]]\nservice = \"a\"\nprefix = \"/a/\"\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache.prefix"), "{err}");
}
