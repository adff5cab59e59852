//! The smallest backend two ways, for `gateway-conformance --bench`:
//! `raw` answers on the contract directly (a tonic `ForwardingService`
//! written by hand), `sdk` is the same answer as an axum route served by
//! the Rust service SDK. The difference is the SDK's own cost per request.
//!
//! ```text
//! bench-hello raw|sdk [--listen 127.0.0.1:0]
//! ```
//!
//! Answers every `Send` with 200, `content-type: text/plain`, `hello`.
//! Prints `READY <host:port>` once serving; stops on Ctrl-C / SIGTERM.

use std::net::SocketAddr;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use proto::v1 as pb;
use proto::v1::forwarding_service_server::{ForwardingService, ForwardingServiceServer};
use service_sdk::Backend;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    /// A `ForwardingService` written by hand on tonic: the baseline.
    Raw,
    /// An axum route served by `service_sdk::Backend`.
    Sdk,
}

#[derive(Parser)]
#[command(name = "bench-hello", version)]
struct Args {
    kind: Kind,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

struct Raw;

#[tonic::async_trait]
impl ForwardingService for Raw {
    async fn send(
        &self,
        _req: Request<pb::ForwardingReq>,
    ) -> Result<Response<pb::ForwardingResp>, Status> {
        Ok(Response::new(pb::ForwardingResp {
            status: 200,
            headers: vec![pb::Header {
                name: "content-type".into(),
                value: Bytes::from_static(b"text/plain"),
            }],
            body: Bytes::from_static(b"hello"),
            ..Default::default()
        }))
    }

    async fn stream(
        &self,
        _req: Request<Streaming<pb::StreamRequest>>,
    ) -> Result<Response<BoxStream<pb::StreamResponse>>, Status> {
        Err(Status::unimplemented("bench-hello raw answers Send only"))
    }
}

async fn stopped() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.kind {
        Kind::Raw => {
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            println!("READY {}", listener.local_addr()?);
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(ForwardingServiceServer::new(Raw))
                .serve_with_incoming_shutdown(incoming, stopped())
                .await?;
        }
        Kind::Sdk => {
            let app = service_sdk::Router::new().route(
                "/hello",
                service_sdk::routing::get(|| async { ([("content-type", "text/plain")], "hello") }),
            );
            let bound = Backend::builder("hello")
                .listen(args.listen)
                .route("/hello")
                .bind(app)
                .await?;
            println!("READY {}", bound.local_addr());
            bound.serve(stopped()).await?;
        }
    }
    Ok(())
}
