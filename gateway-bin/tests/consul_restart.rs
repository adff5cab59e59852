//! What a client sees around registrations and Consul restarts, on a real
//! Consul (`consul agent -dev`): read-your-writes on the acknowledging
//! replica, re-registration of an instance Consul marked critical, and no
//! lost routes on any of three replicas when Consul restarts empty.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::any;
use serde_json::{Value, json};
use service_sdk::Router;
use support::{
    BackendHandle, ConsulProcess, GatewayProcess, admin_view, closed_port, eventually,
    eventually_within, get_json, register_json,
};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul.toml");

/// One test at a time: the figures measured here are timings, and agents
/// started side by side race for the free ports they were given.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn gateway_on(consul: &ConsulProcess) -> GatewayProcess {
    GatewayProcess::start(&["--config", CONFIG, "--consul", &consul.url()], &[]).await
}

fn ok_router() -> Router {
    Router::new().fallback(any(|| async { "ok" }))
}

/// A backend that does not register itself (the tests register it through
/// the gateway's JSON API), optionally on a given address.
async fn backend(listen: Option<std::net::SocketAddr>) -> BackendHandle {
    BackendHandle::start("plain", ok_router(), None, |b| match listen {
        Some(a) => b.listen(a),
        None => b,
    })
    .await
}

fn grpc_registration(service: &str, id: &str, address: &str) -> Value {
    json!({
        "service": service,
        "instance_id": id,
        "address": address,
        "health": {"kind": "grpc", "interval_ms": 1000, "timeout_ms": 500},
    })
}

/// Bug 1: the gateway that acknowledged a registration routes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registration_is_routed_at_once() {
    let _serial = SERIAL.lock().await;
    let consul = ConsulProcess::start(None).await;
    let gw = gateway_on(&consul).await;
    let b = backend(None).await;
    let addr = b.addr.to_string();
    const TRIALS: usize = 30;
    let mut failures = Vec::new();
    let mut ack_to_answer = Vec::new();
    for i in 0..TRIALS {
        let service = format!("ryw-{i}");
        register_json(&gw, &grpc_registration(&service, "i-1", &addr)).await;
        let acked = Instant::now();
        let status = gw
            .http
            .get(gw.url(&format!("/{service}/x")))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        ack_to_answer.push(acked.elapsed());
        if status != 200 {
            failures.push((service, status));
        }
    }
    ack_to_answer.sort();
    eprintln!(
        "read-your-writes: {} of {TRIALS} first requests failed; ack -> answer p50 {:?}, max {:?}",
        failures.len(),
        ack_to_answer[TRIALS / 2],
        ack_to_answer[TRIALS - 1]
    );
    assert!(
        failures.is_empty(),
        "first request after the ack: {failures:?}"
    );

    // Once Consul's own view arrives it takes over and keeps the route.
    gw.wait_routable(&format!("ryw-{}", TRIALS - 1), 1).await;
    let deadline = Instant::now() + support::DEADLINE;
    loop {
        let v = admin_view(&gw).await;
        let others: Vec<Value> = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| {
                !i["health_detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("consul: all checks passing"))
            })
            .cloned()
            .collect();
        if others.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Consul's view never replaced the local one: {others:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..TRIALS {
        let r = gw.http.get(gw.url(&format!("/ryw-{i}/x"))).send().await;
        assert_eq!(r.unwrap().status(), 200, "ryw-{i} after Consul's view");
    }
}

