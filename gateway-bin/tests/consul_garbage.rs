//! A misbehaving Consul: an HTTP server in this process that answers the
//! gateway's reads with garbage - invalid JSON, no `X-Consul-Index`, errors,
//! an index that goes back in time - while a real backend keeps serving.
//! The gateway must log, keep its last known routes, and recover when the
//! answers are good again. (A real Consul cannot be made to answer garbage;
//! this is the one test here that stands on a fake, and it claims nothing
//! about Consul's behaviour, only about the gateway's.)

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use support::{BackendHandle, GatewayProcess, eventually_within};

/// What the fake answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    /// A consistent view: one service, one passing instance.
    Good = 0,
    /// 200 with a body that is not JSON.
    NotJson = 1,
    /// 200, valid JSON, no X-Consul-Index.
    NoIndex = 2,
    /// 500 with an error text.
    Failing = 3,
    /// The same view, with an index far lower than before (a reset).
    Backwards = 4,
    /// Good again, with a second service added.
    Recovered = 5,
}

struct Fake {
    mode: AtomicU8,
    /// Bumped on every mode change: blocking queries return then.
    version: tokio::sync::watch::Sender<u64>,
    backend_port: u16,
    reads: AtomicU64,
}

impl Fake {
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Good,
            1 => Mode::NotJson,
            2 => Mode::NoIndex,
            3 => Mode::Failing,
            4 => Mode::Backwards,
            _ => Mode::Recovered,
        }
    }

    fn set(&self, m: Mode) {
        self.mode.store(m as u8, Ordering::SeqCst);
        self.version.send_modify(|v| *v += 1);
    }

    fn index(&self) -> u64 {
        match self.mode() {
            Mode::Backwards => 3,
            Mode::Recovered => 1000 + *self.version.borrow(),
            _ => 100 + *self.version.borrow(),
        }
    }

    /// Blocks like Consul: an `index` at the current one waits for a change
    /// (or the wait, here at most 1 s).
    async fn block(&self, q: &std::collections::HashMap<String, String>) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let asked: u64 = q.get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
        if asked != 0 && asked >= self.index() {
            let mut rx = self.version.subscribe();
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        }
    }

    fn answer(&self, body: serde_json::Value) -> Response {
        let mut h = HeaderMap::new();
        match self.mode() {
            Mode::NotJson => {
                h.insert("x-consul-index", HeaderValue::from(self.index()));
                return (StatusCode::OK, h, "<html>not json").into_response();
            }
            Mode::NoIndex => return (StatusCode::OK, body.to_string()).into_response(),
            Mode::Failing => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "rpc error: No cluster leader",
                )
                    .into_response();
            }
            _ => {}
        }
        h.insert("x-consul-index", HeaderValue::from(self.index()));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        (StatusCode::OK, h, body.to_string()).into_response()
    }

    fn entry(&self, service: &str) -> serde_json::Value {
        json!({
            "Node": {"Node": "fake-node", "Address": "127.0.0.1"},
            "Service": {"ID": format!("{service}:1"), "Service": service, "Tags": [], "Address": "127.0.0.1",
                        "Port": self.backend_port, "Meta": {}},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing", "Output": ""}],
        })
    }
}

async fn agent_self() -> impl IntoResponse {
    axum::Json(json!({"Config": {"Datacenter": "dc1", "NodeName": "fake-node"}}))
}

async fn services(
    State(f): State<Arc<Fake>>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    f.block(&q).await;
    let mut v = json!({"consul": [], "garbage-svc": []});
    if f.mode() == Mode::Recovered {
        v["garbage-svc2"] = json!([]);
    }
    f.answer(v)
}

async fn health(
    State(f): State<Arc<Fake>>,
    Path(name): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    f.block(&q).await;
    let list = match name.as_str() {
        "garbage-svc" | "garbage-svc2" => json!([f.entry(&name)]),
        _ => json!([]),
    };
    f.answer(list)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_backwards_answers_keep_the_last_known_routes() {
    let app = service_sdk::Router::new().fallback(axum::routing::any(|| async { "served" }));
    let backend = BackendHandle::start("garbage-svc", app, None, |b| b).await;
    let (version, _) = tokio::sync::watch::channel(0u64);
    let fake = Arc::new(Fake {
        mode: AtomicU8::new(Mode::Good as u8),
        version,
        backend_port: backend.addr.port(),
        reads: AtomicU64::new(0),
    });
    let router = axum::Router::new()
        .route("/v1/agent/self", get(agent_self))
        .route("/v1/catalog/services", get(services))
        .route("/v1/health/service/{name}", get(health))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let consul = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });

    let gw = GatewayProcess::start(&["--consul", &consul], &[]).await;
    gw.wait_routable("garbage-svc", 1).await;
    let get_ok = || async {
        let r = gw.http.get(gw.url("/garbage-svc/x")).send().await.unwrap();
        (r.status(), r.text().await.unwrap_or_default())
    };
    assert_eq!(get_ok().await, (reqwest::StatusCode::OK, "served".into()));

    for bad in [Mode::NotJson, Mode::NoIndex, Mode::Failing, Mode::Backwards] {
        let reads = fake.reads.load(Ordering::SeqCst);
        fake.set(bad);
        // The gateway has read the bad answers (several times: it retries).
        // Its retries back off up to 5 s plus half that in jitter, and the
        // failures of the modes before count towards it: three reads take
        // up to 22.5 s, more than the default deadline.
        eventually_within(
            &format!("gateway read {bad:?} answers"),
            Duration::from_secs(30),
            || {
                let f = fake.clone();
                async move { (f.reads.load(Ordering::SeqCst) >= reads + 3).then_some(()) }
            },
        )
        .await;
        // ...and still routes on the last known state.
        for _ in 0..20 {
            assert_eq!(get_ok().await.0, reqwest::StatusCode::OK, "after {bad:?}");
        }
        let v = support::get_json(&gw.http, &format!("http://{}/admin/services", gw.admin)).await;
        if bad != Mode::Backwards {
            assert!(
                v["registry"]["last_error"].is_string(),
                "{bad:?} is reported: {}",
                v["registry"]
            );
        }
    }

    // Good answers again (with one more service): the gateway follows.
    fake.set(Mode::Recovered);
    gw.wait_routable("garbage-svc2", 1).await;
    assert_eq!(get_ok().await.0, reqwest::StatusCode::OK);
    let r = gw.http.get(gw.url("/garbage-svc2/y")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
