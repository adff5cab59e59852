//! `flood`: how a gateway holds up against idle and trickling connections.
//!
//! Starts nothing: give it the URL of a running gateway route (for example
//! the `/bench` route scripts/bench.sh registers). It measures a normal
//! client (one new HTTP/1.1 connection per request, sequential) for
//! `--duration` without a flood, then opens `--connections` flood
//! connections and measures the same client again while they stay open,
//! and reports how many of the flood connections the gateway closed and
//! after how long.
//!
//! Flood kinds (`--kind`, default `mix`: a quarter each):
//! * `silent`: connect, send nothing;
//! * `preface`: the HTTP/2 preface, then nothing;
//! * `h2-ping`: preface and SETTINGS, then an HTTP/2 PING every
//!   `--trickle-interval` (bytes flow, no request ever comes);
//! * `trickle`: an HTTP/1.1 head, one byte every `--trickle-interval`.
//!
//! Output: a human-readable summary on stderr and one JSON line on stdout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Silent,
    Preface,
    H2Ping,
    Trickle,
    Mix,
}

#[derive(Debug, Parser)]
#[command(
    about = "Idle/trickling connection flood against a running gateway; prints one JSON line."
)]
struct Args {
    /// A URL the gateway answers with 2xx, e.g. http://127.0.0.1:8080/bench/x.
    #[arg(long)]
    url: String,
    /// Flood connections to open.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// What the flood connections send.
    #[arg(long, value_enum, default_value_t = Kind::Mix)]
    kind: Kind,
    /// Measuring time of each phase (without and with the flood).
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    duration: Duration,
    /// Pause between two bytes (trickle) or PINGs (h2-ping).
    #[arg(long, default_value = "1s", value_parser = humantime_duration)]
    trickle_interval: Duration,
    /// A normal request slower than this counts as an error.
    #[arg(long, default_value = "5s", value_parser = humantime_duration)]
    timeout: Duration,
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s:?}: give a unit (ms, s)"))?;
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: not a number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
/// A PING frame with 8 bytes of opaque data.
const PING: &[u8] = &[0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];

struct Target {
    addr: SocketAddr,
    request: Vec<u8>,
}

fn target(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .context("no address")?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .into_bytes();
    Ok(Target { addr, request })
}

