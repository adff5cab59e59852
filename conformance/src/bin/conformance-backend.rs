//! The reference backend: the conformance behaviour on the Rust service SDK.
//!
//! ```text
//! conformance-backend [--listen 127.0.0.1:0] [--gateway http://127.0.0.1:8090] [--name conformance]
//! ```
//!
//! Prints `READY <host:port>` once serving; stops on Ctrl-C / SIGTERM.

use std::net::SocketAddr;

use clap::Parser;
use conformance::reference::Conformance;
use service_sdk::Backend;

#[derive(Parser)]
#[command(name = "conformance-backend", version)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Gateway registration endpoint; without one the backend only serves.
    #[arg(long)]
    gateway: Option<String>,
    /// Service name to register (its route: `/conformance`).
    #[arg(long, default_value = "conformance")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = Backend::builder(args.name)
        .listen(args.listen)
        .route("/conformance");
    if let Some(g) = args.gateway {
        builder = builder.gateway(g);
    }
    let bound = builder.bind(Conformance::new()).await?;
    println!("READY {}", bound.local_addr());
    bound
        .serve(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
