//! `streambench`: streaming figures for scripts/bench.sh, against
//! `bench-backend` directly (gRPC `ForwardingService.Stream`) or through a
//! proxy (HTTP/1.1 and WebSocket).
//!
//! Targets:
//! * `--target grpc --addr host:port`: calls `ForwardingService.Stream` on
//!   the backend with the frames a gateway would send (head, body chunks,
//!   end; or head with `upgrade = "websocket"`, then messages and a close).
//! * `--target http --url http://host:port[/prefix]`: HTTP/1.1 (hyper) to
//!   `<url>/upload`, `/download`, `/sse`, and a WebSocket (tokio-tungstenite)
//!   to `ws://host:port[/prefix]/ws`. One fresh connection per test.
//!
//! Tests (`--tests`, all by default), run one after the other:
//! * `upload`: POST of `--upload-bytes` of the shared pattern, produced
//!   64 KiB at a time by a generator (never held in memory), chunked (no
//!   Content-Length); the backend's `{"bytes","sha256"}` answer must match.
//!   The expected SHA-256 is computed before the clock starts. MB/s = 10^6
//!   bytes/s, from sending the request to the end of the answer.
//! * `download`: GET of `--download-bytes`, every chunk compared with the
//!   pattern as it arrives; MB/s from sending the request to the last byte.
//! * `sse`: `--sse-events` events every `--sse-interval-us`; each carries the
//!   backend's CLOCK_REALTIME send time, latency = receipt - send (same
//!   machine, same clock). p50/p99/max.
//! * `ws`: `--ws-messages` text messages of `--ws-message-bytes`, one at a
//!   time, each echo checked; round trip p50/p99/max.
//!
//! `--expect-via stream|http` also requires the backend's `x-bench-via`
//! answer header (upload, download, sse): through a gateway, `stream` proves
//! it used `ForwardingService.Stream` and not the buffered `Send`.
//!
//! Output: one JSON line (`upload_mb_s`, `download_mb_s`, `sse_p50_us`,
//! `sse_p99_us`, `ws_p50_us`, `ws_p99_us`, ..., `cpu_ms`); progress on
//! stderr. Exits 1 at the first failed check, naming it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bench::{CHUNK, Pattern, VIA_HEADER, own_cpu_ms, unix_nanos};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt, stream};
use hdrhistogram::Histogram;
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use proto::v1 as pb;
use proto::v1::forwarding_service_client::ForwardingServiceClient;
use proto::v1::stream_request::Frame as Out;
use proto::v1::stream_response::Frame as In;
use proto::v1::web_socket_message::Data;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Grpc,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Test {
    Upload,
    Download,
    Sse,
    Ws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    Any,
    Stream,
    Http,
}

#[derive(Debug, Parser)]
#[command(
    about = "Streaming benchmark client (upload, download, SSE, WebSocket); prints one JSON line."
)]
struct Args {
    /// What to measure against.
    #[arg(long, value_enum)]
    target: Target,
    /// gRPC backend address (host:port or http://host:port).
    #[arg(long)]
    addr: Option<String>,
    /// HTTP base URL (http://host:port or http://host:port/prefix).
    #[arg(long)]
    url: Option<String>,
    /// Tests to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "upload,download,sse,ws"
    )]
    tests: Vec<Test>,
    /// Small transfers (64 MiB each way) for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Upload size (bytes; KiB/MiB/GiB suffixes). Default 1GiB, --quick 64MiB.
    #[arg(long, value_parser = parse_size)]
    upload_bytes: Option<u64>,
    /// Download size (bytes; KiB/MiB/GiB suffixes). Default 1GiB, --quick 64MiB.
    #[arg(long, value_parser = parse_size)]
    download_bytes: Option<u64>,
    /// SSE events.
    #[arg(long, default_value_t = 2000)]
    sse_events: u64,
    /// Interval between SSE events, in microseconds.
    #[arg(long, default_value_t = 1000)]
    sse_interval_us: u64,
    /// WebSocket messages (one round trip each).
    #[arg(long, default_value_t = 2000)]
    ws_messages: u64,
    /// Size of one WebSocket message in bytes (at least 8).
    #[arg(long, default_value_t = 64)]
    ws_message_bytes: usize,
    /// Require this `x-bench-via` on streamed answers.
    #[arg(long, value_enum, default_value = "any")]
    expect_via: Via,
    /// Longest one test may take.
    #[arg(long, default_value = "300", value_parser = parse_secs)]
    timeout: Duration,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.trim().parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {s:?} (KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} too large"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim().trim_end_matches('s');
    let n: f64 = s.parse().map_err(|_| format!("bad seconds {s:?}"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("bad seconds {s:?}"));
    }
    Ok(Duration::from_secs_f64(n))
}

