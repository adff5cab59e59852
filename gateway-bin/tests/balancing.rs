//! Balancing, ejection, panic mode and retries end to end: the real
//! `gateway` binary, SDK backends and scripted tonic backends that count the
//! attempts they receive.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::routing::any;
use proto::v1::forwarding_service_server::{ForwardingService, ForwardingServiceServer};
use proto::v1::{ForwardingReq, ForwardingResp};
use serde_json::Value;
use service_sdk::Router;
use support::{BackendHandle, GatewayProcess, admin_view, register_ttl};

type Answer = dyn Fn(u64) -> Result<ForwardingResp, tonic::Status> + Send + Sync;

/// A backend whose n-th call (from 1) is answered by a script; counts calls.
struct Scripted {
    calls: Arc<AtomicU64>,
    answer: Arc<Answer>,
}

#[tonic::async_trait]
impl ForwardingService for Scripted {
    async fn send(
        &self,
        _: tonic::Request<ForwardingReq>,
    ) -> Result<tonic::Response<ForwardingResp>, tonic::Status> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        (self.answer)(n).map(tonic::Response::new)
    }
}

/// Starts a scripted backend on 127.0.0.1:0: its address and call counter.
async fn scripted(
    answer: impl Fn(u64) -> Result<ForwardingResp, tonic::Status> + Send + Sync + 'static,
) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let calls = Arc::new(AtomicU64::new(0));
    let svc = Scripted {
        calls: calls.clone(),
        answer: Arc::new(answer),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(ForwardingServiceServer::new(svc))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    (addr, calls)
}

fn ok(body: &'static str) -> Result<ForwardingResp, tonic::Status> {
    Ok(ForwardingResp {
        status: 200,
        body: body.into(),
        ..Default::default()
    })
}

/// A router answering every request with `tag`, after `delay`.
fn tagged(tag: &'static str, delay: Duration) -> Router {
    Router::new().fallback(any(move || async move {
        tokio::time::sleep(delay).await;
        tag
    }))
}

fn service<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
}

/// Issue 9 / RELIABILITY 15: one of three instances 500 ms slower gets
/// little traffic under the default peak-EWMA balancing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_instance_gets_a_small_share() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let reg = gw.registration_url();
    let _a = BackendHandle::start("lat", tagged("a", Duration::ZERO), Some(&reg), |b| b).await;
    let _b = BackendHandle::start("lat", tagged("b", Duration::ZERO), Some(&reg), |b| b).await;
    let _slow = BackendHandle::start(
        "lat",
        tagged("slow", Duration::from_millis(500)),
        Some(&reg),
        |b| b,
    )
    .await;
    gw.wait_routable("lat", 3).await;

    // Its share is the probes sent before it first answered (a handful
    // while its first request is in flight), then next to nothing.
    const WORKERS: usize = 10;
    const PER_WORKER: usize = 60;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (http, url) = (gw.http.clone(), gw.url("/lat/x"));
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..PER_WORKER {
                let t = Instant::now();
                let resp = http.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                seen.push((resp.text().await.unwrap(), t.elapsed()));
            }
            seen
        }));
    }
    let mut slow = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        for (tag, latency) in t.await.unwrap() {
            slow += usize::from(tag == "slow");
            latencies.push(latency);
        }
    }
    latencies.sort();
    let total = WORKERS * PER_WORKER;
    let p50 = latencies[total / 2];
    let p99 = latencies[total * 99 / 100];
    println!(
        "{{\"figure\":\"slow_instance_share\",\"requests\":{total},\"to_slow\":{slow},\"p50_ms\":{},\"p99_ms\":{},\"elapsed_ms\":{}}}",
        p50.as_millis(),
        p99.as_millis(),
        started.elapsed().as_millis()
    );
    assert!(
        slow * 100 <= total * 3,
        "{slow} of {total} requests went to the slow instance"
    );
    let view = admin_view(&gw).await;
    let slow_ep = service(&view, "lat")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .max_by(|x, y| {
            x["latency_ms"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&y["latency_ms"].as_f64().unwrap_or(0.0))
        })
        .unwrap()
        .clone();
    // 500 ms at its last answer, decaying with a 10 s time constant since.
    assert!(
        slow_ep["latency_ms"].as_f64().unwrap() >= 100.0,
        "the admin view shows the slow estimate: {slow_ep}"
    );
}

