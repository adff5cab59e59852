//! The whole request path (`proxy_stack`) over in-memory instances: the
//! balancer's connector hands out `tokio::io::duplex` pipes to in-process
//! tonic servers (or to an h2 server that refuses every stream). No
//! sockets, no sleeps: timeouts run on tokio's paused clock.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use futures_util::StreamExt;
use http::{Request, Response};
use http_body_util::BodyExt;
use proto::v1::forwarding_service_server::{ForwardingService, ForwardingServiceServer};
use proto::v1::{ForwardingReq, ForwardingResp};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::{BoxIo, Connect};
use crate::balance::Balancer;
use crate::config::{BalanceStrategy, BalancerConfig, LimitsConfig, RetryConfig, TimeoutConfig};
use crate::proxy::{HttpService, proxy_stack};
use crate::registry::memory::MemoryRegistry;
use crate::registry::{
    Catalog, CheckKind, Health, HealthCheck, InstanceView, Registration, RouteSpec, Visibility,
};
use crate::routing::Listener;
use crate::shared::Shared;
use crate::tls::UpstreamTarget;

/// What an in-memory instance does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Answers 200 with its address as the body; a path ending in `/slow`
    /// is answered after 100 s (paused clock).
    Answer,
    /// Accepts the call and never answers.
    Never,
    /// Refuses connections.
    RefuseConnect,
    /// Accepts HTTP/2 and resets every stream with `REFUSED_STREAM`.
    RefuseStream,
    /// Accepts HTTP/2 streams, never answers, and records how the client
    /// resets them.
    WatchResets,
    /// Completes the HTTP/2 handshake, then reads nothing more (no PING is
    /// acknowledged).
    Mute,
}

struct Instance {
    tag: String,
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl ForwardingService for Instance {
    async fn send(
        &self,
        req: tonic::Request<ForwardingReq>,
    ) -> Result<tonic::Response<ForwardingResp>, tonic::Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.behaviour == Behaviour::Never {
            std::future::pending::<()>().await;
        }
        if req.get_ref().path.ends_with("/slow") {
            tokio::time::sleep(Duration::from_secs(100)).await;
        }
        Ok(tonic::Response::new(ForwardingResp {
            status: 200,
            body: self.tag.clone().into(),
            ..Default::default()
        }))
    }
}

/// Where an in-memory instance's server takes its connections.
type Feed = mpsc::UnboundedSender<DuplexStream>;

/// In-memory instances by address, and what happened to them.
#[derive(Default)]
struct Backends {
    /// Per address: behaviour, and the server's connection feed.
    instances: Mutex<HashMap<String, (Behaviour, Option<Feed>)>>,
    calls: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    dials: Mutex<HashMap<String, usize>>,
    /// The reasons of the streams `WatchResets` instances saw reset.
    resets: Arc<Mutex<Vec<h2::Reason>>>,
}

impl Backends {
    fn add(&self, address: &str, behaviour: Behaviour) {
        let calls = Arc::new(AtomicUsize::new(0));
        self.calls
            .lock()
            .unwrap()
            .insert(address.into(), calls.clone());
        let feed = matches!(behaviour, Behaviour::Answer | Behaviour::Never).then(|| {
            let (tx, rx) = mpsc::unbounded_channel::<DuplexStream>();
            let incoming =
                tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, io::Error>);
            let svc = ForwardingServiceServer::new(Instance {
                tag: address.into(),
                behaviour,
                calls,
            });
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming),
            );
            tx
        });
        self.instances
            .lock()
            .unwrap()
            .insert(address.into(), (behaviour, feed));
    }

    fn dials(&self, address: &str) -> usize {
        self.dials
            .lock()
            .unwrap()
            .get(address)
            .copied()
            .unwrap_or(0)
    }

    fn calls(&self, address: &str) -> usize {
        self.calls.lock().unwrap()[address].load(Ordering::SeqCst)
    }

    /// The balancer's connector: a duplex pipe to the instance's server.
    fn connector(self: &Arc<Self>) -> Arc<dyn Connect> {
        let this = self.clone();
        Arc::new(move |t: &UpstreamTarget| {
            let this = this.clone();
            let address = t.address.to_string();
            async move {
                *this
                    .dials
                    .lock()
                    .unwrap()
                    .entry(address.clone())
                    .or_default() += 1;
                let (behaviour, feed) = this.instances.lock().unwrap()[&address].clone();
                let (client, server) = tokio::io::duplex(64 * 1024);
                match behaviour {
                    Behaviour::RefuseConnect => {
                        return Err(io::Error::from(io::ErrorKind::ConnectionRefused));
                    }
                    Behaviour::RefuseStream => {
                        tokio::spawn(refuse_every_stream(server));
                    }
                    Behaviour::Mute => {
                        tokio::spawn(async move {
                            let conn = h2::server::handshake(server).await;
                            std::future::pending::<()>().await;
                            drop(conn);
                        });
                    }
                    Behaviour::WatchResets => {
                        tokio::spawn(watch_resets(server, this.resets.clone()));
                    }
                    Behaviour::Answer | Behaviour::Never => {
                        let _ = feed.expect("a server").send(server);
                    }
                }
                Ok(Box::new(client) as BoxIo)
            }
        })
    }
}

