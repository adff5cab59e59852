//! `--bench`: a backend's CPU per small request, next to a baseline.
//!
//! The kit starts every backend command (`sh -c CMD`; it must print
//! `READY host:port` on stdout), warms each one up, then sends the same
//! small `Send` (GET, six headers, no body) in rounds: in each round every
//! backend gets its share of the requests in turn, the order rotating, so
//! the noise of a shared machine falls on all of them alike. Around each
//! share it reads the CPU time of every thread of the backend's whole
//! process tree from `/proc` (the command may be a wrapper script, a
//! `java -cp` or a `go run`): the scheduler's nanoseconds per thread
//! (`schedstat`), or user + system ticks (`stat`) where the kernel keeps no
//! such count. The kit's own CPU is not in it. Every answer must be a 200.
//!
//! A backend marked as a baseline (the raw contract, written by hand on
//! the language's gRPC library) is the one the backends after it, up to the
//! next baseline, are compared with.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::v1 as pb;
use proto::v1::forwarding_service_client::ForwardingServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// One backend to measure.
#[derive(Debug, Clone)]
pub struct BenchBackend {
    /// Its name in the report (no spaces, so scripts can split lines).
    pub label: String,
    /// The shell command that starts it and prints `READY host:port`.
    pub cmd: String,
    /// The raw-contract baseline of the backends after it.
    pub baseline: bool,
}

/// How much to send.
#[derive(Debug, Clone, Copy)]
pub struct BenchPlan {
    /// Measured requests per backend.
    pub requests: usize,
    /// Requests in flight at once (one HTTP/2 connection).
    pub concurrency: usize,
    /// Requests per backend before measuring (connection, JIT, caches).
    pub warmup: usize,
    /// The measured requests are split into this many rounds, interleaved
    /// across backends.
    pub rounds: usize,
    /// How long a backend may take to print `READY`.
    pub ready_within: Duration,
}

/// What one backend cost.
#[derive(Debug, Clone)]
pub struct BenchResult {
    /// The backend's label.
    pub label: String,
    /// The label of the baseline it is compared with, if any (itself for
    /// a baseline).
    pub baseline: Option<String>,
    /// Requests measured.
    pub requests: u64,
    /// CPU time of the backend's process tree over them.
    pub cpu: Duration,
    /// Wall time over them.
    pub wall: Duration,
    /// CPU per request in each round, microseconds: the spread tells how
    /// much the machine's noise moved the figure.
    pub rounds_us: Vec<f64>,
}

impl BenchResult {
    /// Microseconds of backend CPU per request.
    pub fn us_per_request(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.requests.max(1) as f64
    }
}

