//! `gateway-conformance`: runs the conformance cases against a backend.
//!
//! ```text
//! gateway-conformance --target grpc://127.0.0.1:50051 [--cases DIR] [--filter TEXT]
//! ```
//!
//! Prints one line per case (PASS/FAIL/SKIP and its name; a failure adds
//! what was expected and what came back), then a summary. Exits 1 when a
//! case failed, 2 when the run could not start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use conformance::case;
use conformance::run::{Summary, Target};

/// Checks that a forwarding backend keeps the contract (forwarding.v1).
#[derive(Parser)]
#[command(name = "gateway-conformance", version)]
struct Args {
    /// The backend under test: grpc://HOST:PORT. It must serve the
    /// conformance behaviour (proto/proto/forwarding/v1/CONFORMANCE.md).
    #[arg(long)]
    target: String,
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
    let mut cases = case::load_dir(&args.cases)?;
    if let Some(f) = &args.filter {
        cases.retain(|c| c.name.contains(f.as_str()));
    }
    anyhow::ensure!(!cases.is_empty(), "no cases to run");
    let target = Target::new(&args.target).map_err(anyhow::Error::msg)?;
    println!(
        "gateway-conformance: {} cases against {}",
        cases.len(),
        args.target
    );
    let outcomes = target.run_all(&cases, |o| println!("{}", o.report())).await;
    let summary = Summary::of(&outcomes);
    println!("{summary}");
    Ok(summary.failed == 0)
}
