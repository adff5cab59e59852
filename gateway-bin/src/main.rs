//! `gateway`: load configuration (file, environment, flags), bind, serve,
//! drain on SIGTERM/SIGINT. Everything else lives in `gateway-core`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use gateway_core::config::{GatewayConfig, ScopedToken};
use gateway_core::gateway::{Gateway, Listeners};
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
    /// Registration token (`authorization: Bearer <token>`) for every service.
    #[arg(long, env = "GATEWAY_REGISTRATION_TOKEN", hide_env_values = true)]
    registration_token: Option<String>,
    /// Registration token limited to some services, `SERVICES=TOKEN`
    /// (`orders,orders-*=s3cret`; repeatable; `;`-separated in the
    /// environment). Replaces `registration.tokens` of the file.
    #[arg(
        long = "registration-scoped-token",
        value_name = "SERVICES=TOKEN",
        env = "GATEWAY_REGISTRATION_TOKENS",
        value_delimiter = ';',
        hide_env_values = true
    )]
    registration_tokens: Vec<ScopedToken>,
    /// Use Consul at this agent URL (e.g. http://127.0.0.1:8500) instead of
    /// the embedded registry.
    #[arg(long, env = "GATEWAY_CONSUL_ADDR")]
    consul: Option<String>,
    /// Consul ACL token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    consul_token: Option<String>,
    /// Kafka brokers for replica sync (host:port[,host:port]); needs --consul.
    #[arg(long, env = "GATEWAY_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// Kafka topic of registration events.
    #[arg(long, env = "GATEWAY_KAFKA_TOPIC")]
    kafka_topic: Option<String>,
    /// Networks registered addresses must lie in (repeatable, CIDR).
    #[arg(
        long = "allow-network",
        env = "GATEWAY_ALLOWED_NETWORKS",
        value_delimiter = ','
    )]
    allowed_networks: Vec<String>,
    /// TLS certificate chain (PEM) for the listeners; turns on `[tls]`.
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of `--tls-cert`.
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that verifies backends dialled over TLS; turns on
    /// `[upstream_tls]`.
    #[arg(long, env = "GATEWAY_UPSTREAM_TLS_CA")]
    upstream_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to backends (mTLS).
    #[arg(long, env = "GATEWAY_UPSTREAM_TLS_CERT", requires = "upstream_tls_key")]
    upstream_tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `--upstream-tls-cert`.
    #[arg(long, env = "GATEWAY_UPSTREAM_TLS_KEY", requires = "upstream_tls_cert")]
    upstream_tls_key: Option<PathBuf>,
    /// OTLP/gRPC endpoint (e.g. http://127.0.0.1:4317) to export
    /// OpenTelemetry traces to; sets `tracing.otlp_endpoint`.
    #[arg(long, env = "GATEWAY_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Admin URL of a replica whose view the admin UI shows beside this
    /// one's (`http://10.0.0.2:8091`; repeatable, `,`-separated in the
    /// environment). Replaces `admin.peers` of the file.
    #[arg(
        long = "admin-peer",
        value_name = "URL",
        env = "GATEWAY_ADMIN_PEERS",
        value_delimiter = ','
    )]
    admin_peers: Vec<String>,
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
    if !args.registration_tokens.is_empty() {
        c.registration.tokens = args.registration_tokens.clone();
    }
    if let Some(v) = &args.consul {
        c.consul.get_or_insert_with(Default::default).address = v.clone();
    }
    if let (Some(t), Some(consul)) = (&args.consul_token, c.consul.as_mut()) {
        consul.token = Some(t.clone());
    }
    if let Some(b) = &args.kafka_brokers {
        c.kafka.get_or_insert_with(Default::default).brokers = b.clone();
    }
    if let Some(t) = &args.kafka_topic {
        c.kafka.get_or_insert_with(Default::default).topic = t.clone();
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let t = c.tls.get_or_insert_with(Default::default);
        t.cert = cert.clone();
        t.key = key.clone();
    }
    if let Some(ca) = &args.upstream_tls_ca {
        c.upstream_tls.get_or_insert_with(Default::default).ca = ca.clone();
    }
    if let (Some(cert), Some(key)) = (&args.upstream_tls_cert, &args.upstream_tls_key) {
        let u = c.upstream_tls.get_or_insert_with(Default::default);
        u.cert = Some(cert.clone());
        u.key = Some(key.clone());
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
    if let Some(e) = &args.otlp_endpoint {
        c.tracing.otlp_endpoint = Some(e.clone());
    }
    if !args.admin_peers.is_empty() {
        c.admin.peers = args.admin_peers.clone();
    }
    c.validate()?;
    Ok(c)
}

