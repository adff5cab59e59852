//! `gateway-conformance --bench`, small: the two Rust hello backends
//! (`bench-hello raw` as the baseline, `bench-hello sdk`) measured in one
//! run, and the errors a bench run must give instead of figures.
//! The full run over every language is scripts/adapter-overhead.sh.

use std::process::{Command, Output};

const KIT: &str = env!("CARGO_BIN_EXE_gateway-conformance");
const HELLO: &str = env!("CARGO_BIN_EXE_bench-hello");
const REFERENCE: &str = env!("CARGO_BIN_EXE_conformance-backend");

fn kit(args: &[&str]) -> Output {
    Command::new(KIT).args(args).output().expect("run the kit")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bench_measures_each_backend_against_its_baseline() {
    let raw = format!("exec {HELLO} raw");
    let sdk = format!("exec {HELLO} sdk");
    let o = kit(&[
        "--bench",
        "--requests",
        "200",
        "--warmup",
        "50",
        "--rounds",
        "2",
        "--backend-cmd",
        &raw,
        "--label",
        "rust/raw",
        "--baseline",
        "--backend-cmd",
        &sdk,
        "--label",
        "rust/sdk",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "exit {:?}\n{out}\n{err}", o.status);
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" us/request ")).collect();
    assert_eq!(lines.len(), 2, "{out}");
    let fields: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(fields[0][0], "rust/raw", "{out}");
    assert_eq!(&fields[0][3..5], ["x1.00", "baseline"], "{out}");
    assert_eq!(fields[1][0], "rust/sdk", "{out}");
    assert_eq!(&fields[1][4..6], ["vs", "rust/raw"], "{out}");
    for f in &fields {
        let us: f64 = f[1].parse().expect("CPU per request is a number");
        // A process that answered 200 requests used some CPU; no backend
        // takes a tenth of a second per hello.
        assert!(us > 0.0 && us < 100_000.0, "{out}");
    }
    assert!(out.contains("(200 requests,"), "{out}");
}

#[test]
fn bench_fails_when_an_answer_is_not_200() {
    // The reference backend answers 404 to GET /hello.
    let o = kit(&[
        "--bench",
        "--requests",
        "10",
        "--warmup",
        "0",
        "--backend-cmd",
        &format!("exec {REFERENCE}"),
        "--label",
        "reference",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        err.contains("reference: HTTP status: expected 200, got 404"),
        "{err}"
    );
}

#[test]
fn bench_fails_when_a_backend_never_gets_ready() {
    let o = kit(&[
        "--bench",
        "--backend-cmd",
        "echo starting; echo broken >&2; exit 3",
        "--label",
        "broken",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}\n{err}");
    assert!(
        err.contains("broken: exited (or closed stdout) before printing READY"),
        "{err}"
    );
    assert!(err.contains("    broken"), "its stderr is shown: {err}");
}

#[test]
fn bench_flags_are_checked() {
    let o = kit(&["--bench", "--label", "a", "--backend-cmd", "true"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o)
            .1
            .contains("--label a comes before any --backend-cmd")
    );
    let o = kit(&["--bench", "--backend-cmd", "true", "--label", "two words"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("a label is one word"));
    let o = kit(&["--backend-cmd", "a", "--backend-cmd", "b"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("only with --bench"));
}
