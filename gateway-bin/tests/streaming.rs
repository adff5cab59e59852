//! Streaming end to end: the real `gateway` binary, a raw tonic backend that
//! implements `ForwardingService.Stream` from the .proto alone, and HTTP/1.1
//! and HTTP/2 clients (hyper) plus a WebSocket client (tokio-tungstenite).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::v1::forwarding_service_server::{ForwardingService, ForwardingServiceServer};
use proto::v1::{
    BodyChunk, ForwardingReq, ForwardingResp, Header, StreamEnd, StreamRequest, StreamResponse,
    WebSocketClose, stream_request, stream_response, web_socket_message,
};
use sha2::{Digest, Sha256};
use support::GatewayProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tonic::{Status, Streaming};

// ---------------------------------------------------------------------------
// The backend: behaviour chosen by path, state the tests can observe.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Observed {
    /// (rpc, path) of every call, in order.
    calls: Mutex<Vec<(&'static str, String)>>,
    /// Heads as received (for header order and the WebSocket handshake).
    heads: Mutex<Vec<ForwardingReq>>,
    /// When a hanging stream saw its call cancelled.
    cancelled: Mutex<Option<Instant>>,
    cancelled_signal: Notify,
    /// Releases the SSE stream's second event.
    sse_go: Notify,
    /// WebSocket close frames received from the gateway.
    ws_closes: Mutex<Vec<WebSocketClose>>,
    ws_closed: Notify,
    /// Request bodies read to their `end`.
    completed: std::sync::atomic::AtomicUsize,
}

#[derive(Clone, Default)]
struct Backend(Arc<Observed>);

fn h(name: &str, value: &str) -> Header {
    Header {
        name: name.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn head(status: u32, headers: Vec<Header>) -> StreamResponse {
    StreamResponse {
        frame: Some(stream_response::Frame::Head(ForwardingResp {
            status,
            headers,
            ..Default::default()
        })),
    }
}

fn chunk(data: impl Into<Bytes>) -> StreamResponse {
    StreamResponse {
        frame: Some(stream_response::Frame::Body(BodyChunk {
            data: data.into(),
        })),
    }
}

fn end(trailers: Vec<Header>) -> StreamResponse {
    StreamResponse {
        frame: Some(stream_response::Frame::End(StreamEnd { trailers })),
    }
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) * 31 + 7) as u8)
        .collect()
}

type Tx = mpsc::Sender<Result<StreamResponse, Status>>;