async fn refuse_every_stream(io: DuplexStream) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((_req, mut respond))) = conn.accept().await {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
    }
}

async fn watch_resets(io: DuplexStream, resets: Arc<Mutex<Vec<h2::Reason>>>) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((_req, mut respond))) = conn.accept().await {
        let resets = resets.clone();
        tokio::spawn(async move {
            if let Ok(reason) = std::future::poll_fn(|cx| respond.poll_reset(cx)).await {
                resets.lock().unwrap().push(reason);
            }
        });
    }
}

/// The resets `WatchResets` instances saw, once there are `n`.
async fn resets(g: &Gateway, n: usize) -> Vec<h2::Reason> {
    for _ in 0..100 {
        if g.backends.resets.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    g.backends.resets.lock().unwrap().clone()
}

fn instance(address: &str) -> InstanceView {
    InstanceView {
        registration: Arc::new(Registration {
            service: "svc".into(),
            instance_id: address.into(),
            address: address.into(),
            routes: vec![RouteSpec {
                path_prefix: "/svc".into(),
                hosts: vec![],
                timeout: Some(Duration::from_secs(2)),
                stream: false,
                max_duration: None,
                strip_prefix: false,
            }],
            visibility: Visibility::Public,
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
            streaming: false,
            tls: false,
            tls_server_name: None,
        }),
        health: Health::Passing,
        detail: "".into(),
        lease_deadline: None,
    }
}

struct Gateway {
    stack: HttpService<Body>,
    balancer: Arc<Balancer>,
    backends: Arc<Backends>,
}

/// The public stack over `instances` (in this order; round robin, so the
/// first request goes to the first), with `config` for the balancer.
fn gateway(instances: &[(&str, Behaviour)], config: BalancerConfig) -> Gateway {
    gateway_with(instances, config, TimeoutConfig::default())
}

/// [`gateway`] with `timeouts` for the balancer and the request path.
fn gateway_with(
    instances: &[(&str, Behaviour)],
    config: BalancerConfig,
    timeouts: TimeoutConfig,
) -> Gateway {
    gateway_limited(instances, config, timeouts, LimitsConfig::default(), true)
}

/// [`gateway_with`] with `limits`, and metrics on or off.
fn gateway_limited(
    instances: &[(&str, Behaviour)],
    config: BalancerConfig,
    timeouts: TimeoutConfig,
    limits: LimitsConfig,
    metrics: bool,
) -> Gateway {
    let backends = Arc::new(Backends::default());
    for (address, behaviour) in instances {
        backends.add(address, *behaviour);
    }
    let balancer = Balancer::with_connector(
        config,
        RetryConfig::default(),
        timeouts.clone(),
        None,
        backends.connector(),
    );
    balancer.metrics().set_enabled(metrics);
    balancer.apply(&Catalog {
        instances: instances.iter().map(|(a, _)| instance(a)).collect(),
        version: 1,
    });
    let shared = Arc::new(Shared {
        node_id: "test".into(),
        balancer: balancer.clone(),
        registry: Arc::new(MemoryRegistry::new()),
        limits,
        timeouts,
        trusted_proxies: vec![],
        draining: Default::default(),
        relays: Default::default(),
        access_log: None,
        rate_limits: None,
        canary: None,
        route_rules: None,
        cache: None,
        auth: None,
    });
    Gateway {
        stack: HttpService::new(proxy_stack(shared, Listener::Public)),
        balancer,
        backends,
    }
}

fn round_robin() -> BalancerConfig {
    BalancerConfig {
        strategy: BalanceStrategy::RoundRobin,
        ..Default::default()
    }
}

async fn call(g: &Gateway, method: &str, path: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gw.test")
        .body(Body::empty())
        .unwrap();
    let resp: Response<Body> = g.stack.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn endpoint(g: &Gateway, address: &str) -> Arc<crate::balance::Endpoint> {
    g.balancer.snapshot().services["svc"]
        .endpoints
        .iter()
        .find(|e| &*e.address == address)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_unary_round_trip() {
    let g = gateway(&[("a:1", Behaviour::Answer)], round_robin());
    assert_eq!(g.backends.dials("a:1"), 0, "no connection before a request");
    assert_eq!(call(&g, "GET", "/svc/x").await, (200, "a:1".into()));
    assert_eq!(call(&g, "POST", "/svc/y").await, (200, "a:1".into()));
    assert_eq!(g.backends.calls("a:1"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_never_answers_is_a_504_at_the_route_timeout() {
    let g = gateway(&[("never:1", Behaviour::Never)], round_robin());
    let started = tokio::time::Instant::now();
    let (status, body) = call(&g, "GET", "/svc/x").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream_timeout"), "{body}");
    // The route's 2 s, on the paused clock.
    assert_eq!(started.elapsed().as_secs(), 2);
    assert_eq!(g.backends.calls("never:1"), 1);
}

#[tokio::test]
async fn a_refused_connection_falls_back_to_the_next_instance() {
    let g = gateway(
        &[
            ("down:1", Behaviour::RefuseConnect),
            ("up:2", Behaviour::Answer),
        ],
        round_robin(),
    );
    // Not idempotent: retried only because it was never sent.
    assert_eq!(call(&g, "POST", "/svc/x").await, (200, "up:2".into()));
    let down = endpoint(&g, "down:1");
    let st = g.balancer.stats(&down);
    assert_eq!((st.connect_failures, st.failures), (1, 0));
    assert_eq!(st.ejection, Some(crate::balance::Ejection::Unreachable));
    // Ejected: the next request goes straight to the live one.
    assert_eq!(call(&g, "POST", "/svc/x").await, (200, "up:2".into()));
    assert_eq!(g.backends.dials("down:1"), 1);
}

#[tokio::test]
async fn a_refused_stream_is_retried_elsewhere_and_not_held_against_the_instance() {
    let g = gateway(
        &[
            ("busy:1", Behaviour::RefuseStream),
            ("up:2", Behaviour::Answer),
        ],
        round_robin(),
    );
    assert_eq!(call(&g, "POST", "/svc/x").await, (200, "up:2".into()));
    let busy = endpoint(&g, "busy:1");
    let st = g.balancer.stats(&busy);
    assert_eq!((st.connect_failures, st.failures), (0, 0));
    assert_eq!(st.ejection, None);
    assert_eq!(st.requests, 1, "the refused attempt reached it");
}

#[tokio::test]
async fn connections_are_opened_lazily_up_to_connections_per_instance() {
    let g = gateway(
        &[("a:1", Behaviour::Answer), ("idle:2", Behaviour::Answer)],
        BalancerConfig {
            connections_per_instance: 3,
            ..round_robin()
        },
    );
    for _ in 0..12 {
        call(&g, "GET", "/svc/x").await;
    }
    assert_eq!(g.backends.dials("a:1"), 3);
    assert_eq!(endpoint(&g, "a:1").pool().open_connections(), 3);
    // Six calls each, spread over three connections each.
    assert_eq!(g.backends.calls("a:1"), 6);
}

#[tokio::test]
async fn an_untouched_instance_costs_no_connection() {
    let g = gateway(
        &[("a:1", Behaviour::Answer), ("b:2", Behaviour::Answer)],
        round_robin(),
    );
    call(&g, "GET", "/svc/x").await;
    assert_eq!((g.backends.dials("a:1"), g.backends.dials("b:2")), (1, 0));
    assert_eq!(endpoint(&g, "b:2").pool().open_connections(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_aged_connection_is_replaced_and_its_calls_finish() {
    let g = Arc::new(gateway(
        &[("a:1", Behaviour::Answer)],
        BalancerConfig {
            connections_per_instance: 1,
            max_connection_age: Duration::from_secs(10),
            ..round_robin()
        },
    ));
    let slow = {
        let g = g.clone();
        tokio::spawn(async move {
            // The route allows 2 s: the stack would cut it. Call the
            // instance directly through its pool instead.
            let mut client = endpoint(&g, "a:1").client();
            client
                .send(ForwardingReq {
                    path: "/svc/slow".into(),
                    ..Default::default()
                })
                .await
                .map(|r| r.into_inner().body)
        })
    };
    while g.backends.calls("a:1") == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(g.backends.dials("a:1"), 1);
    // Past the age (10 s +-10%): the next call dials a replacement.
    tokio::time::advance(Duration::from_secs(12)).await;
    assert_eq!(call(&g, "GET", "/svc/x").await.0, 200);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(g.backends.dials("a:1"), 2, "one replacement");
    for _ in 0..3 {
        assert_eq!(call(&g, "GET", "/svc/x").await.0, 200);
    }
    assert_eq!(g.backends.dials("a:1"), 2, "the replacement is used");
    assert_eq!(endpoint(&g, "a:1").pool().open_connections(), 1);
    // The call on the old connection is not failed by the replacement.
    let body = slow
        .await
        .unwrap()
        .expect("the slow call on the aged connection");
    assert_eq!(&body[..], b"a:1");
}

#[tokio::test(start_paused = true)]
async fn an_aged_connection_whose_replacement_is_refused_goes_on_without_a_dial_per_call() {
    let g = gateway(
        &[("a:1", Behaviour::Answer)],
        BalancerConfig {
            connections_per_instance: 1,
            max_connection_age: Duration::from_secs(10),
            ..round_robin()
        },
    );
    assert_eq!(call(&g, "GET", "/svc/x").await.0, 200);
    // The instance now refuses new connections; its open one still works.
    g.backends
        .instances
        .lock()
        .unwrap()
        .get_mut("a:1")
        .unwrap()
        .0 = Behaviour::RefuseConnect;
    tokio::time::advance(Duration::from_secs(12)).await;
    for _ in 0..5 {
        assert_eq!(call(&g, "GET", "/svc/x").await.0, 200);
        tokio::task::yield_now().await;
    }
    assert_eq!(g.backends.dials("a:1"), 2, "one failed replacement dial");
    let a = endpoint(&g, "a:1");
    assert_eq!(g.balancer.stats(&a).connect_failures, 0, "not ejected");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(call(&g, "GET", "/svc/x").await.0, 200);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(g.backends.dials("a:1"), 3, "tried again a second later");
}

#[tokio::test(start_paused = true)]
async fn a_call_given_up_on_resets_its_stream_with_cancel() {
    let g = gateway(&[("hold:1", Behaviour::WatchResets)], round_robin());
    let (status, body) = call(&g, "POST", "/svc/x").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(resets(&g, 1).await, vec![h2::Reason::CANCEL]);
}

#[tokio::test(start_paused = true)]
async fn a_streaming_call_given_up_on_stops_its_pump_and_resets_with_cancel() {
    use bytes::Bytes;
    use futures_util::stream;
    use http_body::Frame;

    let g = gateway(&[("hold:1", Behaviour::WatchResets)], round_robin());
    // One frame, then a body that never ends: the rest goes to a pump task.
    let frames = stream::once(async {
        Ok::<_, tonic::Status>(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))
    })
    .chain(stream::pending());
    let req = Request::builder()
        .method("POST")
        .uri("/proto.v1.ForwardingService/Stream")
        .header("content-type", "application/grpc")
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(
            frames,
        )))
        .unwrap();
    let call = endpoint(&g, "hold:1").upstream().oneshot(req);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .is_err(),
        "never answered"
    );
    assert_eq!(resets(&g, 1).await, vec![h2::Reason::CANCEL]);
}

#[tokio::test(start_paused = true)]
async fn a_connection_whose_ping_is_not_acknowledged_is_closed() {
    let g = gateway(&[("mute:1", Behaviour::Mute)], round_robin());
    assert_eq!(call(&g, "GET", "/svc/x").await.0, 504);
    let ep = endpoint(&g, "mute:1");
    let pool = ep.pool();
    assert_eq!(pool.open_connections(), 1);
    // PING 30 s after the connection opened, 20 s for its ack.
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert_eq!(pool.open_connections(), 1, "still waiting for the ack");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(pool.open_connections(), 0, "closed for the missing ack");
    // The next call dials again.
    assert_eq!(call(&g, "GET", "/svc/x").await.0, 504);
    assert_eq!(g.backends.dials("mute:1"), 2);
}

/// The connections to instances PING on the configured
/// `timeouts.http2_keep_alive_interval` and give up after
/// `http2_keep_alive_timeout`, as README's settings table says.
#[tokio::test(start_paused = true)]
async fn the_configured_keep_alive_holds_for_connections_to_instances() {
    let timeouts = TimeoutConfig {
        http2_keep_alive_interval: Duration::from_secs(5),
        http2_keep_alive_timeout: Duration::from_secs(2),
        ..TimeoutConfig::default()
    };
    let g = gateway_with(&[("mute:1", Behaviour::Mute)], round_robin(), timeouts);
    assert_eq!(call(&g, "GET", "/svc/x").await.0, 504);
    let pool = endpoint(&g, "mute:1").pool().clone();
    assert_eq!(pool.open_connections(), 1);
    // The 504 came at the route's 2 s; the PING goes out 5 s after the
    // connection opened, its ack is due 2 s later (with the defaults, 30 s
    // and 20 s, the connection would stay open throughout).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(pool.open_connections(), 1, "still waiting for the ack");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pool.open_connections(), 0, "closed for the missing ack");
}

// ---- Metrics (crate::metrics): what a scrape shows after requests. ----

/// The exposition text, as `GET /metrics` renders it.
fn scrape(g: &Gateway) -> String {
    use crate::registry::Registry;
    g.balancer.metrics().encode(
        g.balancer.open_connections() as i64,
        &MemoryRegistry::new().status(),
    )
}

/// The value of the sample `series` (name and labels, exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.split(' ').next().unwrap().parse().unwrap())
}

const OK_GET: &str = r#"{listener="public",service="svc",route="/svc",method="GET",status="2xx"}"#;

#[tokio::test]
async fn requests_are_counted_by_listener_service_route_method_and_status() {
    let g = gateway(&[("a:1", Behaviour::Answer)], round_robin());
    call(&g, "GET", "/svc/x").await;
    call(&g, "GET", "/svc/other/path").await;
    call(&g, "POST", "/svc/y").await;
    call(&g, "PATCH", "/svc/y").await;
    assert_eq!(call(&g, "GET", "/nowhere/secret-123").await.0, 404);
    let text = scrape(&g);
    let get = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));
    assert_eq!(get(&format!("gateway_requests_total{OK_GET}")), 2.0);
    assert_eq!(
        get(&format!("gateway_request_duration_seconds_count{OK_GET}")),
        2.0
    );
    assert_eq!(
        get(
            r#"gateway_requests_total{listener="public",service="svc",route="/svc",method="POST",status="2xx"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            r#"gateway_requests_total{listener="public",service="svc",route="/svc",method="other",status="2xx"}"#
        ),
        1.0
    );
    // No route: empty service and route; the raw path is never a label.
    assert_eq!(
        get(
            r#"gateway_requests_total{listener="public",service="",route="",method="GET",status="4xx"}"#
        ),
        1.0
    );
    assert!(!text.contains("secret-123") && !text.contains("/svc/x"));
    assert_eq!(
        get(r#"gateway_upstream_attempts_total{service="svc"}"#),
        4.0
    );
    assert_eq!(get(r#"gateway_upstream_retries_total{service="svc"}"#), 0.0);
    assert_eq!(get("gateway_requests_in_flight"), 0.0);
    // Each answer is the instance's address, "a:1".
    assert!(get("gateway_response_body_bytes_total") >= 12.0, "{text}");
    // Four calls are spread over `connections_per_instance` (2) connections
    // (see connections_are_opened_lazily_up_to_connections_per_instance).
    assert_eq!(get("gateway_upstream_connections"), 2.0);
    assert_eq!(get("gateway_registry_connected"), 1.0);
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn refused_connections_count_a_failure_a_retry_and_an_ejection() {
    let g = gateway(
        &[
            ("down:1", Behaviour::RefuseConnect),
            ("up:2", Behaviour::Answer),
        ],
        round_robin(),
    );
    assert_eq!(call(&g, "POST", "/svc/x").await.0, 200);
    let text = scrape(&g);
    let get = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));
    assert_eq!(
        get(r#"gateway_upstream_attempts_total{service="svc"}"#),
        2.0
    );
    assert_eq!(get(r#"gateway_upstream_retries_total{service="svc"}"#), 1.0);
    assert_eq!(
        get(r#"gateway_upstream_failures_total{service="svc",kind="refused_connection"}"#),
        1.0
    );
    assert_eq!(
        get(r#"gateway_upstream_ejections_total{reason="unreachable"}"#),
        1.0
    );
    assert_eq!(
        get(r#"gateway_upstream_ejections_total{reason="failing"}"#),
        0.0
    );
}

#[tokio::test]
async fn a_refused_stream_is_its_own_failure_kind() {
    let g = gateway(
        &[
            ("busy:1", Behaviour::RefuseStream),
            ("up:2", Behaviour::Answer),
        ],
        round_robin(),
    );
    assert_eq!(call(&g, "POST", "/svc/x").await.0, 200);
    let text = scrape(&g);
    assert_eq!(
        sample(
            &text,
            r#"gateway_upstream_failures_total{service="svc",kind="refused_stream"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_counted_as_one_with_a_5xx() {
    let g = gateway(&[("never:1", Behaviour::Never)], round_robin());
    assert_eq!(call(&g, "GET", "/svc/x").await.0, 504);
    let text = scrape(&g);
    assert_eq!(
        sample(
            &text,
            r#"gateway_upstream_failures_total{service="svc",kind="timeout"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let series = r#"{listener="public",service="svc",route="/svc",method="GET",status="5xx"}"#;
    assert_eq!(
        sample(&text, &format!("gateway_requests_total{series}")),
        Some(1.0)
    );
    // Two seconds on the paused clock: in the 2.5 s bucket, not the 1 s one.
    // (prometheus-client prints `le` before the family's labels.)
    let bucket = |le: &str| {
        sample(
            &text,
            &format!(
                r#"gateway_request_duration_seconds_bucket{{le="{le}",listener="public",service="svc",route="/svc",method="GET",status="5xx"}}"#
            ),
        )
    };
    assert_eq!(
        (bucket("1.0"), bucket("2.5")),
        (Some(0.0), Some(1.0)),
        "{text}"
    );
}

/// Polls (yielding to the in-memory instances) until `done`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

fn get_request(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header("host", "gw.test")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn shed_requests_are_counted_as_requests_and_instances_show_their_in_flight() {
    let g = gateway_limited(
        &[("never:1", Behaviour::Never)],
        round_robin(),
        TimeoutConfig::default(),
        LimitsConfig {
            max_concurrent_requests: 1,
            ..Default::default()
        },
        true,
    );
    let first = tokio::spawn(g.stack.clone().oneshot(get_request("/svc/x")));
    until("the first call reached the instance", || {
        g.backends.calls("never:1") == 1
    })
    .await;
    let in_flight = r#"gateway_upstream_in_flight{service="svc",instance="never:1"}"#;
    assert_eq!(sample(&scrape(&g), in_flight), Some(1.0));
    // The only permit is taken: shed, before routing.
    assert_eq!(call(&g, "POST", "/svc/y").await.0, 503);
    let text = scrape(&g);
    assert_eq!(
        sample(
            &text,
            r#"gateway_requests_total{listener="public",service="",route="",method="POST",status="5xx"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"gateway_refused_total{reason="overloaded"}"#),
        Some(1.0)
    );
    first.abort();
    let _ = first.await;
    until("the aborted call left the instance", || {
        endpoint(&g, "never:1").in_flight() == 0
    })
    .await;
    assert_eq!(sample(&scrape(&g), in_flight), Some(0.0));
}

#[tokio::test]
async fn metrics_off_leave_every_request_counter_at_zero() {
    let g = gateway_limited(
        &[
            ("down:1", Behaviour::RefuseConnect),
            ("up:2", Behaviour::Answer),
        ],
        round_robin(),
        TimeoutConfig::default(),
        LimitsConfig::default(),
        false,
    );
    assert_eq!(call(&g, "POST", "/svc/x").await, (200, "up:2".into()));
    assert_eq!(call(&g, "GET", "/nowhere").await.0, 404);
    let text = scrape(&g);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        // Scrape-time values (connections, registry, in-flight per
        // instance) are still read; nothing the request path counts moved.
        let read_at_scrape = ["gateway_upstream_connections", "gateway_registry_connected"]
            .iter()
            .any(|m| line.starts_with(m));
        if !read_at_scrape && !line.starts_with("gateway_discovery_last_read_age_seconds") {
            // Integers print as `0`, float sums as `0.0`.
            assert_eq!(value.parse::<f64>().ok(), Some(0.0), "{line}\n{text}");
        }
    }
    assert!(!text.contains("gateway_requests_total{"), "{text}");
}
