//! OpenTelemetry traces end to end, against a real OTLP receiver: the
//! collector built by `scripts/install-deps.sh otelcol` (OTLP/gRPC in, file
//! exporter out). The gateway binary exports with `--otlp-endpoint`, an SDK
//! backend in this process exports with `service_sdk::otel`; the test reads
//! the collector's file and checks that the client's trace runs through
//! the gateway's request span, its attempt span and the backend's span.

mod support;

use std::process::Stdio;
use std::time::Duration;

use service_sdk::routing::get;
use support::{BackendHandle, GatewayProcess, eventually_within};
use tokio::process::Command;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn collector_binary() -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/bin/otelcol-fg");
    assert!(
        p.exists(),
        "collector not installed: run scripts/install-deps.sh otelcol (scripts/test.sh does)"
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    kind: i64,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: serde_json::Value,
}

impl Span {
    fn attr(&self, key: &str) -> Option<String> {
        self.attributes.as_array()?.iter().find_map(|a| {
            (a["key"] == key).then(|| {
                let v = &a["value"];
                v["stringValue"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| v["intValue"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| v.to_string())
            })
        })
    }
}

/// Every span in the file exporter's output (OTLP JSON, one request a line).
fn read_spans(path: &std::path::Path) -> Vec<Span> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    out.push(Span {
                        service: service.clone(),
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        kind: s["kind"].as_i64().unwrap_or_default(),
                        trace_id: s["traceId"].as_str().unwrap_or_default().to_owned(),
                        span_id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                        attributes: s["attributes"].clone(),
                    });
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_backend_spans_share_the_clients_trace() {
    let dir = std::env::temp_dir().join(format!("gw-otel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("traces.json");
    let _ = std::fs::remove_file(&out);
    let port = free_port();
    let config = dir.join("otelcol.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{port}\n\
             exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
            out.display()
        ),
    )
    .unwrap();
    let mut collector = Command::new(collector_binary())
        .arg(format!("--config=file:{}", config.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn collector");
    eventually_within("collector listening", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let endpoint = format!("http://127.0.0.1:{port}");

    let gw = GatewayProcess::start(
        &["--otlp-endpoint", &endpoint],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;

    // The backend exports from this process, under its own service name.
    let otel = service_sdk::otel::Otel::init(&endpoint, "otel-backend").expect("sdk exporter");
    tracing_subscriber::registry()
        .with(otel.layer())
        .try_init()
        .expect("one subscriber in this test binary");
    let router = service_sdk::Router::new().route("/traced/hello", get(|| async { "hi\n" }));
    let backend = BackendHandle::start("traced", router, Some(&gw.registration_url()), |b| b).await;
    gw.wait_routable("traced", 1).await;

    let resp = gw
        .http
        .get(gw.url("/traced/hello"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "hi\n");

    // Flush both exporters: the SDK's now, the gateway's as it exits.
    backend.stop().await;
    otel.shutdown();
    gw.terminate();
    let mut child = gw.child;
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;

    let spans = eventually_within(
        "spans of the gateway and the backend",
        Duration::from_secs(20),
        || {
            let out = out.clone();
            async move {
                let spans = read_spans(&out);
                let gateway = spans
                    .iter()
                    .any(|s| s.service == "forwarding-gateway" && s.kind == 3);
                let backend = spans.iter().any(|s| s.service == "otel-backend");
                (gateway && backend).then_some(spans)
            }
        },
    )
    .await;
    let _ = collector.start_kill();

    let request = spans
        .iter()
        .find(|s| s.service == "forwarding-gateway" && s.kind == 2)
        .unwrap_or_else(|| panic!("no gateway request span in {spans:#?}"));
    let attempt = spans
        .iter()
        .find(|s| s.service == "forwarding-gateway" && s.kind == 3)
        .unwrap_or_else(|| panic!("no gateway attempt span in {spans:#?}"));
    let handle = spans
        .iter()
        .find(|s| s.service == "otel-backend")
        .unwrap_or_else(|| panic!("no backend span in {spans:#?}"));

    // One trace: the client's.
    assert_eq!(request.trace_id, CLIENT_TRACE, "{spans:#?}");
    assert_eq!(attempt.trace_id, CLIENT_TRACE, "{spans:#?}");
    assert_eq!(handle.trace_id, CLIENT_TRACE, "{spans:#?}");
    // The client's span -> the gateway's request -> its attempt; the
    // backend's span is a child of the request span the gateway sent on.
    assert_eq!(request.parent, CLIENT_SPAN);
    assert_eq!(attempt.parent, request.span_id);
    assert_eq!(handle.parent, request.span_id);
    // Attributes.
    assert_eq!(request.name, "GET");
    assert_eq!(request.attr("service").as_deref(), Some("traced"));
    assert_eq!(request.attr("route").as_deref(), Some("/traced"));
    assert_eq!(request.attr("outcome").as_deref(), Some("ok"));
    assert_eq!(attempt.attr("service").as_deref(), Some("traced"));
    assert!(attempt.attr("instance").is_some_and(|i| !i.is_empty()));
    assert_eq!(attempt.attr("outcome").as_deref(), Some("ok"));
    assert_eq!(handle.name, "GET /traced/hello");
    let _ = std::fs::remove_dir_all(&dir);
}