/// Issue 9: panic mode. A single instance answering INTERNAL is ejected
/// (the admin view says so) but keeps receiving every request: clients get
/// its 502s, never a 503 without a request sent, and the first request after
/// it recovers succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_instance_answering_internal_is_still_served() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let (addr, calls) = scripted(|n| {
        if n <= 10 {
            Err(tonic::Status::internal("broken for now"))
        } else {
            ok("recovered")
        }
    })
    .await;
    register_ttl(&gw, "lonely", "lonely-1", &addr).await;
    gw.wait_routable("lonely", 1).await;
    for i in 1..=10 {
        let resp = gw.http.get(gw.url("/lonely/x")).send().await.unwrap();
        assert_eq!(resp.status(), 502, "request {i}: the instance's failure");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "upstream_failed");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10, "every request was sent");
    let view = admin_view(&gw).await;
    let svc = service(&view, "lonely");
    let ep = &svc["endpoints"][0];
    assert_eq!(svc["panic"], true, "{svc}");
    assert_eq!(ep["ejection"], "failing", "{ep}");
    assert_eq!(ep["failures"], 10);
    assert_eq!(ep["connect_failures"], 0);
    // Requests take the instance's connections in turn: ten of them opened
    // both of `balancer.connections_per_instance` (2).
    assert_eq!(ep["connections"], 2, "{ep}");
    // Recovered: served at once, not after the ejection time.
    let resp = gw.http.get(gw.url("/lonely/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "recovered");
    let view = admin_view(&gw).await;
    let svc = service(&view, "lonely");
    assert_eq!(svc["panic"], false, "a success readmits: {svc}");
    assert_eq!(svc["endpoints"][0]["ejected"], false);
}

/// With peak EWMA an instance failing every call fast costs clients at most
/// a handful of failures (it may get none at all: it is the newer one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_failing_instance_costs_few_failures() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let _good = BackendHandle::start(
        "flaky",
        tagged("good", Duration::ZERO),
        Some(&gw.registration_url()),
        |b| b,
    )
    .await;
    let (addr, calls) = scripted(|_| Err(tonic::Status::internal("broken on purpose"))).await;
    register_ttl(&gw, "flaky", "flaky-broken", &addr).await;
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
        if status != 200 {
            assert_eq!(status, 502);
            failed += 1;
        }
    }
    println!(
        "{{\"figure\":\"fast_failing_instance\",\"requests\":200,\"failed\":{failed},\"calls_to_broken\":{}}}",
        calls.load(Ordering::SeqCst)
    );
    assert!(failed <= 20, "{failed} of 200 failed");
}

/// Idempotent requests are retried on another instance after UNAVAILABLE,
/// others are not; nothing is retried on a client's say-so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_retried_after_unavailable() {
    let gw = GatewayProcess::start(
        &[
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/round_robin.toml"),
        ],
        &[],
    )
    .await;
    let (bad, bad_calls) = scripted(|_| Err(tonic::Status::unavailable("not now"))).await;
    let (good, good_calls) = scripted(|_| ok("good")).await;
    register_ttl(&gw, "idem", "idem-bad", &bad).await;
    register_ttl(&gw, "idem", "idem-good", &good).await;
    gw.wait_routable("idem", 2).await;
    // Round robin: of two requests in a row, exactly one is sent to `bad`.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let resp = gw
            .http
            .post(gw.url("/idem/x"))
            .header("x-retry", "please")
            .header("retry-after", "0")
            .body("payload")
            .send()
            .await
            .unwrap();
        statuses.push(resp.status().as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 502], "a POST is never sent twice");
    assert_eq!(bad_calls.load(Ordering::SeqCst), 1);
    assert_eq!(good_calls.load(Ordering::SeqCst), 1);
    for method in [reqwest::Method::GET, reqwest::Method::PUT] {
        let resp = gw
            .http
            .request(method.clone(), gw.url("/idem/x"))
            .body("same again")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
    }
    // One of GET/PUT went to `bad` first and was retried on `good`.
    assert_eq!(bad_calls.load(Ordering::SeqCst), 2);
    assert_eq!(good_calls.load(Ordering::SeqCst), 3);
    let view = admin_view(&gw).await;
    assert_eq!(service(&view, "idem")["retries"], 1);
}

