//! `loadgen`: a small open-model load generator for scripts/bench.sh.
//!
//! Targets:
//! * `--target grpc --addr host:port`: calls `forwarding.v1.ForwardingService/Send`
//!   directly with a fixed `ForwardingReq` (GET /bench), over `--connections`
//!   HTTP/2 channels (default 1, like the gateway's one channel per instance).
//! * `--target http --url http://host:port/path`: HTTP/1.1 GET with keep-alive
//!   over a pool of `--connections` connections.
//!
//! Modes:
//! * `--rate R` (R > 0): open model. Request i is scheduled at `t0 + i/R`
//!   whether or not earlier requests have completed, and its latency is taken
//!   from the *scheduled* time, so a stalled server is charged for the queue
//!   it causes (no coordinated omission). The schedule is kept by a dedicated
//!   OS thread sleeping with `nanosleep` (tokio's timer has 1 ms granularity,
//!   which alone would add ~0.5 ms to every latency).
//! * `--rate 0`: saturation. Closed loop, `--concurrency` workers each issuing
//!   the next request as soon as the previous one answered. With
//!   `--requests N` exactly N requests are sent in all, then it stops.
//!
//! Requests that start during `--warmup` are not measured. Output: one JSON
//! line with `sent`, `ok`, `errors`, `rps`, `p50_us`, `p90_us`, `p99_us`,
//! `max_us` for the measured window (latencies of successful requests), plus
//! `total_ok`/`total_errors` over the whole run including warm-up (what a
//! caller dividing a process's CPU time over the whole run needs) and
//! `cpu_ms`, the load generator's own CPU time; `codes`, the measured
//! requests by outcome (the HTTP status, or `ForwardingResp.status` with 0
//! read as 200; `transport` for a connection or protocol error, `timeout`,
//! `body` for a body of the wrong size), and `err_p50_us`/`err_p99_us`, the
//! latency of the measured failures (how fast a shedding server refuses).
//! A non-2xx
//! answer (HTTP status, or `ForwardingResp.status`), a transport error and a
//! request exceeding `--timeout` are errors.

use bench::own_cpu_ms;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use proto::v1 as pb;
use proto::v1::forwarding_service_client::ForwardingServiceClient;
use tokio::sync::Semaphore;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Grpc,
    Http,
}

