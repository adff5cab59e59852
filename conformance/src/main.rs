//! `gateway-conformance`: runs the conformance cases against a backend, or
//! through a gateway.
//!
//! ```text
//! gateway-conformance --target grpc://127.0.0.1:50051 [--cases DIR] [--filter TEXT]
//! gateway-conformance --gateway http://127.0.0.1:8080 --registry http://127.0.0.1:8090
//! gateway-conformance --backend-cmd 'CMD {registry}'
//! gateway-conformance --bench [--requests N] [--concurrency C] \
//!     --backend-cmd 'CMD' --label L --baseline --backend-cmd 'CMD' --label L ...
//! ```
//!
//! Prints one line per case (PASS/FAIL/SKIP and its name; a failure adds
//! what was expected and what came back), then a summary. Exits 1 when a
//! case failed, 2 when the run could not start. `--bench` prints one line
//! per backend (CPU per request, ratio to its baseline) instead.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use conformance::bench::{BenchBackend, BenchPlan};
use conformance::case;
use conformance::gateway::GatewayTarget;
use conformance::reference::Conformance;
use conformance::run::{Summary, Target};
use service_sdk::Backend;

/// Checks that a forwarding backend, or a gateway, keeps the contract
/// (forwarding.v1).
#[derive(Parser)]
#[command(name = "gateway-conformance", version)]
struct Args {
    /// The backend under test: grpc://HOST:PORT. It must serve the
    /// conformance behaviour (proto/proto/forwarding/v1/CONFORMANCE.md).
    #[arg(long, required_unless_present_any = ["gateway", "backend_cmd"], conflicts_with = "gateway")]
    target: Option<String>,
    /// Check a gateway instead: its public listener, http://HOST:PORT. The
    /// kit starts the reference backend, registers it (service
    /// `conformance`, route `/conformance`) and sends the cases as HTTP/2.
    #[arg(long, requires = "registry")]
    gateway: Option<String>,
    /// The gateway's registration listener, http://HOST:PORT.
    #[arg(long)]
    registry: Option<String>,
    /// Where the reference backend listens in gateway mode (the gateway
    /// must reach it there).
    #[arg(long, default_value = "127.0.0.1:0")]
    backend_listen: SocketAddr,
    /// Check the lifecycle instead: the kit runs a gateway and starts the
    /// backend with this shell command, `{registry}` replaced by the
    /// gateway's registration URL; the command must exec the backend (so
    /// SIGTERM reaches it), e.g. `python3 server.py --gateway {registry}`.
    /// With --bench: a backend to measure (repeat the flag), a shell
    /// command that prints `READY host:port` on stdout.
    #[arg(long, action = ArgAction::Append, conflicts_with_all = ["target", "gateway"])]
    backend_cmd: Vec<String>,
    /// Measure instead of checking: each --backend-cmd's CPU (its whole
    /// process tree, from /proc) per small `Send` (GET, six headers, no
    /// body; every answer must be a 200), and its ratio to its baseline.
    #[arg(long, requires = "backend_cmd")]
    bench: bool,
    /// --bench: the name of the --backend-cmd before it (no spaces).
    #[arg(long, action = ArgAction::Append, requires = "bench")]
    label: Vec<String>,
    /// --bench: marks the --backend-cmd before it as the baseline (the raw
    /// contract) of the backends after it, up to the next baseline.
    // A value per occurrence (always "true"), so clap records where each
    // one stands among the --backend-cmd flags.
    #[arg(long, num_args = 0, default_missing_value = "true", action = ArgAction::Append, requires = "bench")]
    baseline: Vec<bool>,
    /// --bench: measured requests per backend.
    #[arg(long, default_value_t = 5000, requires = "bench")]
    requests: usize,
    /// --bench: requests in flight at once, on one HTTP/2 connection.
    #[arg(long, default_value_t = 4, requires = "bench")]
    concurrency: usize,
    /// --bench: requests per backend before measuring.
    #[arg(long, default_value_t = 2000, requires = "bench")]
    warmup: usize,
    /// --bench: the measured requests go in this many rounds, each backend
    /// in turn in each round, so noise on the machine hits all of them.
    #[arg(long, default_value_t = 5, requires = "bench")]
    rounds: usize,
    /// Directory of case files (*.toml).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/cases"))]
    cases: PathBuf,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if args.bench {
        return match bench(&args, &matches).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gateway-conformance: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gateway-conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The --backend-cmd list, each with the --label and --baseline that
/// follow it (before the next --backend-cmd).
fn bench_backends(args: &Args, m: &clap::ArgMatches) -> anyhow::Result<Vec<BenchBackend>> {
    let at = |id: &str| -> Vec<usize> { m.indices_of(id).map(|i| i.collect()).unwrap_or_default() };
    let cmds = at("backend_cmd");
    let owner = |i: usize| cmds.iter().rposition(|&c| c < i);
    let mut out: Vec<BenchBackend> = args
        .backend_cmd
        .iter()
        .map(|cmd| BenchBackend {
            label: cmd
                .split_whitespace()
                .next()
                .unwrap_or("backend")
                .to_owned(),
            cmd: cmd.clone(),
            baseline: false,
        })
        .collect();
    let mut labelled = vec![false; out.len()];
    for (i, label) in at("label").into_iter().zip(&args.label) {
        let k = owner(i)
            .ok_or_else(|| anyhow::anyhow!("--label {label} comes before any --backend-cmd"))?;
        anyhow::ensure!(!labelled[k], "two --label for one --backend-cmd ({label})");
        anyhow::ensure!(
            !label.is_empty() && !label.contains(char::is_whitespace),
            "--label {label:?}: a label is one word (no spaces)"
        );
        labelled[k] = true;
        out[k].label = label.clone();
    }
    for i in at("baseline") {
        let k =
            owner(i).ok_or_else(|| anyhow::anyhow!("--baseline comes before any --backend-cmd"))?;
        out[k].baseline = true;
    }
    for (k, b) in out.iter().enumerate() {
        anyhow::ensure!(
            !out[..k].iter().any(|o| o.label == b.label),
            "two backends are labelled {} (give each its own --label)",
            b.label
        );
    }
    Ok(out)
}

async fn bench(args: &Args, m: &clap::ArgMatches) -> anyhow::Result<()> {
    let backends = bench_backends(args, m)?;
    anyhow::ensure!(args.requests > 0, "--requests must be at least 1");
    let plan = BenchPlan {
        requests: args.requests,
        concurrency: args.concurrency.max(1),
        warmup: args.warmup,
        rounds: args.rounds.max(1),
        ready_within: Duration::from_secs(120),
    };
    println!(
        "gateway-conformance: bench, {} backends, {} requests each (concurrency {}, {} rounds, {} warm-up); backend CPU (every thread of its process tree) per request",
        backends.len(),
        plan.requests,
        plan.concurrency,
        plan.rounds,
        plan.warmup
    );
    let results = conformance::bench::run_all(&backends, plan)
        .await
        .map_err(anyhow::Error::msg)?;
    print!("{}", conformance::bench::report(&results));
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if args.backend_cmd.len() > 1 {
        anyhow::bail!("--backend-cmd more than once: only with --bench");
    }
    if let Some(cmd) = args.backend_cmd.first() {
        println!("gateway-conformance: lifecycle of `{cmd}`");
        let outcomes = conformance::lifecycle::run_all(cmd, Duration::from_secs(60), |o| {
            println!("{}", o.report())
        })
        .await
        .map_err(anyhow::Error::msg)?;
        let summary = Summary::of(&outcomes);
        println!("{summary}");
        return Ok(summary.failed == 0);
    }
    let mut cases = case::load_dir(&args.cases)?;
    if let Some(f) = &args.filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    anyhow::ensure!(!cases.is_empty(), "no cases to run");
    let print = |o: &conformance::run::Outcome| println!("{}", o.report());
    let outcomes = match (&args.target, &args.gateway, &args.registry) {
        (Some(target), _, _) => {
            let target = Target::new(target).map_err(anyhow::Error::msg)?;
            if let Err(e) = target.reachable().await {
                anyhow::bail!(
                    "cannot reach {}: {e}",
                    args.target.as_deref().unwrap_or_default()
                );
            }
            println!(
                "gateway-conformance: {} cases against {}",
                cases.len(),
                args.target.as_deref().unwrap_or_default()
            );
            target.run_all(&cases, print).await
        }
        (None, Some(gateway), Some(registry)) => {
            let bound = Backend::builder("conformance")
                .listen(args.backend_listen)
                .route("/conformance")
                .gateway(registry.clone())
                .drain(Duration::ZERO)
                .bind(Conformance::new())
                .await?;
            let backend = Target::new(&format!("grpc://{}", bound.local_addr()))
                .map_err(anyhow::Error::msg)?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(bound.serve(async {
                let _ = stopped.await;
            }));
            let target = GatewayTarget::new(gateway, backend).map_err(anyhow::Error::msg)?;
            target
                .wait_routable(Duration::from_secs(15))
                .await
                .map_err(anyhow::Error::msg)?;
            println!(
                "gateway-conformance: {} cases through the gateway {gateway}",
                GatewayTarget::runs(&cases).count()
            );
            let outcomes = target.run_all(&cases, print).await;
            let _ = stop.send(());
            server.await??;
            outcomes
        }
        _ => anyhow::bail!("give --target, or --gateway with --registry"),
    };
    let summary = Summary::of(&outcomes);
    println!("{summary}");
    Ok(summary.failed == 0)
}
