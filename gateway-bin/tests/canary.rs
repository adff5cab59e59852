//! `[[canary]]` on a real gateway process: a 90/10 split between two
//! versions, the header override, the admin shift to 50/50 and 0/100, and
//! sticky sessions (plain requests and WebSocket upgrades) that re-pin when
//! the pinned instance deregisters.
//!
//! The share checks are statistical. With N requests each going to v2 with
//! probability p, the v2 share has standard deviation sqrt(p(1-p)/N); the
//! test allows 4 of them (N = 2000: 0.027 at p = 0.1, 0.045 at p = 0.5).
//! A correct gateway fails one check with probability about 6.3e-5 (two
//! tails beyond 4 sigma), the two checks together about 1.3e-4: once in
//! ~8,000 runs. A gateway that ignored the weights (an even spread over
//! the three instances: v2 share 1/3) misses the 90/10 bound by ~11 sigma.

mod support;

use std::collections::HashMap;

use axum::routing::any;
use futures_util::{StreamExt, stream};
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess, closed_port, eventually, get_json};

const N: usize = 2000;

const CONFIG: &str = r#"
[[canary]]
service = "cnry"
version_key = "version"
weights = { v1 = 90, v2 = 10 }
header = "x-canary"

[[canary]]
service = "stky"
weights = { v1 = 1 }
sticky_cookie = "gw-sticky"
sticky_ttl = "1h"
"#;

async fn gateway() -> GatewayProcess {
    GatewayProcess::start(&["--config", &config_file()], &[]).await
}

