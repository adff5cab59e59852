//! Test harness: the real `gateway` binary on 127.0.0.1:0 ports, real SDK
//! backends in-process, readiness awaited by polling with a deadline.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, or panics after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, DEADLINE, f).await
}

/// Polls `f` until it returns `Some`, or panics after `deadline`.
pub async fn eventually_within<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub struct GatewayProcess {
    pub child: Child,
    pub public: SocketAddr,
    pub internal: SocketAddr,
    pub registration: SocketAddr,
    pub admin: SocketAddr,
    pub http: reqwest::Client,
}

impl GatewayProcess {
    /// Starts the gateway with extra flags and environment.
    pub async fn start(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_at(["127.0.0.1:0"; 4].map(String::from), extra, env).await
    }

    /// Starts the gateway on given public, internal, registration and
    /// admin addresses.
    pub async fn start_at(addrs: [String; 4], extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args([
            "--public",
            &addrs[0],
            "--internal",
            &addrs[1],
            "--registration",
            &addrs[2],
            "--admin",
            &addrs[3],
        ])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("GW_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gateway");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("gateway printed its addresses in time")
            .expect("read stdout")
            .expect("gateway exited before listening");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let kv: HashMap<&str, &str> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .collect();
        let addr = |k: &str| {
            kv[k]
                .parse::<SocketAddr>()
                .unwrap_or_else(|_| panic!("{k} in {line}"))
        };
        let gw = Self {
            public: addr("public"),
            internal: addr("internal"),
            registration: addr("registration"),
            admin: addr("admin"),
            child,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        };
        let url = format!("http://{}/readyz", gw.admin);
        let http = gw.http.clone();
        eventually("gateway ready", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            }
        })
        .await;
        gw
    }

    pub fn registration_url(&self) -> String {
        format!("http://{}", self.registration)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    /// Waits until `service` has `n` routable instances in the admin view.
    pub async fn wait_routable(&self, service: &str, n: usize) {
        let url = format!(
            "http://{}/admin/services?service={service}&instances=false",
            self.admin
        );
        let http = self.http.clone();
        eventually(&format!("{service} has {n} routable instances"), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let v: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                let found = v["services"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == service)
                    .map(|s| s["routable_instances"].as_u64().unwrap_or(0) as usize)
                    .unwrap_or(0);
                (found == n).then_some(())
            }
        })
        .await;
    }

    /// The four listener addresses, for starting again on the same ports.
    pub fn addrs(&self) -> [String; 4] {
        [self.public, self.internal, self.registration, self.admin].map(|a| a.to_string())
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}