/// The soft open-file limit (Linux `/proc/self/limits`), if known.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Connections beyond the open-file limit fail in `accept` (and starve
/// backend connections) instead of getting the `too_many_connections`
/// answer: say so at start-up when even one listener could not reach its
/// limit (with some room for the gateway's own connections to backends).
fn check_open_file_limit(c: &GatewayConfig) {
    let wanted = c.limits.max_connections as u64 + 256;
    if let Some(limit) = open_file_limit()
        && limit < wanted
    {
        tracing::warn!(
            open_file_limit = limit,
            max_connections = c.limits.max_connections,
            "limits.max_connections (per listener) is above the open-file limit: raise `ulimit -n` (LimitNOFILE=) or lower limits.max_connections."
        );
    }
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

/// SIGHUP reads the TLS certificate and key again at once (they are also
/// polled every `tls.reload_interval`).
#[cfg(unix)]
fn reload_on_sighup(cert: Arc<gateway_core::tls::ReloadingCert>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match cert.reload() {
                Ok(true) => tracing::info!("SIGHUP: TLS certificate reloaded."),
                Ok(false) => tracing::info!("SIGHUP: TLS certificate files unchanged."),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the previous one is still served.")
                }
            }
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

    let args = Args::parse();
    let config = load(&args)?;
    if args.print_config {
        // Secrets read "<redacted>": the output ends up in tickets and logs.
        print!("{}", toml::to_string_pretty(&config.redacted())?);
        return Ok(());
    }
    // The log filter (RUST_LOG) applies to the log lines only: the trace
    // export has its own (gateway_core::otel).
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The admin UI's log pane: WARN and up, registration and registry INFO,
    // whatever RUST_LOG says (its own filter).
    let logs = gateway_core::admin::LogFeed::new();
    #[cfg_attr(not(feature = "otel"), allow(unused_mut))]
    let mut layers: Vec<Boxed> = vec![
        if args.log_json {
            fmt.json().with_filter(filter).boxed()
        } else {
            fmt.with_filter(filter).boxed()
        },
        logs.layer().boxed(),
    ];
    #[cfg(feature = "otel")]
    let otel = match &config.tracing.otlp_endpoint {
        Some(endpoint) => {
            let name = config
                .tracing
                .service_name
                .as_deref()
                .unwrap_or("forwarding-gateway");
            let otel = gateway_core::otel::Otel::init(endpoint, name)
                .with_context(|| format!("OpenTelemetry exporter to {endpoint}"))?;
            layers.push(otel.layer().boxed());
            Some(otel)
        }
        None => None,
    };
    #[cfg(not(feature = "otel"))]
    if config.tracing.otlp_endpoint.is_some() {
        anyhow::bail!(
            "tracing.otlp_endpoint is set but this gateway was built without the `otel` feature"
        );
    }
    tracing_subscriber::registry().with(layers).init();
    check_open_file_limit(&config);
    let gateway = Gateway::builder(config.clone())
        .log_feed(logs)
        .build()
        .await?;
    #[cfg(unix)]
    if let Some(cert) = gateway.tls_certificate() {
        reload_on_sighup(cert)?;
    }
    let listeners = Listeners::bind(&config).await?;
    let a = listeners.addrs()?;
    // One machine-readable line on stdout: tests and scripts read the ports.
    let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_else(|| "off".into());
    println!(
        "gateway listening node_id={} public={} internal={} registration={} admin={}",
        gateway.node_id(),
        show(a.public),
        show(a.internal),
        show(a.registration),
        show(a.admin),
    );
    gateway.serve(listeners, shutdown_signal()).await;
    #[cfg(feature = "otel")]
    if let Some(otel) = otel {
        otel.shutdown();
    }
    Ok(())
}
