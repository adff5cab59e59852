//! A real Prometheus (Debian's `prometheus`, `scripts/install-deps.sh
//! prometheus`) scrapes three gateway replicas kept in step by a real Consul
//! and a real Kafka, every second. After a registration through one replica
//! and a few requests, its HTTP API shows the requests by status, the
//! registration's propagation to the two other replicas, and every metric
//! the shipped Grafana dashboard (`observability/grafana/gateway.json`)
//! queries.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use axum::routing::any;
use serde_json::Value;
use service_sdk::Router;
use support::{
    BackendHandle, ConsulProcess, GatewayProcess, KafkaProcess, closed_port, eventually_within,
};
use tokio::process::{Child, Command};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/consul.toml");
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../observability/grafana/gateway.json"
);
/// Scrapes every second: a figure shows up within a few seconds.
const WITHIN: Duration = Duration::from_secs(30);

/// Our own Prometheus process: own configuration, storage in a temporary
/// directory, a loopback port; never the system service.
struct PrometheusProcess {
    child: Child,
    dir: PathBuf,
    url: String,
    http: reqwest::Client,
}

impl PrometheusProcess {
    async fn start(targets: &[(&str, String)]) -> Self {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gw-prometheus-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
             scrape_configs:\n  - job_name: gateway\n    static_configs:\n",
        );
        for (replica, admin) in targets {
            config.push_str(&format!(
                "      - targets: [\"{admin}\"]\n        labels: {{replica: {replica}}}\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let http = reqwest::Client::new();
        // Prometheus cannot take a listening socket from us: it binds a port
        // we found free, and is started again on another if it lost it.
        for _ in 0..3 {
            let url = format!("http://127.0.0.1:{}", closed_port());
            let mut child = Command::new(binary())
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={}", &url["http://".len()..]))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn prometheus (scripts/install-deps.sh prometheus)");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                let ready = http.get(format!("{url}/-/ready")).send().await;
                if ready.is_ok_and(|r| r.status() == 200) {
                    return Self {
                        child,
                        dir,
                        url,
                        http,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill().await;
        }
        panic!("prometheus did not become ready");
    }

    /// `GET /api/v1/query`: the result vector, or `None` on any failure
    /// (callers poll).
    async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
    }

    /// Every metric name Prometheus has stored.
    async fn names(&self) -> Option<BTreeSet<String>> {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/label/__name__/values", self.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(
            v["data"]
                .as_array()?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
        )
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("prometheus");
        if p.is_file() {
            return p;
        }
    }
    panic!("prometheus not found on PATH: run scripts/install-deps.sh prometheus");
}

/// `{label value -> sample value}` of a query's result vector.
fn by(result: &[Value], label: &str) -> std::collections::BTreeMap<String, f64> {
    result
        .iter()
        .map(|s| {
            let key = s["metric"][label].as_str().unwrap_or_default().to_owned();
            let value = s["value"][1].as_str().and_then(|v| v.parse().ok());
            (key, value.unwrap_or(f64::NAN))
        })
        .collect()
}

/// Every metric name the dashboard's queries use: the `gateway_*` names in
/// its `expr`s (and template queries), histogram suffixes included.
fn dashboard_metrics() -> BTreeSet<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            // A data source variable's `query` is a plugin type, not PromQL.
            Value::Object(m) if m.get("type").is_some_and(|t| t == "datasource") => {}
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut exprs = Vec::new();
    walk(&dashboard, &mut exprs);
    let mut names = BTreeSet::new();
    for e in &exprs {
        let found: Vec<String> = e
            .match_indices("gateway_")
            .filter(|(i, _)| {
                // Not the tail of a longer identifier.
                !e[..*i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            })
            .map(|(i, _)| {
                e[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                    .collect()
            })
            .collect();
        assert!(!found.is_empty(), "a dashboard query names no metric: {e}");
        names.extend(found);
    }
    assert!(names.len() >= 8, "dashboard metrics: {names:?}");
    names
}

async fn replica(consul: &ConsulProcess, kafka: &KafkaProcess, node: &str) -> GatewayProcess {
    GatewayProcess::start(
        &[
            "--config",
            CONFIG,
            "--consul",
            &consul.url(),
            "--kafka-brokers",
            &kafka.bootstrap,
            "--kafka-topic",
            "reg-prom",
            "--node-id",
            node,
        ],
        &[],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_three_replicas() {
    let dashboard = dashboard_metrics();
    let (consul, kafka) = tokio::join!(ConsulProcess::start(None), KafkaProcess::start());
    let gw1 = replica(&consul, &kafka, "gw1").await;
    let (gw2, gw3) = tokio::join!(
        replica(&consul, &kafka, "gw2"),
        replica(&consul, &kafka, "gw3")
    );
    let prometheus = PrometheusProcess::start(&[
        ("gw1", gw1.admin.to_string()),
        ("gw2", gw2.admin.to_string()),
        ("gw3", gw3.admin.to_string()),
    ])
    .await;

    // Registered through gw1 (the SDK's registration call); the other two
    // learn of it from Consul and gw1's Kafka event.
    let _backend = BackendHandle::start(
        "scraped",
        Router::new().fallback(any(|| async { "hello" })),
        Some(&gw1.registration_url()),
        |b| b,
    )
    .await;
    for gw in [&gw1, &gw2, &gw3] {
        gw.wait_routable("scraped", 1).await;
    }
    // 2xx: 3 through gw1, 2 through gw2, 1 through gw3; 4xx: 2 through gw3.
    for (gw, path, n, status) in [
        (&gw1, "/scraped/a", 3, 200),
        (&gw2, "/scraped/b", 2, 200),
        (&gw3, "/scraped/c", 1, 200),
        (&gw3, "/nowhere", 2, 404),
    ] {
        for _ in 0..n {
            let r = gw.http.get(gw.url(path)).send().await.unwrap();
            assert_eq!(r.status(), status, "{path}");
        }
    }

    let statuses = eventually_within("requests by status in Prometheus", WITHIN, || async {
        let r = prometheus
            .query(r#"sum by (status) (gateway_requests_total{job="gateway"})"#)
            .await?;
        let got = by(&r, "status");
        (got.get("2xx") == Some(&6.0) && got.get("4xx") == Some(&2.0)).then_some(got)
    })
    .await;
    assert_eq!(statuses.len(), 2, "only 2xx and 4xx: {statuses:?}");

    // The registration's propagation: timed on gw1 (local) and, from gw1's
    // clock, on the two replicas that learnt of it (remote).
    let remote = eventually_within("remote propagation on gw2 and gw3", WITHIN, || async {
        let r = prometheus
            .query(r#"gateway_registration_propagation_seconds_count{origin="remote"} > 0"#)
            .await?;
        let got = by(&r, "replica");
        (got.keys().map(String::as_str).collect::<Vec<_>>() == ["gw2", "gw3"]).then_some(got)
    })
    .await;
    assert!(remote.values().all(|n| *n >= 1.0), "{remote:?}");
    eventually_within("local propagation on gw1 only", WITHIN, || async {
        let r = prometheus
            .query(r#"gateway_registration_propagation_seconds_count{origin="local"} > 0"#)
            .await?;
        (by(&r, "replica").keys().collect::<Vec<_>>() == ["gw1"]).then_some(())
    })
    .await;
    // Same host, same clock: the remote figures are real, small durations.
    let worst = prometheus
        .query(
            r#"max(gateway_registration_propagation_seconds_sum{origin="remote"} / gateway_registration_propagation_seconds_count{origin="remote"})"#,
        )
        .await
        .expect("query");
    let worst = by(&worst, "")[""];
    assert!(
        (0.0..10.0).contains(&worst),
        "mean remote propagation {worst}s"
    );

    // gw1 read its own event back and skipped it.
    eventually_within("gw1 skipped its own event", WITHIN, || async {
        let r = prometheus
            .query(r#"gateway_kafka_events_skipped_total{reason="own"} > 0"#)
            .await?;
        (by(&r, "replica").keys().collect::<Vec<_>>() == ["gw1"]).then_some(())
    })
    .await;

    // Each replica has read the whole topic: its lag is known and 0.
    eventually_within("Kafka consumer lag 0 on every replica", WITHIN, || async {
        let r = prometheus.query("gateway_kafka_consumer_lag").await?;
        let got = by(&r, "replica");
        (got.len() == 3 && got.values().all(|v| *v == 0.0)).then_some(())
    })
    .await;

    // Every metric the dashboard queries exists in a real scrape.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let names = prometheus.names().await.unwrap_or_default();
        let missing: Vec<&String> = dashboard.iter().filter(|n| !names.contains(*n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dashboard metrics never scraped: {missing:?} (Prometheus has {names:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
