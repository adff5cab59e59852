//! `figures`: discovery and replication latencies measured against real
//! servers (driven by `scripts/figures.sh`, which starts Consul and Kafka).
//!
//! * `consul`: registration accepted -> routable; Consul marks an instance
//!   critical -> the gateway stops routing it; gateway memory with N
//!   instances registered (and the embedded registry's, for comparison).
//! * `replicas`: registration through one replica -> routable through
//!   another; time for a late replica to become ready with N registrations.
//!
//! Each latency is measured by polling the gateway's public listener in a
//! tight loop (one request every ~0.2 ms on loopback), so the figures carry
//! that granularity. Output: human-readable lines plus one JSON line per
//! figure (`{"figure": ..., ...}`) for BENCHMARKS.md.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

#[derive(Parser)]
struct Args {
    /// The gateway binary.
    #[arg(long, default_value = "target/release/gateway")]
    gateway: PathBuf,
    /// The bench backend binary (answers 200 over gRPC).
    #[arg(long, default_value = "target/release/bench-backend")]
    backend: PathBuf,
    /// Trials per latency figure.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Consul figures.
    Consul {
        /// Consul agent URL.
        #[arg(long)]
        consul: String,
        /// Instances for the memory figure.
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
    },
    /// Replica figures.
    Replicas {
        /// Consul agent URL.
        #[arg(long)]
        consul: String,
        /// Kafka bootstrap brokers.
        #[arg(long)]
        kafka: String,
        /// Registrations present when the late replica starts.
        #[arg(long, default_value_t = 10_000)]
        instances: usize,
    },
}

struct Gateway {
    child: Child,
    public: String,
    registration: String,
    admin: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

const FAST_CONFIG: &str = r#"
[health]
interval = "1s"
timeout = "500ms"
lease = "1h"
[registration]
allowed_networks = ["127.0.0.0/8"]
"#;

async fn start_gateway(bin: &PathBuf, extra: &[&str]) -> anyhow::Result<(Gateway, Duration)> {
    let cfg = std::env::temp_dir().join(format!("figures-{}.toml", std::process::id()));
    std::fs::write(&cfg, FAST_CONFIG)?;
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args([
            "--public",
            "127.0.0.1:0",
            "--internal",
            "127.0.0.1:0",
            "--registration",
            "127.0.0.1:0",
        ])
        .args([
            "--admin",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap_or_default(),
        ])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .context("gateway did not start")??
        .context("gateway exited")?;
    let get = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(String::from))
            .unwrap_or_default()
    };
    let gw = Gateway {
        public: get("public"),
        registration: get("registration"),
        admin: get("admin"),
        child,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(r) = http.get(format!("http://{}/readyz", gw.admin)).send().await
            && r.status() == 200
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("gateway not ready");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok((gw, started.elapsed()))
}

async fn start_backend(bin: &PathBuf) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(bin)
        .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    while let Some(l) = lines.next_line().await? {
        if let Some(g) = l.split_whitespace().find_map(|w| w.strip_prefix("grpc=")) {
            return Ok((child, g.to_owned()));
        }
    }
    bail!("backend exited before READY")
}

async fn register(
    http: &reqwest::Client,
    gw: &Gateway,
    service: &str,
    id: &str,
    address: &str,
) -> anyhow::Result<()> {
    let body = json!({"service": service, "instance_id": id, "address": address, "health": {"kind": "ttl"}, "lease_ms": 3_600_000});
    let r = http
        .put(format!("http://{}/v1/registrations", gw.registration))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("registration of {service}/{id} failed: {}", r.text().await?);
    }
    Ok(())
}

/// Polls `url` until its status satisfies `done`; returns the elapsed time.
async fn until(
    http: &reqwest::Client,
    url: &str,
    done: impl Fn(u16) -> bool,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await
            && done(r.status().as_u16())
        {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("{url} never reached the expected state");
        }
    }
}

fn report(figure: &str, what: &str, mut samples: Vec<Duration>) -> Value {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| {
        ms(samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1])
    };
    let v = json!({
        "figure": figure, "trials": samples.len(),
        "p50_ms": (pct(0.50) * 100.0).round() / 100.0,
        "p99_ms": (pct(0.99) * 100.0).round() / 100.0,
        "max_ms": (ms(samples[samples.len() - 1]) * 100.0).round() / 100.0,
    });
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} trials",
        pct(0.5),
        pct(0.99),
        v["max_ms"],
        samples.len()
    );
    println!("{v}");
    v
}

fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(String::from)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// PUTs `n` JSON bodies (`body(i)`) to `url`, 16 at a time; fails with the
/// first error after all have been tried. Returns the elapsed time.
async fn put_many(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    what: &str,
    body: impl Fn(usize) -> Value,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let (http, url, body) = (http.clone(), url.to_owned(), body(i));
        tasks.spawn(async move {
            let _p = permit;
            match http.put(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Some(e.to_string()),
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(None) => {}
            Ok(Some(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if let Some(first) = failed.first() {
        bail!("{} of {n} {what} failed, first: {first}", failed.len());
    }
    Ok(t0.elapsed())
}

/// Services the mass registrations are spread over (10,000 instances: 10
/// per service).
const SERVICES: usize = 1000;

/// TCP connections the process `pid` holds to `port` on the loopback
/// (its socket fds matched against /proc/net/tcp{,6}).
fn connections_to(pid: Option<u32>, port: u16) -> usize {
    let Some(pid) = pid else { return 0 };
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(String::from)
        })
        .collect();
    let port = format!(":{port:04X}");
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    // remote address, state ESTABLISHED (01), inode
                    c.len() > 9 && c[2].ends_with(&port) && c[3] == "01" && inodes.contains(c[9])
                })
                .count()
        })
        .sum()
}