// ---- results ---------------------------------------------------------------

fn histogram() -> Histogram<u64> {
    // Nanoseconds, up to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// p50/p99/max of a histogram in nanoseconds, as microseconds.
fn percentiles(prefix: &str, h: &Histogram<u64>, out: &mut serde_json::Map<String, Value>) {
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    out.insert(
        format!("{prefix}_p50_us"),
        json!(us(h.value_at_quantile(0.50))),
    );
    out.insert(
        format!("{prefix}_p99_us"),
        json!(us(h.value_at_quantile(0.99))),
    );
    out.insert(format!("{prefix}_max_us"), json!(us(h.max())));
}

fn mb_s(bytes: u64, took: Duration) -> f64 {
    (bytes as f64 / took.as_secs_f64().max(1e-9) / 1e6 * 10.0).round() / 10.0
}

fn check_via(headers: &HeaderMap, want: Via) -> anyhow::Result<()> {
    let got = headers
        .get(VIA_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let want = match want {
        Via::Any => return Ok(()),
        Via::Stream => "stream",
        Via::Http => "http",
    };
    ensure!(
        got == want,
        "answer header {VIA_HEADER}: {got:?}, want {want:?} (a gateway that answers without \
         `stream` buffered the exchange through Send instead of streaming it)"
    );
    Ok(())
}

fn check_upload_answer(body: &[u8], n: u64, sha: &str) -> anyhow::Result<()> {
    let v: Value = serde_json::from_slice(body).with_context(|| {
        format!(
            "upload answer is not JSON: {:?}",
            String::from_utf8_lossy(body)
        )
    })?;
    ensure!(
        v["bytes"].as_u64() == Some(n),
        "upload: backend counted {} bytes, sent {n}",
        v["bytes"]
    );
    ensure!(
        v["sha256"].as_str() == Some(sha),
        "upload: backend sha256 {} != {sha}",
        v["sha256"]
    );
    Ok(())
}

/// Parses complete events out of `buf` (leaving a partial one), recording
/// the latency of each against `now` (unix nanos at receipt).
fn sse_events(buf: &mut Vec<u8>, now: u64, h: &mut Histogram<u64>) -> anyhow::Result<u64> {
    let mut n = 0;
    while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
        let ev: Vec<u8> = buf.drain(..pos + 2).collect();
        let text = std::str::from_utf8(&ev[..pos]).context("SSE event is not UTF-8")?;
        let stamp: u64 = text
            .strip_prefix("data: ")
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("bad SSE event {text:?}"))?;
        h.saturating_record(now.saturating_sub(stamp).max(1));
        n += 1;
    }
    Ok(n)
}

fn ws_payload(i: u64, size: usize) -> String {
    let mut s = format!("{i:08}");
    while s.len() < size {
        s.push('x');
    }
    s
}

// ---- HTTP ------------------------------------------------------------------

type Body = BoxBody<Bytes, Infallible>;

struct Http {
    addr: SocketAddr,
    host: HeaderValue,
    /// Path prefix without a trailing '/' ("" for none).
    prefix: String,
    via: Via,
}