/// The small request every backend gets: what a gateway forwards for
/// `GET /hello` from curl.
pub fn small_request() -> pb::ForwardingReq {
    let h = |name: &str, value: &'static str| pb::Header {
        name: name.into(),
        value: Bytes::from_static(value.as_bytes()),
    };
    pb::ForwardingReq {
        protocol_version: proto::PROTOCOL_VERSION,
        method: "GET".into(),
        scheme: "http".into(),
        authority: "bench.test".into(),
        path: "/hello".into(),
        version: pb::HttpVersion::Http11 as i32,
        headers: vec![
            h("accept", "*/*"),
            h("user-agent", "curl/8.5.0"),
            h("x-forwarded-for", "127.0.0.1"),
            h("x-forwarded-proto", "http"),
            h("x-forwarded-host", "bench.test"),
            h("x-request-id", "r-0123456789"),
        ],
        context: Some(pb::RequestContext {
            request_id: "r-0123456789".into(),
            client_addresses: vec!["127.0.0.1:50000".into()],
            deadline_ms: 30_000,
            service: "bench".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The last lines a backend wrote to stderr, for errors.
type Tail = Arc<Mutex<VecDeque<String>>>;

struct Running {
    backend: BenchBackend,
    child: Child,
    pid: u32,
    client: ForwardingServiceClient<Channel>,
    stderr: Tail,
    result: BenchResult,
}

impl Running {
    fn fail(&self, why: String) -> String {
        fail(&self.backend.label, &self.stderr, why)
    }
}

/// `LABEL: why`, and the backend's last stderr lines.
fn fail(label: &str, stderr: &Tail, why: String) -> String {
    let tail = stderr.lock().map(|t| t.clone()).unwrap_or_default();
    let mut s = format!("{label}: {why}");
    if !tail.is_empty() {
        s.push_str("\n  its last stderr lines:");
        for l in tail {
            let _ = write!(s, "\n    {l}");
        }
    }
    s
}

/// Measures every backend; the results come in the order given. Stops every backend it started before returning.
pub async fn run_all(
    backends: &[BenchBackend],
    plan: BenchPlan,
) -> Result<Vec<BenchResult>, String> {
    if backends.is_empty() {
        return Err("--bench needs at least one --backend-cmd".into());
    }
    let mut running: Vec<Running> = Vec::new();
    let outcome = measure(backends, plan, &mut running).await;
    for r in &mut running {
        stop(&mut r.child, r.pid).await;
    }
    outcome?;
    Ok(running.into_iter().map(|r| r.result).collect())
}

async fn measure(
    backends: &[BenchBackend],
    plan: BenchPlan,
    running: &mut Vec<Running>,
) -> Result<(), String> {
    let mut baseline: Option<String> = None;
    for b in backends {
        if b.baseline {
            baseline = Some(b.label.clone());
        }
        running.push(start(b, baseline.clone(), plan.ready_within).await?);
    }
    let request = small_request();
    for r in running.iter() {
        send_many(&r.client, &request, plan.warmup, plan.concurrency)
            .await
            .map_err(|e| r.fail(format!("warm-up: {e}")))?;
    }
    let rounds = plan.rounds.clamp(1, plan.requests.max(1));
    let n = running.len();
    for round in 0..rounds {
        // Shares that add up to `requests` exactly.
        let share = plan.requests * (round + 1) / rounds - plan.requests * round / rounds;
        for k in 0..n {
            let r = &mut running[(round + k) % n];
            let before = snapshot(r.pid).map_err(|e| r.fail(e))?;
            let started = Instant::now();
            send_many(&r.client, &request, share, plan.concurrency)
                .await
                .map_err(|e| r.fail(e))?;
            let wall = started.elapsed();
            let after = snapshot(r.pid).map_err(|e| r.fail(e))?;
            let cpu = used(&before, &after);
            r.result.cpu += cpu;
            r.result
                .rounds_us
                .push(cpu.as_secs_f64() * 1e6 / share.max(1) as f64);
            r.result.wall += wall;
            r.result.requests += share as u64;
        }
    }
    Ok(())
}

async fn start(
    b: &BenchBackend,
    baseline: Option<String>,
    ready_within: Duration,
) -> Result<Running, String> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&b.cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: start {:?}: {e}", b.label, b.cmd))?;
    let pid = child
        .id()
        .ok_or_else(|| format!("{}: exited at once", b.label))?;
    let stderr: Tail = Arc::default();
    let mut stderr_read = None;
    if let Some(err) = child.stderr.take() {
        let tail = stderr.clone();
        stderr_read = Some(tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(mut t) = tail.lock() {
                    if t.len() == 20 {
                        t.pop_front();
                    }
                    t.push_back(l);
                }
            }
        }));
    }
    let out = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(out).lines();
    let ready = tokio::time::timeout(ready_within, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(addr) = l.strip_prefix("READY ") {
                return Some(
                    addr.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        None
    })
    .await;
    // Keep reading stdout so a chatty backend never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = match ready {
        Ok(Some(a)) if !a.is_empty() => a,
        not_ready => {
            let why = match not_ready {
                Err(_) => format!("no READY line within {} s", ready_within.as_secs()),
                Ok(_) => "exited (or closed stdout) before printing READY".to_owned(),
            };
            stop(&mut child, pid).await;
            // Its last words on stderr explain it best: read them to the end.
            if let Some(task) = stderr_read {
                let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
            }
            return Err(fail(&b.label, &stderr, why));
        }
    };
    let failed = |why: String, stderr: &Tail| fail(&b.label, stderr, why);
    let channel = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect_lazy(),
        Err(e) => {
            stop(&mut child, pid).await;
            return Err(failed(format!("READY {addr}: {e}"), &stderr));
        }
    };
    Ok(Running {
        backend: b.clone(),
        child,
        pid,
        client: ForwardingServiceClient::new(channel),
        stderr,
        result: BenchResult {
            label: b.label.clone(),
            baseline,
            requests: 0,
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
            rounds_us: Vec::new(),
        },
    })
}

