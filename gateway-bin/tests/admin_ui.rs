//! The admin listener's explain endpoint, live event feed and web UI on
//! the real `gateway` binary (issue 11, parts 4 and 5). The browser test of
//! the UI is scripts/admin-ui-test.sh.

mod support;

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{ConsulProcess, GatewayProcess, closed_port, eventually, get_json, register_json};

async fn explain(gw: &GatewayProcess, query: &[(&str, &str)]) -> (u16, Value) {
    let resp = gw
        .http
        .get(format!("http://{}/admin/explain", gw.admin))
        .query(query)
        .send()
        .await
        .expect("explain answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON"))
}

#[tokio::test]
async fn explain_routes_candidates_exclusions_and_bad_input() {
    let gw = GatewayProcess::start(&[], &[]).await;
    // The live feed, read from the start.
    let feed = Arc::new(Mutex::new(String::new()));
    let resp = gw
        .http
        .get(format!("http://{}/admin/events", gw.admin))
        .send()
        .await
        .expect("events");
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let sink = feed.clone();
    tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
    });

    let port = closed_port();
    let reg = |id: &str, hosts: Value| {
        json!({"service": if id == "beta-1" { "beta" } else { "shop" }, "instance_id": id,
            "address": format!("127.0.0.1:{port}"), "health": {"kind": "ttl"}, "lease_ms": 600000,
            "routes": [{"path_prefix": "/shop", "hosts": hosts}]})
    };
    register_json(&gw, &reg("shop-1", json!([]))).await;
    register_json(&gw, &reg("beta-1", json!(["beta.example"]))).await;
    gw.wait_routable("shop", 1).await;
    gw.wait_routable("beta", 1).await;

    let (status, e) = explain(
        &gw,
        &[
            ("method", "POST"),
            ("host", "x"),
            ("path", "/shop/../shop/1"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["normalised_path"], "/shop/1");
    assert_eq!(e["route"]["service"], "shop");
    assert!(
        e["route"]["why"].as_str().unwrap().contains("any host"),
        "{e}"
    );
    assert_eq!(e["candidates"][0]["instance_id"], "shop-1");
    assert_eq!(e["dispatch"], "Send");
    assert_eq!(e["visible_from"]["admin"]["service"], "shop");

    let (_, e) = explain(&gw, &[("host", "beta.example:8080"), ("path", "/shop/1")]).await;
    assert_eq!(e["route"]["service"], "beta");
    assert!(
        e["route"]["why"]
            .as_str()
            .unwrap()
            .contains("host-specific"),
        "{e}"
    );
    assert_eq!(e["other_matching_routes"][0]["service"], "shop");

    // A request the instance refuses: ejected as unreachable, and said so.
    let r = gw
        .http
        .get(gw.url("/shop/1"))
        .header("host", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let (_, e) = explain(&gw, &[("host", "x"), ("path", "/shop/1")]).await;
    assert_eq!(e["outcome"]["status"], 503, "{e}");
    assert_eq!(e["outcome"]["code"], "no_healthy_instance");
    assert_eq!(e["excluded"][0]["reason"], "ejected");
    assert_eq!(e["excluded"][0]["ejection"], "unreachable");
    assert!(e["excluded"][0]["ejected_for_ms"].as_u64().unwrap() > 0);

    // A WebSocket to a service that does not stream.
    let (_, e) = explain(
        &gw,
        &[
            ("host", "beta.example"),
            ("path", "/shop"),
            ("websocket", "true"),
        ],
    )
    .await;
    assert_eq!(e["outcome"]["code"], "websocket_unsupported", "{e}");
    assert_eq!(e["excluded"][0]["reason"], "not_streaming");

    // Bad input: 400 in the gateway's error format, naming the parameter.
    for (query, parameter) in [
        (
            vec![("method", "G T"), ("host", "x"), ("path", "/")],
            "method",
        ),
        (vec![("host", "bad host/x"), ("path", "/")], "host"),
        (vec![("host", "x"), ("path", "nope")], "path"),
        (vec![("host", "x"), ("path", "/a%00")], "path"),
        (vec![("host", "x")], "path"),
        (
            vec![("host", "x"), ("path", "/"), ("listener", "side")],
            "listener",
        ),
    ] {
        let (status, e) = explain(&gw, &query).await;
        assert_eq!(status, 400, "{query:?}: {e}");
        assert_eq!(e["error"]["code"], "bad_request");
        assert_eq!(e["error"]["parameter"], parameter, "{query:?}: {e}");
        assert!(e["error"]["message"].is_string());
    }

    // The feed told of both registrations and the ejection, with a state.
    eventually("registrations and the ejection in the feed", || {
        let text = feed.lock().unwrap().clone();
        async move {
            (text.contains("event: hello")
                && text.contains("event: state")
                && text.contains("\"kind\":\"registered\"")
                && text.contains("\"instance_id\":\"beta-1\"")
                && text.contains("\"kind\":\"ejected\""))
            .then_some(())
        }
    })
    .await;

    // The UI and its assets.
    let html = gw
        .http
        .get(format!("http://{}/", gw.admin))
        .send()
        .await
        .unwrap();
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = html.text().await.unwrap();
    assert!(html.contains("/admin/ui/admin.js"));
    for asset in ["/admin/ui/admin.js", "/admin/ui/admin.css"] {
        let r = gw
            .http
            .get(format!("http://{}{asset}", gw.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{asset}");
    }
    // Other paths still reach admin services.
    let v = get_json(&gw.http, &format!("http://{}/nope", gw.admin)).await;
    assert_eq!(v["error"]["code"], "route_not_found");
}

/// With a real SDK backend (it declares `streaming` and registers its
/// routes with `stream = true`), explain says `Stream` and the request it
/// explains is answered.
#[tokio::test]
async fn explain_agrees_with_a_real_streaming_backend() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let app = service_sdk::Router::new().route(
        "/sdk/hello",
        service_sdk::routing::get(|| async { "hello" }),
    );
    let _b = support::BackendHandle::start("sdk", app, Some(&gw.registration_url()), |b| b).await;
    gw.wait_routable("sdk", 1).await;
    let (status, e) = explain(&gw, &[("host", "localhost"), ("path", "/sdk/hello")]).await;
    assert_eq!(status, 200, "{e}");
    assert_eq!(e["route"]["stream"], true, "{e}");
    assert_eq!(e["candidates"][0]["streaming"], true);
    assert_eq!(e["dispatch"], "Stream");
    assert_eq!(e["outcome"]["status"], Value::Null);
    let r = gw.http.get(gw.url("/sdk/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
}

/// `/admin/replicas`: every peer's view fetched by the gateway, itself
/// found in the list by node id and shown once, a dead peer down with the
/// error; `--admin-peer` is checked at start-up.
#[tokio::test]
async fn replicas_side_by_side_with_a_peer_down() {
    let a = GatewayProcess::start(&[], &[]).await;
    let b_admin = format!("127.0.0.1:{}", closed_port());
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let peers = [
        format!("http://{}", a.admin),
        format!("http://{b_admin}"),
        dead.clone(),
    ];
    let mut flags = Vec::new();
    for p in &peers {
        flags.extend(["--admin-peer", p.as_str()]);
    }
    let b = GatewayProcess::start_at(
        ["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", &b_admin].map(String::from),
        &flags,
        &[],
    )
    .await;
    let a_node = get_json(&a.http, &format!("http://{}/admin/services", a.admin)).await["node_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = get_json(&b.http, &format!("http://{}/admin/replicas", b.admin)).await;
    let reps = v["replicas"].as_array().unwrap();
    assert_eq!(reps.len(), 3, "{v:#}");
    assert_eq!(reps[0]["self"], true);
    assert_eq!(reps[0]["url"], peers[1], "found itself in the list: {v:#}");
    assert_eq!(reps[0]["view"]["node_id"], v["node_id"]);
    assert_eq!(reps[1]["up"], true);
    assert_eq!(reps[1]["url"], peers[0]);
    assert_eq!(reps[1]["view"]["node_id"], a_node.as_str());
    assert!(reps[1]["view"]["registry"]["connected"].as_bool().unwrap());
    assert_eq!(reps[2]["up"], false);
    assert_eq!(reps[2]["url"], dead.as_str());
    assert!(
        reps[2]["error"].as_str().unwrap().contains("connect"),
        "{v:#}"
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--admin-peer", "ftp://127.0.0.1:1", "--print-config"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("admin.peers"), "{err}");
}

/// With `[consul]`, replicas find each other through Consul's KV store (no
/// peer list): each writes its admin URL under its node id, and removes it
/// when it stops. Real Consul (`scripts/install-deps.sh consul`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_found_through_consul() {
    const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul.toml");
    let consul = ConsulProcess::start(None).await;
    let flags = ["--config", CONFIG, "--consul", &consul.url()];
    let a = GatewayProcess::start(&flags, &[]).await;
    let b = GatewayProcess::start(&flags, &[]).await;
    let url = format!("http://{}/admin/replicas", b.admin);
    let a_admin = format!("http://{}", a.admin);
    let v = eventually("both gateways in Consul", || {
        let (http, url) = (b.http.clone(), url.clone());
        async move {
            let v = get_json(&http, &url).await;
            // Both keys written (B's own too: it finds itself by it).
            (v["discovery"]["consul"] == 2
                && v["replicas"].as_array()?.len() == 2
                && v["replicas"][1]["up"] == true)
                .then_some(v)
        }
    })
    .await;
    assert_eq!(v["replicas"][0]["self"], true);
    assert_eq!(v["replicas"][0]["url"], format!("http://{}", b.admin));
    assert_eq!(v["replicas"][1]["url"], a_admin.as_str());

    // A stopping gateway takes its key away.
    a.terminate();
    eventually("the stopped gateway gone from Consul", || {
        let (http, url) = (b.http.clone(), url.clone());
        async move {
            let v = get_json(&http, &url).await;
            (v["replicas"].as_array()?.len() == 1).then_some(())
        }
    })
    .await;
}