impl Http {
    async fn new(url: &str, via: Via) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        ensure!(
            uri.scheme_str() == Some("http"),
            "only http:// URLs are supported: {url}"
        );
        let auth = uri.authority().context("URL has no host")?.clone();
        let addr = tokio::net::lookup_host((auth.host(), auth.port_u16().unwrap_or(80)))
            .await?
            .next()
            .with_context(|| format!("cannot resolve {}", auth.host()))?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(auth.as_str())?,
            prefix: uri.path().trim_end_matches('/').to_string(),
            via,
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Body>> {
        let s = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        s.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn request(&self, method: Method, path_and_query: &str, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.prefix))
            .header(header::HOST, self.host.clone())
            .body(body)
            .expect("valid request")
    }

    async fn send(&self, req: Request<Body>) -> anyhow::Result<http::Response<Incoming>> {
        let mut c = self.connect().await?;
        let resp = c.send_request(req).await.context("HTTP request failed")?;
        ensure!(resp.status() == 200, "HTTP status {}", resp.status());
        check_via(resp.headers(), self.via)?;
        Ok(resp)
    }

    async fn upload(&self, n: u64, sha: &str, pattern: &Pattern) -> anyhow::Result<Duration> {
        let pattern = pattern.clone();
        let chunks = stream::unfold(0u64, move |off| {
            let next = (off < n).then(|| {
                let len = (n - off).min(CHUNK as u64) as usize;
                (Ok(Frame::data(pattern.chunk(off, len))), off + len as u64)
            });
            std::future::ready(next)
        });
        // No Content-Length: hyper sends it chunked.
        let mut req = self.request(
            Method::POST,
            "/upload",
            BodyExt::boxed(StreamBody::new(chunks)),
        );
        let ct = HeaderValue::from_static("application/octet-stream");
        req.headers_mut().insert(header::CONTENT_TYPE, ct);
        let t0 = Instant::now();
        let resp = self.send(req).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        let took = t0.elapsed();
        check_upload_answer(&body, n, sha)?;
        Ok(took)
    }

    async fn download(&self, n: u64, pattern: &Pattern) -> anyhow::Result<Duration> {
        let req = self.request(Method::GET, &format!("/download?bytes={n}"), empty());
        let t0 = Instant::now();
        let mut body = self.send(req).await?.into_body();
        let mut off = 0u64;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.context("download body")?.into_data() {
                ensure!(
                    pattern.matches(off, &d),
                    "download: wrong bytes at {off}..{}",
                    off + d.len() as u64
                );
                off += d.len() as u64;
            }
        }
        let took = t0.elapsed();
        ensure!(off == n, "download: got {off} bytes, want {n}");
        Ok(took)
    }

    async fn sse(&self, count: u64, interval_us: u64) -> anyhow::Result<Histogram<u64>> {
        let pq = format!("/sse?count={count}&interval_us={interval_us}");
        let mut req = self.request(Method::GET, &pq, empty());
        let accept = HeaderValue::from_static("text/event-stream");
        req.headers_mut().insert(header::ACCEPT, accept);
        let mut body = self.send(req).await?.into_body();
        let (mut h, mut buf, mut got) = (histogram(), Vec::new(), 0);
        while let Some(f) = body.frame().await {
            let now = unix_nanos();
            if let Ok(d) = f.context("SSE body")?.into_data() {
                buf.extend_from_slice(&d);
                got += sse_events(&mut buf, now, &mut h)?;
            }
        }
        ensure!(
            got == count && buf.is_empty(),
            "SSE: got {got} events, want {count}"
        );
        Ok(h)
    }

    async fn ws(&self, count: u64, size: usize) -> anyhow::Result<Histogram<u64>> {
        let s = tokio::net::TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        let host = self.host.to_str()?;
        let url = format!("ws://{host}{}/ws", self.prefix);
        let (mut ws, _resp) = tokio_tungstenite::client_async(url.as_str(), s)
            .await
            .with_context(|| format!("WebSocket handshake with {url}"))?;
        let mut h = histogram();
        for i in 0..count {
            let msg = ws_payload(i, size);
            let t0 = Instant::now();
            ws.send(Message::text(msg.clone())).await?;
            loop {
                match ws
                    .next()
                    .await
                    .context("WebSocket closed before the echo")??
                {
                    Message::Text(t) => {
                        ensure!(t.as_str() == msg, "WebSocket: echo of message {i} differs");
                        break;
                    }
                    Message::Binary(_) => bail!("WebSocket: binary echo of a text message"),
                    Message::Close(c) => bail!("WebSocket closed by the server: {c:?}"),
                    _ => {} // ping/pong
                }
            }
            h.saturating_record(t0.elapsed().as_nanos() as u64);
        }
        ws.close(None).await?;
        // The server's close answer ends the stream.
        while let Some(Ok(_)) = ws.next().await {}
        Ok(h)
    }
}

