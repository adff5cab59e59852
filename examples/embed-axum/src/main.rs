//! `embed-axum`: an axum application with its own routes and the gateway's
//! request path behind them (see the library docs).
//!
//! ```text
//! cargo run -p embed-axum -- --public 127.0.0.1:8180 --registration 127.0.0.1:8190
//! curl http://127.0.0.1:8180/hello          # the application's own route
//! curl http://127.0.0.1:8180/<prefix>/...   # a backend registered on :8190
//! ```

use std::net::SocketAddr;

use anyhow::Context;
use gateway_core::config::GatewayConfig;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let (mut public, mut registration): (SocketAddr, SocketAddr) =
        ("127.0.0.1:8180".parse()?, "127.0.0.1:8190".parse()?);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs an address"))?;
        match flag.as_str() {
            "--public" => public = value.parse().context("--public")?,
            "--registration" => registration = value.parse().context("--registration")?,
            _ => anyhow::bail!("usage: embed-axum [--public ADDR] [--registration ADDR]"),
        }
    }
    let public = TcpListener::bind(public)
        .await
        .context("binding --public")?;
    let registration = TcpListener::bind(registration)
        .await
        .context("binding --registration")?;
    println!(
        "embed-axum listening public={} registration={}",
        public.local_addr()?,
        registration.local_addr()?
    );
    embed_axum::run(GatewayConfig::default(), public, registration, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
