//! `[[routes]]` on a real gateway process: the path the backend sees
//! (`strip_prefix` from the config and from the registration's hint,
//! `rewrite_prefix`, the operator winning over the hint), header edits both
//! ways, CORS preflights answered or refused and the CORS fields of actual
//! answers (the gateway's own 401 and 429 among them), a route's own body
//! limit (413) and timeout (504), and a bad rule stopping start-up with the
//! setting named.

mod support;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::routing::any;
use serde_json::{Value, json};
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess, register_json};

const CONFIG: &str = r#"
[[routes]]
service = "rr-products"
strip_prefix = true
request_headers = { add = { "x-from-gateway" = "1" }, remove = ["x-debug"] }
response_headers = { add = { "x-frame-options" = "DENY" }, remove = ["server"] }

[[routes]]
service = "rr-rewrite"
rewrite_prefix = "/v2"

[[routes]]
service = "rr-kept"
strip_prefix = false

[[routes]]
service = "rr-cors"
response_headers = { add = { "x-frame-options" = "DENY" } }
max_body_bytes = 16
[routes.cors]
allow_origins = ["https://app.example"]
allow_methods = ["GET", "POST"]
allow_headers = ["authorization", "content-type"]
expose_headers = ["x-cache"]
max_age = "10m"
allow_credentials = true

[[routes]]
service = "rr-limits"
prefix = "/rr-limits/small"
max_body_bytes = 16
timeout = "300ms"

[[routes]]
service = "rr-upload"
max_body_bytes = 16
"#;

/// Answers with what it was sent: path and query, and the headers the
/// tests look at; sets headers the gateway may edit on the way back.
/// A path with `slow` in it answers after 3 s.
fn echo() -> Router {
    Router::new().fallback(any(
        |uri: Uri, headers: HeaderMap, body: Bytes| async move {
            if uri.path().contains("slow") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let h = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
            let seen = json!({
                "path": uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "x-forwarded-prefix": h("x-forwarded-prefix"),
                "x-from-gateway": h("x-from-gateway"),
                "x-debug": h("x-debug"),
                "body_len": body.len(),
            });
            (
                [
                    ("server", "backend/1.0"),
                    ("access-control-allow-origin", "*"),
                    ("x-cache", "MISS"),
                ],
                axum::Json(seen),
            )
                .into_response()
        },
    ))
}

