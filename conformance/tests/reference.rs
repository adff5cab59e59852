//! The kit's cases against the reference backend (the Rust service SDK):
//! every case passes.

use std::path::Path;

use conformance::case;
use conformance::reference::Conformance;
use conformance::run::{Summary, Target, Verdict};
use service_sdk::Backend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_passes_every_case() {
    let bound = Backend::builder("conformance")
        .route("/conformance")
        .bind(Conformance::new())
        .await
        .expect("bind");
    let addr = bound.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));

    let cases = case::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"))
        .expect("the case files parse");
    assert!(cases.len() > 50, "only {} cases", cases.len());
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
    assert_eq!(summary.skipped, 0, "the SDK implements Stream");

    let _ = stop.send(());
    server.await.expect("join").expect("serve");
}
