//! The kit's cases against the Python implementation of the behaviour on
//! the raw contract (examples/conformance-py): every case passes. Skipped,
//! saying so, when python3 lacks the gRPC packages
//! (`scripts/install-deps.sh python`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use conformance::case;
use conformance::run::{Summary, Target, Verdict};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_passes_every_case() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let has_grpc = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools, grpc_health"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpc {
        eprintln!(
            "SKIP: python3 with grpcio, grpcio-tools and grpcio-health-checking is needed (scripts/install-deps.sh python)"
        );
        return;
    }
    let mut child = Command::new("python3")
        .arg(root.join("examples/conformance-py/server.py"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start python3");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    // Generating the protos on a first run takes a few seconds.
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("READY within 60 s")
        .expect("read stdout")
        .expect("a READY line");
    let addr = ready
        .strip_prefix("READY ")
        .expect("READY <addr>")
        .to_owned();

    let cases = case::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"))
        .expect("the case files parse");
    let target = Target::new(&format!("grpc://{addr}")).expect("target");
    let outcomes = target.run_all(&cases, |o| println!("{}", o.report())).await;
    let summary = Summary::of(&outcomes);
    println!("{summary}");
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
        .map(|o| o.report())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(summary.skipped, 0);
    let _ = child.start_kill();
    let _ = child.wait().await;
}