/// Reads the request body frames after the head: chunks in order, then
/// `end`. Returns the body's sha-256, its length and the trailers.
async fn consume(
    inbound: &mut Streaming<StreamRequest>,
) -> Result<(String, u64, Vec<Header>), Status> {
    let mut sha = Sha256::new();
    let mut n = 0u64;
    while let Some(f) = inbound.message().await? {
        match f.frame {
            Some(stream_request::Frame::Body(c)) => {
                assert!(!c.data.is_empty(), "the gateway never sends empty chunks");
                n += c.data.len() as u64;
                sha.update(&c.data);
            }
            Some(stream_request::Frame::End(e)) => {
                return Ok((hex(&sha.finalize()), n, e.trailers));
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unexpected frame {other:?}"
                )));
            }
        }
    }
    Err(Status::invalid_argument(
        "request stream ended without `end`",
    ))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Backend {
    async fn handle(
        self,
        req: ForwardingReq,
        mut inbound: Streaming<StreamRequest>,
        tx: Tx,
    ) -> Result<(), Status> {
        let o = &self.0;
        if req.upgrade == "websocket" {
            return self.websocket(req, inbound, tx).await;
        }
        let path = req.path.as_str();
        let query = req.query.as_str();
        let send = |f: StreamResponse| {
            let tx = tx.clone();
            async move { tx.send(Ok(f)).await.map_err(|_| Status::cancelled("gone")) }
        };
        match path {
            "/s/sha" => {
                let (sha, n, trailers) = consume(&mut inbound).await?;
                o.completed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let t: Vec<String> = trailers
                    .iter()
                    .map(|t| format!("{}={}", t.name, String::from_utf8_lossy(&t.value)))
                    .collect();
                send(head_json()).await?;
                send(chunk(
                    serde_json::json!({"sha256": sha, "bytes": n, "trailers": t}).to_string(),
                ))
                .await?;
                send(end(vec![])).await?;
            }
            "/s/echo" => {
                // Echoes each chunk as it arrives: the response streams while
                // the request still does.
                send(head(200, vec![])).await?;
                while let Some(f) = inbound.message().await? {
                    match f.frame {
                        Some(stream_request::Frame::Body(c)) => send(chunk(c.data)).await?,
                        Some(stream_request::Frame::End(e)) => {
                            send(end(e.trailers)).await?;
                            break;
                        }
                        _ => return Err(Status::invalid_argument("bad frame")),
                    }
                }
            }
            "/s/download" => {
                let total: u64 = query
                    .strip_prefix("bytes=")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                consume(&mut inbound).await?;
                send(head(
                    200,
                    vec![h("content-type", "application/octet-stream")],
                ))
                .await?;
                let mut off = 0;
                while off < total {
                    let n = (total - off).min(64 * 1024) as usize;
                    send(chunk(pattern(off, n))).await?;
                    off += n as u64;
                }
            }
            "/s/sse" => {
                send(head(
                    200,
                    vec![
                        h("content-type", "text/event-stream"),
                        h("cache-control", "no-cache"),
                    ],
                ))
                .await?;
                send(chunk("event: hello\ndata: 1\n\n")).await?;
                // The second event only once the test saw the first.
                o.sse_go.notified().await;
                send(chunk("data: 2\n\n")).await?;
                send(chunk("data: 3\n\n")).await?;
            }
            "/s/trailers" => {
                consume(&mut inbound).await?;
                send(head(200, vec![h("trailer", "x-sum")])).await?;
                send(chunk("payload")).await?;
                send(end(vec![h("x-sum", "42")])).await?;
            }
            "/s/die" => {
                send(head(200, vec![h("content-length", "1000")])).await?;
                send(chunk("partial")).await?;
                return Err(Status::internal("died mid-stream on purpose"));
            }
            "/s/die-chunked" => {
                send(head(200, vec![])).await?;
                send(chunk("partial")).await?;
                return Err(Status::internal("died mid-stream on purpose"));
            }
            "/s/hang" => {
                send(head(200, vec![h("content-type", "text/event-stream")])).await?;
                send(chunk("data: first\n\n")).await?;
                tx.closed().await;
                *o.cancelled.lock().unwrap() = Some(Instant::now());
                o.cancelled_signal.notify_waiters();
            }
            "/s/silent" | "/s/bounded/feed" => {
                send(head(200, vec![h("content-type", "text/event-stream")])).await?;
                tx.closed().await;
            }
            "/s/early" => {
                // Answers without reading the body (a 413 of its own).
                send(head(413, vec![h("content-type", "text/plain")])).await?;
                send(chunk("too big for me")).await?;
            }
            "/s/two-heads" => {
                send(head(200, vec![])).await?;
                send(chunk("a")).await?;
                send(head(200, vec![])).await?;
            }
            "/s/body-first" => {
                send(chunk("a")).await?;
            }
            "/s/unknown-frame" => {
                send(StreamResponse { frame: None }).await?;
            }
            "/s/headers" => {
                consume(&mut inbound).await?;
                let names: Vec<String> = req
                    .headers
                    .iter()
                    .map(|h| format!("{}={}", h.name, String::from_utf8_lossy(&h.value)))
                    .collect();
                send(head_json_with(vec![
                    h("x-a", "1"),
                    h("x-b", "2"),
                    h("x-a", "3"),
                ]))
                .await?;
                send(chunk(serde_json::json!({"headers": names}).to_string())).await?;
            }
            _ => {
                let (_, n, _) = consume(&mut inbound).await?;
                send(head_json()).await?;
                send(chunk(
                    serde_json::json!({"rpc": "stream", "bytes": n}).to_string(),
                ))
                .await?;
            }
        }
        Ok(())
    }

    async fn websocket(
        self,
        req: ForwardingReq,
        mut inbound: Streaming<StreamRequest>,
        tx: Tx,
    ) -> Result<(), Status> {
        let o = &self.0;
        if req.path == "/s/ws-refuse" {
            tx.send(Ok(head_json_status(403))).await.ok();
            tx.send(Ok(chunk("{\"error\":\"no\"}"))).await.ok();
            return Ok(());
        }
        let offered = req
            .headers
            .iter()
            .find(|h| h.name == "sec-websocket-protocol")
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .unwrap_or_default();
        let mut hs = vec![];
        if offered.split(',').any(|p| p.trim() == "chat") {
            hs.push(h("sec-websocket-protocol", "chat"));
        }
        tx.send(Ok(head(101, hs)))
            .await
            .map_err(|_| Status::cancelled("gone"))?;
        while let Some(f) = inbound.message().await? {
            match f.frame {
                Some(stream_request::Frame::Message(m)) => {
                    if let Some(web_socket_message::Data::Text(t)) = &m.data {
                        match t.as_str() {
                            // The call ends OK without a close frame: 1000.
                            "end-me" => return Ok(()),
                            // The call fails: 1011.
                            "fail-me" => return Err(Status::internal("failed on purpose")),
                            _ => {}
                        }
                    }
                    if let Some(web_socket_message::Data::Text(t)) = &m.data
                        && t == "close-me"
                    {
                        let close = WebSocketClose {
                            code: 4002,
                            reason: "bye".into(),
                        };
                        tx.send(Ok(StreamResponse {
                            frame: Some(stream_response::Frame::Close(close)),
                        }))
                        .await
                        .ok();
                        return Ok(());
                    }
                    let echo = StreamResponse {
                        frame: Some(stream_response::Frame::Message(m)),
                    };
                    if tx.send(Ok(echo)).await.is_err() {
                        return Ok(());
                    }
                }
                Some(stream_request::Frame::Close(c)) => {
                    o.ws_closes.lock().unwrap().push(c);
                    o.ws_closed.notify_waiters();
                    return Ok(());
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "unexpected frame {other:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn head_json() -> StreamResponse {
    head_json_status(200)
}

fn head_json_status(status: u32) -> StreamResponse {
    head(status, vec![h("content-type", "application/json")])
}

fn head_json_with(mut extra: Vec<Header>) -> StreamResponse {
    extra.insert(0, h("content-type", "application/json"));
    head(200, extra)
}

#[tonic::async_trait]
impl ForwardingService for Backend {
    async fn send(
        &self,
        req: tonic::Request<ForwardingReq>,
    ) -> Result<tonic::Response<ForwardingResp>, Status> {
        let r = req.into_inner();
        self.0.calls.lock().unwrap().push(("send", r.path.clone()));
        let body = serde_json::json!({"rpc": "send", "bytes": r.body.len()}).to_string();
        let mut resp = ForwardingResp {
            status: 200,
            headers: vec![h("content-type", "application/json")],
            body: body.into(),
            trailers: vec![],
        };
        if r.path == "/s/unary-many-headers" {
            // More fields than an http::HeaderMap can hold (32,768).
            resp.headers
                .extend((0..40_000).map(|i| h(&format!("x-h{i}"), "v")));
        }
        if let Some(n) = r.path.strip_prefix("/s/unary-same-name-") {
            // n fields of one name (hyper encodes those in quadratic time).
            let n: usize = n.parse().unwrap();
            resp.headers
                .extend((1..n).map(|i| h("x-h", &i.to_string())));
        }
        if r.path == "/s/unary-trailers" {
            resp.trailers = vec![h("x-checksum", "abc"), h("x-count", "2")];
        }
        Ok(tonic::Response::new(resp))
    }

    async fn stream(
        &self,
        req: tonic::Request<Streaming<StreamRequest>>,
    ) -> Result<
        tonic::Response<Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>>,
        Status,
    > {
        let mut inbound = req.into_inner();
        let head = match inbound.message().await? {
            Some(StreamRequest {
                frame: Some(stream_request::Frame::Head(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("the first frame must be a head")),
        };
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("stream", head.path.clone()));
        self.0.heads.lock().unwrap().push(head.clone());
        let (tx, rx) = mpsc::channel(2);
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(s) = me.handle(head, inbound, tx.clone()).await {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the backend on 127.0.0.1:0 and returns its address.
async fn serve(backend: Backend) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ForwardingServiceServer::new(backend))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    addr
}

/// Registers the backend (TTL check: nothing else to run) with `streaming`.
async fn register(
    gw: &GatewayProcess,
    service: &str,
    addr: SocketAddr,
    streaming: bool,
    routes: serde_json::Value,
) {
    let body = serde_json::json!({
        "service": service, "address": addr.to_string(), "health": {"kind": "ttl"},
        "lease_ms": 600000, "streaming": streaming, "routes": routes,
    });
    let resp = gw
        .http
        .put(format!("{}/v1/registrations", gw.registration_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

async fn setup(extra: &[&str]) -> (GatewayProcess, Backend) {
    let gw = GatewayProcess::start(extra, &[]).await;
    let backend = Backend::default();
    let addr = serve(backend.clone()).await;
    register(
        &gw,
        "s",
        addr,
        true,
        serde_json::json!([
            {"path_prefix": "/s"},
            {"path_prefix": "/s/download", "stream": true},
            {"path_prefix": "/s/trailers", "stream": true},
            {"path_prefix": "/s/bounded", "stream": true, "max_duration_ms": 800},
        ]),
    )
    .await;
    gw.wait_routable("s", 1).await;
    (gw, backend)
}

/// The gateway started with `toml` as its configuration file.
async fn setup_with_config(name: &str, toml: &str) -> (GatewayProcess, Backend) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, toml).unwrap();
    setup(&["--config", cfg.to_str().unwrap()]).await
}

/// A WebSocket handshake as a plain HTTP/1.1 GET, to see the answer when
/// the gateway or the backend does not switch protocols.
async fn ws_handshake(gw: &GatewayProcess, path: &str, version: &str) -> reqwest::Response {
    gw.http
        .get(gw.url(path))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", version)
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// HTTP clients: HTTP/1.1 and HTTP/2 (prior knowledge), streaming bodies.
// ---------------------------------------------------------------------------

type ReqBody = BoxBody<Bytes, Infallible>;

enum Client {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

impl Client {
    async fn connect(addr: SocketAddr, h2: bool) -> Self {
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        if h2 {
            let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(tx)
        } else {
            let (tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(tx)
        }
    }

    async fn send(&mut self, req: Request<ReqBody>) -> Response<Incoming> {
        self.try_send(req).await.unwrap()
    }

    async fn try_send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Client::H1(tx) => {
                tx.ready().await?;
                tx.send_request(req).await
            }
            Client::H2(tx) => {
                tx.ready().await?;
                tx.send_request(req).await
            }
        }
    }
}

fn empty() -> ReqBody {
    http_body_util::Empty::new().boxed()
}

fn full(b: impl Into<Bytes>) -> ReqBody {
    http_body_util::Full::new(b.into()).boxed()
}

/// A body of `total` pattern bytes in 64 KiB chunks, produced on demand, so
/// the client never holds it; trailers at the end.
fn generated(total: u64, trailers: Option<http::HeaderMap>) -> ReqBody {
    let chunks = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= total {
            return None;
        }
        let n = (total - off).min(64 * 1024) as usize;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(pattern(off, n)))),
            off + n as u64,
        ))
    });
    let tail = futures_util::stream::iter(trailers.map(|t| Ok(Frame::trailers(t))));
    BodyExt::boxed(StreamBody::new(chunks.chain(tail)))
}

fn get(path: &str) -> http::request::Builder {
    Request::get(path).header("host", "gw.test")
}

fn gw_uri(gw: &GatewayProcess, path: &str, h2: bool) -> String {
    // HTTP/2 requests carry the authority in the URI.
    if h2 {
        format!("http://{}{}", gw.public, path)
    } else {
        path.to_owned()
    }
}

async fn read_all(
    resp: Response<Incoming>,
) -> Result<(Bytes, Option<http::HeaderMap>), hyper::Error> {
    let c = resp.into_body().collect().await?;
    let t = c.trailers().cloned();
    Ok((c.to_bytes(), t))
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the gateway's RSS every 20 ms until dropped; returns the peak.
struct RssSampler {
    peak: Arc<Mutex<u64>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(Mutex::new(rss_kib(pid)));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                let r = rss_kib(pid);
                {
                    let mut m = p.lock().unwrap();
                    *m = (*m).max(r);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { peak, task }
    }

    fn peak(self) -> u64 {
        self.task.abort();
        *self.peak.lock().unwrap()
    }
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_as_sent_over_http1_and_http2() {
    let (gw, backend) = setup(&[]).await;
    for h2 in [false, true] {
        let mut c = Client::connect(gw.public, h2).await;
        let resp = c
            .send(
                get(&gw_uri(&gw, "/s/sse", h2))
                    .header("accept", "text/event-stream")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        // The first event arrives while the backend is still blocked before
        // its second: nothing waits for the end of the stream.
        let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("first event before the backend finished")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "event: hello\ndata: 1\n\n");
        backend.0.sse_go.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "data: 2\n\ndata: 3\n\n", "h2={h2}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_picks_send_or_stream_by_the_documented_rule() {
    let (gw, backend) = setup(&[]).await;
    let mut c = Client::connect(gw.public, false).await;
    let cases: Vec<(&str, Request<ReqBody>, &str)> = vec![
        ("small GET", get("/s/a").body(empty()).unwrap(), "send"),
        (
            "small POST with length",
            Request::post("/s/b")
                .header("host", "g")
                .body(full(vec![1u8; 100]))
                .unwrap(),
            "send",
        ),
        (
            "event-stream accepted",
            get("/s/c")
                .header("accept", "text/event-stream")
                .body(empty())
                .unwrap(),
            "stream",
        ),
        (
            "chunked POST",
            Request::post("/s/d")
                .header("host", "g")
                .body(generated(10, None))
                .unwrap(),
            "stream",
        ),
        (
            "POST over unary_body_bytes",
            Request::post("/s/e")
                .header("host", "g")
                .body(full(vec![1u8; 65 * 1024]))
                .unwrap(),
            "stream",
        ),
        (
            "route with stream = true",
            get("/s/download?bytes=0").body(empty()).unwrap(),
            "stream",
        ),
    ];
    for (what, req, rpc) in cases {
        let path = req.uri().path().to_owned();
        let resp = c.send(req).await;
        assert_eq!(resp.status(), 200, "{what}");
        read_all(resp).await.unwrap();
        let calls = backend.0.calls.lock().unwrap().clone();
        let last = calls
            .iter()
            .rev()
            .find(|(_, p)| *p == path)
            .unwrap_or_else(|| panic!("{what}: {calls:?}"));
        assert_eq!(last.0, rpc, "{what}");
    }

    // A backend without `streaming` only ever gets Send: a chunked upload
    // is buffered (within limits), WebSocket is refused with 501.
    let plain = Backend::default();
    let addr = serve(plain.clone()).await;
    register(&gw, "plain", addr, false, serde_json::json!([])).await;
    gw.wait_routable("plain", 1).await;
    let resp = c
        .send(
            Request::post("/plain/up")
                .header("host", "g")
                .body(generated(100_000, None))
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let (b, _) = read_all(resp).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["rpc"], "send");
    assert_eq!(v["bytes"], 100_000);
    let resp = ws_handshake(&gw, "/plain/ws", "13").await;
    assert_eq!(resp.status(), 501);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "websocket_unsupported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_and_download_stream_with_bounded_memory() {
    const SIZE: u64 = 128 * 1024 * 1024;
    let (gw, _backend) = setup(&[]).await;
    let pid = gw.child.id().unwrap();
    let idle = rss_kib(pid);
    // Computed before any connection is open: an idle keep-alive connection
    // is closed after `timeouts.header_read`.
    let mut sha = Sha256::new();
    let mut off = 0;
    while off < SIZE {
        let n = (SIZE - off).min(64 * 1024) as usize;
        sha.update(pattern(off, n));
        off += n as u64;
    }
    let expect = hex(&sha.finalize());
    for h2 in [false, true] {
        let mut c = Client::connect(gw.public, h2).await;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-upload-check", "yes".parse().unwrap());
        let sampler = RssSampler::start(pid);
        let resp = c
            .send(
                Request::post(gw_uri(&gw, "/s/sha", h2))
                    .header("host", "g")
                    // hyper's HTTP/1.1 client sends only announced trailers.
                    .header("trailer", "x-upload-check")
                    .body(generated(SIZE, Some(trailers)))
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let (b, _) = read_all(resp).await.unwrap();
        let peak_up = sampler.peak();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["sha256"], expect.as_str(), "h2={h2}");
        assert_eq!(v["bytes"], SIZE);
        assert_eq!(
            v["trailers"][0], "x-upload-check=yes",
            "request trailers travel in `end`"
        );

        let sampler = RssSampler::start(pid);
        let resp = c
            .send(
                get(&gw_uri(&gw, &format!("/s/download?bytes={SIZE}"), h2))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Sha256::new();
        let mut n = 0u64;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                n += d.len() as u64;
                got.update(&d);
            }
        }
        let peak_down = sampler.peak();
        assert_eq!(n, SIZE);
        assert_eq!(hex(&got.finalize()), expect);
        eprintln!(
            "h2={h2}: idle RSS {} MiB, peak during upload {} MiB, during download {} MiB",
            idle / 1024,
            peak_up / 1024,
            peak_down / 1024
        );
        for peak in [peak_up, peak_down] {
            assert!(
                peak < idle + 32 * 1024,
                "RSS grew from {idle} KiB to {peak} KiB for a {SIZE}-byte body"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_stream_aborts_the_client_response() {
    let (gw, _backend) = setup(&[]).await;
    for path in ["/s/die", "/s/die-chunked"] {
        for h2 in [false, true] {
            let mut c = Client::connect(gw.public, h2).await;
            // Either the head never arrives (hyper had not flushed it when
            // the body failed) or the body errors: never a complete body.
            let req = get(&gw_uri(&gw, path, h2))
                .header("accept", "text/event-stream")
                .body(empty())
                .unwrap();
            if let Ok(resp) = c.try_send(req).await {
                assert_eq!(resp.status(), 200);
                let r = read_all(resp).await;
                assert!(
                    r.is_err(),
                    "{path} h2={h2}: a truncated body must not look complete: {r:?}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_going_away_cancels_the_backend() {
    let (gw, backend) = setup(&[]).await;
    for h2 in [false, true] {
        *backend.0.cancelled.lock().unwrap() = None;
        let mut c = Client::connect(gw.public, h2).await;
        let resp = c
            .send(
                get(&gw_uri(&gw, "/s/hang", h2))
                    .header("accept", "text/event-stream")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        let mut body = resp.into_body();
        body.frame().await.unwrap().unwrap();
        let cancelled = backend.0.cancelled_signal.notified();
        let gone = Instant::now();
        drop(body);
        drop(c);
        tokio::time::timeout(Duration::from_secs(5), cancelled)
            .await
            .expect("backend saw the cancellation");
        let took = backend.0.cancelled.lock().unwrap().unwrap() - gone;
        eprintln!("h2={h2}: client gone -> backend cancelled in {took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_backend_streams_are_502_or_aborts() {
    let (gw, _backend) = setup(&[]).await;
    let mut c = Client::connect(gw.public, false).await;
    for path in ["/s/body-first", "/s/unknown-frame"] {
        let resp = c
            .send(
                get(path)
                    .header("accept", "text/event-stream")
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 502, "{path}");
        let (b, _) = read_all(resp).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "upstream_invalid_response", "{path}");
        c = Client::connect(gw.public, false).await;
    }
    let req = get("/s/two-heads")
        .header("accept", "text/event-stream")
        .body(empty())
        .unwrap();
    if let Ok(resp) = c.try_send(req).await {
        assert_eq!(resp.status(), 200);
        assert!(
            read_all(resp).await.is_err(),
            "a second head aborts the response"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_idle_for_too_long_are_ended_and_long_ones_are_not_cut_at_the_request_timeout() {
    let (gw, backend) = setup_with_config(
        "gw-idle",
        "[timeouts]\nrequest = \"300ms\"\nstream_idle = \"1s\"\n",
    )
    .await;
    let mut c = Client::connect(gw.public, false).await;
    // Events keep flowing past the 300 ms request timeout: not cut.
    let resp = c
        .send(
            get("/s/sse")
                .header("accept", "text/event-stream")
                .body(empty())
                .unwrap(),
        )
        .await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    backend.0.sse_go.notify_one();
    assert_eq!(
        body.collect().await.unwrap().to_bytes(),
        "data: 2\n\ndata: 3\n\n"
    );
    // Nothing for a second: the stream is ended, as an abort.
    let mut c = Client::connect(gw.public, false).await;
    let started = Instant::now();
    let resp = c
        .send(
            get("/s/silent")
                .header("accept", "text/event-stream")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert!(read_all(resp).await.is_err());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_uploads_over_the_limit_get_413_or_are_cut() {
    let (gw, backend) =
        setup_with_config("gw-limit", "[limits]\nmax_stream_body_bytes = 1000000\n").await;
    // Known up front: 413 before anything reaches the backend.
    // Only the head is sent: a client still writing the body could see the
    // closed connection (broken pipe) before it reads the answer.
    let before = backend.0.calls.lock().unwrap().len();
    let mut raw = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    raw.write_all(b"POST /s/sha HTTP/1.1\r\nhost: g\r\ncontent-length: 2000000\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("413 without the body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("body_too_large"), "{head}");
    assert_eq!(backend.0.calls.lock().unwrap().len(), before);
    // Found out mid-stream: the exchange is aborted, the backend cancelled.
    let mut c = Client::connect(gw.public, false).await;
    let req = Request::post("/s/echo")
        .header("host", "g")
        .body(generated(2_000_000, None))
        .unwrap();
    if let Ok(resp) = c.try_send(req).await {
        assert!(
            read_all(resp).await.is_err(),
            "cut, never a complete-looking echo"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_http2_and_te_trailers_clients() {
    let (gw, _backend) = setup(&[]).await;
    // HTTP/2: trailers of a unary Send answer and of a Stream `end`.
    for path in ["/s/unary-trailers", "/s/trailers"] {
        let mut c = Client::connect(gw.public, true).await;
        let resp = c
            .send(get(&gw_uri(&gw, path, true)).body(empty()).unwrap())
            .await;
        let (_, t) = read_all(resp).await.unwrap();
        let t = t.unwrap_or_else(|| panic!("{path}: no trailers over HTTP/2"));
        assert!(
            t.contains_key("x-checksum") || t.contains_key("x-sum"),
            "{path}: {t:?}"
        );
    }
    // HTTP/1.1 with TE: trailers, on the wire.
    for (path, name) in [
        ("/s/unary-trailers", "x-checksum: abc"),
        ("/s/trailers", "x-sum: 42"),
    ] {
        let raw = raw_exchange(
            gw.public,
            &format!("GET {path} HTTP/1.1\r\nhost: g\r\nte: trailers\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(raw.contains("transfer-encoding: chunked"), "{raw}");
        assert!(raw.contains("trailer: "), "{raw}");
        let tail = raw.rsplit("\r\n0\r\n").next().unwrap();
        assert!(
            tail.contains(name),
            "{path}: trailer after the last chunk: {raw}"
        );
        // Without TE: trailers there are none.
        let raw = raw_exchange(
            gw.public,
            &format!("GET {path} HTTP/1.1\r\nhost: g\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(!raw.contains(name), "{raw}");
    }
}

/// A backend answer with more header fields than the gateway forwards
/// (1,000, as forwarding.proto says), or than HTTP can carry at all (an
/// `http::HeaderMap` holds 32,768; that case used to panic the request
/// task), is an invalid answer: a JSON 502, and the gateway goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_too_many_header_fields_is_a_502() {
    let (gw, _backend) = setup(&[]).await;
    for path in ["/s/unary-many-headers", "/s/unary-same-name-1001"] {
        let raw = raw_exchange(
            gw.public,
            &format!("GET {path} HTTP/1.1\r\nhost: g\r\nconnection: close\r\n\r\n"),
        )
        .await;
        let head = &raw[..raw.len().min(300)];
        assert!(raw.starts_with("http/1.1 502"), "{path}: {head}");
        assert!(raw.contains("upstream_invalid_response"), "{path}: {head}");
    }
    // 1,000 fields (the content-type and 999 more) are forwarded.
    let raw = raw_exchange(
        gw.public,
        "GET /s/unary-same-name-1000 HTTP/1.1\r\nhost: g\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        raw.starts_with("http/1.1 200"),
        "{}",
        &raw[..raw.len().min(300)]
    );
    assert_eq!(raw.matches("\r\nx-h: ").count(), 999);
}

async fn raw_exchange(addr: SocketAddr, req: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_order_is_kept_as_the_contract_says_both_ways() {
    let (gw, _backend) = setup(&[]).await;
    let raw = raw_exchange(
        gw.public,
        "POST /s/headers HTTP/1.1\r\nhost: g\r\nx-dup: 1\r\nx-mid: m\r\nx-dup: 2\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    // Response: the backend sent x-a: 1, x-b: 2, x-a: 3.
    let a1 = raw.find("x-a: 1").unwrap();
    let a3 = raw.find("x-a: 3").unwrap();
    let b2 = raw.find("x-b: 2").unwrap();
    assert!(
        a1 < a3 && a3 < b2,
        "same name in order, grouped by first appearance: {raw}"
    );
    // Request: the client sent x-dup: 1, x-mid: m, x-dup: 2.
    let body = &raw[raw.find("{\"headers\"").unwrap()..];
    let d1 = body.find("x-dup=1").unwrap();
    let d2 = body.find("x-dup=2").unwrap();
    let m = body.find("x-mid=m").unwrap();
    assert!(d1 < d2 && d2 < m, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_and_close_codes_are_relayed_both_ways() {
    let (gw, backend) = setup(&[]).await;
    let ws_url = format!("ws://{}/s/ws", gw.public);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        ws_url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "chat, superchat".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    let head = backend.0.heads.lock().unwrap().last().cloned().unwrap();
    assert_eq!(head.upgrade, "websocket");
    assert!(
        head.headers
            .iter()
            .all(|h| h.name != "sec-websocket-key" && h.name != "upgrade")
    );

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let bin = Bytes::from(vec![0u8, 159, 146, 150, 255]);
    ws.send(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(bin));
    // Ping is answered (by the gateway, as RFC 6455 asks of an endpoint).
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    ws.send(Message::text("after-ping")).await.unwrap();
    let mut saw_pong = false;
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Pong(p) => {
                assert_eq!(p, "p");
                saw_pong = true;
            }
            Message::Text(t) => {
                assert_eq!(t, "after-ping");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_pong);
    // The client closes with 4001: the backend sees exactly that.
    let closed = backend.0.ws_closed.notified();
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .unwrap();
    let c = backend.0.ws_closes.lock().unwrap().last().cloned().unwrap();
    assert_eq!((c.code, c.reason.as_str()), (4001, "done"));
    // The closing handshake completes: the client sees the end.
    while let Some(Ok(_)) = ws.next().await {}

    // The backend closes with 4002: the client sees exactly that.
    let tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url.as_str(), tcp)
        .await
        .unwrap();
    ws.send(Message::text("close-me")).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4002, "bye"))
        }
        other => panic!("{other:?}"),
    }

    // A backend may refuse the upgrade with an ordinary answer.
    let resp = ws_handshake(&gw, "/s/ws-refuse", "13").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.text().await.unwrap(), "{\"error\":\"no\"}");
    // A malformed handshake is a 400 with a JSON body.
    let resp = ws_handshake(&gw, "/s/ws", "8").await;
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_closes_websockets_with_1001_and_ends_event_streams() {
    let (mut gw, _backend) = setup_with_config("gw-drain", "[drain]\ngrace = \"5s\"\n").await;
    let tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/s/ws", gw.public).as_str(), tcp)
            .await
            .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    let mut c = Client::connect(gw.public, false).await;
    let resp = c
        .send(
            get("/s/sse")
                .header("accept", "text/event-stream")
                .body(empty())
                .unwrap(),
        )
        .await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    let started = Instant::now();
    gw.terminate();
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("{other:?}"),
    }
    // The client answers the close, as a WebSocket client does; the gateway
    // waits for that (upgraded connections are outside hyper's drain).
    let ws_done = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    // The event stream ends cleanly (EventSource reconnects elsewhere).
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap();
    assert!(rest.is_ok(), "{rest:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    // Nothing else holds the drain: the gateway exits well before its grace.
    tokio::time::timeout(Duration::from_secs(4), gw.child.wait())
        .await
        .expect("gateway exited")
        .unwrap();
    ws_done.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_backend_never_sees_the_end_of_a_malformed_body() {
    let (gw, backend) = setup(&[]).await;
    let cases: [&[u8]; 4] = [
        b"POST /s/sha HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        b"POST /s/sha HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhelloXX",
        b"POST /s/sha HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
        // Cut short: the client stops sending (half-close) mid-chunk.
        b"POST /s/sha HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
    ];
    for raw in cases {
        let mut s = tokio::net::TcpStream::connect(gw.public).await.unwrap();
        s.write_all(raw).await.unwrap();
        s.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "connection left open for {:?}",
                    String::from_utf8_lossy(raw)
                )
            })
            .ok();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 400"),
            "{:?} -> {text:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // Heads may have gone upstream; no body was ever complete (`/s/sha`
    // answers only after `end`), so nothing was served.
    assert!(
        backend
            .0
            .heads
            .lock()
            .unwrap()
            .iter()
            .all(|h| h.path == "/s/sha")
    );
    assert_eq!(
        backend
            .0
            .completed
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// The SDK end to end: an axum `Sse` handler and a WebSocket handler behind
/// the gateway, written as for plain axum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_handlers_stream_sse_and_websocket_through_the_gateway() {
    use axum::response::sse::{Event, Sse};
    use service_sdk::routing::get as route_get;
    use service_sdk::ws::{Message as SdkMessage, WebSocket, WebSocketUpgrade};
    let gw = GatewayProcess::start(&[], &[]).await;
    let go = Arc::new(Notify::new());
    let g = go.clone();
    let app = service_sdk::Router::new()
        .route(
            "/sdk/events",
            route_get(move || {
                let g = g.clone();
                async move {
                    let events = futures_util::stream::unfold(0u32, move |i| {
                        let g = g.clone();
                        async move {
                            if i == 3 {
                                return None;
                            }
                            if i == 1 {
                                g.notified().await;
                            }
                            Some((
                                Ok::<_, Infallible>(Event::default().data(format!("e{i}"))),
                                i + 1,
                            ))
                        }
                    });
                    Sse::new(events)
                }
            }),
        )
        .route(
            "/sdk/ws",
            route_get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket: WebSocket| async move {
                    while let Some(Ok(m)) = socket.recv().await {
                        match m {
                            SdkMessage::Close(_) => return,
                            m => {
                                if socket.send(m).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                })
            }),
        );
    let _b = support::BackendHandle::start("sdk", app, Some(&gw.registration_url()), |b| b).await;
    gw.wait_routable("sdk", 1).await;
    // curl-like: no Accept header; the SDK's routes are `stream = true`.
    let mut c = Client::connect(gw.public, false).await;
    let resp = c.send(get("/sdk/events").body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "data: e0\n\n");
    go.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: e1\n\ndata: e2\n\n");

    let tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/sdk/ws", gw.public).as_str(), tcp)
            .await
            .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
}

/// WebSocket over HTTP/2 (RFC 8441): an extended CONNECT becomes the same
/// `Stream` exchange as an HTTP/1.1 upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect() {
    let (gw, backend) = setup(&[]).await;
    let Client::H2(mut tx) = Client::connect(gw.public, true).await else {
        unreachable!()
    };
    let mut req = Request::connect(format!("http://{}/s/ws", gw.public))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(empty())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    tx.ready().await.unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    let head = backend.0.heads.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (head.method.as_str(), head.upgrade.as_str()),
        ("GET", "websocket")
    );
    let io = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(io),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h2"));
    let closed = backend.0.ws_closed.notified();
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4003),
        reason: "h2 done".into(),
    }))
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .unwrap();
    let c = backend.0.ws_closes.lock().unwrap().last().cloned().unwrap();
    assert_eq!(c.code, 4003);
}

/// A backend may answer before it read the body: the client gets that
/// answer, the rest of its body is discarded and the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_before_the_body_ends_is_passed_on() {
    let (gw, _backend) = setup(&[]).await;
    let mut s = tokio::net::TcpStream::connect(gw.public).await.unwrap();
    s.write_all(
        b"POST /s/early HTTP/1.1\r\nhost: g\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    // The client never finishes its body: only the gateway can end this.
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the connection is closed after the answer")
        .ok();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.starts_with("http/1.1 413"), "{text}");
    assert!(text.contains("too big for me"), "{text}");
}

/// A route's `max_duration_ms` ends a stream that the idle limit (5 min by
/// default) would let live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_maximum_duration_ends_its_streams() {
    let (gw, _backend) = setup(&[]).await;
    let mut c = Client::connect(gw.public, false).await;
    let started = Instant::now();
    let resp = c.send(get("/s/bounded/feed").body(empty()).unwrap()).await;
    assert_eq!(resp.status(), 200);
    assert!(read_all(resp).await.is_err(), "cut as an abort");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// The call ending without a close frame closes the client's WebSocket with
/// 1000; the call failing closes it with 1011.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_call_ending_closes_with_1000_or_1011() {
    let (gw, _backend) = setup(&[]).await;
    for (say, code) in [("end-me", 1000u16), ("fail-me", 1011)] {
        let tcp = tokio::net::TcpStream::connect(gw.public).await.unwrap();
        let (mut ws, _) =
            tokio_tungstenite::client_async(format!("ws://{}/s/ws", gw.public).as_str(), tcp)
                .await
                .unwrap();
        ws.send(Message::text(say)).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), code, "{say}"),
            other => panic!("{say}: {other:?}"),
        }
    }
}