/// Bug 2: an instance whose check is critical (it was down) registers
/// again and is routed at once, like a fresh registration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registration_of_a_critical_instance_is_routed_at_once() {
    let _serial = SERIAL.lock().await;
    let consul = ConsulProcess::start(None).await;
    let gw = gateway_on(&consul).await;
    let port = closed_port();
    let addr = format!("127.0.0.1:{port}");
    let body = grpc_registration("phoenix", "p-1", &addr);
    register_json(&gw, &body).await;
    // Nothing listens there: Consul's check goes critical, the gateway
    // stops routing it.
    let health_url = format!("{}/v1/health/service/phoenix", consul.url());
    eventually("Consul marks phoenix critical", || async {
        let v = get_json(&gw.http, &health_url).await;
        let checks = v[0]["Checks"].as_array()?.clone();
        checks
            .iter()
            .any(|c| c["Status"] == "critical")
            .then_some(())
    })
    .await;
    gw.wait_routable("phoenix", 0).await;

    // The instance comes back on the same address and registers again.
    let _b = backend(Some(addr.parse().unwrap())).await;
    register_json(&gw, &body).await;
    let acked = Instant::now();
    let first = gw.http.get(gw.url("/phoenix/x")).send().await.unwrap();
    let elapsed = acked.elapsed();
    eprintln!(
        "re-registration: first request after the ack answered {} in {elapsed:?}",
        first.status()
    );
    assert_eq!(first.status(), 200, "routed at once after re-registering");

    // Consul agrees (a new registration starts passing) and the route stays.
    eventually("Consul shows phoenix passing", || async {
        let v = get_json(&gw.http, &format!("{health_url}?passing=true")).await;
        (v.as_array()?.len() == 1).then_some(())
    })
    .await;
    eventually("the gateway applied Consul's view", || async {
        let v = admin_view(&gw).await;
        v["instances"]
            .as_array()?
            .iter()
            .any(|i| {
                i["registration"]["service"] == "phoenix"
                    && i["health_detail"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("consul: all checks passing"))
            })
            .then_some(())
    })
    .await;
    let r = gw.http.get(gw.url("/phoenix/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let list = get_json(&gw.http, &format!("{}/v1/agent/services", consul.url())).await;
    assert_eq!(
        list.as_object().unwrap().len(),
        1,
        "one registration: {list}"
    );
}

/// Bug 3: three replicas on one Consul, each the owner of one service;
/// Consul stops (for 1,000 requests) and comes back empty (a dev agent
/// keeps nothing).
/// Under continuous requests to every service on every replica, nothing is
/// answered 404 - or anything but 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consul_restarting_empty_drops_no_route_on_any_replica() {
    let _serial = SERIAL.lock().await;
    let mut consul = ConsulProcess::start(None).await;
    let gws = [
        gateway_on(&consul).await,
        gateway_on(&consul).await,
        gateway_on(&consul).await,
    ];
    let mut backends = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        let b = backend(None).await;
        let body = grpc_registration(&format!("own-{i}"), "i-1", &b.addr.to_string());
        register_json(gw, &body).await;
        backends.push(b);
    }
    for gw in &gws {
        for i in 0..3 {
            gw.wait_routable(&format!("own-{i}"), 1).await;
        }
    }

    // ~100 requests/s spread over the 9 (replica, service) pairs.
    let urls: Vec<String> = gws
        .iter()
        .flat_map(|gw| (0..3).map(move |i| gw.url(&format!("/own-{i}/x"))))
        .collect();
    let counts: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http = reqwest::Client::new();
    let load = {
        let (counts, stop) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0usize;
            let mut inflight = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                let (http, url, counts) =
                    (http.clone(), urls[n % urls.len()].clone(), counts.clone());
                n += 1;
                inflight.push(tokio::spawn(async move {
                    let s = match http.get(&url).send().await {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    *counts.lock().unwrap().entry(s).or_default() += 1;
                }));
            }
            for t in inflight {
                let _ = t.await;
            }
        })
    };

    consul.stop().await;
    for gw in &gws {
        eventually("replica reports Consul disconnected", || async {
            (admin_view(gw).await["registry"]["connected"] == false).then_some(())
        })
        .await;
    }
    // The outage: requests keep flowing on the last known state. It lasts
    // until 1,000 more have been answered (about 10 s at 100/s): measured
    // in requests served without Consul, not in time.
    let answered = || counts.lock().unwrap().values().sum::<u64>();
    let at_stop = answered();
    eventually_within(
        "1,000 requests answered while Consul is down",
        Duration::from_secs(60),
        || async { (answered() >= at_stop + 1000).then_some(()) },
    )
    .await;
    consul.restart().await;
    let restarted = Instant::now();
    for gw in &gws {
        eventually("replica reconnected", || async {
            (admin_view(gw).await["registry"]["connected"] == true).then_some(())
        })
        .await;
    }
    let agent_url = format!("{}/v1/health/service", consul.url());
    for i in 0..3 {
        let url = format!("{agent_url}/own-{i}?passing=true");
        eventually("every owner wrote its service back", || async {
            (get_json(&consul_http(), &url).await.as_array()?.len() == 1).then_some(())
        })
        .await;
    }
    eprintln!(
        "all three replicas reconnected and wrote back within {:?} of the restart",
        restarted.elapsed()
    );
    // Keep the load on past the end of every replica's restart grace
    // (consul.restart_grace, 15 s by default), when Consul's view applies
    // in full again: that must drop nothing either.
    let until = restarted + Duration::from_secs(15 + 8 + 2);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.await.unwrap();
    let counts = counts.lock().unwrap().clone();
    let total: u64 = counts.values().sum();
    eprintln!("answers by status across the outage and the restart: {counts:?}");
    assert!(total > 3000, "load ran: {counts:?}");
    assert_eq!(
        counts.get(&404).copied().unwrap_or(0),
        0,
        "404s: {counts:?}"
    );
    assert_eq!(
        counts.get(&200).copied(),
        Some(total),
        "only 200s: {counts:?}"
    );
    for gw in &gws {
        for i in 0..3 {
            gw.wait_routable(&format!("own-{i}"), 1).await;
        }
    }
}

