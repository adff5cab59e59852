//! The lifecycle checks against the reference backend (the Rust SDK's
//! registrar): registers, renews, re-registers after a gateway restart,
//! deregisters on SIGTERM while still serving, exits 0.

use std::time::Duration;

use conformance::run::{Summary, Verdict};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_keeps_its_registration() {
    let cmd = format!(
        "{} --gateway {{registry}}",
        env!("CARGO_BIN_EXE_conformance-backend")
    );
    let outcomes = conformance::lifecycle::run_all(&cmd, Duration::from_secs(30), |o| {
        println!("{}", o.report())
    })
    .await
    .expect("the checks run");
    let summary = Summary::of(&outcomes);
    println!("{summary}");
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Fail(_)))
        .map(|o| o.report())
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(summary.passed, 4, "{summary}");
}