/// One normal request on a new connection; its latency, or why it failed.
async fn normal_request(t: &Target, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let exchange = async {
        let mut s = TcpStream::connect(t.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.set_nodelay(true).ok();
        s.write_all(&t.request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(1024);
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if buf.starts_with(b"HTTP/1.1 2") {
            Ok(())
        } else {
            let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
            Err(format!("answer: {}", String::from_utf8_lossy(line)))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timeout".into()),
    }
}

#[derive(Default)]
struct Phase {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Option<Histogram<u64>>,
}

impl Phase {
    fn pct(&self, q: f64) -> f64 {
        self.hist
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok, "errors": self.errors,
            "p50_ms": self.pct(0.5), "p90_ms": self.pct(0.9), "p99_ms": self.pct(0.99),
            "max_ms": self.pct(1.0), "first_error": self.first_error,
        })
    }
}

async fn measure(t: &Target, args: &Args) -> Phase {
    let mut p = Phase {
        hist: Some(Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")),
        ..Default::default()
    };
    let end = Instant::now() + args.duration;
    while Instant::now() < end {
        match normal_request(t, args.timeout).await {
            Ok(d) => {
                p.ok += 1;
                if let Some(h) = p.hist.as_mut() {
                    h.saturating_record(d.as_micros() as u64);
                }
            }
            Err(e) => {
                p.errors += 1;
                p.first_error.get_or_insert(e);
            }
        }
    }
    p
}

/// Keeps one flood connection open the way `kind` says until the gateway
/// closes it; returns how long that took (None: still open at `stop`).
async fn flood_one(
    mut s: TcpStream,
    kind: Kind,
    interval: Duration,
    stop: Instant,
) -> Option<Duration> {
    let start = Instant::now();
    let opening: &[&[u8]] = match kind {
        Kind::Preface => &[PREFACE],
        Kind::H2Ping => &[PREFACE, SETTINGS],
        Kind::Trickle => &[b"GET / HTTP/1.1\r\n"],
        _ => &[],
    };
    for part in opening {
        if s.write_all(part).await.is_err() {
            return Some(start.elapsed());
        }
    }
    let trickle = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut i = 0usize;
    let mut buf = [0u8; 4096];
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => {} // SETTINGS, PING acks, a 408/400: keep reading to the close
            },
            _ = tick.tick() => {
                if Instant::now() >= stop {
                    return None;
                }
                let bytes: &[u8] = match kind {
                    Kind::H2Ping => PING,
                    Kind::Trickle => &trickle[i % trickle.len()..i % trickle.len() + 1],
                    _ => continue,
                };
                i += 1;
                if s.write_all(bytes).await.is_err() {
                    return Some(start.elapsed());
                }
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let t = target(&args.url)?;
    if let Err(e) = normal_request(&t, args.timeout).await {
        bail!("{} does not answer 2xx: {e}", args.url);
    }
    eprintln!("[flood] baseline: normal client for {:?}", args.duration);
    let baseline = measure(&t, &args).await;

    eprintln!(
        "[flood] opening {} {:?} connections",
        args.connections, args.kind
    );
    let kinds = [Kind::Silent, Kind::Preface, Kind::H2Ping, Kind::Trickle];
    let opened_at = Instant::now();
    // Flood connections stay open for both the measuring phase and a
    // little longer, so closes by idle timeouts are seen.
    let stop = opened_at + args.duration * 2;
    let closes = Arc::new(Mutex::new(Vec::new()));
    let connect_errors = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        let kind = match args.kind {
            Kind::Mix => kinds[i % kinds.len()],
            k => k,
        };
        match TcpStream::connect(t.addr).await {
            Ok(s) => {
                let closes = closes.clone();
                let interval = args.trickle_interval;
                tasks.spawn(async move {
                    if let Some(d) = flood_one(s, kind, interval, stop).await {
                        closes.lock().await.push((kind, d));
                    }
                });
            }
            Err(_) => {
                connect_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let open_time = opened_at.elapsed();
    eprintln!(
        "[flood] opened in {open_time:?}; normal client for {:?}",
        args.duration
    );
    let during = measure(&t, &args).await;
    while tasks.join_next().await.is_some() {}

    let closes = closes.lock().await;
    let mut per_kind = serde_json::Map::new();
    for k in kinds {
        let mut ds: Vec<f64> = closes
            .iter()
            .filter(|(kk, _)| *kk == k)
            .map(|(_, d)| d.as_secs_f64())
            .collect();
        ds.sort_by(f64::total_cmp);
        let med = ds.get(ds.len() / 2).copied();
        per_kind.insert(
            format!("{k:?}").to_lowercase(),
            serde_json::json!({"closed": ds.len(), "median_close_s": med, "max_close_s": ds.last()}),
        );
    }
    let out = serde_json::json!({
        "url": args.url,
        "flood_connections": args.connections,
        "connect_errors": connect_errors.load(Ordering::Relaxed),
        "open_s": open_time.as_secs_f64(),
        "closed_by_gateway": closes.len(),
        "watched_s": (args.duration * 2).as_secs_f64(),
        "per_kind": per_kind,
        "baseline": baseline.json(),
        "during_flood": during.json(),
    });
    eprintln!(
        "[flood] baseline:     {} ok, {} errors, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        baseline.ok,
        baseline.errors,
        baseline.pct(0.5),
        baseline.pct(0.99),
        baseline.pct(1.0)
    );
    eprintln!(
        "[flood] during flood: {} ok, {} errors, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        during.ok,
        during.errors,
        during.pct(0.5),
        during.pct(0.99),
        during.pct(1.0)
    );
    eprintln!(
        "[flood] flood: {} opened ({} connect errors), {} closed by the gateway within {:?}",
        args.connections,
        connect_errors.load(Ordering::Relaxed),
        closes.len(),
        args.duration * 2
    );
    println!("{out}");
    Ok(())
}
