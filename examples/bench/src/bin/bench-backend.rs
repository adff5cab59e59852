//! `bench-backend`: the backend every benchmark path ends at.
//!
//! * gRPC: `forwarding.v1.ForwardingService` plus `grpc.health.v1.Health`
//!   reporting SERVING. `Send` answers every request with the same
//!   `ForwardingResp` (a small `POST .../upload` gets its JSON answer, as a
//!   streaming backend's small bodies come by `Send`); `Stream` serves the
//!   streaming endpoints below.
//! * HTTP/1.1: a plain hyper server answering the same way (what HAProxy
//!   relays to), including the streaming endpoints and WebSocket.
//!
//! Unary answers: status 200, `content-type: text/plain` and a body of
//! `--body-bytes` bytes, so the three benchmark paths return the same bytes
//! to the load generator. Streaming endpoints, by the last path segment
//! (`streambench` drives them; the byte pattern and the event format are in
//! the `bench` library):
//!
//! * `POST .../upload`: hashes the body as it arrives, answers 200
//!   `{"bytes":N,"sha256":"<hex>"}`;
//! * `GET .../download?bytes=N`: N bytes of the pattern in 64 KiB chunks, each
//!   produced only once the previous one was taken (a channel of one);
//! * `GET .../sse?count=N&interval_us=U`: N events `data: <unix nanos>\n\n`,
//!   one per body frame, every U µs, each stamped just before it is sent;
//! * a WebSocket upgrade (any path): accepted, every message echoed.
//!
//! Streamed answers carry `x-bench-via: stream` (gRPC `Stream`) or
//! `x-bench-via: http` (plain HTTP), so a client can tell a gateway that
//! really streamed from one that buffered through `Send`. The runtime is
//! deliberately small (one worker by default) so the backend does not compete
//! with the proxy under test for the machine's cores.
//!
//! Faults for the reliability scenarios (scripts/reliability.sh): `--fail
//! unavailable|internal` makes every `Send` answer that gRPC status, and
//! `--delay-ms N` delays every `Send` answer by N ms. `GET /__stats` on the
//! HTTP listener answers `{"send_calls":N}`, the number of `Send` calls
//! received (what "upstream attempts" counts).
//!
//! Prints one line on stdout once both listeners are bound:
//! `READY grpc=<addr> http=<addr>`.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bench::{CHUNK, Endpoint, Pattern, VIA_HEADER, hex, query_param, unix_nanos, upload_answer};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use http::header;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proto::v1 as pb;
use proto::v1::forwarding_service_server::{ForwardingService, ForwardingServiceServer};
use proto::v1::stream_request::Frame as In;
use proto::v1::stream_response::Frame as Out;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tonic::codegen::BoxStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Status, Streaming};

#[derive(Debug, Parser)]
#[command(
    about = "Fixed-answer backend for the benchmark: gRPC ForwardingService and plain HTTP/1.1."
)]
struct Args {
    /// gRPC listener (ForwardingService + grpc.health.v1).
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc: SocketAddr,
    /// Plain HTTP/1.1 listener returning the same status, headers and body.
    #[arg(long, default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// Size of the response body in bytes.
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
    /// Answer every `Send` with this gRPC status instead of the fixed answer.
    #[arg(long, value_enum)]
    fail: Option<Fail>,
    /// Delay every `Send` answer by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Fail {
    Unavailable,
    Internal,
}

/// `Send` calls received, reported by `GET /__stats`.
static SEND_CALLS: AtomicU64 = AtomicU64::new(0);

const CONTENT_TYPE: &str = "text/plain";

fn body(n: usize) -> Bytes {
    // Printable, deterministic, ends with a newline when it has room.
    let mut v: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
    if let Some(last) = v.last_mut() {
        *last = b'\n';
    }
    Bytes::from(v)
}

fn hdr(name: &str, value: impl Into<Bytes>) -> pb::Header {
    pb::Header {
        name: name.into(),
        value: value.into(),
    }
}

struct Backend {
    resp: pb::ForwardingResp,
    pattern: Pattern,
    fail: Option<Fail>,
    delay: Duration,
}