fn consul_http() -> reqwest::Client {
    reqwest::Client::new()
}

/// The listing shows what Consul enforces: the check timings registered,
/// the DeregisterCriticalServiceAfter in force, and a lease only where one
/// is kept (a TTL check's TTL); gRPC/HTTP-checked instances have none (0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_shows_the_timings_and_lease_in_force() {
    let _serial = SERIAL.lock().await;
    let consul = ConsulProcess::start(None).await;
    let gw = gateway_on(&consul).await;
    let b = backend(None).await;
    let mut grpc = grpc_registration("timed", "g-1", &b.addr.to_string());
    grpc["lease_ms"] = json!(2000);
    register_json(&gw, &grpc).await;
    let ttl = json!({"service": "timed", "instance_id": "t-1", "address": "127.0.0.1:9",
        "health": {"kind": "ttl"}, "lease_ms": 2000});
    register_json(&gw, &ttl).await;
    // Whether still the local entry or already Consul's view, and on a
    // replica that reads Consul alone, the listing is the same.
    let other = gateway_on(&consul).await;
    for (gw, what) in [(&gw, "acknowledging replica"), (&other, "other replica")] {
        let list_url = format!("{}/v1/registrations?service=timed", gw.registration_url());
        let v = eventually(&format!("both instances listed on the {what}"), || async {
            let v = get_json(&gw.http, &list_url).await;
            (v["instances"].as_array()?.len() == 2).then_some(v)
        })
        .await;
        for i in v["instances"].as_array().unwrap() {
            let r = &i["registration"];
            let h = &r["health"];
            assert_eq!(h["deregister_critical_after_ms"], 60000, "{what}: {r}");
            if r["instance_id"] == "g-1" {
                assert_eq!(h["interval_ms"], 1000, "{what}: {r}");
                assert_eq!(h["timeout_ms"], 500, "{what}: {r}");
                assert_eq!(r["lease_ms"], 0, "{what}: no lease is kept: {r}");
            } else {
                assert_eq!(h["kind"], "ttl", "{what}: {r}");
                assert_eq!(r["lease_ms"], 2000, "{what}: the TTL: {r}");
            }
        }
    }
}