/// An SDK backend running in this process.
pub struct BackendHandle {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl BackendHandle {
    /// Starts a backend registered with `gateway` (if any).
    pub async fn start(
        name: &str,
        router: service_sdk::Router,
        gateway: Option<&str>,
        edit: impl FnOnce(service_sdk::BackendBuilder) -> service_sdk::BackendBuilder,
    ) -> Self {
        let mut b = service_sdk::Backend::builder(name).drain(Duration::from_millis(0));
        if let Some(g) = gateway {
            b = b.gateway(g);
        }
        let bound = edit(b).bind(router).await.expect("bind backend");
        let addr = bound.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            bound
                .serve(async {
                    let _ = rx.await;
                })
                .await
                .expect("backend serve");
        });
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    /// Graceful stop (deregisters).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Abrupt stop: the port closes without deregistering.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// A real Consul agent (`consul agent -dev`) on free loopback ports,
/// started from `.deps/bin/consul` (`scripts/install-deps.sh consul`).
pub struct ConsulProcess {
    child: Option<Child>,
    ports: [u16; 5],
    extra_hcl: Option<String>,
    /// The agent's output (stdout and stderr), read to tell a lost port
    /// apart from any other start-up failure.
    log: std::path::PathBuf,
    pub addr: SocketAddr,
}

/// A port number the kernel just handed out for 127.0.0.1 and that is free
/// again - a candidate, not a reservation: another process may take it
/// before the child binds it. Used only where a child cannot bind port 0 and
/// report the port (Consul 1.8.7's five listeners, Kafka's controller): the
/// caller starts the child on the candidates and, when the child says a port
/// was taken ("address already in use"), starts it again on new ones.
/// Everything else binds port 0 itself and reports what it got (the
/// gateway prints its listeners) or is handed a listening socket (HAProxy).
fn candidate_port() -> u16 {
    candidate_ports::<1>()[0]
}

/// `N` distinct candidates (see [`candidate_port`]): all bound at once
/// before any is released, so the kernel cannot hand out one twice (Consul
/// refuses a port configured for two of its listeners).
fn candidate_ports<const N: usize>() -> [u16; N] {
    let held: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

static CONSUL_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl ConsulProcess {
    pub fn binary() -> std::path::PathBuf {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/bin/consul");
        assert!(
            p.exists(),
            "consul not installed: run scripts/install-deps.sh consul (scripts/test.sh does)"
        );
        p
    }

    /// Starts an agent. Consul 1.8.7 cannot listen on port 0 and report the
    /// port (its serf and server ports must be known to the agent itself),
    /// so it is given five candidate ports (`candidate_port`); when it exits
    /// because one was taken meanwhile ("address already in use" in its
    /// output), it is started again on five new ones. Any other failure is
    /// reported as is. A started agent keeps its ports (`restart` needs them).
    pub async fn start(extra_hcl: Option<&str>) -> Self {
        let log = std::env::temp_dir().join(format!(
            "gw-consul-{}-{}.log",
            std::process::id(),
            CONSUL_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        for attempt in 1..=5 {
            let ports = candidate_ports::<5>();
            let mut c = Self {
                child: None,
                addr: SocketAddr::from(([127, 0, 0, 1], ports[0])),
                ports,
                extra_hcl: extra_hcl.map(String::from),
                log: log.clone(),
            };
            if c.try_spawn(DEADLINE).await {
                return c;
            }
            if let Some(mut child) = c.child.take() {
                let _ = child.kill().await;
            }
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                out.contains("address already in use"),
                "consul did not start on ports {ports:?}:\n{out}"
            );
            eprintln!("consul lost one of the ports {ports:?} (attempt {attempt}); new ports");
        }
        panic!("consul lost a port in five attempts");
    }

    async fn spawn(&mut self) {
        assert!(
            self.try_spawn(DEADLINE).await,
            "timed out waiting for: consul has a leader"
        );
    }

    /// Spawns the agent and waits up to `within` for it to have a leader.
    async fn try_spawn(&mut self, within: Duration) -> bool {
        let [http, lan, wan, server, grpc] = self.ports.map(|p| p.to_string());
        let mut cmd = Command::new(Self::binary());
        cmd.args([
            "agent",
            "-dev",
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-node",
            "test",
        ])
        .args([
            "-http-port",
            &http,
            "-dns-port",
            "-1",
            "-serf-lan-port",
            &lan,
            "-serf-wan-port",
            &wan,
        ])
        .args([
            "-server-port",
            &server,
            "-grpc-port",
            &grpc,
            "-hcl",
            "disable_update_check = true",
            "-hcl",
            // One blocking query per watched service per gateway: more than
            // the agent's default of 200 connections per client address.
            "limits { http_max_conns_per_client = 4096 }",
        ])
        .env("CHECKPOINT_DISABLE", "1")
        .kill_on_drop(true);
        let log = std::fs::File::create(&self.log).expect("consul log file");
        cmd.stderr(log.try_clone().expect("consul log file"))
            .stdout(log);
        if let Some(h) = &self.extra_hcl {
            cmd.args(["-hcl", h]);
        }
        self.child = Some(cmd.spawn().expect("spawn consul"));
        let url = format!("http://{}/v1/status/leader", self.addr);
        let http = reqwest::Client::new();
        let start = tokio::time::Instant::now();
        while start.elapsed() < within {
            let leader = async { http.get(&url).send().await.ok()?.text().await.ok() };
            if leader.await.is_some_and(|t| t.len() > 2) {
                return true;
            }
            // An agent that lost a port to another process exits at once.
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the agent (SIGKILL: a crash, not a graceful leave).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same ports; a dev agent comes back empty.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }
}

impl Drop for ConsulProcess {
    fn drop(&mut self) {
        // A failed test shows what Consul's own checks said (since the last
        // start): a check that went critical unroutes its instance on every
        // gateway at once.
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let checks: Vec<&str> = log.lines().filter(|l| l.contains("Check is now")).collect();
            eprintln!(
                "--- consul: check status changes ---\n{}",
                checks.join("\n")
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Starts the Python example backend as a separate process (so it can be
/// killed for real) under service name `name`; returns it and its address.
pub async fn start_python_backend(
    name: &str,
    gateway_registration: &str,
    listen: &str,
) -> (Child, String) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/product-service-py/server.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args([
            "--listen",
            listen,
            "--gateway",
            gateway_registration,
            "--name",
            name,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn python backend");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(a) = line.strip_prefix("READY ") {
                return a.trim().to_owned();
            }
        }
        panic!("python backend exited before READY");
    })
    .await
    .expect("python backend ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// A real single-node Kafka broker (KRaft) run by `scripts/kafka-dev.sh`
/// in a temporary directory; stopped when dropped.
pub struct KafkaProcess {
    dir: std::path::PathBuf,
    pub bootstrap: String,
}

fn kafka_script(cmd: &str, dir: &std::path::Path) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-dev.sh");
    let out = std::process::Command::new(script)
        .args([cmd, dir.to_str().unwrap()])
        .output()
        .expect("run kafka-dev.sh");
    assert!(
        out.status.success(),
        "kafka-dev.sh {cmd} failed (run scripts/install-deps.sh kafka): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

impl KafkaProcess {
    pub async fn start() -> Self {
        static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gw-kafka-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let d = dir.clone();
        let bootstrap = tokio::task::spawn_blocking(move || kafka_script("start", &d))
            .await
            .unwrap();
        Self { dir, bootstrap }
    }

    pub async fn stop(&self) {
        let d = self.dir.clone();
        tokio::task::spawn_blocking(move || kafka_script("stop", &d))
            .await
            .unwrap();
    }

    /// Starts it again: same ports, same data.
    pub async fn start_again(&self) {
        let d = self.dir.clone();
        tokio::task::spawn_blocking(move || kafka_script("start", &d))
            .await
            .unwrap();
    }
}

impl Drop for KafkaProcess {
    fn drop(&mut self) {
        kafka_script("stop", &self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads `/admin/services` of a gateway.
pub async fn admin_view(gw: &GatewayProcess) -> serde_json::Value {
    gw.http
        .get(format!("http://{}/admin/services", gw.admin))
        .send()
        .await
        .expect("admin view")
        .json()
        .await
        .expect("admin JSON")
}

/// Registers a TTL-checked instance through the gateway's JSON API (a TTL
/// check needs nothing listening at the address).
pub async fn register_ttl(gw: &GatewayProcess, service: &str, id: &str, address: &str) {
    let body = serde_json::json!({"service": service, "instance_id": id, "address": address, "health": {"kind": "ttl"}, "lease_ms": 600000});
    let resp = gw
        .http
        .put(format!("{}/v1/registrations", gw.registration_url()))
        .json(&body)
        .send()
        .await
        .expect("register");
    assert!(
        resp.status().is_success(),
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

/// GETs a URL and parses the JSON answer.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON body")
}

/// PUTs a registration (JSON API) through `gw` and panics unless it is
/// acknowledged.
pub async fn register_json(gw: &GatewayProcess, body: &serde_json::Value) {
    let resp = gw
        .http
        .put(format!("{}/v1/registrations", gw.registration_url()))
        .json(body)
        .send()
        .await
        .expect("register");
    assert!(
        resp.status().is_success(),
        "registration refused: {}",
        resp.text().await.unwrap_or_default()
    );
}

/// A loopback port nothing listens on now (bound, then released); the test
/// itself listens on it later, to play an instance that comes back.
pub fn closed_port() -> u16 {
    candidate_port()
}

/// HAProxy (the Debian package, `scripts/install-deps.sh haproxy`) with the
/// shipped `haproxy/haproxy.cfg`, its addresses replaced by the harness's:
/// the replicas' listeners, and four listening sockets this process bound on
/// 127.0.0.1:0 and hands to HAProxy as inherited file descriptors
/// (`bind fd@N`). HAProxy never picks a port itself, so none is raced for:
/// the sockets stay bound from the moment the kernel chose their ports.
pub struct HaproxyProcess {
    child: Child,
    dir: std::path::PathBuf,
    pub public: SocketAddr,
    pub internal: SocketAddr,
    pub registration: SocketAddr,
    pub stats: SocketAddr,
}

/// The listeners of one replica, as HAProxy's servers point at them.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaAddrs {
    pub public: SocketAddr,
    pub internal: SocketAddr,
    pub registration: SocketAddr,
    pub admin: SocketAddr,
}

impl From<&GatewayProcess> for ReplicaAddrs {
    fn from(g: &GatewayProcess) -> Self {
        Self {
            public: g.public,
            internal: g.internal,
            registration: g.registration,
            admin: g.admin,
        }
    }
}

static HAPROXY_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl HaproxyProcess {
    /// The shipped configuration for these replicas (gw1, gw2, ... in
    /// order), listening on inherited descriptors 3 (public), 4 (internal),
    /// 5 (registration) and 6 (stats); no runtime API socket.
    pub fn config(replicas: &[ReplicaAddrs]) -> String {
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../haproxy/haproxy.cfg"
        ))
        .expect("haproxy/haproxy.cfg");
        let mut out = String::new();
        for line in shipped.lines() {
            let t = line.trim_start();
            let indent = &line[..line.len() - t.len()];
            let replaced = if t.starts_with("stats socket ") {
                None
            } else if let Some(fd) = [
                ("bind 127.0.0.1:8000", 3),
                ("bind 127.0.0.1:8001", 4),
                ("bind 127.0.0.1:8090", 5),
                ("bind 127.0.0.1:8404", 6),
            ]
            .iter()
            .find(|(b, _)| t.starts_with(b))
            .map(|(_, fd)| fd)
            {
                Some(format!("bind fd@{fd}"))
            } else if t.starts_with("server gw") {
                // server gwN 127.0.0.1:8NXX check addr 127.0.0.1 port 8N04
                let w: Vec<&str> = t.split_whitespace().collect();
                let n: usize = w[1][2..].parse().expect("server gwN");
                if n > replicas.len() {
                    continue;
                }
                let r = &replicas[n - 1];
                let target = match &w[2][w[2].len() - 2..] {
                    "01" => r.public,
                    "02" => r.internal,
                    "03" => r.registration,
                    other => panic!("unexpected server port ..{other} in {t}"),
                };
                Some(format!(
                    "server {} {target} check addr {} port {}",
                    w[1],
                    r.admin.ip(),
                    r.admin.port()
                ))
            } else {
                Some(t.to_owned())
            };
            if let Some(r) = replaced {
                out.push_str(indent);
                out.push_str(&r);
                out.push('\n');
            }
        }
        for fd in 3..=6 {
            assert!(
                out.contains(&format!("bind fd@{fd}")),
                "listener {fd} in the shipped config"
            );
        }
        out
    }

    /// Starts HAProxy in front of `replicas` and waits until it sees every
    /// one of them UP in every backend.
    pub async fn start(replicas: &[ReplicaAddrs]) -> Self {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(format!(
            "gw-haproxy-{}-{}",
            std::process::id(),
            HAPROXY_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, Self::config(replicas)).unwrap();
        let listeners: Vec<std::net::TcpListener> = (0..4)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind for haproxy"))
            .collect();
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
        let mut cmd = std::process::Command::new("haproxy");
        cmd.args(["-db", "-f"]).arg(&cfg);
        // In the child, between fork and exec, each socket is duplicated to
        // 3, 4, 5 and 6 (dup2 clears close-on-exec on the copy). No source
        // is one of those: the test process had its runtime's descriptors
        // open before it bound these.
        assert!(fds.iter().all(|&fd| fd > 6), "listener descriptors {fds:?}");
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in fds.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        // Its messages (servers going DOWN and UP) are shown only when the
        // test fails (see Drop).
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        cmd.stdout(Stdio::null()).stderr(log);
        let mut cmd = Command::from(cmd);
        cmd.kill_on_drop(true);
        let child = cmd
            .spawn()
            .expect("spawn haproxy (scripts/install-deps.sh haproxy)");
        // HAProxy holds its own copies now.
        drop(listeners);
        let h = Self {
            child,
            dir,
            public: addrs[0],
            internal: addrs[1],
            registration: addrs[2],
            stats: addrs[3],
        };
        let names: Vec<String> = (1..=replicas.len()).map(|n| format!("gw{n}")).collect();
        for n in &names {
            h.wait_up(n).await;
        }
        h
    }

    /// `(backend, server, status)` of every server, from the stats CSV.
    pub async fn states(&self) -> Option<Vec<(String, String, String)>> {
        let csv = reqwest::Client::new()
            .get(format!("http://{}/stats;csv;norefresh", self.stats))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(
            csv.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f.len() > 17 && f[1] != "FRONTEND" && f[1] != "BACKEND")
                        .then(|| (f[0].to_owned(), f[1].to_owned(), f[17].to_owned()))
                })
                .collect(),
        )
    }

    /// Waits until HAProxy sees `server` UP in every gateway backend.
    pub async fn wait_up(&self, server: &str) {
        eventually_within(
            &format!("HAProxy sees {server} UP in every backend"),
            Duration::from_secs(30),
            || async {
                let s = self.states().await?;
                let up = s
                    .iter()
                    .filter(|(b, n, st)| b.starts_with("gateways_") && n == server && st == "UP")
                    .count();
                (up == 3).then_some(())
            },
        )
        .await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.public, path)
    }

    pub fn registration_url(&self) -> String {
        format!("http://{}", self.registration)
    }
}

impl Drop for HaproxyProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
            eprintln!("--- haproxy output ---\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