#[tonic::async_trait]
impl ForwardingService for Backend {
    async fn send(
        &self,
        req: tonic::Request<pb::ForwardingReq>,
    ) -> Result<tonic::Response<pb::ForwardingResp>, tonic::Status> {
        SEND_CALLS.fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        match self.fail {
            Some(Fail::Unavailable) => return Err(Status::unavailable("bench-backend --fail")),
            Some(Fail::Internal) => return Err(Status::internal("bench-backend --fail")),
            None => {}
        }
        let req = req.get_ref();
        if Endpoint::of(&req.path) == Endpoint::Upload {
            // A small upload with a Content-Length: the unary fast path.
            let sha = hex(&Sha256::digest(&req.body));
            return Ok(tonic::Response::new(pb::ForwardingResp {
                status: 200,
                headers: vec![hdr("content-type", "application/json")],
                body: upload_answer(req.body.len() as u64, &sha),
                trailers: vec![],
            }));
        }
        Ok(tonic::Response::new(self.resp.clone()))
    }

    async fn stream(
        &self,
        req: tonic::Request<Streaming<pb::StreamRequest>>,
    ) -> Result<tonic::Response<BoxStream<pb::StreamResponse>>, Status> {
        let mut inbound = req.into_inner();
        let head = match inbound.message().await? {
            Some(pb::StreamRequest {
                frame: Some(In::Head(h)),
            }) => h,
            Some(_) => return Err(Status::invalid_argument("the first frame must be a head")),
            None => return Err(Status::invalid_argument("no head")),
        };
        // A channel of one: the next frame is produced only once the previous
        // one was taken by tonic, i.e. gRPC flow control paces the producer.
        let (tx, rx) = mpsc::channel(1);
        let (pattern, fixed) = (self.pattern.clone(), self.resp.clone());
        tokio::spawn(async move {
            let r = if head.upgrade == "websocket" {
                grpc_ws_echo(inbound, &tx).await
            } else {
                match Endpoint::of(&head.path) {
                    Endpoint::Upload => grpc_upload(inbound, &tx).await,
                    Endpoint::Download => {
                        drain(inbound);
                        let n = query_param(&head.query, "bytes").and_then(|v| v.parse().ok());
                        grpc_download(n.unwrap_or(0), &pattern, &tx).await
                    }
                    Endpoint::Sse => {
                        drain(inbound);
                        let (count, interval) = sse_params(&head.query);
                        grpc_sse(count, interval, &tx).await
                    }
                    Endpoint::Other => grpc_other(inbound, fixed, &tx).await,
                }
            };
            if let Err(status) = r {
                // Nobody listens any more when the call was cancelled.
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type Tx = mpsc::Sender<Result<pb::StreamResponse, Status>>;

async fn out(tx: &Tx, frame: Out) -> Result<(), Status> {
    tx.send(Ok(pb::StreamResponse { frame: Some(frame) }))
        .await
        .map_err(|_| Status::cancelled("the caller went away"))
}

fn stream_head(status: u32, mut headers: Vec<pb::Header>) -> Out {
    headers.push(hdr(VIA_HEADER, "stream"));
    Out::Head(pb::ForwardingResp {
        status,
        headers,
        ..Default::default()
    })
}

/// Reads the rest of a request nobody needs (the `end` of a GET), so the
/// request side of the call completes normally.
fn drain(mut inbound: Streaming<pb::StreamRequest>) {
    tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
}

fn sse_params(query: &str) -> (u64, Duration) {
    let count = query_param(query, "count").and_then(|v| v.parse().ok());
    let us = query_param(query, "interval_us").and_then(|v| v.parse().ok());
    (
        count.unwrap_or(10),
        Duration::from_micros(us.unwrap_or(1000)),
    )
}

/// Reads body chunks up to `end`, hashing them, then answers with the JSON.
async fn grpc_upload(mut inbound: Streaming<pb::StreamRequest>, tx: &Tx) -> Result<(), Status> {
    let (mut sha, mut n) = (Sha256::new(), 0u64);
    loop {
        match inbound.message().await?.and_then(|f| f.frame) {
            Some(In::Body(c)) => {
                n += c.data.len() as u64;
                sha.update(&c.data);
            }
            Some(In::End(_)) => break,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "unexpected frame in a request body",
                ));
            }
            None => {
                return Err(Status::aborted(
                    "the request body ended without an end frame",
                ));
            }
        }
    }
    let mut head = stream_head(200, vec![hdr("content-type", "application/json")]);
    if let Out::Head(h) = &mut head {
        h.body = upload_answer(n, &hex(&sha.finalize()));
    }
    out(tx, head).await
}

async fn grpc_download(n: u64, pattern: &Pattern, tx: &Tx) -> Result<(), Status> {
    let headers = vec![
        hdr("content-type", "application/octet-stream"),
        hdr("content-length", n.to_string()),
    ];
    out(tx, stream_head(200, headers)).await?;
    let mut off = 0u64;
    while off < n {
        let len = (n - off).min(CHUNK as u64) as usize;
        let data = pattern.chunk(off, len);
        out(tx, Out::Body(pb::BodyChunk { data })).await?;
        off += len as u64;
    }
    Ok(())
}

async fn grpc_sse(count: u64, interval: Duration, tx: &Tx) -> Result<(), Status> {
    let headers = vec![
        hdr("content-type", "text/event-stream"),
        hdr("cache-control", "no-cache"),
    ];
    out(tx, stream_head(200, headers)).await?;
    let mut tick = ticker(interval);
    for _ in 0..count {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let data = bench::sse_event(unix_nanos());
        out(tx, Out::Body(pb::BodyChunk { data })).await?;
    }
    Ok(())
}

fn ticker(interval: Duration) -> Option<tokio::time::Interval> {
    (!interval.is_zero()).then(|| {
        let mut t = tokio::time::interval(interval);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

/// Accepts the upgrade and echoes every message until the client closes.
async fn grpc_ws_echo(mut inbound: Streaming<pb::StreamRequest>, tx: &Tx) -> Result<(), Status> {
    out(tx, stream_head(101, vec![])).await?;
    loop {
        match inbound.message().await?.and_then(|f| f.frame) {
            Some(In::Message(m)) => out(tx, Out::Message(m)).await?,
            // The client closed (the gateway answered its close): finish the call.
            Some(In::Close(_)) | None => return Ok(()),
            Some(_) => return Err(Status::invalid_argument("unexpected frame on a WebSocket")),
        }
    }
}

/// Anything else that came by `Stream` (a large body to another path, an
/// `Accept: text/event-stream`): read the body, answer the fixed response.
async fn grpc_other(
    mut inbound: Streaming<pb::StreamRequest>,
    fixed: pb::ForwardingResp,
    tx: &Tx,
) -> Result<(), Status> {
    while let Some(f) = inbound.message().await? {
        if matches!(f.frame, Some(In::End(_))) {
            break;
        }
    }
    let mut head = stream_head(fixed.status, fixed.headers);
    if let Out::Head(h) = &mut head {
        h.body = fixed.body;
    }
    out(tx, head).await
}

type HttpBody = Either<Full<Bytes>, BoxBody<Bytes, Infallible>>;

async fn serve_http(listener: tokio::net::TcpListener, body: Bytes, pattern: Pattern) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench-backend: http accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (body, pattern) = (body.clone(), pattern.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (body, pattern) = (body.clone(), pattern.clone());
                async move { Ok::<_, Infallible>(http_answer(req, body, pattern).await) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn http_response(
    status: u16,
    headers: &[(&str, &str)],
    body: HttpBody,
) -> http::Response<HttpBody> {
    let mut b = http::Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.header(VIA_HEADER, "http")
        .body(body)
        .expect("valid response")
}

/// A body fed by a channel of one: the producer makes the next chunk only
/// once hyper took the previous one for the socket.
fn channel_body() -> (mpsc::Sender<Bytes>, HttpBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let s = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    (tx, Either::Right(BodyExt::boxed(StreamBody::new(s))))
}

async fn http_answer(
    mut req: http::Request<hyper::body::Incoming>,
    fixed: Bytes,
    pattern: Pattern,
) -> http::Response<HttpBody> {
    let upgrade = req.headers().get(header::UPGRADE);
    if upgrade.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket")) {
        return http_ws_accept(&mut req);
    }
    if req.uri().path() == "/__stats" {
        let stats = format!(
            "{{\"send_calls\":{}}}\n",
            SEND_CALLS.load(Ordering::Relaxed)
        );
        let ct = [("content-type", "application/json")];
        return http_response(200, &ct, Either::Left(Full::new(Bytes::from(stats))));
    }
    let query = req.uri().query().unwrap_or("").to_string();
    match Endpoint::of(req.uri().path()) {
        Endpoint::Upload => {
            let (mut sha, mut n) = (Sha256::new(), 0u64);
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            n += d.len() as u64;
                            sha.update(&d);
                        }
                    }
                    Err(e) => {
                        let msg = Full::new(Bytes::from(format!("reading the body: {e}\n")));
                        return http_response(400, &[], Either::Left(msg));
                    }
                }
            }
            let answer = upload_answer(n, &hex(&sha.finalize()));
            let ct = [("content-type", "application/json")];
            http_response(200, &ct, Either::Left(Full::new(answer)))
        }
        Endpoint::Download => {
            let n: u64 = query_param(&query, "bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let mut off = 0u64;
                while off < n {
                    let len = (n - off).min(CHUNK as u64) as usize;
                    if tx.send(pattern.chunk(off, len)).await.is_err() {
                        return; // the client went away
                    }
                    off += len as u64;
                }
            });
            let len = n.to_string();
            let h = [
                ("content-type", "application/octet-stream"),
                ("content-length", &len),
            ];
            http_response(200, &h, body)
        }
        Endpoint::Sse => {
            let (count, interval) = sse_params(&query);
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let mut tick = ticker(interval);
                for _ in 0..count {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    if tx.send(bench::sse_event(unix_nanos())).await.is_err() {
                        return;
                    }
                }
            });
            let h = [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
            ];
            http_response(200, &h, body)
        }
        Endpoint::Other => http::Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(Either::Left(Full::new(fixed)))
            .expect("static response"),
    }
}

