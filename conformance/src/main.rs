//! `gateway-conformance`: runs the conformance cases against a backend, or
//! through a gateway.
//!
//! ```text
//! gateway-conformance --target grpc://127.0.0.1:50051 [--cases DIR] [--filter TEXT]
//! gateway-conformance --gateway http://127.0.0.1:8080 --registry http://127.0.0.1:8090
//! ```
//!
//! Prints one line per case (PASS/FAIL/SKIP and its name; a failure adds
//! what was expected and what came back), then a summary. Exits 1 when a
//! case failed, 2 when the run could not start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
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
    #[arg(long, conflicts_with_all = ["target", "gateway"])]
    backend_cmd: Option<String>,
    /// Directory of case files (*.toml).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/cases"))]
    cases: PathBuf,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gateway-conformance: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    if let Some(cmd) = &args.backend_cmd {
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
