use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::watch;

use super::*;
use crate::balance::Balancer;
use crate::config::{BalancerConfig, LimitsConfig, RetryConfig, TimeoutConfig};
use crate::registry::{
    Catalog, CheckKind, HealthCheck, InstanceView, RegisterOutcome, Registration, Registry,
    RegistryError, RegistryStatus, RouteSpec, Visibility,
};

/// A registry whose catalogue the test sets.
struct Fixed(watch::Sender<Arc<Catalog>>);

impl Registry for Fixed {
    fn register(&self, _: Registration) -> BoxFuture<'_, Result<RegisterOutcome, RegistryError>> {
        Box::pin(async { Err(RegistryError::Rejected("fixed".into())) })
    }
    fn deregister<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async { Ok(false) })
    }
    fn renew<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Duration, RegistryError>> {
        Box::pin(async { Ok(Duration::ZERO) })
    }
    fn watch(&self) -> watch::Receiver<Arc<Catalog>> {
        self.0.subscribe()
    }
    fn service_unreachable(&self, _: &str) {}
    fn status(&self) -> RegistryStatus {
        RegistryStatus {
            kind: "fixed",
            connected: true,
            last_error: None,
            sync: None,
            watch: None,
        }
    }
}

struct Inst {
    service: &'static str,
    id: &'static str,
    prefix: &'static str,
    hosts: &'static [&'static str],
    visibility: Visibility,
    streaming: bool,
    health: Health,
}

fn inst(service: &'static str, id: &'static str, prefix: &'static str) -> Inst {
    Inst {
        service,
        id,
        prefix,
        hosts: &[],
        visibility: Visibility::Public,
        streaming: false,
        health: Health::Passing,
    }
}

fn view(i: &Inst, port: u16) -> InstanceView {
    InstanceView {
        registration: Arc::new(Registration {
            service: i.service.into(),
            instance_id: i.id.into(),
            address: format!("127.0.0.1:{port}"),
            routes: vec![RouteSpec {
                path_prefix: i.prefix.into(),
                hosts: i.hosts.iter().map(|h| h.to_string()).collect(),
                timeout: None,
                stream: false,
                max_duration: None,
                strip_prefix: false,
            }],
            visibility: i.visibility,
            tags: vec![],
            metadata: Default::default(),
            weight: 100,
            health: HealthCheck {
                kind: CheckKind::Ttl,
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
                deregister_critical_after: None,
            },
            lease: Duration::from_secs(30),
            streaming: i.streaming,
            tls: false,
            tls_server_name: None,
        }),
        health: i.health,
        detail: "check said no".into(),
        lease_deadline: None,
    }
}

fn shared(instances: &[Inst]) -> Shared {
    let catalog = Catalog {
        instances: instances
            .iter()
            .enumerate()
            .map(|(n, i)| view(i, 40000 + n as u16))
            .collect(),
        version: 7,
    };
    let balancer = Balancer::new(
        BalancerConfig::default(),
        RetryConfig::default(),
        TimeoutConfig::default(),
    );
    balancer.apply(&catalog);
    Shared {
        node_id: "test".into(),
        balancer,
        registry: Arc::new(Fixed(watch::channel(Arc::new(catalog)).0)),
        limits: LimitsConfig::default(),
        timeouts: TimeoutConfig::default(),
        trusted_proxies: vec![],
        draining: Default::default(),
        relays: Default::default(),
        access_log: None,
        rate_limits: None,
        canary: None,
        route_rules: None,
        cache: None,
        auth: None,
    }
}