fn empty() -> Body {
    BodyExt::boxed(Empty::new())
}

// ---- gRPC (direct) -----------------------------------------------------------

struct Grpc {
    client: ForwardingServiceClient<Channel>,
    authority: String,
    via: Via,
}

impl Grpc {
    async fn connect(addr: &str, via: Via) -> anyhow::Result<Self> {
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let ch = Endpoint::from_shared(uri.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {uri}"))?;
        let authority = uri.split("://").nth(1).unwrap_or(&uri).to_string();
        Ok(Self {
            client: ForwardingServiceClient::new(ch),
            authority,
            via,
        })
    }

    /// The head a gateway would send for `method path?query`.
    fn head(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        upgrade: &str,
    ) -> pb::StreamRequest {
        let headers = headers
            .iter()
            .map(|(k, v)| pb::Header {
                name: (*k).into(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect();
        frame(Out::Head(pb::ForwardingReq {
            protocol_version: proto::PROTOCOL_VERSION,
            method: method.into(),
            scheme: "http".into(),
            authority: self.authority.clone(),
            path: path.into(),
            query: query.into(),
            has_query: !query.is_empty(),
            version: pb::HttpVersion::Http11 as i32,
            headers,
            context: Some(pb::RequestContext {
                request_id: "streambench".into(),
                client_addresses: vec!["127.0.0.1".into()],
                service: "bench-stream".into(),
                ..Default::default()
            }),
            upgrade: upgrade.into(),
            ..Default::default()
        }))
    }

    /// Opens the call and reads the response head; checks status and via.
    async fn call(
        &self,
        frames: impl futures_util::Stream<Item = pb::StreamRequest> + Send + 'static,
        want_status: u32,
    ) -> anyhow::Result<(pb::ForwardingResp, tonic::Streaming<pb::StreamResponse>)> {
        let mut inbound = self.client.clone().stream(frames).await?.into_inner();
        let head = match inbound.message().await?.and_then(|f| f.frame) {
            Some(In::Head(h)) => h,
            other => bail!("first response frame is not a head: {other:?}"),
        };
        ensure!(
            head.status == want_status,
            "response head status {}, want {want_status}",
            head.status
        );
        let mut hm = HeaderMap::new();
        for h in &head.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                HeaderValue::from_bytes(&h.value),
            ) {
                hm.append(k, v);
            }
        }
        check_via(&hm, self.via)?;
        Ok((head, inbound))
    }

    async fn upload(&self, n: u64, sha: &str, pattern: &Pattern) -> anyhow::Result<Duration> {
        let pattern = pattern.clone();
        let head = self.head(
            "POST",
            "/upload",
            "",
            &[("content-type", "application/octet-stream")],
            "",
        );
        let chunks = stream::unfold(0u64, move |off| {
            let next = (off < n).then(|| {
                let len = (n - off).min(CHUNK as u64) as usize;
                let data = pattern.chunk(off, len);
                (frame(Out::Body(pb::BodyChunk { data })), off + len as u64)
            });
            std::future::ready(next)
        });
        let frames = stream::iter([head])
            .chain(chunks)
            .chain(stream::iter([frame(Out::End(pb::StreamEnd::default()))]));
        let t0 = Instant::now();
        let (head, mut inbound) = self.call(frames, 200).await?;
        let mut body = head.body.to_vec();
        while let Some(f) = inbound.message().await? {
            match f.frame {
                Some(In::Body(c)) => body.extend_from_slice(&c.data),
                Some(In::End(_)) => {}
                other => bail!("unexpected frame in the upload answer: {other:?}"),
            }
        }
        let took = t0.elapsed();
        check_upload_answer(&body, n, sha)?;
        Ok(took)
    }

    /// Head + end of a GET, as a stream that then half-closes.
    fn get(
        &self,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> impl futures_util::Stream<Item = pb::StreamRequest> + Send + 'static {
        let head = self.head("GET", path, query, headers, "");
        stream::iter([head, frame(Out::End(pb::StreamEnd::default()))])
    }

    async fn download(&self, n: u64, pattern: &Pattern) -> anyhow::Result<Duration> {
        let frames = self.get("/download", &format!("bytes={n}"), &[]);
        let t0 = Instant::now();
        let (head, mut inbound) = self.call(frames, 200).await?;
        ensure!(
            pattern.matches(0, &head.body),
            "download: wrong bytes in the head"
        );
        let mut off = head.body.len() as u64;
        while let Some(f) = inbound.message().await? {
            match f.frame {
                Some(In::Body(c)) => {
                    let d = c.data;
                    ensure!(
                        pattern.matches(off, &d),
                        "download: wrong bytes at {off}..{}",
                        off + d.len() as u64
                    );
                    off += d.len() as u64;
                }
                Some(In::End(_)) => {}
                other => bail!("unexpected frame in a download: {other:?}"),
            }
        }
        let took = t0.elapsed();
        ensure!(off == n, "download: got {off} bytes, want {n}");
        Ok(took)
    }

    async fn sse(&self, count: u64, interval_us: u64) -> anyhow::Result<Histogram<u64>> {
        let q = format!("count={count}&interval_us={interval_us}");
        let frames = self.get("/sse", &q, &[("accept", "text/event-stream")]);
        let (head, mut inbound) = self.call(frames, 200).await?;
        let (mut h, mut buf, mut got) = (histogram(), head.body.to_vec(), 0);
        while let Some(f) = inbound.message().await? {
            let now = unix_nanos();
            match f.frame {
                Some(In::Body(c)) => {
                    buf.extend_from_slice(&c.data);
                    got += sse_events(&mut buf, now, &mut h)?;
                }
                Some(In::End(_)) => {}
                other => bail!("unexpected frame in an SSE answer: {other:?}"),
            }
        }
        ensure!(
            got == count && buf.is_empty(),
            "SSE: got {got} events, want {count}"
        );
        Ok(h)
    }

    async fn ws(&self, count: u64, size: usize) -> anyhow::Result<Histogram<u64>> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(self.head("GET", "/ws", "", &[], "websocket"))
            .await?;
        let (_head, mut inbound) = self.call(ReceiverStream::new(rx), 101).await?;
        let mut h = histogram();
        for i in 0..count {
            let msg = ws_payload(i, size);
            let m = pb::WebSocketMessage {
                data: Some(Data::Text(msg.clone())),
            };
            let t0 = Instant::now();
            tx.send(frame(Out::Message(m))).await?;
            match inbound.message().await?.and_then(|f| f.frame) {
                Some(In::Message(pb::WebSocketMessage {
                    data: Some(Data::Text(t)),
                })) => ensure!(t == msg, "WebSocket: echo of message {i} differs"),
                other => bail!("WebSocket: expected the echo of message {i}, got {other:?}"),
            }
            h.saturating_record(t0.elapsed().as_nanos() as u64);
        }
        let close = pb::WebSocketClose {
            code: 1000,
            reason: String::new(),
        };
        tx.send(frame(Out::Close(close))).await?;
        drop(tx); // half-close, as the gateway does
        while let Some(f) = inbound.message().await? {
            if !matches!(f.frame, Some(In::Close(_))) {
                bail!("WebSocket: unexpected frame after close: {:?}", f.frame);
            }
        }
        Ok(h)
    }
}

fn frame(f: Out) -> pb::StreamRequest {
    pb::StreamRequest { frame: Some(f) }
}

// ---- main --------------------------------------------------------------------

enum Client {
    Grpc(Grpc),
    Http(Http),
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .with_context(|| format!("{what}: no result within {limit:?}"))?
        .with_context(|| format!("{what} failed"))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = match args.target {
        Target::Grpc => {
            let addr = args
                .addr
                .as_deref()
                .context("--target grpc needs --addr host:port")?;
            Client::Grpc(Grpc::connect(addr, args.expect_via).await?)
        }
        Target::Http => {
            let url = args
                .url
                .as_deref()
                .context("--target http needs --url http://host:port")?;
            Client::Http(Http::new(url, args.expect_via).await?)
        }
    };
    let default_bytes = if args.quick { 64 << 20 } else { 1 << 30 };
    let up_n = args.upload_bytes.unwrap_or(default_bytes);
    let down_n = args.download_bytes.unwrap_or(default_bytes);
    ensure!(
        args.ws_message_bytes >= 8,
        "--ws-message-bytes must be at least 8"
    );
    let pattern = Pattern::new();
    let mut out = serde_json::Map::new();
    let target = match args.target {
        Target::Grpc => "grpc",
        Target::Http => "http",
    };
    out.insert("target".into(), json!(target));
    let limit = args.timeout;
    for test in &args.tests {
        match test {
            Test::Upload => {
                let sha = pattern.sha256_hex(up_n);
                let took = match &client {
                    Client::Grpc(c) => {
                        timed(limit, "upload", c.upload(up_n, &sha, &pattern)).await?
                    }
                    Client::Http(c) => {
                        timed(limit, "upload", c.upload(up_n, &sha, &pattern)).await?
                    }
                };
                eprintln!(
                    "streambench: upload {up_n} bytes in {:.3} s = {} MB/s",
                    took.as_secs_f64(),
                    mb_s(up_n, took)
                );
                out.insert("upload_bytes".into(), json!(up_n));
                out.insert("upload_s".into(), json!(took.as_secs_f64()));
                out.insert("upload_mb_s".into(), json!(mb_s(up_n, took)));
            }
            Test::Download => {
                let took = match &client {
                    Client::Grpc(c) => {
                        timed(limit, "download", c.download(down_n, &pattern)).await?
                    }
                    Client::Http(c) => {
                        timed(limit, "download", c.download(down_n, &pattern)).await?
                    }
                };
                eprintln!(
                    "streambench: download {down_n} bytes in {:.3} s = {} MB/s",
                    took.as_secs_f64(),
                    mb_s(down_n, took)
                );
                out.insert("download_bytes".into(), json!(down_n));
                out.insert("download_s".into(), json!(took.as_secs_f64()));
                out.insert("download_mb_s".into(), json!(mb_s(down_n, took)));
            }
            Test::Sse => {
                let (n, us) = (args.sse_events, args.sse_interval_us);
                let h = match &client {
                    Client::Grpc(c) => timed(limit, "sse", c.sse(n, us)).await?,
                    Client::Http(c) => timed(limit, "sse", c.sse(n, us)).await?,
                };
                out.insert("sse_events".into(), json!(h.len()));
                out.insert("sse_interval_us".into(), json!(us));
                percentiles("sse", &h, &mut out);
                eprintln!(
                    "streambench: sse {n} events every {us} us: p50 {} us, p99 {} us",
                    out["sse_p50_us"], out["sse_p99_us"]
                );
            }
            Test::Ws => {
                let (n, size) = (args.ws_messages, args.ws_message_bytes);
                let h = match &client {
                    Client::Grpc(c) => timed(limit, "ws", c.ws(n, size)).await?,
                    Client::Http(c) => timed(limit, "ws", c.ws(n, size)).await?,
                };
                out.insert("ws_messages".into(), json!(h.len()));
                out.insert("ws_message_bytes".into(), json!(size));
                percentiles("ws", &h, &mut out);
                eprintln!(
                    "streambench: ws {n} echoes of {size} bytes: p50 {} us, p99 {} us",
                    out["ws_p50_us"], out["ws_p99_us"]
                );
            }
        }
    }
    out.insert("cpu_ms".into(), json!(own_cpu_ms()));
    println!("{}", Value::Object(out));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One thread, like loadgen: the client should not take both cores from
    // the proxy under test.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}
