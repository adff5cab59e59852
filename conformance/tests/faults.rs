//! The kit catches what a backend gets wrong, and says which case and what
//! differed: a backend with one fault each fails the cases about it.

use std::path::Path;

use conformance::case::{self, Planned};
use conformance::reference::Conformance;
use conformance::run::{Target, Verdict};
use http_body_util::BodyExt;
use service_sdk::{Backend, Body, Handler, Request, Response};

#[derive(Clone, Copy)]
enum Fault {
    /// Keeps only the last value of a repeated request header, as a
    /// dict-based adapter would.
    DropDuplicateHeaders,
    /// Collects the answer before sending it (no streaming).
    BufferAnswer,
    /// Turns an HTTP error status into a failed call.
    ErrorStatusFailsTheCall,
}

struct Faulty(Conformance, Fault);

impl Handler for Faulty {
    async fn handle(&self, mut req: Request) -> Response {
        if let Fault::DropDuplicateHeaders = self.1 {
            let mut kept = http::HeaderMap::new();
            for (name, value) in req.headers() {
                kept.insert(name.clone(), value.clone());
            }
            *req.headers_mut() = kept;
        }
        let resp = self.0.handle(req).await;
        match self.1 {
            Fault::DropDuplicateHeaders => resp,
            Fault::BufferAnswer => {
                let (parts, body) = resp.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                Response::from_parts(parts, Body::from(bytes))
            }
            Fault::ErrorStatusFailsTheCall if resp.status().as_u16() >= 400 => {
                let failing = futures_util::stream::once(async {
                    Err::<bytes::Bytes, _>(std::io::Error::other("failed"))
                });
                Response::new(Body::from_stream(failing))
            }
            Fault::ErrorStatusFailsTheCall => resp,
        }
    }
}

async fn failures(fault: Fault, names: &[&str]) -> Vec<(String, Vec<String>)> {
    let bound = Backend::builder("faulty")
        .bind(Faulty(Conformance::new(), fault))
        .await
        .expect("bind");
    let target = Target::new(&format!("grpc://{}", bound.local_addr())).expect("target");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.serve(async {
        let _ = stopped.await;
    }));
    let cases: Vec<Planned> = case::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"))
        .expect("cases")
        .into_iter()
        .filter(|p| names.contains(&p.name.as_str()))
        .collect();
    assert_eq!(cases.len(), names.len(), "a case named here is missing");
    let mut out = Vec::new();
    for o in target.run_all(&cases, |o| println!("{}", o.report())).await {
        if let Verdict::Fail(lines) = o.verdict {
            out.push((o.name, lines));
        }
    }
    let _ = stop.send(());
    server.await.expect("join").expect("serve");
    out
}

#[tokio::test]
async fn dropped_duplicate_headers_are_named_with_expected_and_got() {
    let f = failures(
        Fault::DropDuplicateHeaders,
        &[
            "request/header-duplicates-in-order [send]",
            "status/404-is-grpc-ok [send]",
        ],
    )
    .await;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].0, "request/header-duplicates-in-order [send]");
    assert_eq!(
        f[0].1,
        [
            "echoed request headers named x-dup, x-other: expected [x-dup: 1; x-dup: 2; x-dup: 3; x-other: o], got [x-dup: 3; x-other: o]"
        ]
    );
}

#[tokio::test]
async fn a_buffered_answer_is_not_streaming() {
    let f = failures(
        Fault::BufferAnswer,
        &[
            "stream/answer-one-frame-per-part",
            "stream/answer-streams-as-produced",
            "response/large-body [stream]",
        ],
    )
    .await;
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "stream/answer-one-frame-per-part",
            "stream/answer-streams-as-produced"
        ]
    );
    assert_eq!(f[0].1, ["body frames: expected 4, got 1"]);
    assert!(
        f[1].1[0].starts_with("first body byte: expected within 400 ms, got "),
        "{f:?}"
    );
}

#[tokio::test]
async fn an_error_status_as_a_grpc_failure_is_caught() {
    let f = failures(
        Fault::ErrorStatusFailsTheCall,
        &[
            "status/404-is-grpc-ok [send]",
            "status/500-is-grpc-ok [stream]",
            "status/201 [send]",
        ],
    )
    .await;
    let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "status/404-is-grpc-ok [send]",
            "status/500-is-grpc-ok [stream]"
        ]
    );
    assert!(
        f[0].1[0].starts_with("gRPC status: expected ok, got internal"),
        "{f:?}"
    );
}