async fn start_gateway(name: &str, config: &str) -> GatewayProcess {
    let dir = std::env::temp_dir().join(format!("route-rules-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, config).unwrap();
    GatewayProcess::start(&["--config", cfg.to_str().unwrap()], &[]).await
}

/// A backend of `service` at `prefix`, with the registration's
/// `strip_prefix` hint; `streaming` = whether it speaks `Stream` (then
/// every request on its route uses it, so answers come as streamed heads).
async fn backend(
    gw: &GatewayProcess,
    service: &str,
    prefix: &str,
    hint: bool,
    streaming: bool,
) -> BackendHandle {
    let reg = gw.registration_url();
    let prefix = prefix.to_owned();
    let b = BackendHandle::start(service, echo(), Some(&reg), move |b| {
        b.registration(move |r| {
            r.streaming = streaming;
            r.routes = vec![proto::v1::Route {
                path_prefix: prefix,
                stream: streaming,
                strip_prefix: hint,
                ..Default::default()
            }];
        })
    })
    .await;
    gw.wait_routable(service, 1).await;
    b
}

async fn seen(gw: &GatewayProcess, path: &str) -> Value {
    let r = gw.http.get(gw.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_headers_as_the_operator_says() {
    let gw = start_gateway("paths", CONFIG).await;
    let _p = backend(&gw, "rr-products", "/product", false, false).await;
    let _r = backend(&gw, "rr-rewrite", "/old", false, true).await;
    // The registration asks for a strip, the operator says no: kept.
    let _k = backend(&gw, "rr-kept", "/kept", true, false).await;

    // strip_prefix from the config: /product/1 is /1 to the backend, the
    // query kept, the prefix in X-Forwarded-Prefix (a client's replaced).
    let r = gw
        .http
        .get(gw.url("/product/1?a=b&c"))
        .header("x-debug", "secret")
        .header("x-from-gateway", "forged")
        .header("x-forwarded-prefix", "/evil")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Response edits: `server` removed, `x-frame-options` added.
    assert!(r.headers().get("server").is_none(), "{:?}", r.headers());
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/1?a=b&c");
    assert_eq!(v["x-forwarded-prefix"], "/product");
    // Request edits: x-debug removed, x-from-gateway set (not the client's).
    assert_eq!(v["x-debug"], Value::Null);
    assert_eq!(v["x-from-gateway"], "1");
    assert_eq!(seen(&gw, "/product").await["path"], "/");
    // An odd spelling of the prefix is stripped all the same.
    assert_eq!(seen(&gw, "//product/%31").await["path"], "/1");

    // rewrite_prefix, on a streaming backend.
    let v = seen(&gw, "/old/1?q=2").await;
    assert_eq!(v["path"], "/v2/1?q=2");
    assert_eq!(v["x-forwarded-prefix"], "/old");

    // Admin explain shows the rule and the path the backend gets.
    let v = support::get_json(
        &gw.http,
        &format!(
            "http://{}/admin/explain?method=GET&host=gw.example&path=/product/1%3Fa%3Db",
            gw.admin
        ),
    )
    .await;
    assert_eq!(
        v["route"]["rule"]["matched"]["service"], "rr-products",
        "{v}"
    );
    assert_eq!(v["route"]["rule"]["backend_path"], "/1?a=b", "{v}");

    // The operator's `strip_prefix = false` wins over the hint.
    let v = seen(&gw, "/kept/1").await;
    assert_eq!(v["path"], "/kept/1");
    assert_eq!(v["x-forwarded-prefix"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_hint_strips_without_any_rule() {
    // No [[routes]] at all: the hint alone (gRPC registration, then JSON).
    let gw = start_gateway("hint", "").await;
    let _p = backend(&gw, "rr-hinted", "/product", true, false).await;
    let v = seen(&gw, "/product/1?x=y").await;
    assert_eq!(v["path"], "/1?x=y");
    assert_eq!(v["x-forwarded-prefix"], "/product");

    let plain = BackendHandle::start("rr-json", echo(), None, |b| b).await;
    register_json(
        &gw,
        &json!({
            "service": "rr-json",
            "instance_id": "rr-json-1",
            "address": plain.addr.to_string(),
            "routes": [{"path_prefix": "/json", "strip_prefix": true}],
        }),
    )
    .await;
    gw.wait_routable("rr-json", 1).await;
    assert_eq!(seen(&gw, "/json/1").await["path"], "/1");
    // The registration reads back with the hint.
    let regs = support::get_json(
        &gw.http,
        &format!("{}/v1/registrations?service=rr-json", gw.registration_url()),
    )
    .await;
    assert!(regs.to_string().contains("\"strip_prefix\":true"), "{regs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_answers() {
    let gw = start_gateway("cors", CONFIG).await;
    // Streaming: the CORS fields go on a streamed head.
    let _c = backend(&gw, "rr-cors", "/rr-cors", false, true).await;

    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        gw.http
            .request(reqwest::Method::OPTIONS, gw.url("/rr-cors/items"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
    };
    let r = preflight("https://app.example", "POST", "content-type")
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization, content-type"
    );
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["x-frame-options"], "DENY");

    for (origin, method, headers, why) in [
        (
            "https://evil.example",
            "GET",
            "content-type",
            "origin https://evil.example",
        ),
        (
            "https://app.example",
            "DELETE",
            "content-type",
            "method DELETE",
        ),
        (
            "https://app.example",
            "GET",
            "x-secret",
            "request header x-secret",
        ),
    ] {
        let r = preflight(origin, method, headers).await.unwrap();
        assert_eq!(r.status(), 403);
        assert!(r.headers().get("access-control-allow-origin").is_none());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "cors_refused");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(why), "{msg}");
    }

    // An actual request from an allowed origin: the gateway's fields (the
    // backend's own `*` replaced).
    let r = gw
        .http
        .get(gw.url("/rr-cors/items"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-expose-headers"], "x-cache");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"), "{h:?}");
    // The gateway's own answer to a failed exchange carries them too.
    let r = gw
        .http
        .post(gw.url("/rr-cors/items"))
        .header("origin", "https://app.example")
        .body(vec![b'x'; 17])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");

    // From another origin: forwarded, but without the fields.
    let r = gw
        .http
        .get(gw.url("/rr-cors/items"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

/// A route with CORS, auth below one prefix and a rate limit below another.
const GUARDED: &str = r#"
[[routes]]
service = "rr-guard"
[routes.cors]
allow_origins = ["https://app.example"]
allow_credentials = true

[auth_providers.hs]
kind = "jwt"
secret_env = "RR_GUARD_SECRET"

[[auth]]
service = "rr-guard"
prefix = "/rr-guard/private"
provider = "hs"

[[rate_limits]]
service = "rr-guard"
prefix = "/rr-guard/limited"
rate = 1
per = "1h"
"#;

/// The gateway's own refusals on a CORS route (401 from auth, 429 from a
/// rate limit) carry the CORS fields: without them a page from an allowed
/// origin sees an opaque network error instead of the JSON reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_fields_on_the_gateways_refusals() {
    let dir = std::env::temp_dir().join(format!("route-rules-guard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, GUARDED).unwrap();
    let gw = GatewayProcess::start(
        &["--config", cfg.to_str().unwrap()],
        &[("RR_GUARD_SECRET", "a-test-secret-of-enough-length")],
    )
    .await;
    let _b = backend(&gw, "rr-guard", "/rr-guard", false, false).await;
    let get = |path: &'static str| {
        gw.http
            .get(gw.url(path))
            .header("origin", "https://app.example")
            .send()
    };
    let cors_ok = |r: &reqwest::Response| {
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example",
            "{:?}",
            r.headers()
        );
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    };

    let r = get("/rr-guard/private/x").await.unwrap();
    assert_eq!(r.status(), 401);
    cors_ok(&r);
    assert!(r.headers().contains_key("www-authenticate"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");

    let r = get("/rr-guard/limited").await.unwrap();
    assert_eq!(r.status(), 200);
    cors_ok(&r);
    let r = get("/rr-guard/limited").await.unwrap();
    assert_eq!(r.status(), 429);
    cors_ok(&r);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_own_body_limit_and_timeout() {
    let gw = start_gateway("limits", CONFIG).await;
    let _l = backend(&gw, "rr-limits", "/rr-limits", false, false).await;

    let post = |path: &'static str, n: usize| gw.http.post(gw.url(path)).body(vec![b'x'; n]).send();
    // Under the rule's prefix: 16 bytes pass, 17 are a 413 naming the limit.
    let r = post("/rr-limits/small/a", 16).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = post("/rr-limits/small/a", 17).await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("16 bytes"),
        "{v}"
    );
    // Elsewhere on the service: the gateway's limit (8 MiB).
    let r = post("/rr-limits/big", 1000).await.unwrap();
    assert_eq!(r.status(), 200);

    // A streaming backend: the body would be streamed (`Stream`), not
    // buffered, and the rule bounds it all the same.
    let _u = backend(&gw, "rr-upload", "/rr-upload", false, true).await;
    let r = post("/rr-upload/a", 16).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["body_len"], 16);
    let r = post("/rr-upload/a", 17).await.unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("16 bytes"),
        "{v}"
    );

    // The rule's 300 ms, not the gateway's 30 s default: 504.
    let started = Instant::now();
    let r = gw
        .http
        .get(gw.url("/rr-limits/small/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_stops_start_up_naming_the_setting() {
    for (i, (rule, setting)) in [
        (
            "service = \"a\"\nstrip_prefix = true\nrewrite_prefix = \"/v2\"\n",
            "routes.rewrite_prefix",
        ),
        (
            "service = \"a\"\nrequest_headers = { add = { \"bad name\" = \"1\" } }\n",
            "routes.request_headers.add",
        ),
        (
            "service = \"a\"\n[routes.cors]\nallow_origins = [\"app.example\"]\n",
            "routes.cors.allow_origins",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = std::env::temp_dir().join(format!("route-rules-bad-{i}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("gateway.toml");
        std::fs::write(&cfg, format!("[[routes]]\n{rule}")).unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--config", cfg.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(setting), "{setting}: {err}");
    }
}
