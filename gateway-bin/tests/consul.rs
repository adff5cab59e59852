//! Discovery through a real Consul (`consul agent -dev`, Debian's 1.8.7,
//! installed by `scripts/install-deps.sh consul`): registrations written
//! through the agent, Consul's own checks deciding health, blocking queries
//! feeding the routing table, outages and restarts.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    ConsulProcess, GatewayProcess, eventually, eventually_within, get_json, start_python_backend,
};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul.toml");

async fn gateway_on(consul: &ConsulProcess) -> GatewayProcess {
    GatewayProcess::start(&["--config", CONFIG, "--consul", &consul.url()], &[]).await
}

/// Instances of `service` Consul reports with all checks passing.
async fn consul_passing(
    http: &reqwest::Client,
    consul: &ConsulProcess,
    service: &str,
) -> Option<usize> {
    let url = format!("{}/v1/health/service/{service}?passing=true", consul.url());
    let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
    Some(v.as_array()?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_killed_critical_and_back() {
    let consul = ConsulProcess::start(None).await;
    let gw = gateway_on(&consul).await;
    let (mut backend, addr) =
        start_python_backend("cat-a", &gw.registration_url(), "127.0.0.1:0").await;

    // Register -> routable, and Consul holds routes and visibility in metadata.
    gw.wait_routable("cat-a", 1).await;
    assert_eq!(
        gw.http
            .get(gw.url("/cat-a/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let entries: Value = get_json(
        &gw.http,
        &format!("{}/v1/health/service/cat-a", consul.url()),
    )
    .await;
    let meta = &entries[0]["Service"]["Meta"];
    assert_eq!(meta["gw-visibility"], "public");
    assert_eq!(meta["gw-route-0"], r#"{"p":"/cat-a"}"#);
    assert!(
        entries[0]["Checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["CheckID"]
                == "service:cat-a:cat-a-".to_owned() + addr.rsplit(':').next().unwrap())
    );

    // Killed -> Consul's gRPC check goes critical -> no longer routed: 503.
    backend.kill().await.unwrap();
    eventually("consul marks cat-a critical", || {
        let (http, consul) = (gw.http.clone(), &consul);
        async move { (consul_passing(&http, consul, "cat-a").await? == 0).then_some(()) }
    })
    .await;
    gw.wait_routable("cat-a", 0).await;
    let resp = gw.http.get(gw.url("/cat-a/1")).send().await.unwrap();
    assert_eq!(resp.status(), 503);

    // Back on the same address -> passing -> routed again.
    let (_backend, _) = start_python_backend("cat-a", &gw.registration_url(), &addr).await;
    gw.wait_routable("cat-a", 1).await;
    assert_eq!(
        gw.http
            .get(gw.url("/cat-a/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Registering the same instance again is idempotent in Consul too.
    let list: Value = get_json(&gw.http, &format!("{}/v1/agent/services", consul.url())).await;
    assert_eq!(
        list.as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("cat-a:"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_outage_keeps_routing_and_restart_resyncs() {
    let mut consul = ConsulProcess::start(None).await;
    let gw = gateway_on(&consul).await;
    let (_backend, addr) =
        start_python_backend("cat-b", &gw.registration_url(), "127.0.0.1:0").await;
    gw.wait_routable("cat-b", 1).await;

    // Fixed-rate load: 100 requests/s for the whole outage.
    let failures = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = tokio_util_stop();
    let load = {
        let (http, url, failures, sent, stop) = (
            gw.http.clone(),
            gw.url("/cat-b/1"),
            failures.clone(),
            sent.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let (http, url, failures) = (http.clone(), url.clone(), failures.clone());
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {}
                        _ => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        })
    };

    consul.stop().await;
    let sent_at_stop = sent.load(Ordering::SeqCst);
    let admin = format!("http://{}/admin/services", gw.admin);
    eventually("admin view reports Consul disconnected", || {
        let (http, admin) = (gw.http.clone(), admin.clone());
        async move {
            let v: Value = http.get(&admin).send().await.ok()?.json().await.ok()?;
            (v["registry"]["connected"] == false && v["registry"]["last_error"].is_string())
                .then_some(())
        }
    })
    .await;
    // Registrations are refused with a retryable error meanwhile, not lost.
    let body = json!({"service": "cat-late", "address": "127.0.0.1:9", "health": {"kind": "ttl"}});
    let resp = gw
        .http
        .put(format!("{}/v1/registrations", gw.registration_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "registry_unavailable"
    );

    // The outage itself lasts until 1,000 requests have been sent on the
    // last known state (about 10 s at 100/s): long enough for the watches
    // to fail over and over and back off towards their cap. A count of
    // requests, not a fixed time, is what the outage is measured in.
    eventually_within(
        "1,000 requests sent while Consul is down",
        Duration::from_secs(60),
        || {
            let sent = sent.clone();
            async move { (sent.load(Ordering::SeqCst) - sent_at_stop >= 1000).then_some(()) }
        },
    )
    .await;

    // A restarted dev agent has lost everything; the gateway writes back
    // what it accepted.
    consul.restart().await;
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let svc_url = format!("{}/v1/agent/service/cat-b:cat-b-{port}", consul.url());
    eventually(
        "gateway re-registered cat-b with the restarted agent",
        || {
            let (http, url) = (gw.http.clone(), svc_url.clone());
            async move { (http.get(&url).send().await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;
    eventually("admin view reports Consul connected", || {
        let (http, admin) = (gw.http.clone(), admin.clone());
        async move {
            let v: Value = http.get(&admin).send().await.ok()?.json().await.ok()?;
            (v["registry"]["connected"] == true).then_some(())
        }
    })
    .await;
    // Requests keep going after the resync: 50 more, all answered.
    let sent_at_resync = sent.load(Ordering::SeqCst);
    eventually("50 requests sent after the resync", || {
        let sent = sent.clone();
        async move { (sent.load(Ordering::SeqCst) - sent_at_resync >= 50).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let (sent, failed) = (sent.load(Ordering::SeqCst), failures.load(Ordering::SeqCst));
    assert!(sent > 1000, "load ran: {sent}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the outage and the restart"
    );
    assert_eq!(
        gw.http
            .get(gw.url("/cat-b/1"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

fn tokio_util_stop() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_acl_token_is_a_startup_error() {
    let consul = ConsulProcess::start(Some(
        r#"acl { enabled = true, default_policy = "deny", tokens { master = "root-token" } }"#,
    ))
    .await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--config",
            CONFIG,
            "--consul",
            &consul.url(),
            "--consul-token",
            "wrong-token",
        ])
        .args([
            "--public",
            "127.0.0.1:0",
            "--internal",
            "127.0.0.1:0",
            "--registration",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("consul.token was rejected"), "{err}");

    // The right token works.
    let gw = GatewayProcess::start(
        &[
            "--config",
            CONFIG,
            "--consul",
            &consul.url(),
            "--consul-token",
            "root-token",
        ],
        &[],
    )
    .await;
    let v: Value = get_json(&gw.http, &format!("http://{}/admin/services", gw.admin)).await;
    assert_eq!(v["registry"]["kind"], "consul");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_outside_the_allowed_networks_are_refused() {
    let consul = ConsulProcess::start(None).await;
    // Without --config: the Consul default allows private ranges, not loopback.
    let gw = GatewayProcess::start(&["--consul", &consul.url()], &[]).await;
    let body = json!({"service": "cat-c", "address": "127.0.0.1:7000"});
    let resp = gw
        .http
        .put(format!("{}/v1/registrations", gw.registration_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["field"], "registration.address");
    let services: Value = get_json(&gw.http, &format!("{}/v1/agent/services", consul.url())).await;
    assert!(
        services.as_object().unwrap().is_empty(),
        "nothing written to Consul: {services}"
    );
}