/// Accepts a WebSocket upgrade (RFC 6455 handshake) and echoes every
/// message on the upgraded connection.
fn http_ws_accept(req: &mut http::Request<hyper::body::Incoming>) -> http::Response<HttpBody> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        let msg = Full::new(Bytes::from_static(b"missing sec-websocket-key\n"));
        return http_response(400, &[], Either::Left(msg));
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                eprintln!("bench-backend: websocket upgrade: {e}");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        // tungstenite answers pings and the close handshake itself; the
        // stream ends once the close is done.
        while let Some(Ok(m)) = ws.next().await {
            if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                break;
            }
        }
    });
    let h = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-accept", accept.as_str()),
    ];
    http_response(101, &h, Either::Left(Full::new(Bytes::new())))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .thread_name("bench-backend")
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let body = body(args.body_bytes);

    let incoming = TcpIncoming::bind(args.grpc)
        .with_context(|| format!("binding gRPC listener {}", args.grpc))?
        .with_nodelay(Some(true));
    let grpc_addr = incoming.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding HTTP listener {}", args.http))?;
    let http_addr = http_listener.local_addr()?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_serving::<ForwardingServiceServer<Backend>>()
        .await;

    let pattern = Pattern::new();
    let backend = Arc::new(Backend {
        pattern: pattern.clone(),
        fail: args.fail,
        delay: Duration::from_millis(args.delay_ms),
        resp: pb::ForwardingResp {
            status: 200,
            headers: vec![pb::Header {
                name: "content-type".into(),
                value: Bytes::from_static(CONTENT_TYPE.as_bytes()),
            }],
            body: body.clone(),
            trailers: vec![],
        },
    });
    let grpc = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(ForwardingServiceServer::from_arc(backend))
        .serve_with_incoming(incoming);
    let grpc = tokio::spawn(grpc);
    let http = tokio::spawn(serve_http(http_listener, body, pattern));

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY grpc={grpc_addr} http={http_addr}")?;
        out.flush()?;
    }

    tokio::select! {
        r = grpc => { r??; }
        r = http => { r?; }
        _ = shutdown() => {}
    }
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
