//! `gateway`: load configuration (file, environment, flags), bind, serve,
//! drain on SIGTERM/SIGINT. Everything else lives in `gateway-core`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gateway_core::config::GatewayConfig;
use gateway_core::gateway::{Gateway, Listeners};
use gateway_core::registry::Registry;
use gateway_core::registry::consul::ConsulRegistry;
use gateway_core::registry::memory::MemoryRegistry;
use std::sync::Arc;

/// HTTP-to-gRPC forwarding gateway.
///
/// Settings come from the TOML file, then environment variables, then flags
/// (later wins). With no settings at all it runs on one machine with the
/// embedded in-memory registry.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (see examples/gateway.toml).
    #[arg(long, short, env = "GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Node id, unique among replicas.
    #[arg(long, env = "GATEWAY_NODE_ID")]
    node_id: Option<String>,
    /// Public HTTP listener.
    #[arg(long, env = "GATEWAY_PUBLIC_ADDR")]
    public: Option<SocketAddr>,
    /// Internal HTTP listener (service to service).
    #[arg(long, env = "GATEWAY_INTERNAL_ADDR")]
    internal: Option<SocketAddr>,
    /// Disable the internal listener.
    #[arg(long, env = "GATEWAY_NO_INTERNAL")]
    no_internal: bool,
    /// Registration API listener (gRPC and HTTP/JSON).
    #[arg(long, env = "GATEWAY_REGISTRATION_ADDR")]
    registration: Option<SocketAddr>,
    /// Admin listener (/healthz, /readyz, /admin/services).
    #[arg(long, env = "GATEWAY_ADMIN_ADDR")]
    admin: Option<SocketAddr>,
    /// Registration token (`authorization: Bearer <token>`).
    #[arg(long, env = "GATEWAY_REGISTRATION_TOKEN", hide_env_values = true)]
    registration_token: Option<String>,
    /// Use Consul at this agent URL (e.g. http://127.0.0.1:8500) instead of
    /// the embedded registry.
    #[arg(long, env = "GATEWAY_CONSUL_ADDR")]
    consul: Option<String>,
    /// Consul ACL token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    consul_token: Option<String>,
    /// Networks registered addresses must lie in (repeatable, CIDR).
    #[arg(
        long = "allow-network",
        env = "GATEWAY_ALLOWED_NETWORKS",
        value_delimiter = ','
    )]
    allowed_networks: Vec<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "GATEWAY_LOG_JSON")]
    log_json: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn load(args: &Args) -> anyhow::Result<GatewayConfig> {
    let mut c = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => GatewayConfig::default(),
    };
    if let Some(v) = &args.node_id {
        c.node_id = Some(v.clone());
    }
    if let Some(v) = args.public {
        c.listen.public = v;
    }
    if let Some(v) = args.internal {
        c.listen.internal = Some(v);
    }
    if args.no_internal {
        c.listen.internal = None;
    }
    if let Some(v) = args.registration {
        c.listen.registration = v;
    }
    if let Some(v) = args.admin {
        c.listen.admin = v;
    }
    if let Some(v) = &args.registration_token {
        c.registration.token = Some(v.clone());
    }
    if let Some(v) = &args.consul {
        c.consul.get_or_insert_with(Default::default).address = v.clone();
    }
    if let (Some(t), Some(consul)) = (&args.consul_token, c.consul.as_mut()) {
        consul.token = Some(t.clone());
    }
    if !args.allowed_networks.is_empty() {
        let nets = args
            .allowed_networks
            .iter()
            .map(|n| {
                n.parse()
                    .with_context(|| format!("--allow-network {n:?} is not a CIDR network"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        c.registration.allowed_networks = Some(nets);
    }
    c.validate()?;
    Ok(c)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let config = load(&args)?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&config)?);
        return Ok(());
    }
    let registry: Arc<dyn Registry> = match &config.consul {
        Some(consul) => Arc::new(
            ConsulRegistry::connect(consul.clone())
                .await
                .context("starting the Consul registry")?,
        ),
        None => Arc::new(MemoryRegistry::new()),
    };
    let gateway = Gateway::new(config.clone(), registry)?;
    let listeners = Listeners::bind(&config).await?;
    let a = listeners.addrs()?;
    // One machine-readable line on stdout: tests and scripts read the ports.
    println!(
        "gateway listening node_id={} public={} internal={} registration={} admin={}",
        gateway.node_id(),
        a.public,
        a.internal
            .map(|i| i.to_string())
            .unwrap_or_else(|| "off".into()),
        a.registration,
        a.admin
    );
    gateway.serve(listeners, shutdown_signal()).await;
    Ok(())
}
