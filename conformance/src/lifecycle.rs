//! Lifecycle checks: a backend registers, renews, registers again after a
//! gateway restart, and deregisters on SIGTERM before it stops serving.
//!
//! The kit runs a real gateway (gateway-core, embedded registry, short
//! lease) and starts the backend with a command the user gives, `{registry}`
//! replaced by the gateway's registration URL (which serves both gRPC and
//! the HTTP/JSON API). The command must `exec` the backend (a binary or
//! `python3 server.py`, not `cargo run`) so SIGTERM reaches it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gateway_core::config::GatewayConfig;
use gateway_core::gateway::{Gateway, Listeners};
use proto::v1 as pb;
use proto::v1::registry_service_client::RegistryServiceClient;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::run::{Outcome, Verdict};

/// The lease the kit's gateway grants, short so renewals show quickly.
const LEASE: Duration = Duration::from_millis(1500);

struct RunningGateway {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn start_gateway(registration: SocketAddr) -> Result<RunningGateway, String> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = GatewayConfig::default();
    config.listen.public = any;
    config.listen.internal = None;
    config.listen.admin = any;
    config.listen.registration = registration;
    config.health.lease = LEASE;
    // The lease may not be shorter than the check interval, nor the
    // check timeout longer.
    config.health.interval = Duration::from_millis(500);
    config.health.timeout = Duration::from_millis(400);
    let gateway = Gateway::builder(config.clone())
        .build()
        .await
        .map_err(|e| format!("gateway: {e}"))?;
    let listeners = Listeners::bind(&config)
        .await
        .map_err(|e| format!("gateway listeners on {registration}: {e}"))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(gateway.serve(listeners, async {
        let _ = stopped.await;
    }));
    Ok(RunningGateway { stop, task })
}