/// CONFIG in a file of its own; its path.
fn config_file() -> String {
    let dir = std::env::temp_dir().join(format!("canary-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    cfg.to_str().unwrap().to_owned()
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

/// A backend answering its instance id, with its version in metadata or
/// (`tag`) as a tag.
async fn backend(
    gw: &GatewayProcess,
    service: &str,
    id: &'static str,
    version: &str,
    tag: bool,
) -> BackendHandle {
    use service_sdk::routing::get as route_get;
    use service_sdk::ws::{Message, WebSocket, WebSocketUpgrade};
    let version = version.to_owned();
    let router = Router::new()
        .route(
            &format!("/{service}/ws"),
            route_get(move |ws: WebSocketUpgrade| async move {
                ws.on_upgrade(move |mut socket: WebSocket| async move {
                    let _ = socket.send(Message::text(id)).await;
                    while let Some(Ok(_)) = socket.recv().await {}
                })
            }),
        )
        .fallback(any(move || async move { id }));
    BackendHandle::start(service, router, Some(&gw.registration_url()), |b| {
        b.instance_id(id).registration(|r| {
            if tag {
                r.tags.push(format!("version={version}"));
            } else {
                r.metadata.insert("version".into(), version);
            }
        })
    })
    .await
}

/// Sends `n` small GETs, 32 at a time over kept-alive connections (the
/// harness's client opens one per request), and counts the answers by body.
async fn spread(
    gw: &GatewayProcess,
    path: &str,
    header: Option<(&str, &str)>,
    n: usize,
) -> HashMap<String, usize> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let http = CLIENT.get_or_init(reqwest::Client::new);
    let url = gw.url(path);
    let answers: Vec<String> = stream::iter(0..n)
        .map(|_| {
            let mut req = http.get(&url);
            if let Some((k, v)) = header {
                req = req.header(k, v);
            }
            async move {
                let r = req.send().await.expect("request");
                assert_eq!(r.status(), 200);
                r.text().await.expect("body")
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut counts = HashMap::new();
    for a in answers {
        *counts.entry(a).or_default() += 1;
    }
    counts
}

/// The v2 share (instance `b1`) is within 4 standard deviations of `p`.
fn assert_share(counts: &HashMap<String, usize>, p: f64) {
    let v2 = counts.get("b1").copied().unwrap_or(0);
    let share = v2 as f64 / N as f64;
    let bound = 4.0 * (p * (1.0 - p) / N as f64).sqrt();
    assert!(
        (share - p).abs() <= bound,
        "v2 share {share:.4}, expected {p} +- {bound:.4}: {counts:?}"
    );
}

async fn put_weights(gw: &GatewayProcess, service: &str, body: &str) -> (u16, serde_json::Value) {
    let r = gw
        .http
        .put(format!("http://{}/admin/canary/{service}", gw.admin))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_versions_and_shift_at_run_time() {
    let gw = gateway().await;
    let _a1 = backend(&gw, "cnry", "a1", "v1", false).await;
    let _a2 = backend(&gw, "cnry", "a2", "v1", true).await;
    let b1 = backend(&gw, "cnry", "b1", "v2", false).await;
    gw.wait_routable("cnry", 3).await;

    // 90/10.
    let counts = spread(&gw, "/cnry/x", None, N).await;
    assert_share(&counts, 0.10);
    // Both v1 instances serve: the balancer still spreads within a version.
    assert!(counts.get("a1").copied().unwrap_or(0) > 100, "{counts:?}");
    assert!(counts.get("a2").copied().unwrap_or(0) > 100, "{counts:?}");

    // The header pins the version: by name, and `true` = the canary.
    let counts = spread(&gw, "/cnry/x", Some(("x-canary", "v2")), 100).await;
    assert_eq!(counts.get("b1"), Some(&100), "{counts:?}");
    let counts = spread(&gw, "/cnry/x", Some(("x-canary", "true")), 50).await;
    assert_eq!(counts.get("b1"), Some(&50), "{counts:?}");
    let counts = spread(&gw, "/cnry/x", Some(("x-canary", "v1")), 50).await;
    assert_eq!(counts.get("b1"), None, "{counts:?}");

    // The admin shift: 50/50.
    let (status, body) = put_weights(&gw, "cnry", r#"{"weights":{"v1":50,"v2":50}}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["weights"]["v2"], 50);
    let counts = spread(&gw, "/cnry/x", None, N).await;
    assert_share(&counts, 0.5);

    // 0/100: the switch.
    let (status, _) = put_weights(&gw, "cnry", r#"{"weights":{"v1":0,"v2":100}}"#).await;
    assert_eq!(status, 200);
    let counts = spread(&gw, "/cnry/x", None, 200).await;
    assert_eq!(counts.get("b1"), Some(&200), "{counts:?}");

    let list: serde_json::Value = gw
        .http
        .get(format!("http://{}/admin/canary", gw.admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cnry = list["canary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["service"] == "cnry")
        .unwrap();
    assert_eq!(cnry["weights"], serde_json::json!({"v1": 0, "v2": 100}));
    assert_eq!(cnry["instances"], serde_json::json!({"v1": 2, "v2": 1}));

    // Refusals: a JSON error naming the problem, weights unchanged.
    let (status, body) = put_weights(&gw, "cnry", r#"{"weights":{"v1":-1,"v2":5}}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"v1\""),
        "{body}"
    );
    let (status, body) = put_weights(&gw, "cnry", r#"{"weights":{"v1":0,"v2":0}}"#).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("all 0"),
        "{body}"
    );
    let (status, body) = put_weights(&gw, "nope", r#"{"weights":{"v1":1}}"#).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let counts = spread(&gw, "/cnry/x", None, 50).await;
    assert_eq!(counts.get("b1"), Some(&50), "{counts:?}");

    // v2 gone: its share goes to v1, its header is ignored; with only v2
    // weighted, 503.
    let (status, _) = put_weights(&gw, "cnry", r#"{"weights":{"v1":10,"v2":90}}"#).await;
    assert_eq!(status, 200);
    b1.stop().await;
    gw.wait_routable("cnry", 2).await;
    let counts = spread(&gw, "/cnry/x", None, 100).await;
    assert_eq!(counts.get("b1"), None, "{counts:?}");
    let counts = spread(&gw, "/cnry/x", Some(("x-canary", "v2")), 20).await;
    assert_eq!(counts.get("b1"), None, "{counts:?}");
    let (status, _) = put_weights(&gw, "cnry", r#"{"weights":{"v2":1}}"#).await;
    assert_eq!(status, 200);
    let r = gw.http.get(gw.url("/cnry/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "no_healthy_instance", "{body}");
}

/// The `gw-sticky` value of a `Set-Cookie` header, if any.
fn sticky(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("gw-sticky="))
        .map(|v| {
            assert!(
                v.contains("HttpOnly") && v.contains("Path=/") && v.contains("Max-Age=3600"),
                "{v}"
            );
            v.split(';').next().unwrap().to_owned()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_hold_and_re_pin_also_for_websockets() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let gw = gateway().await;
    let mut backends = HashMap::new();
    for id in ["s1", "s2", "s3"] {
        backends.insert(id, backend(&gw, "stky", id, "v1", false).await);
    }
    gw.wait_routable("stky", 3).await;

    let r = gw.http.get(gw.url("/stky/x")).send().await.unwrap();
    let cookie = sticky(r.headers()).expect("the first answer pins");
    let pinned = r.text().await.unwrap();
    for _ in 0..50 {
        let r = gw
            .http
            .get(gw.url("/stky/x"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(sticky(r.headers()), None, "a held pin is not set again");
        assert_eq!(r.text().await.unwrap(), pinned);
    }

    // A WebSocket upgrade carrying the cookie reaches the same instance;
    // one without it is pinned on its 101.
    let ws = |cookie: Option<String>| {
        let mut req = format!("ws://{}/stky/ws", gw.public)
            .into_client_request()
            .unwrap();
        if let Some(c) = cookie {
            req.headers_mut().insert("cookie", c.parse().unwrap());
        }
        let addr = gw.public;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut socket, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
            let first = socket.next().await.unwrap().unwrap();
            let _ = socket.close(None).await;
            (
                first.into_text().unwrap().to_string(),
                sticky(resp.headers()),
            )
        }
    };
    for _ in 0..5 {
        let (id, set) = ws(Some(cookie.clone())).await;
        assert_eq!(id, pinned);
        assert_eq!(set, None);
    }
    let (id, set) = ws(None).await;
    let ws_cookie = set.expect("the upgrade's 101 pins");
    assert_eq!(ws(Some(ws_cookie)).await.0, id);

    // The pinned instance deregisters: the next request is pinned anew.
    backends.remove(pinned.as_str()).unwrap().stop().await;
    gw.wait_routable("stky", 2).await;
    let (moved, new_cookie) = eventually("re-pinned", || {
        let req = gw
            .http
            .get(gw.url("/stky/x"))
            .header("cookie", &cookie)
            .send();
        async move {
            let r = req.await.ok()?;
            let set = sticky(r.headers());
            let id = r.text().await.ok()?;
            Some((id, set?))
        }
    })
    .await;
    assert_ne!(moved, pinned);
    assert_ne!(new_cookie, cookie);
    for _ in 0..20 {
        let r = gw
            .http
            .get(gw.url("/stky/x"))
            .header("cookie", &new_cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), moved);
    }
}

/// `PUT /admin/canary/<service>?replicas=all`: the weights go to every
/// replica of `[admin] peers` (itself found by node id), and one that
/// cannot take them makes the answer a 502 naming it, the others changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_shifts_every_replica() {
    let cfg = config_file();
    let a = GatewayProcess::start(&["--config", &cfg], &[]).await;
    let b_admin = format!("127.0.0.1:{}", closed_port());
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let peers = [
        format!("http://{}", a.admin),
        format!("http://{b_admin}"),
        dead.clone(),
    ];
    let mut flags = vec!["--config", cfg.as_str()];
    for p in &peers {
        flags.extend(["--admin-peer", p.as_str()]);
    }
    let b = GatewayProcess::start_at(
        ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", &b_admin].map(String::from),
        &flags,
        &[],
    )
    .await;
    let weights_on = |gw: &GatewayProcess| {
        let url = format!("http://{}/admin/canary", gw.admin);
        let http = gw.http.clone();
        async move {
            let v = get_json(&http, &url).await;
            v["canary"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["service"] == "cnry")
                .unwrap()["weights"]
                .clone()
        }
    };
    let put_all = |body: &'static str, query: &'static str| {
        b.http
            .put(format!("http://{}/admin/canary/cnry?{query}", b.admin))
            .body(body)
            .send()
    };

    let r = put_all(r#"{"weights":{"v1":50,"v2":50}}"#, "replicas=all")
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "replicas_incomplete", "{v:#}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("applied on 2 of 3"), "{msg}");
    assert!(msg.contains(&dead), "{msg}");
    let reps = v["replicas"].as_array().unwrap();
    assert_eq!(reps.len(), 3, "{v:#}");
    assert_eq!(reps[0]["self"], true);
    assert_eq!(reps[0]["url"], peers[1], "found itself in the list: {v:#}");
    assert_eq!(reps[1]["url"], peers[0]);
    assert_eq!(reps[1]["ok"], true);
    assert_eq!(reps[2]["url"], dead.as_str());
    assert_eq!(reps[2]["ok"], false);
    assert!(
        reps[2]["error"].as_str().unwrap().contains("connect"),
        "{v:#}"
    );
    // Both live replicas took them.
    assert_eq!(
        weights_on(&a).await,
        serde_json::json!({"v1": 50, "v2": 50})
    );
    assert_eq!(
        weights_on(&b).await,
        serde_json::json!({"v1": 50, "v2": 50})
    );

    // A body this replica refuses goes nowhere.
    let r = put_all(r#"{"weights":{"v1":-1}}"#, "replicas=all")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        weights_on(&a).await,
        serde_json::json!({"v1": 50, "v2": 50})
    );
    // Without the flag: this replica only.
    let r = put_all(r#"{"weights":{"v1":0,"v2":100}}"#, "")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        weights_on(&b).await,
        serde_json::json!({"v1": 0, "v2": 100})
    );
    assert_eq!(
        weights_on(&a).await,
        serde_json::json!({"v1": 50, "v2": 50})
    );
    // A bad query is named.
    let r = put_all(r#"{"weights":{"v1":1}}"#, "replicas=some")
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("replicas:"),
        "{v:#}"
    );
}