/// RELIABILITY 8, retry storm: every backend answers UNAVAILABLE to
/// idempotent requests that would all like a retry. The attempts counted at
/// the backends stay within 1.2 x requests + 10 per second.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_storm_stays_within_the_budget() {
    let gw = GatewayProcess::start(&[], &[]).await;
    // The service's budget exists from its first registration: the floor of
    // 10 retries per second accrues from then, so the clock starts here.
    let started = Instant::now();
    let calls = Arc::new(AtomicU64::new(0));
    for i in 0..3 {
        let counter = calls.clone();
        let (addr, _) = scripted(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unavailable("overloaded"))
        })
        .await;
        register_ttl(&gw, "storm", &format!("storm-{i}"), &addr).await;
    }
    gw.wait_routable("storm", 3).await;

    const WORKERS: usize = 20;
    const PER_WORKER: usize = 25;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (http, url) = (gw.http.clone(), gw.url("/storm/x"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..PER_WORKER {
                let resp = http.get(&url).send().await.unwrap();
                assert!(
                    resp.status() == 502 || resp.status() == 503,
                    "{}",
                    resp.status()
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let requests = (WORKERS * PER_WORKER) as f64;
    let attempts = calls.load(Ordering::SeqCst) as f64;
    let view = admin_view(&gw).await;
    let svc = service(&view, "storm");
    println!(
        "{{\"figure\":\"retry_storm\",\"requests\":{requests},\"attempts\":{attempts},\"seconds\":{secs:.2},\"retries\":{},\"budget_exhausted\":{}}}",
        svc["retries"], svc["retry_budget_exhausted"]
    );
    assert!(
        attempts <= 1.2 * requests + 10.0 * secs,
        "{attempts} attempts for {requests} requests in {secs:.2} s"
    );
    assert!(attempts > requests, "retries happened at all");
    assert!(svc["retry_budget_exhausted"].as_u64().unwrap() > 0, "{svc}");
}

/// RELIABILITY 15, erroring variant: one of three instances fails every
/// call under concurrent load; clients see at most a few of its failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_erroring_instance_of_three_costs_few_failures() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let reg = gw.registration_url();
    let _a = BackendHandle::start("err3", tagged("a", Duration::ZERO), Some(&reg), |b| b).await;
    let _b = BackendHandle::start("err3", tagged("b", Duration::ZERO), Some(&reg), |b| b).await;
    let (addr, calls) = scripted(|_| Err(tonic::Status::internal("broken on purpose"))).await;
    register_ttl(&gw, "err3", "err3-broken", &addr).await;
    gw.wait_routable("err3", 3).await;
    const WORKERS: usize = 10;
    const PER_WORKER: usize = 30;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (http, url) = (gw.http.clone(), gw.url("/err3/x"));
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for _ in 0..PER_WORKER {
                let status = http.get(&url).send().await.unwrap().status();
                if status != 200 {
                    assert_eq!(status, 502);
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    let total = WORKERS * PER_WORKER;
    println!(
        "{{\"figure\":\"erroring_instance_of_three\",\"requests\":{total},\"failed\":{failed},\"calls_to_broken\":{}}}",
        calls.load(Ordering::SeqCst)
    );
    // Five in a row eject it; with ten clients a few more may be in flight.
    assert!(failed <= 20, "{failed} of {total} failed");
    let view = admin_view(&gw).await;
    let svc = service(&view, "err3");
    assert_eq!(svc["panic"], false, "one of three is within the cap: {svc}");
}

/// RELIABILITY 8 at a fixed arrival rate (open model: a request every 2 ms
/// whatever the answers, 2 s), so the per-second floor of the budget counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sustained_retry_storm_at_a_fixed_rate_stays_within_the_budget() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let started = Instant::now();
    let calls = Arc::new(AtomicU64::new(0));
    for i in 0..3 {
        let counter = calls.clone();
        let (addr, _) = scripted(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unavailable("overloaded"))
        })
        .await;
        register_ttl(&gw, "storm2", &format!("storm2-{i}"), &addr).await;
    }
    gw.wait_routable("storm2", 3).await;
    const REQUESTS: usize = 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        tick.tick().await;
        let (http, url) = (gw.http.clone(), gw.url("/storm2/x"));
        tasks.push(tokio::spawn(async move {
            http.get(&url).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        let status = t.await.unwrap();
        assert!(status == 502 || status == 503, "{status}");
    }
    let secs = started.elapsed().as_secs_f64();
    let attempts = calls.load(Ordering::SeqCst) as f64;
    let requests = REQUESTS as f64;
    let view = admin_view(&gw).await;
    let svc = service(&view, "storm2");
    println!(
        "{{\"figure\":\"retry_storm_fixed_rate\",\"rate\":500,\"requests\":{requests},\"attempts\":{attempts},\"seconds\":{secs:.2},\"retries\":{},\"budget_exhausted\":{}}}",
        svc["retries"], svc["retry_budget_exhausted"]
    );
    assert!(
        attempts <= 1.2 * requests + 10.0 * secs,
        "{attempts} attempts for {requests} requests in {secs:.2} s"
    );
}

/// forwarding.proto: an answer carries at most 1,000 header (or trailer)
/// fields; one with more is invalid and the client gets 502
/// `upstream_invalid_response`. Over real gRPC, at the bound and past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_more_than_1000_fields_is_a_502() {
    let gw = GatewayProcess::start(&[], &[]).await;
    let fields = |n: usize| -> Vec<proto::v1::Header> {
        (0..n)
            .map(|i| proto::v1::Header {
                name: format!("x-f{i}"),
                value: b"v".to_vec().into(),
            })
            .collect()
    };
    let (at_bound, _) = scripted(move |_| {
        Ok(ForwardingResp {
            status: 200,
            headers: fields(1000),
            ..Default::default()
        })
    })
    .await;
    let (past_bound, _) = scripted(move |_| {
        Ok(ForwardingResp {
            status: 200,
            headers: fields(1001),
            ..Default::default()
        })
    })
    .await;
    register_ttl(&gw, "many", "many-1", &at_bound).await;
    register_ttl(&gw, "toomany", "toomany-1", &past_bound).await;
    gw.wait_routable("many", 1).await;
    gw.wait_routable("toomany", 1).await;

    // At the bound: all 1,000 fields arrive (read raw: HTTP clients cap a
    // response head at ~100 fields).
    let url = reqwest::Url::parse(&gw.url("/many/x")).unwrap();
    let mut tcp = tokio::net::TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /many/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let head = text.split("\r\n\r\n").next().unwrap();
    assert_eq!(head.lines().filter(|l| l.starts_with("x-f")).count(), 1000);

    let resp = gw.http.get(gw.url("/toomany/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_invalid_response", "{v}");
}

/// The top-level field numbers of a protobuf message, in order.
fn field_numbers(mut buf: &[u8]) -> Vec<u32> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).unwrap();
        out.push(tag);
        match wire {
            WireType::Varint => {
                decode_varint(&mut buf).unwrap();
            }
            WireType::LengthDelimited => {
                let n = decode_varint(&mut buf).unwrap() as usize;
                buf = &buf[n..];
            }
            other => panic!("unexpected wire type {other:?}"),
        }
    }
    out
}