/// Registers `n` TTL-checked instances (`SERVICES` services) through the gateway.
async fn register_many(
    http: &reqwest::Client,
    gw: &Gateway,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Duration> {
    let url = format!("http://{}/v1/registrations", gw.registration);
    put_many(http, &url, n, "registrations", |i| {
        json!({"service": format!("{prefix}-{}", i % SERVICES), "instance_id": format!("i-{i}"),
               "address": format!("127.0.0.1:{}", 20_000 + i % 40_000),
               "health": {"kind": "ttl"}, "lease_ms": 3_600_000})
    })
    .await
}

/// Writes `n` passing instances (numbered from `first`, over `SERVICES`
/// services) straight into Consul's catalog under 100 synthetic nodes (with the gateway's `gw-*` metadata), bypassing the agent.
/// One dev agent holding 10,000 agent registrations slows to ~15 per second
/// (its anti-entropy walks every local service per change), an artefact of
/// putting a whole fleet on one agent; the catalog path measures the gateway,
/// not that.
async fn catalog_many(
    http: &reqwest::Client,
    consul: &str,
    first: usize,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Duration> {
    let url = format!("{consul}/v1/catalog/register");
    put_many(http, &url, n, "catalog registrations", |i| {
        let i = first + i;
        let (service, id) = (format!("{prefix}-{}", i % SERVICES), format!("i-{i}"));
        let sid = format!("{service}:{id}");
        json!({
            "Node": format!("fig-node-{}", i % 100), "Address": "127.0.0.1",
            "Service": {"ID": sid, "Service": service, "Address": "127.0.0.1", "Port": 20_000 + i % 40_000,
                        "Meta": {"gw-instance": id, "gw-route-0": format!("{{\"p\":\"/{service}\"}}"), "gw-check": "ttl"}},
            "Check": {"CheckID": format!("service:{sid}"), "Name": "ttl", "Status": "passing", "ServiceID": sid},
        })
    })
    .await
}

async fn routable_instances(http: &reqwest::Client, gw: &Gateway) -> usize {
    let Ok(r) = http
        // The registry listing is most of the answer at 10,000 instances.
        .get(format!(
            "http://{}/admin/services?instances=false",
            gw.admin
        ))
        .send()
        .await
    else {
        return 0;
    };
    let Ok(v) = r.json::<Value>().await else {
        return 0;
    };
    v["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["routable_instances"].as_u64().unwrap_or(0) as usize)
                .sum()
        })
        .unwrap_or(0)
}

async fn consul_figures(args: &Args, consul: &str, n: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let (_backend, backend) = start_backend(&args.backend).await?;
    let (gw, _) = start_gateway(&args.gateway, &["--consul", consul]).await?;

    let mut samples = Vec::new();
    for i in 0..args.trials {
        let svc = format!("fig-reg-{i}");
        register(&http, &gw, &svc, "a", &backend).await?;
        samples.push(until(&http, &format!("http://{}/{svc}", gw.public), |s| s == 200).await?);
    }
    report(
        "consul_registration_to_routable",
        "Consul: registration accepted -> routable",
        samples,
    );

    register(&http, &gw, "fig-crit", "a", &backend).await?;
    let url = format!("http://{}/fig-crit", gw.public);
    until(&http, &url, |s| s == 200).await?;
    let check = format!("{consul}/v1/agent/check");
    let id = "service:fig-crit:a";
    let mut samples = Vec::new();
    for _ in 0..args.trials {
        http.put(format!("{check}/pass/{id}"))
            .send()
            .await?
            .error_for_status()?;
        until(&http, &url, |s| s == 200).await?;
        http.put(format!("{check}/fail/{id}"))
            .send()
            .await?
            .error_for_status()?;
        samples.push(until(&http, &url, |s| s == 503).await?);
    }
    report(
        "consul_critical_to_unrouted",
        "Consul: check critical -> gateway stops routing",
        samples,
    );

    let through_gateway = n.min(1000);
    let took = register_many(&http, &gw, through_gateway, "fleet").await?;
    println!(
        "Consul: {through_gateway} registrations through the gateway (agent API, 16 at a time) in {:.2} s = {:.0}/s",
        took.as_secs_f64(),
        through_gateway as f64 / took.as_secs_f64()
    );
    println!(
        "{}",
        json!({"figure": "consul_registrations_per_second", "registrations": through_gateway, "seconds": took.as_secs_f64()})
    );
    catalog_many(
        &http,
        consul,
        through_gateway,
        n.saturating_sub(through_gateway),
        "fleet",
    )
    .await?;
    let t0 = Instant::now();
    let expected = n + 2;
    while routable_instances(&http, &gw).await < expected {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("instances never all routable");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let loaded = rss_mib(gw.child.id());
    let consul_port: u16 = consul
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or(8500);
    let loaded_conns = connections_to(gw.child.id(), consul_port);
    drop(gw);
    // The gateway above served /admin/services listings of every instance
    // (megabytes each) to count them, and those dominate its RSS. A fresh
    // replica, measured once ready (every service read) and before any
    // listing, shows what holding the routing table costs.
    let (fresh, ready) = start_gateway(&args.gateway, &["--consul", consul]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_mib(fresh.child.id());
    let conns = connections_to(fresh.child.id(), consul_port);
    let services = SERVICES.min(n) + args.trials + 1;
    let routable = routable_instances(&http, &fresh).await;
    println!(
        "Consul: {routable}/{expected} instances in {services} services routable; a fresh gateway (ready in {:.2} s) RSS {after:.1} MiB, {conns} connections to the agent; the loaded gateway (after registrations and admin listings) RSS {loaded:.1} MiB, {loaded_conns} connections",
        ready.as_secs_f64()
    );
    println!(
        "{}",
        json!({"figure": "consul_memory", "instances": expected, "routable": routable, "services": services,
               "rss_mib": after, "agent_connections": conns, "ready_s": ready.as_secs_f64(),
               "loaded_rss_mib": loaded, "loaded_agent_connections": loaded_conns})
    );
    drop(fresh);

    let (mem, _) = start_gateway(&args.gateway, &[]).await?;
    let before = rss_mib(mem.child.id());
    register_many(&http, &mem, n, "mass").await?;
    let after = rss_mib(mem.child.id());
    println!(
        "Embedded registry: gateway RSS {before:.1} MiB before, {after:.1} MiB with {n} instances"
    );
    println!(
        "{}",
        json!({"figure": "memory_registry_memory", "instances": n, "rss_before_mib": before, "rss_after_mib": after})
    );
    Ok(())
}

async fn replica_figures(args: &Args, consul: &str, kafka: &str, n: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let (_backend, backend) = start_backend(&args.backend).await?;
    let topic = format!("figures-{}", std::process::id());
    let common = [
        "--consul",
        consul,
        "--kafka-brokers",
        kafka,
        "--kafka-topic",
        &topic,
    ];
    let (gw1, _) = start_gateway(
        &args.gateway,
        &[&common[..], &["--node-id", "fig-gw1"]].concat(),
    )
    .await?;
    let (gw2, _) = start_gateway(
        &args.gateway,
        &[&common[..], &["--node-id", "fig-gw2"]].concat(),
    )
    .await?;
    let mut samples = Vec::new();
    for i in 0..args.trials {
        let svc = format!("fig-rep-{i}");
        register(&http, &gw1, &svc, "a", &backend).await?;
        samples.push(until(&http, &format!("http://{}/{svc}", gw2.public), |s| s == 200).await?);
    }
    report(
        "replica_registration_to_routable",
        "Replicas: registration on gw1 -> routable on gw2",
        samples,
    );

    let through = n.min(1000);
    register_many(&http, &gw1, through, "late").await?;
    catalog_many(&http, consul, 0, n - through, "bulk").await?;
    println!(
        "Replicas: {through} registrations through gw1 (on the topic) + {} written to the catalog",
        n - through
    );
    let (gw3, ready) = start_gateway(
        &args.gateway,
        &[&common[..], &["--node-id", "fig-gw3"]].concat(),
    )
    .await?;
    let routable = routable_instances(&http, &gw3).await;
    println!(
        "Replicas: late replica ready in {:.2} s with {routable} routable instances at ready",
        ready.as_secs_f64()
    );
    println!(
        "{}",
        json!({"figure": "late_replica_ready", "registrations": n, "ready_seconds": ready.as_secs_f64(), "routable_at_ready": routable})
    );
    if routable < n {
        // Counted across services; the trial services add a few more.
        bail!("late replica reported ready with {routable} of {n} instances");
    }
    drop((gw1, gw2, gw3));
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.what {
        What::Consul { consul, instances } => consul_figures(&args, consul, *instances).await,
        What::Replicas {
            consul,
            kafka,
            instances,
        } => replica_figures(&args, consul, kafka, *instances).await,
    }
}