/// Sends `n` copies of `req`, `concurrency` at a time; fails on the first
/// answer that is not a 200.
async fn send_many(
    client: &ForwardingServiceClient<Channel>,
    req: &pb::ForwardingReq,
    n: usize,
    concurrency: usize,
) -> Result<(), String> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let mut client = client.clone();
        let req = req.clone();
        let next = next.clone();
        workers.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let call = client.send(req.clone());
                let answer = tokio::time::timeout(Duration::from_secs(10), call)
                    .await
                    .map_err(|_| "no answer within 10 s".to_owned())?
                    .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?
                    .into_inner();
                // 0 is read as 200 (forwarding.proto).
                if answer.status != 200 && answer.status != 0 {
                    return Err(format!("HTTP status: expected 200, got {}", answer.status));
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| format!("client task: {e}"))??;
    }
    Ok(())
}

/// SIGTERM to the whole tree, then SIGKILL to whatever is left after 5 s.
async fn stop(child: &mut Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pids = tree(pid).unwrap_or_else(|_| vec![pid]);
    signal("-TERM", &pids);
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        signal("-KILL", &pids);
        let _ = child.kill().await;
    }
}

fn signal(sig: &str, pids: &[u32]) {
    let _ = std::process::Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// A process's parent, from `/proc/PID/stat`.
fn parent(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'. Then: state(0) ppid(1).
    text.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// `root` and every live process under it.
fn tree(root: u32) -> Result<Vec<u32>, String> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let dir = std::fs::read_dir("/proc").map_err(|e| format!("read /proc: {e}"))?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(ppid) = parent(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    Ok(out)
}

/// CPU time so far of every thread of `root`'s process tree, by (pid,
/// tid): the scheduler's nanoseconds on CPU (`/proc/PID/task/TID/schedstat`)
/// where the kernel keeps them, else user + system ticks from the thread's
/// `stat`. Per thread, so a measurement counts only what each thread used
/// in between, and a thread that ends meanwhile costs only its share.
type Snapshot = HashMap<(u32, u32), u64>;

fn snapshot(root: u32) -> Result<Snapshot, String> {
    if parent(root).is_none() {
        return Err("the backend process is gone".into());
    }
    let mut out = Snapshot::new();
    for pid in tree(root)? {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ns) = task_ns(pid, tid) {
                out.insert((pid, tid), ns);
            }
        }
    }
    Ok(out)
}

fn task_ns(pid: u32, tid: u32) -> Option<u64> {
    let dir = format!("/proc/{pid}/task/{tid}");
    if let Ok(s) = std::fs::read_to_string(format!("{dir}/schedstat"))
        && let Some(ns) = s.split_whitespace().next().and_then(|f| f.parse().ok())
    {
        return Some(ns);
    }
    let text = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // utime(11) stime(12), in clock ticks.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 1_000_000_000 / ticks_per_second())
}

/// The CPU used between two snapshots of one tree.
fn used(before: &Snapshot, after: &Snapshot) -> Duration {
    let ns: u64 = after
        .iter()
        .map(|(k, &a)| a.saturating_sub(before.get(k).copied().unwrap_or(0)))
        .sum();
    Duration::from_nanos(ns)
}

fn ticks_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

/// The report: one line per backend, `LABEL  CPU us/request  xRATIO vs
/// BASELINE  (N requests, R req/s, rounds MIN-MAX)`; a baseline shows
/// `x1.00 baseline`.
pub fn report(results: &[BenchResult]) -> String {
    let by_label: HashMap<&str, f64> = results
        .iter()
        .map(|r| (r.label.as_str(), r.us_per_request()))
        .collect();
    let width = results.iter().map(|r| r.label.len()).max().unwrap_or(0);
    let mut s = String::new();
    for r in results {
        let us = r.us_per_request();
        let vs = match r.baseline.as_deref() {
            Some(b) if b == r.label => "x1.00 baseline".to_owned(),
            Some(b) => match by_label.get(b) {
                Some(&base) if base > 0.0 => format!("x{:.2} vs {b}", us / base),
                _ => format!("x- vs {b}"),
            },
            None => "x- (no baseline)".to_owned(),
        };
        let rate = r.requests as f64 / r.wall.as_secs_f64().max(1e-9);
        let lo = r.rounds_us.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.rounds_us.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "{:<width$}  {us:8.1} us/request  {vs}  ({} requests, {rate:.0} req/s, rounds {lo:.1}-{hi:.1})",
            r.label, r.requests
        );
    }
    s
}