/// forwarding.proto: the gateway sends `ForwardingReq.context` as one
/// occurrence of field 12, so a decoder that keeps only the last occurrence
/// (protobuf.js) sees it whole. Over real gRPC: the backend reads the raw
/// message and answers, as JSON, how often field 12 came and what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_reaches_a_backend_as_one_field() {
    use http_body_util::BodyExt as _;
    use prost::Message as _;
    let gw = GatewayProcess::start(&[], &[]).await;
    let send = |body: bytes::Bytes| async move {
        // One gRPC message: 1 byte flag, 4 bytes length, the message.
        let msg = &body[5..];
        let fields = field_numbers(msg);
        let ctx = ForwardingReq::decode(msg).unwrap().context.unwrap();
        let report = serde_json::json!({
            "context_fields": fields.iter().filter(|&&f| f == 12).count(),
            "request_id": ctx.request_id,
            "deadline_ms": ctx.deadline_ms,
        });
        let answer = ForwardingResp {
            status: 200,
            body: report.to_string().into_bytes().into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(answer.len() as u32).to_be_bytes());
        frame.extend_from_slice(&answer);
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(frame))),
            Ok(hyper::body::Frame::trailers(trailers)),
        ]);
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(axum::body::Body::new(http_body_util::StreamBody::new(
                frames,
            )))
            .unwrap()
    };
    let app = axum::Router::new().route(
        "/forwarding.v1.ForwardingService/Send",
        axum::routing::post(move |body: axum::body::Body| async move {
            send(body.collect().await.unwrap().to_bytes()).await
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    register_ttl(&gw, "raw", "raw-1", &addr).await;
    gw.wait_routable("raw", 1).await;
    let resp = gw
        .http
        .get(gw.url("/raw/x"))
        .header("x-request-id", "ctx-once")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["context_fields"], 1, "{v}");
    assert_eq!(v["request_id"], "ctx-once", "{v}");
    assert!(v["deadline_ms"].as_u64().unwrap() > 0, "{v}");
}