fn q(method: &str, host: &str, path: &str) -> ExplainQuery {
    ExplainQuery {
        method: Some(method.into()),
        host: Some(host.into()),
        path: Some(path.into()),
        ..Default::default()
    }
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["instance_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn host_specific_beats_any_host_and_longest_prefix_wins() {
    let s = shared(&[
        inst("orders", "o1", "/orders"),
        inst("order-admin", "a1", "/orders/admin"),
        Inst {
            hosts: &["beta.example"],
            ..inst("beta", "b1", "/")
        },
    ]);
    let e = explain(&s, &q("GET", "x", "/orders/admin/1")).unwrap();
    assert_eq!(e["route"]["service"], "order-admin");
    assert!(e["route"]["why"].as_str().unwrap().contains("any host"));
    let lost = &e["other_matching_routes"][0];
    assert_eq!(lost["service"], "orders");
    assert!(
        lost["lost_because"]
            .as_str()
            .unwrap()
            .contains("shorter prefix"),
        "{lost}"
    );
    assert_eq!(e["dispatch"], "Send");
    assert_eq!(ids(&e, "candidates"), ["a1"]);

    let e = explain(&s, &q("GET", "BETA.example:8080", "/orders/1")).unwrap();
    assert_eq!(e["route"]["service"], "beta");
    assert!(
        e["route"]["why"]
            .as_str()
            .unwrap()
            .contains("host-specific")
    );
    assert!(
        e["other_matching_routes"][0]["lost_because"]
            .as_str()
            .unwrap()
            .contains("any host")
    );
}

#[tokio::test]
async fn visibility_is_reported_per_listener() {
    let s = shared(&[Inst {
        visibility: Visibility::Internal,
        ..inst("secret", "s1", "/secret")
    }]);
    let e = explain(&s, &q("GET", "h", "/secret/x")).unwrap();
    assert_eq!(e["route"], Value::Null);
    assert_eq!(e["outcome"]["status"], 404);
    assert_eq!(e["outcome"]["code"], "route_not_found");
    assert_eq!(e["visible_from"]["public"], Value::Null);
    assert_eq!(e["visible_from"]["internal"]["service"], "secret");
    assert!(
        e["other_matching_routes"][0]["lost_because"]
            .as_str()
            .unwrap()
            .contains("not visible on the public listener")
    );
    let mut internal = q("GET", "h", "/secret/x");
    internal.listener = Some("internal".into());
    assert_eq!(
        explain(&s, &internal).unwrap()["route"]["service"],
        "secret"
    );
}

#[tokio::test]
async fn failing_health_ejection_and_streaming_exclude_instances() {
    let s = shared(&[
        inst("svc", "up", "/svc"),
        Inst {
            streaming: true,
            ..inst("svc", "streamer", "/svc")
        },
        Inst {
            health: Health::Failing,
            ..inst("svc", "sick", "/svc")
        },
        inst("svc", "refuses", "/svc"),
    ]);
    let snap = s.balancer.snapshot();
    let ep = snap.services["svc"]
        .endpoints
        .iter()
        .find(|e| &*e.instance_id == "refuses")
        .unwrap()
        .clone();
    drop(snap);
    s.balancer.eject(&ep);

    let e = explain(&s, &q("POST", "h", "/svc/a")).unwrap();
    let mut c = ids(&e, "candidates");
    c.sort();
    assert_eq!(c, ["streamer", "up"]);
    let excluded = e["excluded"].as_array().unwrap();
    let sick = excluded
        .iter()
        .find(|x| x["instance_id"] == "sick")
        .unwrap();
    assert_eq!(sick["reason"], "health");
    let refused = excluded
        .iter()
        .find(|x| x["instance_id"] == "refuses")
        .unwrap();
    assert_eq!(refused["reason"], "ejected");
    assert_eq!(refused["ejection"], "unreachable");
    assert!(refused["ejected_for_ms"].as_u64().unwrap() > 0);
    // An empty POST is small and complete: `Send` either way.
    assert_eq!(e["dispatch"], "Send");

    // Event streams go by `Stream` to the streaming instance only.
    let mut sse = q("GET", "h", "/svc/events");
    sse.accept = Some("text/event-stream".into());
    let e = explain(&s, &sse).unwrap();
    assert!(
        e["dispatch"]
            .as_str()
            .unwrap()
            .starts_with("depends on the pick")
    );
    let streamer = e["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["instance_id"] == "streamer")
        .unwrap();
    assert_eq!(streamer["dispatch"], "Stream");

    // A WebSocket leaves out what does not stream.
    let mut ws = q("GET", "h", "/svc/ws");
    ws.websocket = Some(true);
    let e = explain(&s, &ws).unwrap();
    assert_eq!(ids(&e, "candidates"), ["streamer"]);
    assert_eq!(e["dispatch"], "Stream");
    assert!(
        e["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["instance_id"] == "up" && x["reason"] == "not_streaming")
    );
}

#[tokio::test]
async fn no_instance_left_is_a_503_and_websocket_without_streaming_a_501() {
    let s = shared(&[
        Inst {
            health: Health::Failing,
            ..inst("down", "d1", "/down")
        },
        inst("plain", "p1", "/plain"),
    ]);
    let e = explain(&s, &q("GET", "h", "/down")).unwrap();
    assert_eq!(e["outcome"]["status"], 503);
    assert_eq!(e["outcome"]["code"], "no_healthy_instance");
    assert_eq!(e["excluded"][0]["reason"], "health");
    let mut ws = q("GET", "h", "/plain");
    ws.websocket = Some(true);
    let e = explain(&s, &ws).unwrap();
    assert_eq!(e["outcome"]["status"], 501);
    assert_eq!(e["outcome"]["code"], "websocket_unsupported");
}

#[tokio::test]
async fn bad_parameters_are_named() {
    let s = shared(&[inst("svc", "a", "/svc")]);
    let bad = |m: &str, h: &str, p: &str| explain(&s, &q(m, h, p)).unwrap_err().parameter;
    assert_eq!(bad("GE T", "h", "/x"), "method");
    assert_eq!(bad("GET", "bad host/x", "/x"), "host");
    assert_eq!(bad("GET", "user@a", "/x"), "host");
    assert_eq!(bad("GET", "h", "x"), "path");
    assert_eq!(bad("GET", "h", "/a b"), "path");
    assert_eq!(bad("GET", "h", "/a%00"), "path");
    assert_eq!(bad("GET", "", "/x"), "host");
    let mut l = q("GET", "h", "/x");
    l.listener = Some("nope".into());
    assert_eq!(explain(&s, &l).unwrap_err().parameter, "listener");
    let mut none = q("GET", "h", "/x");
    none.path = None;
    let err = explain(&s, &none).unwrap_err();
    assert_eq!(err.parameter, "path");
    let j = err.to_json();
    assert_eq!(j["error"]["code"], "bad_request");
    assert_eq!(j["error"]["parameter"], "path");
}

/// The explanation and a real selection agree: every instance `select`
/// offers is an explained candidate.
#[tokio::test]
async fn explained_candidates_are_what_select_offers() {
    let s = shared(&[
        inst("svc", "a", "/svc"),
        inst("svc", "b", "/svc"),
        inst("svc", "c", "/svc"),
    ]);
    let snap = s.balancer.snapshot();
    let eps = &snap.services["svc"];
    let c = eps
        .endpoints
        .iter()
        .find(|e| &*e.instance_id == "c")
        .unwrap()
        .clone();
    s.balancer.eject(&c);
    let e = explain(&s, &q("GET", "h", "/svc")).unwrap();
    let explained = ids(&e, "candidates");
    for _ in 0..50 {
        for ep in s.balancer.select(eps).unwrap() {
            assert!(
                explained.contains(&ep.instance_id.to_string()),
                "{} offered",
                ep.instance_id
            );
        }
    }
}

#[tokio::test]
async fn the_policies_covering_a_request_are_named() {
    let config: crate::config::GatewayConfig = toml::from_str(
        r#"
[[rate_limits]]
service = "orders"
rate = 10
per = "1s"

[[rate_limits]]
service = "orders"
prefix = "/orders/bulk"
rate = 1
per = "1m"
key = "header"
header = "x-api-key"

[[cache]]
service = "orders"
prefix = "/orders/catalog"
default_ttl = "30s"

[[auth]]
service = "orders"
prefix = "/orders/open"
access = "public"

[[canary]]
service = "orders"
weights = { v1 = 90, v2 = 10 }
"#,
    )
    .unwrap();
    config.validate().unwrap();
    let mut s = shared(&[inst("orders", "o1", "/orders")]);
    s.rate_limits = crate::ratelimit::RateLimits::new(
        &config.rate_limits,
        None,
        s.balancer.metrics().rate_limit_store_errors.clone(),
    )
    .unwrap()
    .map(Arc::new);
    s.cache =
        crate::cache::ResponseCache::new(&config.cache_store, &config.cache, s.balancer.metrics())
            .map(Arc::new);
    s.auth = crate::auth::Auth::new(&config, s.balancer.metrics())
        .unwrap()
        .map(Arc::new);
    s.canary = crate::canary::Canaries::new(&config.canary).map(Arc::new);

    let e = explain(&s, &q("POST", "x", "/orders/bulk/9")).unwrap();
    let p = &e["route"]["policies"];
    assert_eq!(p["rate_limit"]["prefix"], "/orders/bulk", "{p}");
    assert_eq!(p["rate_limit"]["key"], "header");
    assert_eq!(p["rate_limit"]["header"], "x-api-key");
    assert_eq!(p["rate_limit"]["store"], "local");
    assert_eq!(p["rate_limit"]["token_every_ms"], 60_000);
    assert!(p["cache"].is_null(), "{p}");
    assert!(p["auth"].is_null(), "{p}");
    assert_eq!(p["canary"]["weights"]["v2"], 10);

    let e = explain(&s, &q("GET", "x", "/orders/catalog/1")).unwrap();
    let p = &e["route"]["policies"];
    assert_eq!(p["rate_limit"]["prefix"], "/", "{p}");
    assert_eq!(p["cache"]["default_ttl_s"], 30);

    let e = explain(&s, &q("GET", "x", "/orders/open/docs")).unwrap();
    let p = &e["route"]["policies"];
    assert_eq!(p["auth"]["access"], "public", "{p}");
    assert!(p["auth"]["provider"].is_null());
}
