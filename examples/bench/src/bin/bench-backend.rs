//! `bench-backend`: the backend every benchmark path ends at.
//!
//! * gRPC: `forwarding.v1.ForwardingService` (answers every `Send` with the
//!   same `ForwardingResp`) plus `grpc.health.v1.Health` reporting SERVING.
//! * HTTP/1.1: a plain hyper server answering every request with the same
//!   status, headers and body (what HAProxy relays to).
//!
//! Both answer status 200, `content-type: text/plain` and a body of
//! `--body-bytes` bytes, so the three benchmark paths return the same bytes
//! to the load generator. The runtime is deliberately small (one worker by
//! default) so the backend does not compete with the proxy under test for
//! the machine's cores.
//!
//! Prints one line on stdout once both listeners are bound:
//! `READY grpc=<addr> http=<addr>`.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proto::v1 as pb;
use proto::v1::forwarding_service_server::{ForwardingService, ForwardingServiceServer};
use tonic::transport::server::TcpIncoming;

#[derive(Debug, Parser)]
#[command(
    about = "Fixed-answer backend for the benchmark: gRPC ForwardingService and plain HTTP/1.1."
)]
struct Args {
    /// gRPC listener (ForwardingService + grpc.health.v1).
    #[arg(long, default_value = "127.0.0.1:0")]
    grpc: SocketAddr,
    /// Plain HTTP/1.1 listener returning the same status, headers and body.
    #[arg(long, default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// Size of the response body in bytes.
    #[arg(long, default_value_t = 64)]
    body_bytes: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
}

const CONTENT_TYPE: &str = "text/plain";

fn body(n: usize) -> Bytes {
    // Printable, deterministic, ends with a newline when it has room.
    let mut v: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
    if let Some(last) = v.last_mut() {
        *last = b'\n';
    }
    Bytes::from(v)
}

struct Fixed {
    resp: pb::ForwardingResp,
}

#[tonic::async_trait]
impl ForwardingService for Fixed {
    async fn send(
        &self,
        _req: tonic::Request<pb::ForwardingReq>,
    ) -> Result<tonic::Response<pb::ForwardingResp>, tonic::Status> {
        Ok(tonic::Response::new(self.resp.clone()))
    }
}

async fn serve_http(listener: tokio::net::TcpListener, body: Bytes) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bench-backend: http accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                let body = body.clone();
                async move {
                    let resp = http::Response::builder()
                        .status(200)
                        .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
                        .body(Full::new(body))
                        .expect("static response");
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .thread_name("bench-backend")
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let body = body(args.body_bytes);

    let incoming = TcpIncoming::bind(args.grpc)
        .with_context(|| format!("binding gRPC listener {}", args.grpc))?
        .with_nodelay(Some(true));
    let grpc_addr = incoming.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding HTTP listener {}", args.http))?;
    let http_addr = http_listener.local_addr()?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    reporter
        .set_serving::<ForwardingServiceServer<Fixed>>()
        .await;

    let fixed = Arc::new(Fixed {
        resp: pb::ForwardingResp {
            status: 200,
            headers: vec![pb::Header {
                name: "content-type".into(),
                value: Bytes::from_static(CONTENT_TYPE.as_bytes()),
            }],
            body: body.clone(),
            trailers: vec![],
        },
    });
    let grpc = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(ForwardingServiceServer::from_arc(fixed))
        .serve_with_incoming(incoming);
    let grpc = tokio::spawn(grpc);
    let http = tokio::spawn(serve_http(http_listener, body));

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY grpc={grpc_addr} http={http_addr}")?;
        out.flush()?;
    }

    tokio::select! {
        r = grpc => { r??; }
        r = http => { r?; }
        _ = shutdown() => {}
    }
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