impl RunningGateway {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// The instances the gateway lists (empty when it cannot be asked).
async fn instances(registration: SocketAddr) -> Vec<pb::InstanceStatus> {
    let Ok(mut client) = RegistryServiceClient::connect(format!("http://{registration}")).await
    else {
        return Vec::new();
    };
    client
        .list(pb::ListRequest::default())
        .await
        .map(|r| r.into_inner().instances)
        .unwrap_or_default()
}

/// Polls until `f` holds of the listed instances, for `within` at most.
async fn wait_for(
    registration: SocketAddr,
    within: Duration,
    f: impl Fn(&[pb::InstanceStatus]) -> bool,
) -> Result<Vec<pb::InstanceStatus>, Vec<pb::InstanceStatus>> {
    let deadline = Instant::now() + within;
    loop {
        let list = instances(registration).await;
        if f(&list) {
            return Ok(list);
        }
        if Instant::now() >= deadline {
            return Err(list);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn show(list: &[pb::InstanceStatus]) -> String {
    let names: Vec<String> = list
        .iter()
        .filter_map(|i| i.registration.as_ref())
        .map(|r| format!("{}/{} at {}", r.service, r.instance_id, r.address))
        .collect();
    format!("[{}]", names.join(", "))
}

async fn health_answers(address: &str) -> Result<i32, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("address: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest::default();
    match tokio::time::timeout(Duration::from_secs(2), client.check(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner().status),
        Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
        Err(_) => Err("no answer within 2 s".into()),
    }
}

fn spawn_backend(cmd: &str, registry: &str) -> Result<Child, String> {
    let cmd = cmd.replace("{registry}", registry);
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start {cmd:?}: {e}"))
}

/// Runs the four lifecycle cases against the backend `cmd` starts, calling
/// `each` with every outcome. `ready_within` bounds the first
/// registration (start-up time of the backend included).
pub async fn run_all(
    cmd: &str,
    ready_within: Duration,
    mut each: impl FnMut(&Outcome),
) -> Result<Vec<Outcome>, String> {
    // A fixed registration port, so the restarted gateway is found where
    // the backend keeps calling.
    let registration = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("pick a port: {e}"))?;
    let mut gateway = Some(start_gateway(registration).await?);
    let mut child = spawn_backend(cmd, &format!("http://{registration}"))?;
    let mut out = Vec::new();
    let mut record = |name: &str, fails: Vec<String>| {
        let o = Outcome {
            name: name.to_owned(),
            verdict: if fails.is_empty() {
                Verdict::Pass
            } else {
                Verdict::Fail(fails)
            },
        };
        each(&o);
        out.push(o);
    };

    // 1. Registers, and the address it gives serves health.
    let first = wait_for(registration, ready_within, |l| !l.is_empty()).await;
    let Ok(list) = first else {
        record(
            "lifecycle/registers",
            vec![format!(
                "registration: expected an instance within {} s, got none",
                ready_within.as_secs()
            )],
        );
        if let Some(g) = gateway.take() {
            g.stop().await;
        }
        return Ok(out);
    };
    let reg = list[0].registration.clone().unwrap_or_default();
    let key = (reg.service.clone(), reg.instance_id.clone());
    let listed = move |l: &[pb::InstanceStatus]| {
        l.iter().any(|i| {
            i.registration
                .as_ref()
                .is_some_and(|r| (&r.service, &r.instance_id) == (&key.0, &key.1))
        })
    };
    let mut fails = Vec::new();
    if let Err(e) = health_answers(&reg.address).await {
        fails.push(format!(
            "health of the registered address {}: expected an answer, got {e}",
            reg.address
        ));
    }
    record("lifecycle/registers", fails);

    // 2. Renews: still listed after three leases.
    tokio::time::sleep(LEASE * 3).await;
    let list = instances(registration).await;
    let fails = if listed(&list) {
        vec![]
    } else {
        vec![format!(
            "after 3 leases of {} ms: expected {}/{} still listed (renewed), got {}",
            LEASE.as_millis(),
            reg.service,
            reg.instance_id,
            show(&list)
        )]
    };
    record("lifecycle/renews", fails);

    // 3. A restarted gateway knows nothing; the backend's renewal gets
    // NOT_FOUND and it registers again.
    if let Some(g) = gateway.take() {
        g.stop().await;
    }
    gateway = Some(start_gateway(registration).await?);
    let within = LEASE + Duration::from_secs(5);
    let fails = match wait_for(registration, within, &listed).await {
        Ok(_) => vec![],
        Err(list) => vec![format!(
            "within {} ms of a gateway restart: expected {}/{} registered again, got {}",
            within.as_millis(),
            reg.service,
            reg.instance_id,
            show(&list)
        )],
    };
    record("lifecycle/re-registers-after-gateway-restart", fails);

    // 4. SIGTERM: deregisters, still serving at that moment, then exits 0.
    let mut fails = Vec::new();
    match child.id() {
        Some(pid) => {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        None => fails.push("the backend exited before SIGTERM".into()),
    }
    match wait_for(registration, Duration::from_secs(5), |l| !listed(l)).await {
        Ok(_) => {
            if let Err(e) = health_answers(&reg.address).await {
                fails.push(format!(
                    "right after deregistering: expected the backend still serving (drain), got {e}"
                ));
            }
        }
        Err(list) => fails.push(format!(
            "within 5 s of SIGTERM: expected {}/{} deregistered, got {}",
            reg.service,
            reg.instance_id,
            show(&list)
        )),
    }
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(Ok(status)) if status.success() => {}
        Ok(Ok(status)) => fails.push(format!("exit after SIGTERM: expected 0, got {status}")),
        Ok(Err(e)) => fails.push(format!("exit after SIGTERM: {e}")),
        Err(_) => fails.push("exit after SIGTERM: expected within 15 s, still running".into()),
    }
    record("lifecycle/deregisters-on-sigterm-then-exits", fails);

    if let Some(g) = gateway.take() {
        g.stop().await;
    }
    Ok(out)
}
