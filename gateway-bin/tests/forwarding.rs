//! End to end on the embedded registry: the real `gateway` binary, real SDK
//! backends over gRPC, HTTP clients on 127.0.0.1.

mod support;

use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{AppendHeaders, IntoResponse};
use axum::routing::{any, get};
use serde_json::{Value, json};
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess, eventually, register_ttl};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echoes everything it received as JSON, with two Set-Cookie headers.
fn echo_router() -> Router {
    Router::new().fallback(any(|method: Method, uri: Uri, headers: HeaderMap, body: Bytes| async move {
        let hs: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let v = json!({"method": method.as_str(), "uri": uri.to_string(), "headers": hs, "body": String::from_utf8_lossy(&body)});
        (
            StatusCode::ACCEPTED,
            AppendHeaders([("set-cookie", "a=1"), ("set-cookie", "b=2"), ("content-type", "application/json")]),
            v.to_string(),
        )
            .into_response()
    }))
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_losslessly_and_errors_are_json() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let reg = gw.registration_url();
    let echo = BackendHandle::start("echo", echo_router(), Some(&reg), |b| b).await;
    gw.wait_routable("echo", 1).await;
    // The same handler behind `Send` only: bodies are buffered, within
    // `limits.max_body_bytes`.
    let _unary = BackendHandle::start("unary", echo_router(), Some(&reg), |b| {
        b.registration(|r| r.streaming = false)
    })
    .await;
    gw.wait_routable("unary", 1).await;

    // Method, raw path and query, duplicate headers, body all arrive.
    let resp = gw
        .http
        .request(
            Method::from_bytes(b"PURGE").unwrap(),
            gw.url("/echo/a%2Fb//c?x=%20&y"),
        )
        .header("x-dup", "1")
        .header("x-dup", "2")
        .header("x-request-id", "client-id-1")
        .header("x-forwarded-for", "6.6.6.6")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["x-request-id"], "client-id-1");
    let cookies: Vec<_> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cookies, ["a=1", "b=2"], "two Set-Cookie stay two");
    let v = json_of(resp).await;
    assert_eq!(v["method"], "PURGE");
    assert_eq!(v["uri"], "/echo/a%2Fb//c?x=%20&y");
    assert_eq!(v["body"], "payload");
    let headers = v["headers"].as_array().unwrap();
    let get = |n: &str| {
        headers
            .iter()
            .filter(|h| h[0] == n)
            .map(|h| h[1].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("x-dup"), ["1", "2"]);
    // Loopback is a trusted proxy by default, so the chain is kept.
    assert_eq!(get("x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
    assert_eq!(get("x-forwarded-proto"), ["http"]);
    assert_eq!(get("x-request-id"), ["client-id-1"]);

    // Unknown route: 404 JSON with a stable code and the request id.
    let resp = gw.http.get(gw.url("/nope")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let v = json_of(resp).await;
    assert_eq!(v["error"]["code"], "route_not_found");
    assert_eq!(v["error"]["request_id"], rid);

    // Body over the limit: 413 before the body is read. Only the head is
    // sent: the answer must come without a single body byte (a client that
    // kept writing could see the connection close under it instead).
    let mut s = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    s.write_all(b"POST /unary HTTP/1.1\r\nHost: a\r\nContent-Length: 9437184\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("413 without the body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("body_too_large"), "{head}");

    // Too many headers: 431 JSON.
    let mut req = gw.http.get(gw.url("/echo"));
    for i in 0..120 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 431);
    assert_eq!(json_of(resp).await["error"]["code"], "headers_too_large");

    // Registering the same instance again is harmless.
    let body = json!({"service": "echo", "instance_id": format!("echo-{}", echo.addr), "address": echo.addr.to_string()});
    let resp = gw
        .http
        .put(format!("{}/v1/registrations", reg))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let list = json_of(
        gw.http
            .get(format!("{}/v1/registrations?service=echo", reg))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list["instances"].as_array().unwrap().len(), 1);

    // A backend stopped gracefully deregisters: the route disappears.
    echo.stop().await;
    let resp = gw.http.get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_gets_400_and_the_connection_closed() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let router = Router::new().fallback(any(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { "reached" }
    }));
    // A backend that only speaks `Send`: the gateway reads each body whole
    // before anything goes upstream, so nothing malformed reaches it. (A
    // streaming backend may see the head of a request whose chunking turns
    // out bad, but never its `end`: tests/streaming.rs checks that.)
    let _b = BackendHandle::start("echo", router, Some(&gw.registration_url()), |b| {
        b.registration(|r| r.streaming = false)
    })
    .await;
    gw.wait_routable("echo", 1).await;
    let cases = malformed_requests();
    assert!(cases.len() >= 90, "{} cases", cases.len());
    for raw in &cases {
        let mut s = tokio::net::TcpStream::connect(gw.public).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut buf = Vec::new();
        // The gateway must answer and close: read_to_end returns.
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "connection left open for {:?}",
                    String::from_utf8_lossy(raw)
                )
            })
            .ok();
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} -> {text:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the backend received none of them"
    );

    // CL + TE: refused with 400 and the connection closed (hyper would let
    // Transfer-Encoding win; the gateway's raw-head scan sees both). Neither
    // the request nor the smuggled second one may reach the backend.
    let mut s = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("connection closed")
        .ok();
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "exactly one response: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("bad_request_framing"), "{text}");
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visibility_timeouts_and_failover() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let reg = gw.registration_url();

    // An internal service: not on the public listener, reachable internally.
    let secret = BackendHandle::start("secret", echo_router(), Some(&reg), |b| {
        b.visibility(proto::v1::Visibility::Internal)
    })
    .await;
    gw.wait_routable("secret", 1).await;
    assert_eq!(
        gw.http
            .get(gw.url("/secret"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let internal = format!("http://{}/secret", gw.internal);
    assert_eq!(gw.http.get(&internal).send().await.unwrap().status(), 202);
    secret.stop().await;

    // A hanging backend costs no more than the route's timeout: 504.
    let slow_router = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        }),
    );
    let slow = BackendHandle::start("slow", slow_router, Some(&reg), |b| {
        b.registration(|r| {
            r.routes = vec![proto::v1::Route {
                path_prefix: "/slow".into(),
                timeout_ms: 300,
                ..Default::default()
            }];
        })
    })
    .await;
    gw.wait_routable("slow", 1).await;
    let t = std::time::Instant::now();
    let resp = gw.http.get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(json_of(resp).await["error"]["code"], "upstream_timeout");
    slow.kill();

    // Two instances, one of them at an address that refuses connections
    // (TTL-checked, so only the data path can find out). Requests never sent
    // go to the live instance: no client sees a failure.
    let live = BackendHandle::start("pair", echo_router(), Some(&reg), |b| b).await;
    let dead = closed_port().await;
    register_ttl(&gw, "pair", "pair-dead", &dead).await;
    gw.wait_routable("pair", 2).await;
    for _ in 0..20 {
        let resp = gw.http.get(gw.url("/pair/x")).send().await.unwrap();
        assert_eq!(resp.status(), 202);
    }
    live.stop().await;

    // Every instance unreachable: 503 at once, JSON, and again while ejected.
    register_ttl(&gw, "ghost", "ghost-1", &closed_port().await).await;
    register_ttl(&gw, "ghost", "ghost-2", &closed_port().await).await;
    gw.wait_routable("ghost", 2).await;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let resp = gw.http.get(gw.url("/ghost/x")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "503 within 1 s, took {:?}",
            t.elapsed()
        );
        assert_eq!(json_of(resp).await["error"]["code"], "no_healthy_instance");
    }
}