#[derive(Debug, Parser)]
#[command(
    about = "Open-model load generator (gRPC ForwardingService or HTTP/1.1); prints one JSON line."
)]
struct Args {
    /// What to load.
    #[arg(long, value_enum)]
    target: Target,
    /// gRPC target address (host:port or http://host:port).
    #[arg(long)]
    addr: Option<String>,
    /// HTTP target URL (http://host:port/path).
    #[arg(long)]
    url: Option<String>,
    /// Fixed arrival rate in requests/s; 0 = saturation (closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Closed-loop workers in saturation mode.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP: connection pool size (default: --concurrency at saturation, 32
    /// at a fixed rate). gRPC: number of HTTP/2 channels (default 1).
    #[arg(long)]
    connections: Option<usize>,
    /// Measured duration (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Warm-up before measuring (not counted in the percentiles).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Per-request timeout; a request exceeding it is an error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Tokio worker threads of the load generator (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Response body bytes expected (only checked when given).
    #[arg(long)]
    expect_body_bytes: Option<usize>,
    /// Saturation only: send exactly this many requests in all (workers take
    /// a ticket before each request), then stop; `--duration` still caps the
    /// run. For counting a proxy's work over a known number of requests
    /// (scripts/bench.sh's callgrind runs).
    #[arg(long)]
    requests: Option<u64>,
    /// HTTP: a header sent on every request, `name: value` (repeatable;
    /// `--header "authorization: Bearer ..."` for scripts/profile.sh --jwt).
    #[arg(long = "header")]
    headers: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (us, ms, s, m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---- clients ---------------------------------------------------------------

struct GrpcClient {
    clients: Vec<ForwardingServiceClient<Channel>>,
    next: AtomicUsize,
    req: pb::ForwardingReq,
}

impl GrpcClient {
    async fn connect(addr: &str, channels: usize) -> anyhow::Result<Self> {
        let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let mut clients = Vec::with_capacity(channels);
        for _ in 0..channels.max(1) {
            let ch = Endpoint::from_shared(uri.clone())?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {uri}"))?;
            clients.push(ForwardingServiceClient::new(ch));
        }
        let authority = uri.split("://").nth(1).unwrap_or(&uri).to_string();
        let req = pb::ForwardingReq {
            protocol_version: proto::PROTOCOL_VERSION,
            method: "GET".into(),
            scheme: "http".into(),
            authority,
            path: "/bench".into(),
            version: pb::HttpVersion::Http11 as i32,
            headers: vec![pb::Header {
                name: "accept".into(),
                value: Bytes::from_static(b"*/*"),
            }],
            context: Some(pb::RequestContext {
                request_id: "bench".into(),
                client_addresses: vec!["127.0.0.1".into()],
                service: "bench".into(),
                matched_prefix: "/bench".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
            req,
        })
    }

    async fn call(&self, expect_body: Option<usize>) -> u16 {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let mut c = self.clients[i].clone();
        match c.send(self.req.clone()).await {
            Ok(resp) => {
                let r = resp.get_ref();
                let status = if r.status == 0 {
                    200
                } else {
                    r.status.min(999) as u16
                };
                if is_success(status) && expect_body.is_some_and(|n| r.body.len() != n) {
                    return BODY_MISMATCH;
                }
                status
            }
            Err(_) => TRANSPORT,
        }
    }
}

struct HttpPool {
    addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
    permits: Semaphore,
}

impl HttpPool {
    async fn new(url: &str, size: usize, headers: &[String]) -> anyhow::Result<Self> {
        let headers = headers
            .iter()
            .map(|h| {
                let (n, v) = h
                    .split_once(':')
                    .with_context(|| format!("--header {h:?} is not name: value"))?;
                Ok((n.trim().parse()?, HeaderValue::from_str(v.trim())?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// URLs are supported: {url}");
        }
        let auth = uri.authority().context("URL has no host")?.clone();
        let port = auth.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((auth.host(), port))
            .await?
            .next()
            .with_context(|| format!("cannot resolve {}", auth.host()))?;
        let path: Uri = uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .parse()?;
        let pool = Self {
            addr,
            host: HeaderValue::from_str(auth.as_str())?,
            path,
            headers,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Semaphore::new(size.max(1)),
        };
        // Fail fast when nothing listens there.
        let c = pool
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        pool.idle.lock().unwrap().push(c);
        Ok(pool)
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
        let s = tokio::net::TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn call(&self, expect_body: Option<usize>) -> u16 {
        let Ok(_permit) = self.permits.acquire().await else {
            return TRANSPORT;
        };
        let pooled = {
            let mut idle = self.idle.lock().unwrap();
            let mut found = None;
            while let Some(c) = idle.pop() {
                if !c.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let mut sender = match pooled {
            Some(s) => s,
            None => match self.connect().await {
                Ok(s) => s,
                Err(_) => return TRANSPORT,
            },
        };
        if sender.ready().await.is_err() {
            return TRANSPORT;
        }
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(self.path.clone())
            .header(header::HOST, self.host.clone())
            .body(Empty::new())
            .expect("static request");
        for (n, v) in &self.headers {
            req.headers_mut().append(n.clone(), v.clone());
        }
        let ok = match sender.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.into_body().collect().await {
                    Ok(b) => {
                        let len = b.to_bytes().len();
                        if is_success(status) && expect_body.is_some_and(|n| len != n) {
                            BODY_MISMATCH
                        } else {
                            status
                        }
                    }
                    Err(_) => TRANSPORT,
                }
            }
            Err(_) => TRANSPORT,
        };
        if !sender.is_closed() {
            self.idle.lock().unwrap().push(sender);
        }
        ok
    }
}

// One per process, behind an Arc: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Client {
    Grpc(GrpcClient),
    Http(HttpPool),
}

/// Outcomes that are not an HTTP status.
const TRANSPORT: u16 = 0;
const TIMEOUT: u16 = 1;
const BODY_MISMATCH: u16 = 2;

fn is_success(code: u16) -> bool {
    (200..300).contains(&code)
}

fn code_name(code: u16) -> String {
    match code {
        TRANSPORT => "transport".into(),
        TIMEOUT => "timeout".into(),
        BODY_MISMATCH => "body".into(),
        c => c.to_string(),
    }
}

/// One request under `timeout`: its outcome code.
async fn timed_call(client: &Client, timeout: Duration, expect: Option<usize>) -> u16 {
    tokio::time::timeout(timeout, client.call(expect))
        .await
        .unwrap_or(TIMEOUT)
}

impl Client {
    async fn call(&self, expect_body: Option<usize>) -> u16 {
        match self {
            Client::Grpc(c) => c.call(expect_body).await,
            Client::Http(c) => c.call(expect_body).await,
        }
    }
}

// ---- statistics ------------------------------------------------------------

struct Stats {
    /// Latency of successful measured requests, in microseconds.
    hist: Histogram<u64>,
    /// Latency of failed measured requests, in microseconds.
    err_hist: Histogram<u64>,
    /// Measured requests by outcome code.
    codes: std::collections::BTreeMap<u16, u64>,
    ok: u64,
    errors: u64,
    warm_ok: u64,
    warm_errors: u64,
    last_done: Option<Instant>,
}

impl Stats {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            err_hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            codes: Default::default(),
            ok: 0,
            errors: 0,
            warm_ok: 0,
            warm_errors: 0,
            last_done: None,
        }
    }

    fn record(&mut self, measured: bool, code: u16, latency: Duration, done: Instant) {
        let ok = is_success(code);
        if measured {
            *self.codes.entry(code).or_default() += 1;
        }
        match (measured, ok) {
            (true, true) => {
                self.ok += 1;
                self.hist
                    .saturating_record((latency.as_micros() as u64).max(1));
                self.last_done = self.last_done.max(Some(done));
            }
            (true, false) => {
                self.errors += 1;
                self.err_hist
                    .saturating_record((latency.as_micros() as u64).max(1));
            }
            (false, true) => self.warm_ok += 1,
            (false, false) => self.warm_errors += 1,
        }
    }

    fn merge(&mut self, o: &Stats) {
        self.hist.add(&o.hist).expect("same histogram bounds");
        self.err_hist
            .add(&o.err_hist)
            .expect("same histogram bounds");
        for (c, n) in &o.codes {
            *self.codes.entry(*c).or_default() += n;
        }
        self.ok += o.ok;
        self.errors += o.errors;
        self.warm_ok += o.warm_ok;
        self.warm_errors += o.warm_errors;
        self.last_done = self.last_done.max(o.last_done);
    }
}

// ---- modes -----------------------------------------------------------------

struct Window {
    start: Instant,
    from: Instant,
    end: Instant,
}

async fn saturation(client: Arc<Client>, args: &Args, w: &Window) -> (Stats, u64) {
    let mut set = tokio::task::JoinSet::new();
    let (from, end, timeout, expect) = (w.from, w.end, args.timeout, args.expect_body_bytes);
    let tickets = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let limit = args.requests.unwrap_or(u64::MAX);
    for _ in 0..args.concurrency.max(1) {
        let client = client.clone();
        let tickets = tickets.clone();
        set.spawn(async move {
            let mut st = Stats::new();
            loop {
                let t = Instant::now();
                if t >= end || tickets.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= limit {
                    break;
                }
                let code = timed_call(&client, timeout, expect).await;
                let done = Instant::now();
                st.record(t >= from, code, done - t, done);
                if !is_success(code) {
                    // Do not spin on a refusing target.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            st
        });
    }
    let mut total = Stats::new();
    while let Some(r) = set.join_next().await {
        total.merge(&r.expect("worker panicked"));
    }
    let sent = total.ok + total.errors;
    (total, sent)
}

async fn fixed_rate(client: Arc<Client>, args: &Args, w: &Window) -> (Stats, u64) {
    let stats = Arc::new(Mutex::new(Stats::new()));
    let inflight = Arc::new(AtomicU64::new(0));
    let handle = tokio::runtime::Handle::current();
    let (start, from, end, timeout, expect) =
        (w.start, w.from, w.end, args.timeout, args.expect_body_bytes);
    let interval = 1e9 / args.rate;
    let sched = {
        let stats = stats.clone();
        let inflight = inflight.clone();
        std::thread::Builder::new()
            .name("loadgen-sched".into())
            .spawn(move || {
                let mut sent = 0u64;
                let mut i = 0u64;
                loop {
                    let due = start + Duration::from_nanos((i as f64 * interval) as u64);
                    if due >= end {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let measured = due >= from;
                    sent += measured as u64;
                    inflight.fetch_add(1, Ordering::SeqCst);
                    let (client, stats, inflight) =
                        (client.clone(), stats.clone(), inflight.clone());
                    handle.spawn(async move {
                        let code = timed_call(&client, timeout, expect).await;
                        let done = Instant::now();
                        stats.lock().unwrap().record(
                            measured,
                            code,
                            done.saturating_duration_since(due),
                            done,
                        );
                        inflight.fetch_sub(1, Ordering::SeqCst);
                    });
                    i += 1;
                }
                sent
            })
    };
    let sched = sched.expect("spawn scheduler thread");
    let sent = tokio::task::spawn_blocking(move || sched.join().expect("scheduler panicked"))
        .await
        .expect("join scheduler");
    // Let the stragglers finish (each is bounded by --timeout).
    let give_up = Instant::now() + timeout + Duration::from_secs(1);
    while inflight.load(Ordering::SeqCst) > 0 && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut st = std::mem::replace(&mut *stats.lock().unwrap(), Stats::new());
    // Scheduled but never finished: errors.
    let unfinished = inflight.load(Ordering::SeqCst);
    st.errors += unfinished;
    if unfinished > 0 {
        *st.codes.entry(TIMEOUT).or_default() += unfinished;
    }
    (st, sent)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = match args.target {
        Target::Grpc => {
            let addr = args
                .addr
                .as_deref()
                .context("--target grpc needs --addr host:port")?;
            Client::Grpc(GrpcClient::connect(addr, args.connections.unwrap_or(1)).await?)
        }
        Target::Http => {
            let url = args
                .url
                .as_deref()
                .context("--target http needs --url http://host:port/path")?;
            let size = args.connections.unwrap_or(if args.rate > 0.0 {
                32
            } else {
                args.concurrency
            });
            Client::Http(HttpPool::new(url, size, &args.headers).await?)
        }
    };
    let client = Arc::new(client);
    let start = Instant::now();
    let w = Window {
        start,
        from: start + args.warmup,
        end: start + args.warmup + args.duration,
    };
    let (st, sent) = if args.rate > 0.0 {
        fixed_rate(client, &args, &w).await
    } else {
        saturation(client, &args, &w).await
    };
    // Throughput over the measured window: successes divided by the time from
    // the end of the warm-up to the last measured completion.
    let elapsed = st
        .last_done
        .map(|d| d.saturating_duration_since(w.from))
        .unwrap_or(args.duration)
        // A --requests run ends when its requests are done, not at --duration.
        .max(if args.requests.is_some() {
            Duration::from_millis(1)
        } else {
            args.duration
        })
        .as_secs_f64();
    let h = &st.hist;
    let q = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let eh = &st.err_hist;
    let eq = |p: f64| {
        if eh.is_empty() {
            0
        } else {
            eh.value_at_quantile(p)
        }
    };
    let out = serde_json::json!({
        "target": match args.target { Target::Grpc => "grpc", Target::Http => "http" },
        "mode": if args.rate > 0.0 { "rate" } else { "saturation" },
        "rate": args.rate,
        "concurrency": args.concurrency,
        "sent": sent,
        "ok": st.ok,
        "errors": st.errors,
        "rps": ((st.ok as f64 / elapsed) * 10.0).round() / 10.0,
        "p50_us": q(0.50),
        "p90_us": q(0.90),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": h.max(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "total_ok": st.ok + st.warm_ok,
        "total_errors": st.errors + st.warm_errors,
        "cpu_ms": own_cpu_ms(),
        "codes": st.codes.iter().map(|(c, n)| (code_name(*c), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
        "err_p50_us": eq(0.50),
        "err_p99_us": eq(0.99),
    });
    println!("{out}");
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate < 0.0 || !args.rate.is_finite() {
        bail!("--rate must be >= 0");
    }
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(args))
}