/// An address on 127.0.0.1 that refuses connections.
async fn closed_port() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_fails_readiness_then_finishes_in_flight_requests() {
    let gw = GatewayProcess::start(
        &[
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drain.toml"),
        ],
        &[],
    )
    .await;
    let reg = gw.registration_url();
    let slow_router = Router::new().route(
        "/wait",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "done"
        }),
    );
    let _b = BackendHandle::start("wait", slow_router, Some(&reg), |b| b).await;
    gw.wait_routable("wait", 1).await;

    let http = gw.http.clone();
    let url = gw.url("/wait");
    let in_flight =
        tokio::spawn(async move { http.get(&url).send().await.unwrap().text().await.unwrap() });
    // Let the request reach the backend before the signal.
    let admin = format!("http://{}/admin/services", gw.admin);
    eventually("request in flight", || {
        let (http, admin) = (gw.http.clone(), admin.clone());
        async move {
            let v: Value = http.get(&admin).send().await.ok()?.json().await.ok()?;
            (v["services"][0]["endpoints"][0]["in_flight"] == 1).then_some(())
        }
    })
    .await;
    gw.terminate();
    let ready = format!("http://{}/readyz", gw.admin);
    eventually("readiness fails after SIGTERM", || {
        let (http, ready) = (gw.http.clone(), ready.clone());
        async move { (http.get(&ready).send().await.ok()?.status() == 503).then_some(()) }
    })
    .await;
    assert_eq!(
        in_flight.await.unwrap(),
        "done",
        "the in-flight request completed"
    );
    let mut child = gw.child;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_registration_errors_name_the_field() {
    let gw = GatewayProcess::start(&["--registration-token", "t0k"], &[]).await;
    let mut client =
        proto::v1::registry_service_client::RegistryServiceClient::connect(gw.registration_url())
            .await
            .unwrap();
    let reg = proto::v1::Registration {
        service: "x".into(),
        address: "not-an-address".into(),
        ..Default::default()
    };
    let mut req = tonic::Request::new(proto::v1::RegisterRequest {
        registration: Some(reg.clone()),
    });
    req.metadata_mut()
        .insert("authorization", "Bearer t0k".parse().unwrap());
    let err = client.register(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("registration.address"),
        "{}",
        err.message()
    );

    let err = client
        .register(proto::v1::RegisterRequest {
            registration: Some(reg),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    let list = client
        .list(proto::v1::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.instances.is_empty(), "nothing was registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_registers_again_after_a_gateway_restart() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let reg = gw.registration_url();
    let _b = BackendHandle::start("phoenix", echo_router(), Some(&reg), |b| {
        b.registration(|r| r.lease_ms = 900)
    })
    .await;
    gw.wait_routable("phoenix", 1).await;
    // The embedded registry dies with the gateway; a new one starts empty on
    // the same ports and the SDK's next renewal puts the instance back.
    let addrs = gw.addrs();
    let mut child = gw.child;
    child.kill().await.unwrap();
    let _ = child.wait().await;
    let gw = GatewayProcess::start_at(addrs, &[], &[]).await;
    gw.wait_routable("phoenix", 1).await;
    assert_eq!(
        gw.http
            .get(gw.url("/phoenix/x"))
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
}

/// A backend that fails every call at the gRPC level.
struct Broken;

#[tonic::async_trait]
impl proto::v1::forwarding_service_server::ForwardingService for Broken {
    async fn send(
        &self,
        _: tonic::Request<proto::v1::ForwardingReq>,
    ) -> Result<tonic::Response<proto::v1::ForwardingResp>, tonic::Status> {
        Err(tonic::Status::internal("broken on purpose"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_every_call_is_ejected() {
    // Least-loaded balancing, where a fast-failing instance attracts
    // traffic: the ejection must stop it. (The default `peak_ewma` may not
    // send it five requests in a row at all; balancing.rs checks that it
    // costs clients no more.)
    let gw = GatewayProcess::start(
        &[
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/least_loaded.toml"),
        ],
        &[],
    )
    .await;
    let _good =
        BackendHandle::start("flaky", echo_router(), Some(&gw.registration_url()), |b| b).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broken_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(proto::v1::forwarding_service_server::ForwardingServiceServer::new(Broken))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    register_ttl(&gw, "flaky", "flaky-broken", &broken_addr).await;
    gw.wait_routable("flaky", 2).await;
    let mut failed = 0;
    for _ in 0..200 {
        let status = gw
            .http
            .get(gw.url("/flaky/x"))
            .send()
            .await
            .unwrap()
            .status();
        if status != 202 {
            assert_eq!(status, 502, "a failed call is a 502");
            failed += 1;
        }
    }
    // Five failures in a row eject the broken instance for 5 s; with two
    // instances it needs at most a handful of failures to get there.
    assert!((5..=20).contains(&failed), "{failed} of 200 failed");
}

/// Requests every HTTP/1.1 gateway must refuse: bad header names and values,
/// bad or conflicting framing, bad chunks, bad request lines. (Whitespace
/// or NUL in chunk extensions, which RFC 9112 lets a recipient ignore, is
/// accepted; bare LF line ends and duplicate Content-Length are refused by
/// the raw-head scan, tested in edge.rs.)
fn malformed_requests() -> Vec<Vec<u8>> {
    let mut cases: Vec<Vec<u8>> = Vec::new();
    let cat = |parts: &[&[u8]]| parts.concat();
    for c in b" \t(),/;<=>?@[\\]{}\"\x00\x7f\x01\x1f\x80" {
        cases.push(cat(&[
            b"GET /echo HTTP/1.1\r\nHost: a\r\nX",
            &[*c],
            b"Y: v\r\n\r\n",
        ]));
    }
    for c in (0u8..9).chain(0x0b..0x0d).chain(0x0e..0x20).chain([0x7f]) {
        cases.push(cat(&[
            b"GET /echo HTTP/1.1\r\nHost: a\r\nX: a",
            &[c],
            b"b\r\n\r\n",
        ]));
    }
    let base: &[u8] = b"POST /echo HTTP/1.1\r\nHost: a\r\n";
    for cl in [
        &b"-1"[..],
        b"1x",
        b"1 2",
        b"0x10",
        b"+5",
        b"1,2",
        b"99999999999999999999999",
        b"",
        b" ",
        b"1.0",
    ] {
        cases.push(cat(&[base, b"Content-Length: ", cl, b"\r\n\r\nx"]));
    }
    for te in [
        &b"chunked, gzip"[..],
        b"gzip",
        b"chunkedx",
        b"\"chunked\"",
        b"chunked, chunked",
        b"identity",
    ] {
        cases.push(cat(&[
            base,
            b"Transfer-Encoding: ",
            te,
            b"\r\n\r\n0\r\n\r\n",
        ]));
    }
    for chunk in [
        &b"zz\r\n"[..],
        b"-1\r\nx\r\n",
        b"fffffffffffffffffff\r\n",
        b"1\r\nxx\r\n0\r\n\r\n",
        b"1\r\nx0\r\n\r\n",
    ] {
        cases.push(cat(&[base, b"Transfer-Encoding: chunked\r\n\r\n", chunk]));
    }
    for line in [
        &b"GET  /echo HTTP/1.1"[..],
        b"GET /echo HTTP/1.1 extra",
        b"GET /echo HTTP/9.9",
        b"GET /ec\x7fho HTTP/1.1",
        b"GET\t/echo HTTP/1.1",
        b"GET /echo\tHTTP/1.1",
        b" GET /echo HTTP/1.1",
        b"GET /echo HTTP/1.1\x00",
        b"G(T /echo HTTP/1.1",
        b"GET /echo HTTP/",
        b"GET /echo",
        b"GET /e cho HTTP/1.1",
        b"GARBAGE",
        b"GET /echo\x00 HTTP/1.1",
    ] {
        cases.push(cat(&[line, b"\r\nHost: a\r\n\r\n"]));
    }
    for raw in [
        &b"GET /echo HTTP/1.1\rHost: a\r\r\n\r\n"[..],
        b"GET /echo HTTP/1.1\r\n Host: a\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /echo HTTP/1.1\r\n\r\n",
        b"GET /echo HTTP/1.1\r\n: empty\r\n\r\n",
        b"GET /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ] {
        cases.push(raw.to_vec());
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_services_filters_and_pages() {
    let gw = GatewayProcess::start(&[], &[]).await;
    for (i, name) in ["page-a", "page-b", "page-c", "other"].iter().enumerate() {
        register_ttl(
            &gw,
            name,
            &format!("{name}-1"),
            &format!("127.0.0.1:{}", 20000 + i),
        )
        .await;
    }
    gw.wait_routable("other", 1).await;
    let admin = |q: &str| format!("http://{}/admin/services{q}", gw.admin);
    let v = support::get_json(&gw.http, &admin("?prefix=page-&limit=2&instances=false")).await;
    let names: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["page-a", "page-b"]);
    assert_eq!(v["total_services"], 3);
    assert_eq!(v["next_offset"], 2);
    assert!(v.get("instances").is_none());
    let v = support::get_json(&gw.http, &admin("?prefix=page-&limit=2&offset=2")).await;
    assert_eq!(v["services"][0]["name"], "page-c");
    assert!(v.get("next_offset").is_none());
    let v = support::get_json(&gw.http, &admin("?service=other")).await;
    assert_eq!(v["services"].as_array().unwrap().len(), 1);
    assert_eq!(v["instances"].as_array().unwrap().len(), 1);
    let r = gw.http.get(admin("?limit=x")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "bad_request");
}
